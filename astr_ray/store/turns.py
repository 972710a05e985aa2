"""``TurnsMixin``: committing turns and reading the message history back.

A turn is one transaction: its ``processed_events`` idempotency record (when it answers a
platform event), its messages (appended at ``next_seq``, never rewritten) and the
conversation's ``updated_at``. ``commit_turns`` groups many turns into one transaction and
falls back to one by one when the data refuses the group. Also here: ``load_history``,
``count_messages``, ``clear_conversation`` and the reads of processed events.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncConnection

from astr_ray.errors import DuplicateEventError, StoreError
from astr_ray.store.base import MESSAGE_COLUMNS, StoreBase, clock
from astr_ray.store.records import StoredMessage, TurnRecord
from astr_ray.store.tables import conversations, messages, processed_events

__all__ = ["TurnsMixin"]


class _BatchRejected(Exception):
    """Internal: the group commit cannot go through as one transaction."""


class TurnsMixin(StoreBase):
    """``Store`` methods for messages, turns and processed events."""

    # -- messages ----------------------------------------------------------------------

    async def load_history(
        self, conversation_id: str, limit: int | None = None
    ) -> list[StoredMessage]:
        """The last ``limit`` messages (all if ``None``), in ascending ``seq`` order."""
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        if limit == 0:
            return []
        stmt = select(*MESSAGE_COLUMNS).where(messages.c.conversation_id == conversation_id)
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
                    .values(updated_at=clock())
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

    async def _apply_turn(self, conn: AsyncConnection, turn: TurnRecord) -> None:
        now = clock()
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
        now = clock()
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
