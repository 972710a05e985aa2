"""SandboxExecutor actors: model-written code runs here, inside a sandbox backend.

    SessionHost ─SandboxTools─► SandboxExecutor "sandbox-<i>" ─► backend (docker | bwrap)
                                  └ workspace per session: <data_dir>/sandbox/<session>/

A session always uses the same executor (its key's hash), so Docker's warm container
and the workspace on that node's disk are reused; the workspace is on disk, so it
survives the executor's restarts. Runs beyond ``sandbox.queue`` waiting are refused
("busy") rather than queued without bound. If the executor's process dies mid-run, the
sandboxed processes die with it (bubblewrap's --die-with-parent; Docker's exec is
killed with its container on restart) and the caller gets a clear error; Ray starts a
fresh executor for the next call.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import mimetypes
import os
import time
from typing import Any

import ray

from actors.common import node_id, setup_logging
from actors.logship import ship_logs
from astr_ray.config import Config, parse_config
from astr_ray.errors import SandboxError
from astr_ray.lifecycle import Lifecycle
from sandbox import Backend, Limits, Workspace, make_backend

log = logging.getLogger(__name__)

ATTACHMENT_LIMIT = 5 * 1024 * 1024


def executor_name(index: int) -> str:
    return f"sandbox-{index}"


@ray.remote
class SandboxExecutor:
    def __init__(self, name: str, config: dict[str, Any]) -> None:
        setup_logging(name)
        self.name = name
        self.cfg: Config = parse_config(config)
        ship_logs(name, self.cfg.runtime.namespace)
        self.lifecycle = Lifecycle(name, self._on_start, self._on_stop)
        self.backend: Backend | None = None
        self.unavailable: str | None = None
        self.runs = 0
        self.waiting = 0
        self._slots = asyncio.Semaphore(2)
        self._reaper: asyncio.Task[None] | None = None
        self.started_at = time.time()

    async def start(self) -> dict[str, Any]:
        await self.lifecycle.start()
        return await self.ping()

    async def _on_start(self) -> None:
        self.root = self.cfg.data_dir / "sandbox"
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            self.backend = await asyncio.to_thread(make_backend, self.cfg.sandbox)
        except SandboxError as exc:
            self.unavailable = exc.message
        if self.backend is None and self.unavailable is None:
            self.unavailable = f"no sandbox backend (sandbox.backend: {self.cfg.sandbox.backend})"
        if self.backend is not None:
            log.info("sandbox backend: %s", self.backend.name)
            self._reaper = asyncio.create_task(self._reap_forever())
        else:
            log.warning("code execution is off: %s", self.unavailable)

    async def _on_stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        if self.backend is not None:
            await self.backend.close()

    async def stop(self) -> None:
        await self.lifecycle.stop()

    async def _reap_forever(self) -> None:
        """Remove warm containers idle longer than ``sandbox.idle_s`` (Docker)."""
        while True:
            await asyncio.sleep(min(30.0, self.cfg.sandbox.idle_s / 2))
            reap = getattr(self.backend, "reap_idle", None)
            if reap is not None:
                try:
                    await reap()
                except Exception:
                    log.exception("reaping idle sandboxes failed")

    def _workspace(self, session: str) -> Workspace:
        return Workspace(self.root, session, self.cfg.sandbox.workspace_mb)

    def _backend(self) -> Backend:
        if self.backend is None:
            raise SandboxError(f"code execution is not available: {self.unavailable}")
        return self.backend

    async def run(self, session: str, argv: list[str], stdin: bytes = b"") -> dict[str, Any]:
        """Run ``argv`` in ``session``'s workspace under the configured limits. Returns
        the result as a dict (``RunResult`` fields and its ``summary``)."""
        await self.lifecycle.ensure_started()
        backend = self._backend()
        if self.waiting >= self.cfg.sandbox.queue:
            raise SandboxError(
                f"the sandbox is busy ({self.waiting} runs waiting); try again shortly"
            )
        self.waiting += 1
        queued = True
        try:
            async with self._slots:
                self.waiting -= 1
                queued = False
                ws = self._workspace(session)
                workspace = await asyncio.to_thread(lambda: ws.path)  # created on first use
                result = await backend.run(
                    workspace,
                    argv,
                    stdin=stdin,
                    limits=Limits.from_config(self.cfg.sandbox),
                    session=session,
                )
        finally:
            if queued:
                self.waiting -= 1
        self.runs += 1
        out = dict(vars(result))
        out["summary"] = result.summary()
        return out

    async def read_file(self, session: str, path: str, max_bytes: int = 64 * 1024) -> str:
        await self.lifecycle.ensure_started()
        # Workspace access is plain file I/O: off the loop, so runs keep being served.
        return await asyncio.to_thread(self._workspace(session).read_text, path, max_bytes)

    async def write_file(self, session: str, path: str, text: str) -> int:
        await self.lifecycle.ensure_started()
        await asyncio.to_thread(self._workspace(session).write_text, path, text)
        return len(text.encode())

    async def list_files(self, session: str, path: str = ".") -> list[dict[str, Any]]:
        await self.lifecycle.ensure_started()
        return await asyncio.to_thread(self._workspace(session).list, path)

    async def attachment(self, session: str, path: str) -> dict[str, Any]:
        """A workspace file as a chat attachment: its name, type and a data: URL."""
        await self.lifecycle.ensure_started()
        ws = self._workspace(session)
        data = await asyncio.to_thread(ws.read_bytes, path, ATTACHMENT_LIMIT + 1)
        if len(data) > ATTACHMENT_LIMIT:
            raise SandboxError(f"{path} is larger than {ATTACHMENT_LIMIT // (1024 * 1024)} MiB")
        mime = mimetypes.guess_type(path)[0] or "application/octet-stream"
        url = f"data:{mime};base64,{base64.b64encode(data).decode()}"
        return {"name": os.path.basename(path), "mime": mime, "url": url, "size": len(data)}

    async def close_session(self, session: str) -> None:
        if self.backend is not None:
            await self.backend.close_session(session)

    async def describe(self) -> dict[str, Any]:
        await self.lifecycle.ensure_started()
        if self.backend is None:
            return {"backend": None, "unavailable": self.unavailable}
        return {"backend": self.backend.name, "safe": self.backend.safe, **self.backend.describe()}

    async def ping(self) -> dict[str, Any]:
        if self.lifecycle.state.value == "new":
            await self.lifecycle.ensure_started()  # Ray restarted this process
        return {
            "pid": os.getpid(),
            "node_id": node_id(),
            "state": self.lifecycle.state.value,
            "backend": self.backend.name if self.backend else None,
            "unavailable": self.unavailable,
            "runs": self.runs,
            "waiting": self.waiting,
            "started_at": self.started_at,
        }
