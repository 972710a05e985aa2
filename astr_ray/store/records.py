"""The records the store reads and writes: plain frozen dataclasses, no ORM."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Activation",
    "ActorEvent",
    "ConversationInfo",
    "KbChunk",
    "KbDocument",
    "KnowledgeBase",
    "NewMessage",
    "Persona",
    "SessionState",
    "StoredMessage",
    "TurnRecord",
]


@dataclass(frozen=True, slots=True)
class SessionState:
    """A session and the conversation new turns go to."""

    session_key: str
    conversation_id: str


@dataclass(frozen=True, slots=True)
class ConversationInfo:
    """One conversation of a session, as listed by ``Store.list_conversations``."""

    id: str
    title: str | None
    persona: str | None
    created_at: float
    updated_at: float
    message_count: int
    is_current: bool


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message row; ``seq`` is its 0-based position in the conversation."""

    seq: int
    role: str
    content: str
    extra: dict[str, Any] | None
    event_id: str | None
    created_at: float


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message to append. ``role`` is ``user``, ``assistant``, ``system`` or ``tool``."""

    role: str
    content: str
    extra: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class TurnRecord:
    """What one finished turn writes, atomically.

    ``next_seq`` is the seq of the first message (the caller knows the conversation's length).
    ``reply`` is recorded under ``event_id`` as the idempotency record; it is required when
    ``event_id`` is set and ignored when it is ``None``.
    """

    session_key: str
    conversation_id: str
    event_id: str | None
    messages: Sequence[NewMessage]
    reply: dict[str, Any] | None
    next_seq: int


@dataclass(frozen=True, slots=True)
class ActorEvent:
    """A lifecycle event of an actor (started, restarted, died, recreated...)."""

    actor: str
    kind: str
    reason: str
    pid: int | None
    created_at: float


@dataclass(frozen=True, slots=True)
class Activation:
    """What a session host needs to bring one session to life (see ``activate_many``).

    ``persona`` is the current conversation's persona name; ``settings`` are the session's
    own settings rows (scope == ``session_key``), not the global ones.
    """

    session_key: str
    conversation_id: str
    history: list[StoredMessage] = field(default_factory=list)
    recent: dict[str, dict[str, Any]] = field(default_factory=dict)
    persona: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Persona:
    """A named system prompt with its opening dialog and the tools it may use.

    ``begin_dialogs`` are ``(user, assistant)`` pairs put before the conversation's history;
    ``tools`` lists the tool names allowed, ``None`` meaning every tool.
    """

    name: str
    system_prompt: str
    begin_dialogs: list[tuple[str, str]] = field(default_factory=list)
    tools: list[str] | None = None
    knowledge: list[str] | None = None  # config personas only; None = knowledge.default
    voice: str | None = None  # config personas only; None = speech.tts.voice


@dataclass(frozen=True, slots=True)
class KnowledgeBase:
    """A knowledge base, with how many documents and chunks it holds.

    ``embedder`` names the model its vectors come from, ``dim`` their length.
    """

    id: int
    name: str
    description: str
    embedder: str
    dim: int
    created_at: float
    documents: int
    chunks: int


@dataclass(frozen=True, slots=True)
class KbDocument:
    """A document of a knowledge base and how far its ingestion got.

    ``status`` is ``pending``, ``parsing``, ``embedding``, ``ready`` or ``failed`` (then
    ``error`` says why); ``chunks`` is what ingestion last reported, not a live count.
    """

    id: int
    kb_id: int
    name: str
    source: str
    sha256: str
    size: int
    status: str
    error: str | None
    chunks: int
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class KbChunk:
    """A chunk of a document, with the document's name for citations.

    ``seq`` is its position in the document it was first stored for; ``heading`` the
    Markdown heading it sits under, if any.
    """

    id: int
    kb_id: int
    doc_id: int
    seq: int
    text: str
    heading: str | None
    doc_name: str
