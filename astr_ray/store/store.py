"""``Store``: the async persistence layer (SQLAlchemy 2 Core on SQLite or PostgreSQL).

Every public method is one short transaction and either completes or leaves the database
as it was. Conversations grow by appending message rows; a row is never rewritten.

Write transactions on SQLite start with ``BEGIN IMMEDIATE``: the write lock is taken up
front (waiting up to ``busy_timeout``), so a transaction that reads and then writes can never
fail half-way with ``SQLITE_BUSY`` when several processes share the file. Reads take no lock
(WAL). On PostgreSQL the default READ COMMITTED isolation is used, with row locks where a
read decides a write.

Errors: database failures raise ``StoreError`` (the driver's message plus context); an
already committed platform event raises ``DuplicateEventError``.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from alembic.util.exc import CommandError
from sqlalchemy import URL, Table, bindparam, event, func, make_url, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import (
    ArgumentError,
    DataError,
    DBAPIError,
    IntegrityError,
    SQLAlchemyError,
    StatementError,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql import Executable

from astr_ray.errors import DuplicateEventError, StoreError
from astr_ray.store import migrate as _migrate
from astr_ray.store.records import (
    Activation,
    ActorEvent,
    ConversationInfo,
    SessionState,
    StoredMessage,
    TurnRecord,
)
from astr_ray.store.tables import (
    actor_events,
    conversations,
    messages,
    processed_events,
    sessions,
)

__all__ = ["Store"]

# The columns of a StoredMessage, in its field order.
_MESSAGE_COLUMNS = (
    messages.c.seq,
    messages.c.role,
    messages.c.content,
    messages.c.extra,
    messages.c.event_id,
    messages.c.created_at,
)

# busy_timeout first: switching to WAL needs a lock, and another process may hold it.
_SQLITE_PRAGMAS = (
    "PRAGMA busy_timeout=10000",
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
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


_now = _Clock()


class _BatchRejected(Exception):
    """Internal: the group commit cannot go through as one transaction."""


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


class Store:
    """Sessions, conversations, messages and idempotency records in one database.

    Create with ``await Store.open(url)``, bring the schema up with ``await store.migrate()``
    and release with ``await store.close()`` (or ``async with``). Safe to share between the
    tasks of one event loop, and between processes opening the same database.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._sqlite = engine.dialect.name == "sqlite"

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

    @property
    def engine(self) -> AsyncEngine:
        """The underlying engine (for migrations and diagnostics; not a stable API)."""
        return self._engine

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

    # -- sessions and conversations ------------------------------------------------------

    async def ensure_session(self, session_key: str) -> SessionState:
        """Return the session, creating it and a first (current) conversation if missing.

        Atomic and safe under concurrency: any number of callers, in any processes, racing
        on one key end with one session row and one current conversation, and all of them
        get that conversation.
        """
        with self._errors("ensure_session", session_key=session_key):
            async with self._engine.connect() as conn:
                current = await conn.scalar(
                    select(sessions.c.current_conversation_id).where(
                        sessions.c.session_key == session_key
                    )
                )
            if current is not None:
                return SessionState(session_key, current)
            async with self._write() as conn:
                now = _now()
                await self._insert_session(conn, session_key, now)
                current = await conn.scalar(
                    select(sessions.c.current_conversation_id)
                    .where(sessions.c.session_key == session_key)
                    .with_for_update()
                )
                if current is None:
                    current = await self._create_conversation(conn, session_key, None, None, now)
                return SessionState(session_key, current)

    async def new_conversation(
        self, session_key: str, title: str | None = None, persona: str | None = None
    ) -> str:
        """Create a conversation and make it the session's current one; return its id.

        Creates the session row if needed. Atomic; not idempotent (each call is a new one).
        """
        with self._errors("new_conversation", session_key=session_key):
            async with self._write() as conn:
                now = _now()
                await self._insert_session(conn, session_key, now)
                return await self._create_conversation(conn, session_key, title, persona, now)

    async def list_conversations(self, session_key: str) -> list[ConversationInfo]:
        """The session's conversations, newest (by creation) first, with message counts.

        Empty for an unknown session. One statement, so counts and ``is_current`` agree.
        """
        count = (
            select(func.count())
            .select_from(messages)
            .where(messages.c.conversation_id == conversations.c.id)
            .scalar_subquery()
        )
        current = (
            select(sessions.c.current_conversation_id)
            .where(sessions.c.session_key == session_key)
            .scalar_subquery()
        )
        stmt = (
            select(
                conversations.c.id,
                conversations.c.title,
                conversations.c.persona,
                conversations.c.created_at,
                conversations.c.updated_at,
                count.label("message_count"),
                current.label("current_id"),
            )
            .where(conversations.c.session_key == session_key)
            .order_by(conversations.c.created_at.desc(), conversations.c.id.desc())
        )
        with self._errors("list_conversations", session_key=session_key):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(stmt)).all()
        return [
            ConversationInfo(
                id=r.id,
                title=r.title,
                persona=r.persona,
                created_at=r.created_at,
                updated_at=r.updated_at,
                message_count=r.message_count,
                is_current=r.id == r.current_id,
            )
            for r in rows
        ]

    # -- messages ----------------------------------------------------------------------

    async def load_history(
        self, conversation_id: str, limit: int | None = None
    ) -> list[StoredMessage]:
        """The last ``limit`` messages (all if ``None``), in ascending ``seq`` order."""
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        if limit == 0:
            return []
        stmt = select(*_MESSAGE_COLUMNS).where(messages.c.conversation_id == conversation_id)
        if limit is None:
            stmt = stmt.order_by(messages.c.seq)
        else:
            stmt = stmt.order_by(messages.c.seq.desc()).limit(limit)
        with self._errors("load_history", conversation_id=conversation_id):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(stmt)).all()
        history = [StoredMessage(*row) for row in rows]
        if limit is not None:
            history.reverse()
        return history

    async def count_messages(self, conversation_id: str) -> int:
        """How many messages the conversation holds (0 if it does not exist)."""
        stmt = (
            select(func.count())
            .select_from(messages)
            .where(messages.c.conversation_id == conversation_id)
        )
        with self._errors("count_messages", conversation_id=conversation_id):
            async with self._engine.connect() as conn:
                return int(await conn.scalar(stmt) or 0)

    async def clear_conversation(self, conversation_id: str) -> int:
        """Delete all messages of the conversation; return how many were deleted.

        The conversation itself stays (and stays current). Afterwards it is empty, so the
        caller restarts its ``next_seq`` at 0. Idempotent: a second call returns 0.
        """
        with self._errors("clear_conversation", conversation_id=conversation_id):
            async with self._write() as conn:
                result = await conn.execute(
                    messages.delete().where(messages.c.conversation_id == conversation_id)
                )
                await conn.execute(
                    update(conversations)
                    .where(conversations.c.id == conversation_id)
                    .values(updated_at=_now())
                )
                return result.rowcount

    # -- turns ------------------------------------------------------------------------

    async def commit_turn(self, turn: TurnRecord) -> None:
        """Commit one turn atomically: its idempotency record, messages and timestamp.

        In one transaction: the ``processed_events`` row (when ``turn.event_id`` is set),
        the messages with seq ``next_seq, next_seq + 1, ...``, and the conversation's
        ``updated_at``. All or nothing:

        * ``DuplicateEventError`` if the event was already committed (a retry or a second
          delivery); nothing is written and ``get_processed`` returns the stored reply.
        * ``StoreError`` if a seq is already taken (the caller's ``next_seq`` is stale) or
          the conversation does not exist; nothing is written.
        """
        _check_turn(turn)
        with self._errors(
            "commit_turn",
            session_key=turn.session_key,
            conversation_id=turn.conversation_id,
            event_id=turn.event_id,
        ):
            async with self._write() as conn:
                await self._apply_turn(conn, turn)

    async def commit_turns(self, turns: Sequence[TurnRecord]) -> list[BaseException | None]:
        """Group commit: commit many turns in as few transactions as possible.

        Returns one entry per turn, in order: ``None`` if it committed, else the exception
        ``commit_turn`` would have raised (``DuplicateEventError``, ``StoreError``,
        ``ValueError``). Never raises for a turn's failure: one bad turn does not fail the
        others. All turns normally go in one transaction; if that transaction is refused
        because of the data (a duplicate event, a stale seq, an unknown conversation), it
        is rolled back and the turns are committed one by one, in order. If the database
        itself fails, every turn gets that ``StoreError``.
        """
        results: list[BaseException | None] = [None] * len(turns)
        pending: list[int] = []
        for i, turn in enumerate(turns):
            try:
                _check_turn(turn)
            except ValueError as exc:
                results[i] = exc
            else:
                pending.append(i)
        if len(pending) > 1:
            try:
                with self._errors("commit_turns", turns=len(pending)):
                    async with self._write() as conn:
                        await self._apply_batch(conn, [turns[i] for i in pending])
                return results
            except _BatchRejected:
                pass
            except StoreError as exc:
                if not _caused_by_data(exc):
                    for i in pending:
                        results[i] = exc
                    return results
        for i in pending:
            try:
                await self.commit_turn(turns[i])
            except StoreError as exc:
                results[i] = exc
        return results

    async def get_processed(self, session_key: str, event_id: str) -> dict[str, Any] | None:
        """The reply stored for a committed event, or ``None`` if it was never committed."""
        stmt = select(processed_events.c.reply).where(
            processed_events.c.session_key == session_key,
            processed_events.c.event_id == event_id,
        )
        with self._errors("get_processed", session_key=session_key, event_id=event_id):
            async with self._engine.connect() as conn:
                reply: dict[str, Any] | None = await conn.scalar(stmt)
                return reply

    async def recent_processed(
        self, session_key: str, limit: int = 256
    ) -> dict[str, dict[str, Any]]:
        """``event_id -> reply`` for the session's ``limit`` most recent committed events.

        The dict is in commit order, oldest first (ready to fill an LRU filter).
        """
        stmt = (
            select(processed_events.c.event_id, processed_events.c.reply)
            .where(processed_events.c.session_key == session_key)
            .order_by(processed_events.c.created_at.desc())
            .limit(limit)
        )
        with self._errors("recent_processed", session_key=session_key):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(stmt)).all()
        return {event_id: reply for event_id, reply in reversed(rows)}

    async def activate_many(
        self, session_keys: Sequence[str], history_limit: int, recent_limit: int = 256
    ) -> dict[str, Activation]:
        """Bring many sessions to life at once: what ``ensure_session`` + ``load_history``
        + ``recent_processed`` give for one, for all of ``session_keys``.

        Costs one read of the session rows, one write transaction only if some are new
        (creating each new session and its first conversation, with the same concurrency
        guarantee as ``ensure_session``), and one windowed query each for history (the
        last ``history_limit`` messages, ascending) and recent event ids (oldest first).
        Hosts call it for the sessions activated together, so a burst of first messages
        does not take the write lock once per session.
        """
        keys = list(dict.fromkeys(session_keys))
        if not keys:
            return {}
        with self._errors("activate_many", sessions=len(keys)):
            stmt = select(sessions.c.session_key, sessions.c.current_conversation_id).where(
                sessions.c.session_key.in_(keys)
            )
            async with self._engine.connect() as conn:
                current: dict[str, str | None] = {key: cid for key, cid in await conn.execute(stmt)}
            fresh = [k for k in keys if current.get(k) is None]
            if fresh:
                await self._create_sessions(fresh, current)
            known = [k for k in keys if k not in fresh]
            history: dict[str, list[StoredMessage]] = {}
            recent: dict[str, dict[str, dict[str, Any]]] = {}
            if known:
                async with self._engine.connect() as conn:
                    cids = [cid for k in known if (cid := current[k]) is not None]
                    history = await self._histories(conn, cids, history_limit)
                    recent = await self._recents(conn, known, recent_limit)
        out: dict[str, Activation] = {}
        for k in keys:
            cid = current[k]
            assert cid is not None
            out[k] = Activation(k, cid, history.get(cid, []), recent.get(k, {}))
        return out

    async def _create_sessions(self, keys: list[str], current: dict[str, str | None]) -> None:
        # Every writer takes the row locks in key order: two hosts activating overlapping
        # sets of new sessions at once must not deadlock on PostgreSQL.
        keys = sorted(keys)
        async with self._write() as conn:
            now = _now()
            await conn.execute(
                self._insert_ignore(sessions, "session_key"),
                [
                    {
                        "session_key": k,
                        "current_conversation_id": None,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for k in keys
                ],
            )
            stmt = (
                select(sessions.c.session_key, sessions.c.current_conversation_id)
                .where(sessions.c.session_key.in_(keys))
                .order_by(sessions.c.session_key)
            )
            if not self._sqlite:
                stmt = stmt.with_for_update()
            rows = (await conn.execute(stmt)).all()
            created = []
            for key, cid in rows:
                if cid is None:
                    cid = str(uuid.uuid4())
                    created.append((key, cid))
                current[key] = cid
            if created:
                await conn.execute(
                    conversations.insert(),
                    [
                        {
                            "id": cid,
                            "session_key": key,
                            "title": None,
                            "persona": None,
                            "created_at": now,
                            "updated_at": now,
                        }
                        for key, cid in created
                    ],
                )
                await conn.execute(
                    update(sessions)
                    .where(sessions.c.session_key == bindparam("b_key"))
                    .values(current_conversation_id=bindparam("b_cid"), updated_at=now),
                    [{"b_key": key, "b_cid": cid} for key, cid in created],
                )

    async def _histories(
        self, conn: AsyncConnection, conversation_ids: list[str], limit: int
    ) -> dict[str, list[StoredMessage]]:
        rank = (
            func.row_number()
            .over(partition_by=messages.c.conversation_id, order_by=messages.c.seq.desc())
            .label("rank")
        )
        inner = (
            select(messages.c.conversation_id, *_MESSAGE_COLUMNS, rank)
            .where(messages.c.conversation_id.in_(conversation_ids))
            .subquery()
        )
        stmt = (
            select(inner)
            .where(inner.c.rank <= limit)
            .order_by(inner.c.conversation_id, inner.c.seq)
        )
        out: dict[str, list[StoredMessage]] = {}
        for row in await conn.execute(stmt):
            out.setdefault(row[0], []).append(StoredMessage(*row[1:7]))
        return out

    async def _recents(
        self, conn: AsyncConnection, keys: list[str], limit: int
    ) -> dict[str, dict[str, dict[str, Any]]]:
        pe = processed_events
        rank = (
            func.row_number()
            .over(partition_by=pe.c.session_key, order_by=pe.c.created_at.desc())
            .label("rank")
        )
        inner = (
            select(pe.c.session_key, pe.c.event_id, pe.c.reply, pe.c.created_at, rank)
            .where(pe.c.session_key.in_(keys))
            .subquery()
        )
        stmt = (
            select(inner.c.session_key, inner.c.event_id, inner.c.reply)
            .where(inner.c.rank <= limit)
            .order_by(inner.c.session_key, inner.c.created_at)
        )
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for key, event_id, reply in await conn.execute(stmt):
            out.setdefault(key, {})[event_id] = reply
        return out

    # -- actor events ------------------------------------------------------------------

    async def record_actor_event(
        self, actor: str, kind: str, reason: str, pid: int | None = None
    ) -> None:
        """Append an actor lifecycle event (never updated or merged)."""
        row = {"actor": actor, "kind": kind, "reason": reason, "pid": pid, "created_at": _now()}
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

    # -- internals ---------------------------------------------------------------------

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

    async def _insert_session(self, conn: AsyncConnection, session_key: str, now: float) -> None:
        row = {
            "session_key": session_key,
            "current_conversation_id": None,
            "created_at": now,
            "updated_at": now,
        }
        await conn.execute(self._insert_ignore(sessions, "session_key"), row)

    async def _create_conversation(
        self,
        conn: AsyncConnection,
        session_key: str,
        title: str | None,
        persona: str | None,
        now: float,
    ) -> str:
        conversation_id = str(uuid.uuid4())
        await conn.execute(
            conversations.insert(),
            {
                "id": conversation_id,
                "session_key": session_key,
                "title": title,
                "persona": persona,
                "created_at": now,
                "updated_at": now,
            },
        )
        await conn.execute(
            update(sessions)
            .where(sessions.c.session_key == session_key)
            .values(current_conversation_id=conversation_id, updated_at=now)
        )
        return conversation_id

    async def _apply_turn(self, conn: AsyncConnection, turn: TurnRecord) -> None:
        now = _now()
        context = {
            "session_key": turn.session_key,
            "conversation_id": turn.conversation_id,
            "event_id": turn.event_id,
        }
        if turn.event_id is not None:
            result = await conn.execute(
                self._insert_ignore(processed_events, "session_key", "event_id"),
                _processed_row(turn, now),
            )
            if result.rowcount == 0:
                raise DuplicateEventError(
                    "event already committed", session_key=turn.session_key, event_id=turn.event_id
                )
        # Before the messages: an unknown conversation is reported as such, and on
        # PostgreSQL the row lock orders concurrent commits to one conversation.
        result = await conn.execute(
            update(conversations)
            .where(conversations.c.id == turn.conversation_id)
            .values(updated_at=now)
        )
        if result.rowcount == 0:
            raise StoreError("unknown conversation", **context)
        if turn.messages:
            try:
                await conn.execute(messages.insert(), _message_rows(turn, now))
            except IntegrityError as exc:
                raise StoreError(
                    "message seq already taken: the caller's next_seq is stale",
                    next_seq=turn.next_seq,
                    **context,
                ) from exc

    async def _apply_batch(self, conn: AsyncConnection, turns: Sequence[TurnRecord]) -> None:
        now = _now()
        processed = [_processed_row(t, now) for t in turns if t.event_id is not None]
        if processed:
            await conn.execute(processed_events.insert(), processed)
        conversation_ids = {t.conversation_id for t in turns}
        result = await conn.execute(
            update(conversations)
            .where(conversations.c.id.in_(conversation_ids))
            .values(updated_at=now)
        )
        if result.rowcount != len(conversation_ids):
            raise _BatchRejected
        rows = [row for t in turns for row in _message_rows(t, now)]
        if rows:
            await conn.execute(messages.insert(), rows)


def _caused_by_data(exc: StoreError) -> bool:
    """Whether the rows were refused (so committing turns one by one may help)."""
    cause = exc.__cause__
    if isinstance(cause, IntegrityError | DataError):
        return True
    # A StatementError that is not a DBAPIError: a parameter failed to bind (e.g. JSON).
    return isinstance(cause, StatementError) and not isinstance(cause, DBAPIError)


def _check_turn(turn: TurnRecord) -> None:
    if turn.event_id is not None and turn.reply is None:
        raise ValueError(f"turn for event {turn.event_id!r} has no reply to record")
    if turn.next_seq < 0:
        raise ValueError(f"next_seq must be >= 0, got {turn.next_seq}")


def _processed_row(turn: TurnRecord, now: float) -> dict[str, Any]:
    return {
        "session_key": turn.session_key,
        "event_id": turn.event_id,
        "reply": turn.reply,
        "created_at": now,
    }


def _message_rows(turn: TurnRecord, now: float) -> list[dict[str, Any]]:
    return [
        {
            "conversation_id": turn.conversation_id,
            "seq": turn.next_seq + i,
            "role": m.role,
            "content": m.content,
            "extra": m.extra,
            "event_id": turn.event_id,
            "created_at": now,
        }
        for i, m in enumerate(turn.messages)
    ]
