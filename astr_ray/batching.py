"""Batching for the database round trips on a host's hot path.

Whatever queued while the previous batch ran goes into the next batch (up to
``max_batch``); with no load an item is sent at once. This is group commit: one
transaction for many turns, one activation query for many sessions. On SQLite it keeps
several host processes from taking turns at the one write lock once per message; on
PostgreSQL it keeps the connection pool from being the queue.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["BatchRunner"]

T = TypeVar("T")
R = TypeVar("R")


class BatchRunner(Generic[T, R]):
    """Run items through ``fn(batch) -> results`` in batches.

    ``fn`` returns one result per item, in order; a result that is an exception is
    raised to that item's caller alone. If ``fn`` itself raises, every caller of that
    batch gets the exception.
    """

    def __init__(
        self, fn: Callable[[list[T]], Awaitable[Sequence[R | BaseException]]], max_batch: int = 128
    ) -> None:
        self.fn = fn
        self.max_batch = max_batch
        self._queue: deque[tuple[T, asyncio.Future[R]]] = deque()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.items = 0

    async def submit(self, item: T) -> R:
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, fut))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        while self._queue:
            n = min(len(self._queue), self.max_batch)
            batch = [self._queue.popleft() for _ in range(n)]
            try:
                results = await self.fn([item for item, _ in batch])
            except BaseException as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            self.batches += 1
            self.items += n
            for (_, fut), res in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if isinstance(res, BaseException):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)
