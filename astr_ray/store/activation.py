"""``ActivationMixin``: ``activate_many``, bringing many sessions to life at once.

A host activating a batch of sessions gets, per session, what ``ensure_session``,
``load_history`` and ``recent_processed`` give for one, plus the current conversation's
persona and the session's settings, in a fixed number of queries whatever the batch size.
New sessions are created in one write transaction that takes row locks in key order.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from astr_ray.store.base import MESSAGE_COLUMNS, StoreBase, clock
from astr_ray.store.records import Activation, StoredMessage
from astr_ray.store.tables import conversations, messages, processed_events, sessions, settings

__all__ = ["ActivationMixin"]


class ActivationMixin(StoreBase):
    """The ``Store`` method that activates sessions in bulk, and its queries."""

    async def activate_many(
        self, session_keys: Sequence[str], history_limit: int, recent_limit: int = 256
    ) -> dict[str, Activation]:
        """Bring many sessions to life at once: what ``ensure_session`` + ``load_history``
        + ``recent_processed`` give for one, for all of ``session_keys``, plus each current
        conversation's persona and the session's own settings (scope == its key).

        Costs one read of the session rows (joined with their current conversation), one
        write transaction only if some are new (creating each new session and its first
        conversation, with the same concurrency guarantee as ``ensure_session``), and one
        query each for history (the last ``history_limit`` messages, ascending), recent
        event ids (oldest first) and settings, whatever the number of sessions. Hosts call
        it for the sessions activated together, so a burst of first messages does not take
        the write lock once per session.
        """
        keys = list(dict.fromkeys(session_keys))
        if not keys:
            return {}
        with self._errors("activate_many", sessions=len(keys)):
            async with self._engine.connect() as conn:
                current = await self._current_of(conn, keys)
            fresh = [k for k in keys if current.get(k, (None, None))[0] is None]
            if fresh:
                await self._create_sessions(fresh, current)
            known = [k for k in keys if k not in fresh]
            history: dict[str, list[StoredMessage]] = {}
            recent: dict[str, dict[str, dict[str, Any]]] = {}
            scoped: dict[str, dict[str, Any]] = {}
            async with self._engine.connect() as conn:
                if known:
                    cids = [cid for k in known if (cid := current[k][0]) is not None]
                    history = await self._histories(conn, cids, history_limit)
                    recent = await self._recents(conn, known, recent_limit)
                # Every key: a session's settings may be written before its first message.
                stmt = select(settings.c.scope, settings.c.key, settings.c.value).where(
                    settings.c.scope.in_(keys)
                )
                for scope, key, value in await conn.execute(stmt):
                    scoped.setdefault(scope, {})[key] = value
        out: dict[str, Activation] = {}
        for k in keys:
            cid, persona = current[k]
            assert cid is not None
            out[k] = Activation(
                session_key=k,
                conversation_id=cid,
                history=history.get(cid, []),
                recent=recent.get(k, {}),
                persona=persona,
                settings=scoped.get(k, {}),
            )
        return out

    async def _current_of(
        self, conn: AsyncConnection, keys: list[str], lock: bool = False
    ) -> dict[str, tuple[str | None, str | None]]:
        """``key -> (current conversation id, its persona)`` for the existing sessions.

        ``lock`` takes the session rows' locks on PostgreSQL, in key order.
        """
        stmt = (
            select(
                sessions.c.session_key,
                sessions.c.current_conversation_id,
                conversations.c.persona,
            )
            .select_from(
                sessions.outerjoin(
                    conversations, conversations.c.id == sessions.c.current_conversation_id
                )
            )
            .where(sessions.c.session_key.in_(keys))
            .order_by(sessions.c.session_key)
        )
        if lock and not self._sqlite:
            stmt = stmt.with_for_update(of=sessions)
        return {key: (cid, persona) for key, cid, persona in await conn.execute(stmt)}

    async def _create_sessions(
        self, keys: list[str], current: dict[str, tuple[str | None, str | None]]
    ) -> None:
        # Every writer takes the row locks in key order: two hosts activating overlapping
        # sets of new sessions at once must not deadlock on PostgreSQL.
        keys = sorted(keys)
        async with self._write() as conn:
            now = clock()
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
            created = []
            for key, (cid, persona) in (await self._current_of(conn, keys, lock=True)).items():
                if cid is None:
                    cid = str(uuid.uuid4())
                    created.append((key, cid))
                current[key] = (cid, persona)
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
            select(messages.c.conversation_id, *MESSAGE_COLUMNS, rank)
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
