"""Running one plugin's handlers: time limits, errors as outcomes, dialogs.

``PluginRunner`` lives where the plugin's code lives: in a session host for ordinary
plugins, in the plugin's own actor for ``isolated`` ones. Calls and outcomes are plain
dicts, so the same runner serves both.

    call    {"handler", "kind": command|regex|message|tool|hook, "event", "args",
             "is_admin", "timeout"}
    outcome {"ok": value}
            {"ask": question, "dialog": id, "timeout": s}   the handler awaits ctx.ask()
            {"error": usage|arguments|timeout|exception|unknown, "message": text}

A dialog: ``ctx.ask(q)`` makes the current call return ``ask``; the host sends ``q``
as the reply and routes the user's next message to ``resume(dialog, event)``, which
returns the next outcome of the same handler. A handler's time limit counts only
while it runs, not while it waits for the user.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import re
import uuid
from pathlib import Path
from typing import Any

from astr_ray.message import Event
from astr_ray.plugins.api import UsageError, check_tool_args, parse_args
from astr_ray.plugins.context import Context, DialogTimeout, Services
from astr_ray.plugins.loader import LoadedPlugin

__all__ = ["PluginRunner", "match_groups"]

log = logging.getLogger(__name__)


class _Dialog:
    """The channel between a suspended handler and the runner."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.question: asyncio.Future[tuple[str, float]] = loop.create_future()
        self.answer: asyncio.Future[Event] | None = None

    async def ask(self, question: str, wait: float) -> Event:
        answer: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self.answer = answer
        if not self.question.done():
            self.question.set_result((question, wait))
        try:
            return await asyncio.wait_for(answer, wait)
        except TimeoutError:
            raise DialogTimeout(f"no answer within {wait:g}s") from None

    def deliver(self, event: Event) -> None:
        self.question = asyncio.get_running_loop().create_future()
        if self.answer is not None and not self.answer.done():
            self.answer.set_result(event)


class PluginRunner:
    def __init__(
        self,
        loaded: LoadedPlugin,
        services: Services,
        *,
        data_dir: Path,
        config: dict[str, Any],
    ) -> None:
        self.loaded = loaded
        self.name = loaded.name
        self.services = services
        self.data_dir = data_dir
        self.config = config
        self.dialogs: dict[str, tuple[asyncio.Task[Any], _Dialog, str]] = {}
        self._specs = {c.id: c for c in loaded.spec.commands}

    def _context(self, event: Event | None, is_admin: bool, dialog: _Dialog | None) -> Context:
        return Context(
            plugin=self.name,
            capabilities=self.loaded.manifest.capabilities,
            config=self.config,
            services=self.services,
            data_dir=self.data_dir,
            event=event,
            is_admin=is_admin,
            ask_hook=dialog.ask if dialog is not None else None,
        )

    async def invoke(self, call: dict[str, Any]) -> dict[str, Any]:
        """Run one handler within ``call["timeout"]``; never raises for the plugin's faults."""
        hid = call["handler"]
        fn = self.loaded.plugin.handlers.get(hid)
        if fn is None:
            return {"error": "unknown", "message": f"{self.name} has no handler {hid}"}
        kind = call["kind"]
        event = Event.from_dict(call["event"]) if call.get("event") else None
        try:
            args, kwargs = self._bind(kind, hid, call.get("args"))
        except UsageError as exc:
            spec = self._specs[hid]
            return {"error": "usage", "message": f"{str(exc).rstrip('.')}. Usage: {spec.usage}"}
        except ValueError as exc:
            return {"error": "arguments", "message": str(exc)}
        dialog = _Dialog() if kind in ("command", "regex", "message") else None
        ctx = self._context(event, bool(call.get("is_admin")), dialog)
        task = asyncio.ensure_future(self._call(fn, ctx, args, kwargs))
        return await self._drive(task, dialog, float(call["timeout"]), hid, kind, call.get("args"))

    def _bind(self, kind: str, hid: str, raw: Any) -> tuple[list[Any], dict[str, Any]]:
        if kind == "command":
            return [], parse_args(self._specs[hid].params, raw or "")
        if kind == "regex":
            return [list(raw or [])], {}
        if kind == "tool":
            return [], check_tool_args(self.loaded.plugin.tool_models[hid], raw)
        if kind == "hook":
            return ([raw] if raw is not None else []), {}
        return [], {}

    @staticmethod
    async def _call(fn: Any, ctx: Context, args: list[Any], kwargs: dict[str, Any]) -> Any:
        if inspect.iscoroutinefunction(fn):
            return await fn(ctx, *args, **kwargs)
        # A plain function may block (time.sleep, requests...): keep it off the loop.
        result = await asyncio.to_thread(fn, ctx, *args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _drive(
        self,
        task: asyncio.Task[Any],
        dialog: _Dialog | None,
        limit: float,
        hid: str,
        kind: str,
        payload: Any,
    ) -> dict[str, Any]:
        waits: set[asyncio.Future[Any]] = {task}
        if dialog is not None:
            waits.add(dialog.question)
        try:
            done, _ = await asyncio.wait(waits, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the turn was stopped (/stop): stop the handler too
            task.cancel()
            task.add_done_callback(_quiet)
            raise
        if task in done:
            return self._result(task, hid, kind, payload)
        if dialog is not None and dialog.question in done:
            question, wait = dialog.question.result()
            did = uuid.uuid4().hex
            self.dialogs[did] = (task, dialog, hid)
            task.add_done_callback(functools.partial(self._dialog_ended, did))
            return {"ask": str(question), "dialog": did, "timeout": wait}
        task.cancel()
        task.add_done_callback(_quiet)
        log.error("plugin %s: %s timed out after %.1fs", self.name, hid, limit)
        return {"error": "timeout", "message": f"{self.name} took longer than {limit:g}s"}

    def _dialog_ended(self, did: str, task: asyncio.Task[Any]) -> None:
        """A suspended handler finished on its own (its ask timed out, or it was
        cancelled): forget the dialog. Nobody waits for this outcome."""
        if did in self.dialogs and self.dialogs[did][0] is task:
            del self.dialogs[did]
        if not task.cancelled() and isinstance(task.exception(), DialogTimeout):
            log.info("plugin %s: a dialog timed out", self.name)

    def _result(self, task: asyncio.Task[Any], hid: str, kind: str, payload: Any) -> dict[str, Any]:
        if task.cancelled():
            return {"error": "exception", "message": f"{self.name} was cancelled"}
        exc = task.exception()
        if exc is not None:
            if isinstance(exc, DialogTimeout):
                return {"error": "timeout", "message": f"{self.name}: {exc.message}"}
            if isinstance(exc, UsageError) and hid in self._specs:
                usage = self._specs[hid].usage
                return {"error": "usage", "message": f"{str(exc).rstrip('.')}. Usage: {usage}"}
            log.error(
                "plugin %s: %s raised %s: %s",
                self.name,
                hid,
                type(exc).__name__,
                exc,
                exc_info=(type(exc), exc, exc.__traceback__),
            )
            return {
                "error": "exception",
                "message": f"{self.name} failed: {type(exc).__name__}: {exc}",
            }
        value = task.result()
        if kind == "hook":
            return {"ok": value if value is not None else payload}
        if kind == "tool":
            return {"ok": value if isinstance(value, str) else json.dumps(value, default=str)}
        return {"ok": None if value is None else str(value)}

    async def resume(self, did: str, event: dict[str, Any], limit: float) -> dict[str, Any]:
        """Hand the user's next message to a suspended handler; its next outcome."""
        entry = self.dialogs.pop(did, None)
        if entry is None:
            return {"error": "unknown", "message": "that conversation with the plugin has ended"}
        task, dialog, hid = entry
        if task.done():
            return self._result(task, hid, "command", None)
        dialog.deliver(Event.from_dict(event))
        return await self._drive(task, dialog, limit, hid, "command", None)

    def cancel(self, did: str) -> bool:
        entry = self.dialogs.pop(did, None)
        if entry is None:
            return False
        entry[0].cancel()
        entry[0].add_done_callback(_quiet)
        return True

    async def notify(self, hook: str, limit: float) -> None:
        """Run the plugin's ``loaded`` / ``unloaded`` hooks (errors logged)."""
        for h in self.loaded.spec.hooks:
            if h.hook == hook:
                out = await self.invoke(
                    {
                        "handler": h.id,
                        "kind": "hook",
                        "event": None,
                        "args": None,
                        "timeout": limit,
                    }
                )
                if "error" in out:
                    log.error("plugin %s: %s hook: %s", self.name, hook, out["message"])

    def close(self) -> None:
        for did in list(self.dialogs):
            self.cancel(did)


def _quiet(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


def match_groups(pattern: str, flags: int, text: str) -> list[str] | None:
    m = re.search(pattern, text, flags)
    if m is None:
        return None
    return [m.group(0), *(g or "" for g in m.groups())]
