"""The caller's side of a worker pool (embedders, TTS, STT): round robin, and a job
whose worker died (or is restarting) is sent again, to the next worker.

    caller ── call("embed", texts) ──► worker-0 ✗ (SIGKILL)
                                   └─► worker-1 ─► result      (one retry counted)

Only for pure jobs: a job done twice costs time but never changes a result (an
embedding, a synthesized sentence, a transcript). Errors the worker raises on purpose
(a bad input) are not retried; they reach the caller as they are.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from actors.common import ACTOR_GONE, get_actor
from astr_ray.errors import AstrRayError

__all__ = ["WorkerPool"]

log = logging.getLogger(__name__)


class WorkerPool:
    def __init__(
        self,
        namespace: str,
        size: int,
        name_of: Callable[[int], str],
        *,
        error: type[AstrRayError],
        what: str,
        off_hint: str = "",
        deadline_s: float = 120.0,
    ) -> None:
        self.namespace = namespace
        self.size = size
        self.name_of = name_of
        self.error = error
        self.what = what  # "embedder", "TTS worker"...: for messages
        self.off_hint = off_hint  # why none may be running: "knowledge.embedders is 0"
        self.deadline_s = deadline_s
        self.retries = 0
        self._next = 0
        self._handles: dict[int, Any] = {}

    def _handle(self, index: int) -> Any:
        if index not in self._handles:
            self._handles[index] = get_actor(self.name_of(index), self.namespace)
        return self._handles[index]

    async def call(self, method: str, *args: Any, deadline_s: float | None = None) -> Any:
        """``worker.<method>(*args)`` on the next worker; sent again while workers are
        gone, until the deadline (then ``error``)."""
        if self.size < 1:
            hint = f" ({self.off_hint})" if self.off_hint else ""
            raise self.error(f"no {self.what} is running{hint}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.deadline_s if deadline_s is None else deadline_s)
        attempt = 0
        while True:
            index = self._next % self.size
            self._next += 1
            try:
                return await getattr(self._handle(index), method).remote(*args)
            except ACTOR_GONE as exc:
                self._handles.pop(index, None)
                attempt += 1
                self.retries += 1
                if loop.time() > deadline:
                    raise self.error(
                        f"no {self.what} answered in time", actor=self.name_of(index)
                    ) from exc
                log.warning(
                    "%s unavailable (%s); sending the job again",
                    self.name_of(index),
                    type(exc).__name__,
                )
                await asyncio.sleep(min(2.0, 0.1 * 2 ** min(attempt, 4)))
