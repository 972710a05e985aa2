"""The sandbox's agent tools, as a ``ToolSource`` for the turn's ``ToolBox``.

``run_python``, ``run_shell``, ``read_file``, ``write_file``, ``list_files`` and
``send_file`` (which attaches a workspace file to the reply). Admin-only by default
(``sandbox.admin_only``); a persona's ``tools`` list narrows them further. Calls go to
the session's ``SandboxExecutor``: always the same one for a session (its workspace
and warm container live there).
"""

from __future__ import annotations

import asyncio
import json
import logging
import zlib
from typing import Any

from ray.exceptions import RayActorError

from actors.common import get_actor
from actors.sandbox_executor import executor_name
from astr_ray.config import Config
from astr_ray.errors import AstrRayError
from astr_ray.message import File, Image
from astr_ray.tools import Tool, ToolContext, ToolFailure

log = logging.getLogger(__name__)


def _schema(props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": props,
        "required": required,
        "additionalProperties": False,
    }


_STR = {"type": "string"}

TOOLS = [
    Tool(
        "run_python",
        "Run Python 3 code in this chat's sandbox (no network; files persist in the "
        "working directory). Returns the exit code, stdout and stderr.",
        _schema({"code": {**_STR, "description": "the program"}}, ["code"]),
        "sandbox",
    ),
    Tool(
        "run_shell",
        "Run a shell command in this chat's sandbox (no network). Returns the exit code, "
        "stdout and stderr.",
        _schema({"command": {**_STR, "description": "a /bin/sh command line"}}, ["command"]),
        "sandbox",
    ),
    Tool(
        "read_file",
        "Read a text file from this chat's sandbox workspace.",
        _schema({"path": {**_STR, "description": "relative to the workspace"}}, ["path"]),
        "sandbox",
    ),
    Tool(
        "write_file",
        "Write a text file into this chat's sandbox workspace (creates folders).",
        _schema({"path": _STR, "content": _STR}, ["path", "content"]),
        "sandbox",
    ),
    Tool(
        "list_files",
        "List the files of a folder of this chat's sandbox workspace.",
        _schema({"path": {**_STR, "default": "."}}, []),
        "sandbox",
    ),
    Tool(
        "send_file",
        "Send a file from the sandbox workspace to the user (an image is shown).",
        _schema({"path": _STR}, ["path"]),
        "sandbox",
    ),
]


def executor_for(session_key: str, executors: int) -> str:
    """The executor of a session: stable, so its workspace and container are reused."""
    return executor_name(zlib.crc32(session_key.encode()) % executors)


class SandboxTools:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.available = cfg.sandbox.backend != "none" and cfg.sandbox.executors > 0
        self.reason: str | None = None

    async def refresh(self) -> None:
        """Ask an executor whether code can run at all (no backend: hide the tools)."""
        if self.cfg.sandbox.backend == "none" or not self.cfg.sandbox.executors:
            return
        try:
            actor = get_actor(executor_name(0), self.cfg.runtime.namespace)
            info = await asyncio.wait_for(actor.describe.remote(), 10)
        except Exception as exc:
            log.debug("sandbox not reachable yet: %s", exc)
            return
        self.available = info.get("backend") is not None
        self.reason = info.get("unavailable")

    def tools(self, ctx: ToolContext) -> list[Tool]:
        if not self.available or (self.cfg.sandbox.admin_only and not ctx.is_admin):
            return []
        return list(TOOLS)

    async def call(self, tool: Tool, arguments: dict[str, Any], ctx: ToolContext) -> str:
        session = ctx.session_key
        try:
            if tool.name == "run_python":
                code = str(arguments.get("code", ""))
                out = await self._call("run", session, ["python3", "-c", code])
                return str(out["summary"])
            if tool.name == "run_shell":
                command = str(arguments.get("command", ""))
                out = await self._call("run", session, ["/bin/sh", "-c", command])
                return str(out["summary"])
            if tool.name == "read_file":
                return str(await self._call("read_file", session, str(arguments["path"])))
            if tool.name == "write_file":
                n = await self._call(
                    "write_file", session, str(arguments["path"]), str(arguments["content"])
                )
                return f"wrote {n} bytes to {arguments['path']}"
            if tool.name == "list_files":
                entries = await self._call("list_files", session, str(arguments.get("path", ".")))
                return json.dumps(entries)
            if tool.name == "send_file":
                att = await self._call("attachment", session, str(arguments["path"]))
                if att["mime"].startswith("image/"):
                    ctx.attachments.append(Image(url=att["url"], mime=att["mime"]))
                else:
                    ctx.attachments.append(File(name=att["name"], url=att["url"], size=att["size"]))
                return f"sent {att['name']} ({att['size']} bytes) to the user"
        except KeyError as exc:
            raise ToolFailure(f"missing argument {exc}") from None
        except AstrRayError as exc:
            raise ToolFailure(exc.message) from None
        raise ToolFailure(f"unknown sandbox tool {tool.name}")

    async def _call(self, method: str, session: str, *args: Any) -> Any:
        """One call to the session's executor. First wait (a little) until it answers a
        ping: while Ray restarts it, nothing is sent. Then send the call once: Ray says
        "unavailable" both for a call that never ran and for one whose process died
        mid-run, and code may have had effects, so a failure then is reported, not
        retried."""
        name = executor_for(session, self.cfg.sandbox.executors)
        ns = self.cfg.runtime.namespace
        actor = None
        for attempt in range(30):
            try:
                actor = get_actor(name, ns)
                await actor.ping.remote()
                break
            except (RayActorError, ValueError):  # restarting, or not (re)created yet
                actor = None
                await asyncio.sleep(min(0.2 * (attempt + 1), 1.0))
        if actor is None:
            raise ToolFailure("the sandbox is not available right now; try again shortly")
        try:
            return await getattr(actor, method).remote(session, *args)
        except RayActorError:
            raise ToolFailure(
                "the sandbox executor stopped during the run (it is being restarted); run it again"
            ) from None
