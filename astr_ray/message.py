"""The message model: what adapters hand to sessions and what sessions hand back.

An ``Event`` is one platform message turned into our vocabulary; a ``Reply`` is the
answer to one event. Both cross process boundaries as plain dicts (``to_dict`` /
``from_dict``), validated on the way in so a malformed payload fails with a
``MessageFormatError`` at the edge instead of deep inside a session.

Session keys name a conversation place on a platform::

    <platform_id>:<private|group>:<chat id>      e.g. "webchat:private:alice"
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Annotated, Any, Literal, NewType, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from astr_ray.errors import MessageFormatError

__all__ = [
    "ChatType",
    "Component",
    "Event",
    "File",
    "Image",
    "Mention",
    "Reply",
    "ReplyTo",
    "Sender",
    "SessionKey",
    "Text",
    "Voice",
    "make_session_key",
    "parse_session_key",
]

SessionKey = NewType("SessionKey", str)


class ChatType(StrEnum):
    PRIVATE = "private"
    GROUP = "group"


def make_session_key(platform_id: str, chat_type: ChatType | str, chat_id: str) -> SessionKey:
    """Build ``<platform_id>:<chat_type>:<chat_id>``; the platform id may not contain ':'."""
    if not platform_id or ":" in platform_id:
        raise MessageFormatError(
            "platform id must be non-empty and contain no ':'", platform_id=platform_id
        )
    if not chat_id:
        raise MessageFormatError("chat id must be non-empty", platform_id=platform_id)
    return SessionKey(f"{platform_id}:{ChatType(chat_type).value}:{chat_id}")


def parse_session_key(key: str) -> tuple[str, ChatType, str]:
    """Split a session key into (platform id, chat type, chat id); the chat id may hold ':'."""
    parts = key.split(":", 2)
    if len(parts) != 3 or not parts[0] or not parts[2]:
        raise MessageFormatError(
            "session key must look like <platform>:<private|group>:<id>", session_key=key
        )
    try:
        chat_type = ChatType(parts[1])
    except ValueError:
        raise MessageFormatError(
            "session key chat type must be private or group", session_key=key
        ) from None
    return parts[0], chat_type, parts[2]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Text(_Model):
    type: Literal["text"] = "text"
    text: str


class Image(_Model):
    """An image by URL (http(s), file or data URL) or by platform file id."""

    type: Literal["image"] = "image"
    url: str | None = None
    file_id: str | None = None
    mime: str | None = None


class Mention(_Model):
    type: Literal["mention"] = "mention"
    user_id: str
    name: str | None = None


class ReplyTo(_Model):
    """This message answers an earlier platform message."""

    type: Literal["reply_to"] = "reply_to"
    message_id: str


class File(_Model):
    type: Literal["file"] = "file"
    name: str
    url: str | None = None
    file_id: str | None = None
    size: int | None = None


class Voice(_Model):
    type: Literal["voice"] = "voice"
    url: str | None = None
    file_id: str | None = None
    duration_s: float | None = None
    transcript: str | None = None


Component = Annotated[Text | Image | Mention | ReplyTo | File | Voice, Field(discriminator="type")]


class Sender(_Model):
    id: str
    name: str | None = None


class Event(_Model):
    """One incoming platform message.

    ``message_id`` is the platform's id for the message; together with the session key
    it is the idempotency key of the turn (a redelivered event never gets a second
    reply).
    """

    platform_id: str = Field(min_length=1)
    chat_type: ChatType
    chat_id: str = Field(min_length=1)
    sender: Sender
    message_id: str = Field(min_length=1, max_length=255)
    time: float = Field(default_factory=time.time)
    components: tuple[Component, ...] = ()

    @property
    def session_key(self) -> SessionKey:
        return make_session_key(self.platform_id, self.chat_type, self.chat_id)

    @property
    def text(self) -> str:
        """The plain text of the message: its text components joined, then the
        transcripts of its voice messages (once speech-to-text has filled them in)."""
        typed = "".join(c.text for c in self.components if isinstance(c, Text))
        spoken = " ".join(
            c.transcript for c in self.components if isinstance(c, Voice) and c.transcript
        )
        return f"{typed} {spoken}" if typed and spoken else typed or spoken

    @property
    def voice(self) -> Voice | None:
        """The first voice message of this event, if any."""
        return next((c for c in self.components if isinstance(c, Voice)), None)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: Any) -> Event:
        """Validate a transport dict; raises ``MessageFormatError`` naming the bad field."""
        return _validate(cls, data)


class Reply(_Model):
    """The answer to one event.

    ``duplicate`` is true when the event had already been answered and this is the
    stored reply; an adapter that cannot deduplicate on the receiving side must not send
    it again. ``error`` names the kind of failure when the text is an error notice
    (``"provider_unavailable"``, ``"busy"``, ``"internal"``), and is None on success.
    """

    session_key: str
    event_id: str
    components: tuple[Component, ...] = ()
    duplicate: bool = False
    error: str | None = None

    @property
    def text(self) -> str:
        return "".join(c.text for c in self.components if isinstance(c, Text))

    @classmethod
    def of_text(
        cls, session_key: str, event_id: str, text: str, *, error: str | None = None
    ) -> Reply:
        return cls(
            session_key=session_key, event_id=event_id, components=(Text(text=text),), error=error
        )

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: Any) -> Reply:
        return _validate(cls, data)


_M = TypeVar("_M", bound=BaseModel)


def _validate(cls: type[_M], data: Any) -> _M:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise MessageFormatError(
            f"invalid {cls.__name__.lower()}: {path}: {first['msg']}",
            errors=exc.error_count(),
        ) from None
