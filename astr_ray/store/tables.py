"""The schema of the store, as SQLAlchemy Core tables.

This module is the single source of truth for table shapes; the hand-written migrations in
``migrations/versions`` must produce exactly these tables (a test compares them).

::

    sessions ──(current_conversation_id)──► conversations ◄──(conversation_id, CASCADE)── messages
        │ session_key                           │ session_key
        └──────────────── processed_events (session_key, event_id)   actor_events (standalone)

    settings (scope, key)   plugin_kv (plugin, key)   personas (name)     standalone, no FKs

    kb_bases ◄──(kb_id, CASCADE)── kb_documents ◄──(doc_id, CASCADE)── kb_chunks
        ▲                                                                 │
        └──────────────────────────(kb_id, CASCADE)───────────────────────┘

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
    LargeBinary,
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
    "kb_bases",
    "kb_chunks",
    "kb_documents",
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

# -- knowledge bases -------------------------------------------------------------------
#
# Their ids are held outside the database (shard indexes and snapshots, running ingestions),
# so they are never reused: ``sqlite_autoincrement`` gives SQLite the ``AUTOINCREMENT``
# keyword, without which a deleted largest id comes back (PostgreSQL sequences never do).

# ``embedder`` names the model the vectors come from and ``dim`` their length: a base's
# vectors are only comparable among themselves.
kb_bases = Table(
    "kb_bases",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("description", Text, nullable=False),
    Column("embedder", String(128), nullable=False),
    Column("dim", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    sqlite_autoincrement=True,
)

# ``status``: pending | parsing | embedding | ready | failed (``error`` says why it failed).
# The unique constraint is also the index on ``kb_id`` (its leading column) that listing a
# base's documents and the cascade from ``kb_bases`` use; a separate one would be redundant.
kb_documents = Table(
    "kb_documents",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kb_id", Integer, ForeignKey("kb_bases.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(512), nullable=False),
    Column("source", Text, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("error", Text, nullable=True),
    Column("chunks", Integer, nullable=False, server_default="0"),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    UniqueConstraint("kb_id", "name"),
    sqlite_autoincrement=True,
)

# ``hash`` is unique per base: a chunk of text is stored (and embedded) once however many
# documents contain it. ``vector`` is float32 little-endian bytes, NULL until embedded.
kb_chunks = Table(
    "kb_chunks",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("kb_id", Integer, ForeignKey("kb_bases.id", ondelete="CASCADE"), nullable=False),
    Column("doc_id", Integer, ForeignKey("kb_documents.id", ondelete="CASCADE"), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("text", Text, nullable=False),
    Column("heading", Text, nullable=True),
    Column("hash", String(64), nullable=False),
    Column("vector", LargeBinary, nullable=True),
    UniqueConstraint("kb_id", "hash"),
    # Shards page through a base's chunks in id order (``iter_chunk_vectors``).
    Index(None, "kb_id", "id"),
    # A document's chunks: deleting or replacing one, and the cascade from ``kb_documents``
    # (without it, SQLite scans every chunk once per deleted document).
    Index(None, "doc_id"),
    sqlite_autoincrement=True,
)
