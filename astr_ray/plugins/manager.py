"""The plugins of one session host: loading, dispatch tables, contained calls.

    PluginManager
     ├─ LocalHandle  ─► PluginRunner (the plugin's code runs in this process)
     └─ RemoteHandle ─► PluginWorker actor (``isolated: true``; see actors/plugin_worker.py)

Both handles take the same calls (``runner.py``), so dispatch does not care where a
plugin runs. Every call is time-limited; a plugin's fault comes back as an outcome
with a short message for the user, is logged with the plugin's name and counted in
``astr_ray_plugin_calls``. A crashed isolated plugin's actor is restarted by Ray; its
calls fail meanwhile with a clear reply, and nothing else is affected.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from astr_ray.config import Config
from astr_ray.errors import PluginError
from astr_ray.message import Event
from astr_ray.metrics import Metrics
from astr_ray.plugins.api import CommandSpec, Filters, PluginSpec, ToolSpec
from astr_ray.plugins.context import Services
from astr_ray.plugins.loader import LoadFailure, PluginSource, discover, load, unload_modules
from astr_ray.plugins.manifest import PluginManifest
from astr_ray.plugins.runner import PluginRunner, match_groups
from astr_ray.tools import Tool, ToolContext, ToolFailure

__all__ = ["LocalHandle", "PluginHandle", "PluginManager", "PluginTools", "Target"]

log = logging.getLogger(__name__)


class PluginHandle(Protocol):
    """Where one plugin's code runs."""

    name: str
    manifest: PluginManifest
    spec: PluginSpec
    isolated: bool

    async def invoke(self, call: dict[str, Any]) -> dict[str, Any]: ...

    async def resume(self, dialog: str, event: dict[str, Any], limit: float) -> dict[str, Any]: ...

    async def cancel(self, dialog: str) -> None: ...

    async def close(self) -> None: ...


RemoteFactory = Callable[[PluginSource], Awaitable[PluginHandle]]


class LocalHandle:
    """A plugin imported into this process."""

    isolated = False

    def __init__(self, runner: PluginRunner) -> None:
        self.runner = runner
        self.name = runner.name
        self.manifest = runner.loaded.manifest
        self.spec = runner.loaded.spec

    async def invoke(self, call: dict[str, Any]) -> dict[str, Any]:
        return await self.runner.invoke(call)

    async def resume(self, dialog: str, event: dict[str, Any], limit: float) -> dict[str, Any]:
        return await self.runner.resume(dialog, event, limit)

    async def cancel(self, dialog: str) -> None:
        self.runner.cancel(dialog)

    async def close(self) -> None:
        self.runner.close()
        unload_modules(self.runner.loaded.module.rsplit(".", 1)[0])


@dataclass(frozen=True)
class Target:
    """A handler to call: which plugin, which handler, with what."""

    plugin: str
    handler: str
    kind: str
    args: Any = None


def make_runner(source: PluginSource, cfg: Config, services: Services) -> PluginRunner:
    """Import a plugin here and wrap it in a runner (raises ``PluginError``)."""
    settings = source.manifest.check_config(cfg.plugins.settings.get(source.name))
    loaded = load(source)
    return PluginRunner(
        loaded, services, data_dir=cfg.data_dir / "plugin_data" / source.name, config=settings
    )


class PluginManager:
    def __init__(
        self,
        cfg: Config,
        services: Services,
        *,
        reserved: Iterable[str] = (),
        remote: RemoteFactory | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.cfg = cfg
        self.services = services
        self.reserved = set(reserved)
        self.remote = remote
        self.metrics = metrics
        self.handles: dict[str, PluginHandle] = {}
        self.sources: dict[str, PluginSource] = {}
        self.failures: dict[str, LoadFailure] = {}
        self.pending: set[str] = set()  # isolated plugins whose actor is not ready yet
        self.conflicts: list[str] = []
        # In-process calls running and recently finished: the suspects of a loop stall.
        self._running: dict[object, tuple[str, float]] = {}
        self._finished: deque[tuple[str, float, float]] = deque(maxlen=256)
        self._commands: dict[str, tuple[str, CommandSpec]] = {}
        self._groups: dict[str, tuple[str, dict[str, CommandSpec]]] = {}
        self._tools: dict[str, tuple[str, ToolSpec]] = {}

    # -- loading ------------------------------------------------------------------------
    async def load_all(self) -> None:
        sources, failures = discover(self.cfg.plugins_dir)
        self.failures = {f.name: f for f in failures}
        for src in sources:
            await self._load(src)
        self._rebuild()

    async def _load(self, src: PluginSource) -> bool:
        self.sources[src.name] = src
        old = self.handles.pop(src.name, None)
        if old is not None:
            await self._close(old)
        try:
            if src.manifest.isolated:
                if self.remote is None:
                    raise PluginError("isolated plugins need the Ray runtime", plugin=src.name)
                handle: PluginHandle = await self.remote(src)
            else:
                runner = make_runner(src, self.cfg, self.services)
                await runner.notify("loaded", self.cfg.plugins.handler_timeout_s)
                handle = LocalHandle(runner)
        except PluginError as exc:
            if exc.context.get("pending"):
                self.pending.add(src.name)
                return False
            self.failures[src.name] = LoadFailure(src.name, str(src.folder), exc.message)
            log.error("plugin %s not loaded: %s", src.name, exc.message)
            return False
        self.pending.discard(src.name)
        self.failures.pop(src.name, None)
        self.handles[src.name] = handle
        log.info(
            "plugin %s %s loaded%s",
            src.name,
            src.manifest.version,
            " (isolated)" if handle.isolated else "",
        )
        return True

    async def _close(self, handle: PluginHandle) -> None:
        if isinstance(handle, LocalHandle):
            await handle.runner.notify("unloaded", self.cfg.plugins.handler_timeout_s)
        try:
            await handle.close()
        except Exception:
            log.exception("closing plugin %s", handle.name)

    async def retry_pending(self) -> None:
        """Try again the isolated plugins whose actor was still starting."""
        changed = False
        for name in list(self.pending):
            src = self.sources.get(name)
            if src is not None:
                changed |= await self._load(src)
        if changed:
            self._rebuild()

    async def reload(self, name: str | None = None) -> list[str]:
        """Re-read manifests and re-import ``name`` (or every plugin); new folders are
        picked up and removed ones unloaded. Returns the names reloaded."""
        sources, failures = discover(self.cfg.plugins_dir)
        found = {s.name: s for s in sources}
        for f in failures:
            if name is None or f.name == name:
                self.failures[f.name] = f
                old = self.handles.pop(f.name, None)
                if old is not None:
                    await self._close(old)
        done: list[str] = []
        for gone in [n for n in list(self.handles) if n not in found and (name in (None, n))]:
            await self._close(self.handles.pop(gone))
            self.sources.pop(gone, None)
            done.append(gone)
        for src in sources:
            if name is None or src.name == name:
                await self._load(src)
                done.append(src.name)
        self._rebuild()
        return done

    async def close(self) -> None:
        for handle in list(self.handles.values()):
            await self._close(handle)
        self.handles.clear()

    def _rebuild(self) -> None:
        """The dispatch tables: commands, groups, tools. First come, first served; a
        clash is reported (``conflicts``) and the later one skipped."""
        self.conflicts = []
        commands: dict[str, tuple[str, CommandSpec]] = {}
        groups: dict[str, tuple[str, dict[str, CommandSpec]]] = {}
        tools: dict[str, tuple[str, ToolSpec]] = {}
        for name in sorted(self.handles):
            spec = self.handles[name].spec
            for gname in spec.groups:
                if (
                    gname in self.reserved
                    or gname in commands
                    or (gname in groups and groups[gname][0] != name)
                ):
                    self.conflicts.append(f"{name}: /{gname} is taken")
                    continue
                groups.setdefault(gname, (name, {}))
            for c in spec.commands:
                if c.group is not None:
                    if c.group in groups and groups[c.group][0] == name:
                        table = groups[c.group][1]
                        for n in (c.name, *c.aliases):
                            table.setdefault(n, c)
                    continue
                for n in (c.name, *c.aliases):
                    if n in self.reserved or n in groups or n in commands:
                        self.conflicts.append(f"{name}: /{n} is taken")
                        continue
                    commands[n] = (name, c)
            for t in spec.tools:
                if t.name in tools:
                    self.conflicts.append(f"{name}: tool {t.name} is taken by {tools[t.name][0]}")
                    continue
                tools[t.name] = (name, t)
        for conflict in self.conflicts:
            log.warning("plugin conflict: %s", conflict)
        self._commands, self._groups, self._tools = commands, groups, tools

    # -- queries ------------------------------------------------------------------------
    def enabled(self, disabled: set[str]) -> list[str]:
        return [n for n in sorted(self.handles) if n not in disabled]

    def listing(self, disabled: set[str]) -> list[dict[str, Any]]:
        """Every plugin known, loaded or not, for /plugin ls and the dashboard."""
        out: list[dict[str, Any]] = []
        for name in sorted(set(self.sources) | set(self.failures)):
            h = self.handles.get(name)
            src = self.sources.get(name)
            state = (
                "error"
                if name in self.failures
                else "starting"
                if name in self.pending
                else "off"
                if name in disabled
                else "on"
            )
            out.append(
                {
                    "name": name,
                    "version": src.manifest.version if src else None,
                    "description": src.manifest.description if src else "",
                    "isolated": bool(src and src.manifest.isolated),
                    "capabilities": list(src.manifest.capabilities) if src else [],
                    "state": state,
                    "error": self.failures[name].reason if name in self.failures else None,
                    "commands": len(h.spec.commands) if h else 0,
                    "tools": [t.name for t in h.spec.tools] if h else [],
                }
            )
        return out

    def help_entries(self, disabled: set[str], *, admin: bool = True) -> list[tuple[str, str]]:
        """(usage, help) of every enabled plugin command, groups expanded; admin-only
        ones only for admins."""
        specs = [
            c for n, (p, c) in sorted(self._commands.items()) if n == c.name and p not in disabled
        ]
        for _g, (plugin, table) in sorted(self._groups.items()):
            if plugin not in disabled:
                specs += [c for n, c in sorted(table.items()) if n == c.name]
        return [
            (c.usage, c.help + (" (admin)" if c.filters.admin else ""))
            for c in specs
            if admin or not c.filters.admin
        ]

    def find_command(
        self, name: str, args: str, disabled: set[str], *, admin: bool = True
    ) -> tuple[str, CommandSpec, str] | str | None:
        """(plugin, spec, argument text) for ``/name args``; a str is a usage message
        (an unknown sub-command of a group); None when no plugin has ``name``."""
        hit = self._commands.get(name)
        if hit is not None and hit[0] not in disabled:
            return hit[0], hit[1], args
        group = self._groups.get(name)
        if group is None or group[0] in disabled:
            return None
        plugin, table = group
        sub, _, rest = args.partition(" ")
        spec = table.get(sub.lower())
        if spec is None:
            subs = "\n".join(
                f"  {c.usage}  {c.help}" + (" (admin)" if c.filters.admin else "")
                for n, c in sorted(table.items())
                if n == c.name and (admin or not c.filters.admin)
            )
            help_ = self.handles[plugin].spec.groups.get(name, "")
            head = f"/{name}: {help_}" if help_ else f"/{name}"
            return f"{head}\nSub-commands:\n{subs}"
        return plugin, spec, rest.strip()

    def message_targets(self, event: Event, disabled: set[str], is_admin: bool) -> list[Target]:
        """Regex and message handlers that apply to ``event``, in plugin order."""
        out: list[Target] = []
        text = event.text
        platform, chat_type = event.platform_id, event.chat_type.value
        for name in self.enabled(disabled):
            spec = self.handles[name].spec
            for r in spec.regexes:
                if _applies(r.filters, platform, chat_type, is_admin):
                    groups = match_groups(r.pattern, r.flags, text)
                    if groups is not None:
                        out.append(Target(name, r.id, "regex", groups))
            for m in spec.messages:
                if _applies(m.filters, platform, chat_type, is_admin):
                    out.append(Target(name, m.id, "message"))
        return out

    def tools(self, disabled: set[str], allowed: list[str] | None) -> list[ToolSpec]:
        return [
            t
            for n, (plugin, t) in sorted(self._tools.items())
            if plugin not in disabled and (allowed is None or n in allowed)
        ]

    def tool_plugin(self, tool: str) -> tuple[str, ToolSpec] | None:
        return self._tools.get(tool)

    def hook_targets(self, hook: str, disabled: set[str]) -> list[Target]:
        found = [
            (h.priority, name, h.id)
            for name in self.enabled(disabled)
            for h in self.handles[name].spec.hooks
            if h.hook == hook
        ]
        return [Target(n, hid, "hook") for _, n, hid in sorted(found, key=lambda x: -x[0])]

    def suspects(self, since: float) -> list[str]:
        """In-process plugins that were running at some point after ``since``
        (monotonic): who may have blocked this host's event loop."""
        names = {name for name, _ in self._running.values()}
        names |= {name for name, _, end in self._finished if end >= since}
        return sorted(names)

    # -- calls --------------------------------------------------------------------------
    async def call(
        self,
        target: Target,
        event: Event | None,
        *,
        is_admin: bool = False,
        limit: float | None = None,
    ) -> dict[str, Any]:
        """Run one handler, contained: the outcome dict of ``runner.py``, never raises."""
        handle = self.handles.get(target.plugin)
        if handle is None:
            return {"error": "unknown", "message": f"plugin {target.plugin} is not loaded"}
        limit = limit or self.cfg.plugins.handler_timeout_s
        call = {
            "handler": target.handler,
            "kind": target.kind,
            "event": event.to_dict() if event is not None else None,
            "args": target.args,
            "is_admin": is_admin,
            "timeout": limit,
        }
        return await self._contained(handle, target.kind, handle.invoke(call), limit)

    async def resume(self, plugin: str, dialog: str, event: Event) -> dict[str, Any]:
        handle = self.handles.get(plugin)
        if handle is None:
            return {"error": "unknown", "message": f"plugin {plugin} is not loaded"}
        limit = self.cfg.plugins.handler_timeout_s
        return await self._contained(
            handle, "dialog", handle.resume(dialog, event.to_dict(), limit), limit
        )

    async def cancel(self, plugin: str, dialog: str) -> None:
        handle = self.handles.get(plugin)
        if handle is not None:
            try:
                await asyncio.wait_for(handle.cancel(dialog), 5)
            except Exception as exc:
                log.warning("cancelling a dialog of %s: %s", plugin, exc)

    async def _contained(
        self, handle: PluginHandle, kind: str, work: Awaitable[dict[str, Any]], limit: float
    ) -> dict[str, Any]:
        started = time.perf_counter()
        call_id = object()
        if not handle.isolated:
            self._running[call_id] = (handle.name, time.monotonic())
        try:
            # The runner enforces the limit; this outer one covers a stuck process.
            outcome = await asyncio.wait_for(work, limit + 5)
        except TimeoutError:
            outcome = {"error": "timeout", "message": f"{handle.name} took longer than {limit:g}s"}
            log.error("plugin %s: %s call timed out (process unresponsive)", handle.name, kind)
        except PluginError as exc:
            outcome = {"error": "crashed", "message": exc.message}
            log.error("plugin %s: %s", handle.name, exc.message)
        except Exception as exc:
            outcome = {"error": "exception", "message": f"{handle.name}: {type(exc).__name__}"}
            log.exception("plugin %s: %s call failed", handle.name, kind)
        finally:
            if not handle.isolated:
                name, since = self._running.pop(call_id)
                self._finished.append((name, since, time.monotonic()))
        if self.metrics is not None:
            result = outcome.get("error") or ("ask" if "ask" in outcome else "ok")
            self.metrics.plugin_calls.labels(handle.name, kind, result).inc()
            self.metrics.plugin_seconds.labels(handle.name).observe(time.perf_counter() - started)
        return outcome


def _applies(f: Filters, platform: str, chat_type: str, is_admin: bool) -> bool:
    return f.allows(platform, chat_type) and (is_admin or not f.admin)


def plugin_data_dir(cfg: Config, name: str) -> Path:
    return cfg.data_dir / "plugin_data" / name


class PluginTools:
    """The plugins' tools as a ``ToolSource`` (``astr_ray.tools``)."""

    def __init__(self, manager: PluginManager, limit: float) -> None:
        self.manager = manager
        self.limit = limit

    def tools(self, ctx: ToolContext) -> list[Tool]:
        out: list[Tool] = []
        for t in self.manager.tools(ctx.disabled, None):
            hit = self.manager.tool_plugin(t.name)
            if hit is not None:
                out.append(Tool(t.name, t.description, t.parameters, f"plugin:{hit[0]}", t.id))
        return out

    async def call(self, tool: Tool, arguments: dict[str, Any], ctx: ToolContext) -> str:
        plugin = tool.source.removeprefix("plugin:")
        out = await self.manager.call(
            Target(plugin, tool.ref, "tool", arguments),
            ctx.event,
            is_admin=ctx.is_admin,
            limit=self.limit,
        )
        if "error" in out:
            raise ToolFailure(out["message"])
        return str(out.get("ok", ""))
