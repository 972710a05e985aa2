"""Persistence: sessions, conversations, append-only messages and idempotency records.

``Store`` is the one entry point (SQLAlchemy 2 async Core on SQLite or PostgreSQL);
``tables`` holds the schema and ``migrate`` the programmatic alembic upgrade.
"""

from __future__ import annotations

from astr_ray.store.store import (
    ActorEvent,
    ConversationInfo,
    NewMessage,
    SessionState,
    Store,
    StoredMessage,
    TurnRecord,
)

__all__ = [
    "ActorEvent",
    "ConversationInfo",
    "NewMessage",
    "SessionState",
    "Store",
    "StoredMessage",
    "TurnRecord",
]
