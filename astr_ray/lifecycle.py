"""The lifecycle contract every actor, adapter and plugin follows.

    new ──start()──► starting ──► running ──stop()──► stopping ──► stopped

``start`` may be called once (a second call is refused); ``ensure_started`` is for
actors that Ray restarted on its own, whose first call after a restart must bring them
up without the supervisor's help. Stopping is idempotent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from enum import StrEnum

from astr_ray.errors import AstrRayError

__all__ = ["Lifecycle", "State"]


class State(StrEnum):
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


class Lifecycle:
    def __init__(
        self,
        name: str,
        on_start: Callable[[], Awaitable[None]],
        on_stop: Callable[[], Awaitable[None]],
    ) -> None:
        self.name = name
        self.state = State.NEW
        self.error: str | None = None
        self._on_start = on_start
        self._on_stop = on_stop
        self._starting: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.state is not State.NEW:
            raise AstrRayError("already started", component=self.name, state=self.state.value)
        await self.ensure_started()

    async def ensure_started(self) -> None:
        """Start if not started yet; concurrent callers share one start."""
        if self.state is State.RUNNING:
            return
        if self.state in (State.STOPPING, State.STOPPED):
            raise AstrRayError("stopped", component=self.name)
        if self._starting is None or (self.state is State.FAILED and self._starting.done()):
            self.state = State.STARTING
            self._starting = asyncio.ensure_future(self._run_start())
        await asyncio.shield(self._starting)

    async def _run_start(self) -> None:
        try:
            await self._on_start()
        except BaseException as exc:
            self.state = State.FAILED
            self.error = f"{type(exc).__name__}: {exc}"
            raise
        self.state = State.RUNNING
        self.error = None

    async def stop(self) -> None:
        if self.state in (State.STOPPING, State.STOPPED):
            return
        self.state = State.STOPPING
        try:
            await self._on_stop()
        finally:
            self.state = State.STOPPED
