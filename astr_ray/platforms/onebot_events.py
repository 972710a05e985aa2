"""OneBot v11 message events → our ``Event``, and the group wake rules.

    {"post_type": "message", "message_type": "group", "message_id": 77, "user_id": 2001,
     "group_id": 3001, "self_id": 10001, "message": [...], "sender": {...}}
        │ parse_message_frame     (checks fields and types: MessageFormatError)
        ▼
    MessageFrame ── wake(cfg.wake, bot's own message ids) ──► Event | None (not for us)

Wake rules: a private chat always wakes the bot. In a group it wakes when @-mentioned
(``wake.mention``), when the message quotes one of the bot's own messages
(``wake.reply``), when its text starts with a prefix (``wake.prefixes``, stripped), or
when it is a command (text starting with "/"). The bot's own @-mention never reaches
the text the LLM sees.
"""

from __future__ import annotations

import time
from collections.abc import Container, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from astr_ray.config import WakeConfig
from astr_ray.errors import MessageFormatError
from astr_ray.message import ChatType, Event, Sender
from astr_ray.platforms.base import group_woken
from astr_ray.platforms.onebot_segments import Segment, normalize_message, to_components

__all__ = ["MessageFrame", "onebot_id", "parse_message_frame", "wake"]


def onebot_id(value: Any, name: str) -> str:
    """A OneBot id (an integer, or a non-empty string in some implementations) as text;
    raises ``MessageFormatError`` naming the field otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | str) or value == "":
        raise MessageFormatError(f"{name} must be an integer or a non-empty string")
    return str(value)


@dataclass(frozen=True)
class MessageFrame:
    """A message event, checked but not yet interpreted."""

    chat_type: ChatType
    chat_id: str
    sender: Sender
    message_id: str
    time: float
    self_id: str | None
    segments: list[Segment]


def parse_message_frame(frame: Mapping[str, Any]) -> MessageFrame:
    """Check a ``post_type: message`` frame; raises ``MessageFormatError`` when a field
    is missing or of the wrong type. ``message_id`` is the OneBot id as text: the same
    message delivered twice maps to the same id (the idempotency key of its turn)."""
    kind = frame.get("message_type")
    if kind not in ("private", "group"):
        raise MessageFormatError("message_type must be private or group")
    user_id = onebot_id(frame.get("user_id"), "user_id")
    chat_type = ChatType(kind)
    chat_id = onebot_id(frame.get("group_id"), "group_id") if kind == "group" else user_id
    sender = frame.get("sender")
    if sender is None:
        sender = {}
    if not isinstance(sender, dict):
        raise MessageFormatError("sender must be an object")
    name = sender.get("card") or sender.get("nickname")
    raw_self = frame.get("self_id")
    sent_at = frame.get("time")
    return MessageFrame(
        chat_type=chat_type,
        chat_id=chat_id,
        sender=Sender(id=user_id, name=name if isinstance(name, str) and name else None),
        message_id=onebot_id(frame.get("message_id"), "message_id"),
        time=float(sent_at)
        if isinstance(sent_at, int | float) and not isinstance(sent_at, bool)
        else time.time(),
        self_id=onebot_id(raw_self, "self_id") if raw_self is not None else None,
        segments=normalize_message(frame.get("message")),
    )


def wake(
    msg: MessageFrame,
    platform_id: str,
    self_id: str | None,
    cfg: WakeConfig,
    bot_messages: Container[str],
) -> Event | None:
    """The ``Event`` for a message meant for the bot, or None when the wake rules say
    the bot should stay quiet. ``bot_messages`` holds the ids of messages the bot sent
    (a quote of one of them is a reply to the bot). Raises ``MessageFormatError`` when
    a segment or the resulting event does not fit the model."""
    parsed = to_components(msg.segments, self_id)
    components = parsed.components
    woken = group_woken(
        msg.chat_type,
        components,
        cfg,
        mentioned=parsed.mentions_bot,
        replied_to_bot=any(mid in bot_messages for mid in parsed.replies_to),
    )
    if not woken:
        return None
    try:
        return Event(
            platform_id=platform_id,
            chat_type=msg.chat_type,
            chat_id=msg.chat_id,
            sender=msg.sender,
            message_id=msg.message_id,
            time=msg.time,
            components=tuple(components),
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise MessageFormatError(f"event does not fit: {where}: {first['msg']}") from None
