"""``BrowseMixin``: reading conversations the way the dashboard browses them.

Listing sessions with their counts (paged), searching message text, reading one
conversation, and deleting a conversation by its id alone. Reads are one connection each
and take no locks; the delete is ``delete_conversation``'s transaction.

A session's ``last_active`` is the later of its own ``updated_at`` and its conversations'
``updated_at``. A commit stamps its conversation with the time it stamps its messages
with, so this is the time of the session's last message, or of the last change to its
conversations (created, switched, cleared) when that came later. Sorting on it needs no
scan of the messages table; message counts are then taken for one page only.

Message search is a case-insensitive substring match (``%`` and ``_`` in the query are
literal). It scans the messages table: there is no full-text index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, func, select

from astr_ray.errors import StoreError
from astr_ray.store.base import MESSAGE_COLUMNS
from astr_ray.store.conversations import ConversationsMixin
from astr_ray.store.records import StoredMessage
from astr_ray.store.tables import conversations, messages, sessions

__all__ = ["BrowseMixin", "MessageHit", "SessionSummary"]


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """A session as ``list_sessions`` gives it; the field names are the API's.

    ``platform``, ``chat_type`` and ``chat_id`` are the parts of ``key``
    (``<platform>:<chat_type>:<chat_id>``); a part a key lacks is ``""``.
    """

    key: str
    platform: str
    chat_type: str
    chat_id: str
    conversations: int
    messages: int
    last_active: float


@dataclass(frozen=True, slots=True)
class MessageHit:
    """A message that matched ``search_messages``; the field names are the API's.

    ``session`` is the session key, ``time`` the message's ``created_at``.
    """

    session: str
    conversation_id: str
    seq: int
    role: str
    content: str
    time: float


class BrowseMixin(ConversationsMixin):
    """``Store`` methods for the dashboard's conversation browser."""

    async def list_sessions(
        self,
        q: str | None = None,
        platform: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[SessionSummary], int]:
        """One page of sessions, most recently active first, and how many match in all.

        ``q`` keeps the keys that contain it (case-insensitive), ``platform`` the keys of
        that platform id. Ties in ``last_active`` are ordered by key, so pages are stable.
        """
        _check_page(limit, offset)
        where = []
        if q:
            where.append(sessions.c.session_key.icontains(q, autoescape=True))
        if platform:
            where.append(sessions.c.session_key.startswith(f"{platform}:", autoescape=True))
        per_session = (
            select(
                conversations.c.session_key,
                func.count().label("n"),
                func.max(conversations.c.updated_at).label("last"),
            )
            .group_by(conversations.c.session_key)
            .subquery()
        )
        last_active = case(
            (per_session.c.last > sessions.c.updated_at, per_session.c.last),
            else_=sessions.c.updated_at,
        ).label("last_active")
        page = (
            select(
                sessions.c.session_key,
                func.coalesce(per_session.c.n, 0).label("n"),
                last_active,
            )
            .select_from(
                sessions.outerjoin(per_session, per_session.c.session_key == sessions.c.session_key)
            )
            .where(*where)
            .order_by(last_active.desc(), sessions.c.session_key)
            .limit(limit)
            .offset(offset)
        )
        total = select(func.count()).select_from(sessions).where(*where)
        with self._errors("list_sessions", q=q, platform=platform):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(page)).all()
                count = int(await conn.scalar(total) or 0)
                keys = [row.session_key for row in rows]
                message_counts: dict[str, int] = {}
                if keys:
                    per_key = (
                        select(conversations.c.session_key, func.count(messages.c.id))
                        .select_from(
                            conversations.join(
                                messages, messages.c.conversation_id == conversations.c.id
                            )
                        )
                        .where(conversations.c.session_key.in_(keys))
                        .group_by(conversations.c.session_key)
                    )
                    message_counts = {k: int(n) for k, n in (await conn.execute(per_key)).all()}
        return [_summary(row, message_counts.get(row.session_key, 0)) for row in rows], count

    async def search_messages(self, q: str, limit: int = 50) -> list[MessageHit]:
        """The ``limit`` newest messages whose content contains ``q`` (case-insensitive,
        taken literally); an empty ``q`` finds nothing."""
        _check_page(limit, 0)
        if not q:
            return []
        stmt = (
            select(
                conversations.c.session_key,
                messages.c.conversation_id,
                messages.c.seq,
                messages.c.role,
                messages.c.content,
                messages.c.created_at,
            )
            .select_from(
                messages.join(conversations, conversations.c.id == messages.c.conversation_id)
            )
            .where(messages.c.content.icontains(q, autoescape=True))
            .order_by(messages.c.created_at.desc(), messages.c.id.desc())
            .limit(limit)
        )
        with self._errors("search_messages"):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(stmt)).all()
        return [MessageHit(*row) for row in rows]

    async def conversation_messages(
        self, conversation_id: str, limit: int = 200, before: int | None = None
    ) -> list[StoredMessage] | None:
        """The conversation's last ``limit`` messages (those with ``seq < before``, if
        given: the page before), in ascending ``seq`` order; ``None`` if it does not exist.
        """
        _check_page(limit, 0)
        stmt = select(*MESSAGE_COLUMNS).where(messages.c.conversation_id == conversation_id)
        if before is not None:
            stmt = stmt.where(messages.c.seq < before)
        stmt = stmt.order_by(messages.c.seq.desc()).limit(limit)
        exists = select(conversations.c.id).where(conversations.c.id == conversation_id)
        with self._errors("conversation_messages", conversation_id=conversation_id):
            async with self._engine.connect() as conn:
                if await conn.scalar(exists) is None:
                    return None
                rows = (await conn.execute(stmt)).all()
        return [StoredMessage(*row) for row in reversed(rows)]

    async def delete_conversation_by_id(self, conversation_id: str) -> bool:
        """Delete the conversation and its messages; ``False`` if there is no such one.

        Exactly ``delete_conversation`` on its session: if it was the session's current
        conversation, the session moves to its most recently updated other one, or to a
        new empty one. A session host holding the session is not told (the caller's job).
        """
        owner = select(conversations.c.session_key).where(conversations.c.id == conversation_id)
        with self._errors("delete_conversation_by_id", conversation_id=conversation_id):
            async with self._engine.connect() as conn:
                session_key = await conn.scalar(owner)
        if session_key is None:
            return False
        try:
            await self.delete_conversation(session_key, conversation_id)
        except StoreError as exc:
            # Deleted by someone else since we looked: the outcome the caller wanted.
            if exc.message == "unknown conversation":
                return False
            raise
        return True


def _check_page(limit: int, offset: int) -> None:
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")


def _summary(row: Any, message_count: int) -> SessionSummary:
    parts = row.session_key.split(":", 2)
    parts += [""] * (3 - len(parts))
    return SessionSummary(
        key=row.session_key,
        platform=parts[0],
        chat_type=parts[1],
        chat_id=parts[2],
        conversations=int(row.n),
        messages=message_count,
        last_active=float(row.last_active),
    )
