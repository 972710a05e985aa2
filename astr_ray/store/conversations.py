"""``ConversationsMixin``: sessions and their conversations.

A session row points at its current conversation; a session always has one once it
exists. Here: creating sessions and conversations, listing, switching, renaming and
deleting conversations, and setting a conversation's persona. Writes that check a
conversation's owner lock the session row first (``_check_owner``).
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from astr_ray.errors import StoreError
from astr_ray.store.base import StoreBase, check_length, clock
from astr_ray.store.records import ConversationInfo, SessionState
from astr_ray.store.tables import conversations, messages, sessions

__all__ = ["ConversationsMixin"]


class ConversationsMixin(StoreBase):
    """``Store`` methods for sessions and conversations."""

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
                now = clock()
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
                now = clock()
                await self._insert_session(conn, session_key, now)
                return await self._create_conversation(conn, session_key, title, persona, now)

    async def list_conversations(self, session_key: str) -> list[ConversationInfo]:
        """The session's conversations, newest (by creation) first, with message counts.

        Empty for an unknown session. One statement, so counts and ``is_current`` agree.
        """
        stmt = (
            _conversation_info_select()
            .where(conversations.c.session_key == session_key)
            .order_by(conversations.c.created_at.desc(), conversations.c.id.desc())
        )
        with self._errors("list_conversations", session_key=session_key):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(stmt)).all()
        return [_conversation_info(r) for r in rows]

    async def get_conversation(self, conversation_id: str) -> ConversationInfo | None:
        """One conversation (``is_current`` against its own session), ``None`` if unknown."""
        stmt = _conversation_info_select().where(conversations.c.id == conversation_id)
        with self._errors("get_conversation", conversation_id=conversation_id):
            async with self._engine.connect() as conn:
                row = (await conn.execute(stmt)).first()
        return None if row is None else _conversation_info(row)

    async def switch_conversation(self, session_key: str, conversation_id: str) -> None:
        """Make the conversation the session's current one. Idempotent.

        ``StoreError`` if the conversation does not exist or belongs to another session.
        A session host holding the session keeps its own idea of the current conversation
        until it re-reads it; telling it is the caller's job.
        """
        context = {"session_key": session_key, "conversation_id": conversation_id}
        with self._errors("switch_conversation", **context):
            async with self._write() as conn:
                await self._check_owner(conn, session_key, conversation_id)
                await conn.execute(
                    update(sessions)
                    .where(sessions.c.session_key == session_key)
                    .values(current_conversation_id=conversation_id, updated_at=clock())
                )

    async def rename_conversation(self, session_key: str, conversation_id: str, title: str) -> None:
        """Set the conversation's title (at most 255 characters). Idempotent.

        ``StoreError`` if the title is too long, or the conversation does not exist or
        belongs to another session. ``updated_at`` is left alone (it tracks the messages).
        """
        context = {"session_key": session_key, "conversation_id": conversation_id}
        check_length("title", title, 255, **context)
        with self._errors("rename_conversation", **context):
            async with self._write() as conn:
                await self._check_owner(conn, session_key, conversation_id)
                await conn.execute(
                    update(conversations)
                    .where(conversations.c.id == conversation_id)
                    .values(title=title)
                )

    async def delete_conversation(self, session_key: str, conversation_id: str) -> str:
        """Delete the conversation and its messages; return the session's current one after.

        If it was the current conversation, the session moves to its most recently updated
        remaining conversation, or to a new empty one if none is left: a session always has
        a current conversation. Atomic. ``StoreError`` if the conversation does not exist
        (so a repeated call fails) or belongs to another session.
        """
        context = {"session_key": session_key, "conversation_id": conversation_id}
        with self._errors("delete_conversation", **context):
            async with self._write() as conn:
                current = await self._check_owner(conn, session_key, conversation_id)
                await conn.execute(
                    messages.delete().where(messages.c.conversation_id == conversation_id)
                )
                await conn.execute(
                    conversations.delete().where(conversations.c.id == conversation_id)
                )
                if current is not None and current != conversation_id:
                    return current
                now = clock()
                successor = await conn.scalar(
                    select(conversations.c.id)
                    .where(conversations.c.session_key == session_key)
                    .order_by(conversations.c.updated_at.desc(), conversations.c.id.desc())
                    .limit(1)
                )
                if successor is None:
                    return await self._create_conversation(conn, session_key, None, None, now)
                await conn.execute(
                    update(sessions)
                    .where(sessions.c.session_key == session_key)
                    .values(current_conversation_id=successor, updated_at=now)
                )
                return str(successor)

    async def set_conversation_persona(self, conversation_id: str, persona: str | None) -> None:
        """Set (``None``: clear) the persona name of the conversation. Idempotent.

        The name is not checked against ``personas``: a persona may also come from the
        config. ``StoreError`` if the conversation does not exist or the name is longer
        than 128 characters.
        """
        context = {"conversation_id": conversation_id, "persona": persona}
        if persona is not None:
            check_length("persona name", persona, 128, **context)
        with self._errors("set_conversation_persona", **context):
            async with self._write() as conn:
                result = await conn.execute(
                    update(conversations)
                    .where(conversations.c.id == conversation_id)
                    .values(persona=persona)
                )
                if result.rowcount == 0:
                    raise StoreError("unknown conversation", **context)

    async def _check_owner(
        self, conn: AsyncConnection, session_key: str, conversation_id: str
    ) -> str | None:
        """Lock the session row, check that the conversation is the session's; return the
        session's current conversation id.

        Every write that checks ownership locks the session row first, so it and
        ``delete_conversation`` serialize per session and take their locks in one order.
        """
        lock = select(sessions.c.current_conversation_id).where(
            sessions.c.session_key == session_key
        )
        if not self._sqlite:
            lock = lock.with_for_update()
        current: str | None = await conn.scalar(lock)
        owner = await conn.scalar(
            select(conversations.c.session_key).where(conversations.c.id == conversation_id)
        )
        context = {"session_key": session_key, "conversation_id": conversation_id}
        if owner is None:
            raise StoreError("unknown conversation", **context)
        if owner != session_key:
            raise StoreError("the conversation belongs to another session", **context)
        return current

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


# ``Any``: ``Select``'s type parameters differ between SQLAlchemy 2.0 and 2.1.
def _conversation_info_select() -> Any:
    """``ConversationInfo`` columns of ``conversations``, ``is_current`` against its session."""
    count = (
        select(func.count())
        .select_from(messages)
        .where(messages.c.conversation_id == conversations.c.id)
        .scalar_subquery()
    )
    current = (
        select(sessions.c.current_conversation_id)
        .where(sessions.c.session_key == conversations.c.session_key)
        .scalar_subquery()
    )
    return select(
        conversations.c.id,
        conversations.c.title,
        conversations.c.persona,
        conversations.c.created_at,
        conversations.c.updated_at,
        count.label("message_count"),
        current.label("current_id"),
    )


def _conversation_info(row: Any) -> ConversationInfo:
    return ConversationInfo(
        id=row.id,
        title=row.title,
        persona=row.persona,
        created_at=row.created_at,
        updated_at=row.updated_at,
        message_count=row.message_count,
        is_current=row.id == row.current_id,
    )
