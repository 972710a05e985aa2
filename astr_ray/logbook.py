"""The dashboard's log book: the newest log records of every actor, filtered and
followed live.

    actor ── LogShipper (actors/logship.py, batches every 0.5 s) ──► dashboard.logs(batch)
                                                                     └► LogBook: ring + followers

A record is a plain dict: ``time``, ``level``, ``actor``, ``logger``, ``message`` and,
when the message names one (``session=<key>``), ``session``. Followers are bounded
queues: a follower that does not keep up loses its oldest lines, never the actor's.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["LEVELS", "LogBook", "LogFilter", "session_of"]

LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
_SESSION = re.compile(r"session(?:_key)?=([\w.@:-]+)")


def session_of(message: str) -> str | None:
    """The session key a log message names (``session=webchat:private:alice``)."""
    found = _SESSION.search(message)
    return found.group(1) if found else None


@dataclass(frozen=True)
class LogFilter:
    level: int = logging.INFO
    actor: str | None = None  # a substring of the actor's name
    session: str | None = None  # a substring of the session key

    @classmethod
    def parse(cls, level: str | None, actor: str | None, session: str | None) -> LogFilter:
        """From query parameters; raises ``ValueError`` naming a bad level."""
        name = (level or "INFO").upper()
        if name not in LEVELS:
            raise ValueError(f"level must be one of {', '.join(LEVELS)}")
        return cls(LEVELS[name], actor or None, session or None)

    def __call__(self, record: dict[str, Any]) -> bool:
        if LEVELS.get(str(record.get("level")), 0) < self.level:
            return False
        if self.actor and self.actor not in str(record.get("actor", "")):
            return False
        return not (self.session and self.session not in str(record.get("session") or ""))


class LogBook:
    def __init__(self, keep: int = 5000, follower_queue: int = 1000) -> None:
        self._records: deque[dict[str, Any]] = deque(maxlen=keep)
        self._followers: set[tuple[asyncio.Queue[dict[str, Any]], LogFilter]] = set()
        self.follower_queue = follower_queue

    def add(self, records: Iterable[dict[str, Any]]) -> None:
        for record in records:
            self._records.append(record)
            for queue, keep in list(self._followers):
                if keep(record):
                    if queue.full():
                        queue.get_nowait()  # a slow follower loses its oldest line
                    queue.put_nowait(record)

    def recent(self, keep: LogFilter, limit: int = 200) -> list[dict[str, Any]]:
        """The newest ``limit`` records that pass ``keep``, oldest first."""
        out: list[dict[str, Any]] = []
        for record in reversed(self._records):
            if keep(record):
                out.append(record)
                if len(out) >= limit:
                    break
        return out[::-1]

    def follow(self, keep: LogFilter) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self.follower_queue)
        self._followers.add((queue, keep))
        return queue

    def unfollow(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._followers = {(q, k) for q, k in self._followers if q is not queue}
