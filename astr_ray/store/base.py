"""``StoreBase``: what every part of ``Store`` shares (package-internal).

The engine and the backend it speaks, the write transaction (``BEGIN IMMEDIATE`` on
SQLite), the mapping of driver failures to ``StoreError``, the dialect-specific
``INSERT ... ON CONFLICT`` statements, and the process-wide clock that stamps rows.
The method groups of ``Store`` (``conversations``, ``turns``, ``activation``,
``settings``) are mixins on this class; ``store.Store`` puts them together.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import Executable

from astr_ray.errors import StoreError
from astr_ray.store.tables import messages

__all__ = ["MESSAGE_COLUMNS", "StoreBase", "check_length", "clock"]

# The columns of a StoredMessage, in its field order.
MESSAGE_COLUMNS = (
    messages.c.seq,
    messages.c.role,
    messages.c.content,
    messages.c.extra,
    messages.c.event_id,
    messages.c.created_at,
)


class _Clock:
    """Wall-clock seconds, strictly increasing within this process (ties make order vague)."""

    def __init__(self) -> None:
        self._last = 0.0

    def __call__(self) -> float:
        now = time.time()
        if now <= self._last:
            now = self._last + 1e-6
        self._last = now
        return now


clock = _Clock()


def check_length(what: str, value: str, limit: int, **context: Any) -> None:
    # Checked here, not left to the column: SQLite does not enforce VARCHAR lengths.
    if len(value) > limit:
        raise StoreError(f"{what} is longer than {limit} characters", **context)


class StoreBase:
    """The engine of a ``Store`` and the helpers its methods share."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._sqlite = engine.dialect.name == "sqlite"

    @property
    def engine(self) -> AsyncEngine:
        """The underlying engine (for migrations and diagnostics; not a stable API)."""
        return self._engine

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction; on SQLite it holds the write lock from its first statement."""
        async with self._engine.begin() as conn:
            if self._sqlite:
                await conn.exec_driver_sql("BEGIN IMMEDIATE")
            yield conn

    @contextmanager
    def _errors(self, operation: str, **context: Any) -> Iterator[None]:
        """Turn driver and SQLAlchemy failures into ``StoreError`` with context."""
        try:
            yield
        except StoreError:
            raise
        except DBAPIError as exc:
            detail = str(exc.orig).strip() or type(exc.orig).__name__
            raise StoreError(f"{operation} failed: {detail}", **context) from exc
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"{operation} failed: {exc}", **context) from exc

    def _insert_ignore(self, table: Table, *key: str) -> Executable:
        """``INSERT ... ON CONFLICT (key) DO NOTHING`` in this backend's dialect."""
        if self._sqlite:
            return sqlite_insert(table).on_conflict_do_nothing(index_elements=list(key))
        return pg_insert(table).on_conflict_do_nothing(index_elements=list(key))

    def _upsert(
        self, table: Table, key: Sequence[str], row: dict[str, Any], keep: Sequence[str] = ()
    ) -> Executable:
        """``INSERT ... ON CONFLICT (key) DO UPDATE`` of ``row``'s columns but ``key``/``keep``."""
        columns = [c for c in row if c not in key and c not in keep]
        if self._sqlite:
            lite = sqlite_insert(table)
            return lite.on_conflict_do_update(
                index_elements=list(key), set_={c: lite.excluded[c] for c in columns}
            )
        pg = pg_insert(table)
        return pg.on_conflict_do_update(
            index_elements=list(key), set_={c: pg.excluded[c] for c in columns}
        )
