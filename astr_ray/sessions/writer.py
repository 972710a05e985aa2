"""Group commit: the turns a host finishes at about the same time share one transaction.

A turn is durable before its reply leaves the host, so every turn waits for a commit.
Under load many turns finish together; committing them one by one would make the
database's commit rate the ceiling (and on SQLite, several host processes would take
turns at the one write lock). The writer commits whatever has queued while the previous
commit ran, up to ``max_batch``; with no load a turn is committed at once.
"""

from __future__ import annotations

import asyncio
from collections import deque

from astr_ray.store import Store, TurnRecord

__all__ = ["TurnWriter"]


class TurnWriter:
    def __init__(self, store: Store, max_batch: int = 128) -> None:
        self.store = store
        self.max_batch = max_batch
        self._queue: deque[tuple[TurnRecord, asyncio.Future[None]]] = deque()
        self._task: asyncio.Task[None] | None = None
        self.commits = 0
        self.turns = 0

    async def commit(self, turn: TurnRecord) -> None:
        """Commit one turn; raises what ``Store.commit_turn`` would for it alone."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((turn, fut))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())
        await fut

    async def _drain(self) -> None:
        while self._queue:
            n = min(len(self._queue), self.max_batch)
            batch = [self._queue.popleft() for _ in range(n)]
            try:
                results = await self.store.commit_turns([t for t, _ in batch])
            except BaseException as exc:  # the whole batch failed; each waiter hears why
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            self.commits += 1
            self.turns += n
            for (_, fut), res in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if res is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(res)
