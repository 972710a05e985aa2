"""``Store``: the async persistence layer (SQLAlchemy 2 Core on SQLite or PostgreSQL).

Every public method is one short transaction and either completes or leaves the database
as it was. Conversations grow by appending message rows; a row is never rewritten.

Write transactions on SQLite start with ``BEGIN IMMEDIATE``: the write lock is taken up
front (waiting up to ``busy_timeout``), so a transaction that reads and then writes can never
fail half-way with ``SQLITE_BUSY`` when several processes share the file. Reads take no lock
(WAL). On PostgreSQL the default READ COMMITTED isolation is used, with row locks where a
read decides a write.

Errors: database failures raise ``StoreError`` (the driver's message plus context); so do
refused writes (a name or value over its limit, a conversation of another session); an
already committed platform event raises ``DuplicateEventError``.

``Store`` is put together from one mixin per group of methods, over the shared helpers::

    base.StoreBase            engine, write transaction, error mapping, upserts, clock
    ├── conversations         sessions and their conversations
    ├── turns                 committing turns, message history, processed events
    ├── activation            activate_many: many sessions brought to life at once
    ├── settings              settings, plugin key-value pairs, personas
    └── knowledge             knowledge bases, their documents, chunks and vectors
    store.Store               opening, closing, migrating; the actor event log
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from alembic.util.exc import CommandError
from sqlalchemy import URL, event, make_url, select
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import StaticPool

from astr_ray.errors import StoreError
from astr_ray.store import migrate as _migrate
from astr_ray.store.activation import ActivationMixin
from astr_ray.store.base import clock
from astr_ray.store.browse import BrowseMixin
from astr_ray.store.conversations import ConversationsMixin
from astr_ray.store.knowledge import KnowledgeMixin
from astr_ray.store.records import ActorEvent
from astr_ray.store.settings import KV_VALUE_LIMIT, SettingsMixin
from astr_ray.store.tables import actor_events
from astr_ray.store.turns import TurnsMixin

__all__ = ["KV_VALUE_LIMIT", "Store"]

# busy_timeout first: switching to WAL needs a lock, and another process may hold it.
_SQLITE_PRAGMAS = (
    "PRAGMA busy_timeout=10000",
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
)


def _normalize_url(url: str) -> URL:
    """Parse ``url``, giving bare backends their async driver; a plain path means SQLite."""
    if "://" not in url:
        return URL.create("sqlite+aiosqlite", database=os.path.expanduser(url))
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StoreError("invalid database URL", error=str(exc)) from exc
    drivers = {
        "sqlite": "sqlite+aiosqlite",
        "sqlite+aiosqlite": "sqlite+aiosqlite",
        "postgres": "postgresql+asyncpg",
        "postgresql": "postgresql+asyncpg",
        "postgresql+asyncpg": "postgresql+asyncpg",
    }
    driver = drivers.get(parsed.drivername)
    if driver is None:
        raise StoreError(
            "unsupported database URL: use sqlite+aiosqlite:// or postgresql+asyncpg://",
            url=parsed.render_as_string(hide_password=True),
        )
    return parsed.set(drivername=driver)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        for pragma in _SQLITE_PRAGMAS:
            cursor.execute(pragma)
    finally:
        cursor.close()


def _is_memory(database: str | None) -> bool:
    return not database or database == ":memory:" or database.startswith("file::memory:")


def _mkdir_parent(database: str) -> None:
    Path(database).parent.mkdir(parents=True, exist_ok=True)


class Store(  # BrowseMixin first: it builds on ConversationsMixin
    BrowseMixin, ConversationsMixin, TurnsMixin, ActivationMixin, SettingsMixin, KnowledgeMixin
):
    """Sessions, conversations, messages, idempotency records, settings, plugin key-value
    pairs and personas in one database.

    Create with ``await Store.open(url)``, bring the schema up with ``await store.migrate()``
    and release with ``await store.close()`` (or ``async with``). Safe to share between the
    tasks of one event loop, and between processes opening the same database.
    """

    # -- lifecycle ---------------------------------------------------------------------

    @classmethod
    async def open(cls, url: str) -> Store:
        """Create the engine for ``url``; no connection is made until the first call.

        Accepts ``sqlite+aiosqlite:///path.db``, ``postgresql+asyncpg://user@host/db``, the
        same without a driver, or a plain filesystem path (a SQLite file). A SQLite file's
        parent directory is created; every SQLite connection runs WAL with
        ``synchronous=NORMAL``, ``busy_timeout=10000`` and foreign keys on.
        """
        parsed = _normalize_url(url)
        if parsed.get_backend_name() == "sqlite":
            if _is_memory(parsed.database):
                # One shared connection, or every pooled connection would see its own DB.
                engine = create_async_engine(parsed, poolclass=StaticPool)
            else:
                assert parsed.database is not None
                try:
                    await asyncio.to_thread(_mkdir_parent, parsed.database)
                except OSError as exc:
                    raise StoreError(
                        "cannot create the database directory", path=parsed.database
                    ) from exc
                engine = create_async_engine(parsed)
            event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
        else:
            engine = create_async_engine(parsed, pool_size=5, max_overflow=5, pool_pre_ping=True)
        return cls(engine)

    async def close(self) -> None:
        """Dispose of the engine and its pooled connections. Idempotent."""
        await self._engine.dispose()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"Store({self._engine.url.render_as_string(hide_password=True)!r})"

    async def migrate(self) -> None:
        """Upgrade the schema to the newest migration, in one transaction.

        Idempotent: a second call (from this or another process) is a no-op.
        """
        with self._errors("migrate"):
            try:
                await _migrate.upgrade(self._engine)
            except CommandError as exc:
                raise StoreError("migration failed", error=str(exc)) from exc

    async def schema_version(self) -> str | None:
        """The alembic revision the database is at; ``None`` before ``migrate``."""
        with self._errors("schema_version"):
            return await _migrate.current_revision(self._engine)

    # -- actor events ------------------------------------------------------------------

    async def record_actor_event(
        self, actor: str, kind: str, reason: str, pid: int | None = None
    ) -> None:
        """Append an actor lifecycle event (never updated or merged)."""
        row = {"actor": actor, "kind": kind, "reason": reason, "pid": pid, "created_at": clock()}
        with self._errors("record_actor_event", actor=actor, kind=kind):
            async with self._write() as conn:
                await conn.execute(actor_events.insert(), row)

    async def list_actor_events(
        self, limit: int = 100, actor: str | None = None
    ) -> list[ActorEvent]:
        """The ``limit`` newest actor events (of ``actor`` only, if given), newest first."""
        stmt = select(
            actor_events.c.actor,
            actor_events.c.kind,
            actor_events.c.reason,
            actor_events.c.pid,
            actor_events.c.created_at,
        )
        if actor is not None:
            stmt = stmt.where(actor_events.c.actor == actor)
        stmt = stmt.order_by(actor_events.c.created_at.desc(), actor_events.c.id.desc())
        with self._errors("list_actor_events", actor=actor):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(stmt.limit(limit))).all()
        return [ActorEvent(*row) for row in rows]
