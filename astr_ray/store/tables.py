"""The schema of the store, as SQLAlchemy Core tables.

This module is the single source of truth for table shapes; the hand-written migrations in
``migrations/versions`` must produce exactly these tables (a test compares them).

::

    sessions ──(current_conversation_id)──► conversations ◄──(conversation_id, CASCADE)── messages
        │ session_key                           │ session_key
        └──────────────── processed_events (session_key, event_id)   actor_events (standalone)

    settings (scope, key)   plugin_kv (plugin, key)   personas (name)     standalone, no FKs

Timestamps are float unix seconds in ``Float`` columns: simple and identical on every backend.
Constraint names follow ``NAMING_CONVENTION`` so that migrations can refer to them by name.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

__all__ = [
    "NAMING_CONVENTION",
    "actor_events",
    "conversations",
    "messages",
    "metadata",
    "personas",
    "plugin_kv",
    "processed_events",
    "sessions",
    "settings",
]

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

# SQLite only autoincrements an ``INTEGER PRIMARY KEY`` (the rowid alias), not ``BIGINT``.
_BigId = BigInteger().with_variant(Integer(), "sqlite")

sessions = Table(
    "sessions",
    metadata,
    Column("session_key", String(255), primary_key=True),
    # No foreign key: the session row and its first conversation are created in one
    # transaction, and a cycle of foreign keys would complicate that for no gain.
    Column("current_conversation_id", String(36), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

conversations = Table(
    "conversations",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("session_key", String(255), nullable=False, index=True),
    Column("title", String(255), nullable=True),
    Column("persona", String(128), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

messages = Table(
    "messages",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column(
        "conversation_id",
        String(36),
        ForeignKey("conversations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("seq", Integer, nullable=False),
    Column("role", String(16), nullable=False),
    Column("content", Text, nullable=False),
    # none_as_null: Python ``None`` is stored as SQL NULL, not the JSON literal ``null``.
    Column("extra", JSON(none_as_null=True), nullable=True),
    Column("event_id", String(255), nullable=True),
    Column("created_at", Float, nullable=False),
    # The unique constraint is also the (conversation_id, seq) index both backends use for
    # history reads; a second, identical index would only slow the hot insert path.
    UniqueConstraint("conversation_id", "seq"),
)

processed_events = Table(
    "processed_events",
    metadata,
    Column("session_key", String(255), primary_key=True),
    Column("event_id", String(255), primary_key=True),
    Column("reply", JSON, nullable=False),
    Column("created_at", Float, nullable=False, index=True),
    # ``recent_processed`` reads one session's newest events; this keeps it O(limit).
    Index(None, "session_key", "created_at"),
)

actor_events = Table(
    "actor_events",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("actor", String(128), nullable=False, index=True),
    Column("kind", String(32), nullable=False),
    Column("reason", Text, nullable=False),
    Column("pid", Integer, nullable=True),
    Column("created_at", Float, nullable=False, index=True),
)

# ``scope`` is ``"global"`` or a session key; a session's rows ride along in ``activate_many``.
# ``value`` is never SQL NULL: setting ``None`` deletes the row instead.
settings = Table(
    "settings",
    metadata,
    Column("scope", String(255), primary_key=True),
    Column("key", String(128), primary_key=True),
    Column("value", JSON, nullable=False),
    Column("updated_at", Float, nullable=False),
)

# A small key-value store per plugin; the primary key also serves ``kv_keys`` prefix scans.
plugin_kv = Table(
    "plugin_kv",
    metadata,
    Column("plugin", String(128), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("value", JSON, nullable=False),
    Column("updated_at", Float, nullable=False),
)

# ``conversations.persona`` names a row here by convention only (no foreign key): a persona
# may come from the config file, and deleting one must not touch old conversations.
personas = Table(
    "personas",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("system_prompt", Text, nullable=False),
    # A list of [user, assistant] pairs.
    Column("begin_dialogs", JSON, nullable=False),
    # A list of tool names; SQL NULL (``None``) means every tool.
    Column("tools", JSON(none_as_null=True), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)
