"""Persistence: sessions, conversations, append-only messages, idempotency records,
settings, a key-value store for plugins, and personas.

``Store`` is the one entry point (SQLAlchemy 2 async Core on SQLite or PostgreSQL);
``tables`` holds the schema and ``migrate`` the programmatic alembic upgrade.
"""

from __future__ import annotations

from astr_ray.store.browse import MessageHit, SessionSummary
from astr_ray.store.records import (
    Activation,
    ActorEvent,
    ConversationInfo,
    NewMessage,
    Persona,
    SessionState,
    StoredMessage,
    TurnRecord,
)
from astr_ray.store.store import Store

__all__ = [
    "Activation",
    "ActorEvent",
    "ConversationInfo",
    "MessageHit",
    "NewMessage",
    "Persona",
    "SessionState",
    "SessionSummary",
    "Store",
    "StoredMessage",
    "TurnRecord",
]
