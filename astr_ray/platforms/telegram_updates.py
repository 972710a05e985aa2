"""Telegram messages → our ``Event``, and the group wake rules.

    Update.message ── chat type? own? ──► components (text/caption, photo, voice, audio,
        │                                  document, reply_to) with the bot's @mention cut
        ▼
    group_woken(mentioned, replied_to_bot) ──► Event | None (not for us)

Wake rules: a private chat always wakes the bot. In a group (``group``/``supergroup``)
it wakes on a ``mention`` entity equal to ``@<bot username>`` (case-insensitive) or a
``text_mention`` of the bot's user id (``wake.mention``; cut from the text either way),
on a reply to one of the bot's messages (``wake.reply``), on a prefix (``wake.prefixes``)
and on a command. ``/cmd@<bot username>`` is our command (the ``@name`` is cut);
``/cmd@otherbot`` in a group is another bot's, and not for us. Channel posts are never
for us.

Incoming media become components by file id (``Image``/``Voice``/``File``): Telegram's
download URLs carry the bot token, so they never enter an ``Event``.
"""

from __future__ import annotations

import unicodedata
import warnings
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from telegram import Message, MessageEntity
from telegram.warnings import PTBDeprecationWarning

from astr_ray.config import WakeConfig
from astr_ray.errors import MessageFormatError
from astr_ray.message import ChatType, Component, Event, File, Image, ReplyTo, Sender, Text, Voice
from astr_ray.platforms.base import group_woken

__all__ = ["Me", "from_elsewhere", "seconds", "to_event"]

GROUP_TYPES = frozenset({"group", "supergroup"})


@dataclass(frozen=True)
class Me:
    """Who the bot is (from ``getMe``)."""

    id: int
    username: str  # without the "@"


def seconds(obj: Any, attr: str) -> float | None:
    """A PTB time-period attribute (``duration``, ``retry_after``) in seconds.

    PTB 22 warns on every read of these (they turn into ``timedelta`` in a later major
    version, or now with ``PTB_TIMEDELTA``); this reads either form without the warning.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value = getattr(obj, attr, None)
    if value is None:
        return None
    if hasattr(value, "total_seconds"):
        return float(value.total_seconds())
    return float(value)


def _index(text: str, utf16_offset: int) -> int:
    """The ``str`` index of a UTF-16 offset (Telegram's entity offsets count UTF-16
    code units: characters beyond the BMP, e.g. most emoji, count twice)."""
    units = 0
    for i, ch in enumerate(text):
        if units >= utf16_offset:
            return i
        units += 2 if ord(ch) > 0xFFFF else 1
    return len(text)


def _punctuation(ch: str) -> bool:
    return unicodedata.category(ch).startswith("P")


@dataclass(frozen=True)
class _Read:
    text: str
    mentioned: bool
    foreign_command: bool


def _read_text(text: str, entities: tuple[MessageEntity, ...], me: Me) -> _Read:
    """Cut the bot's mentions and the ``@<bot username>`` of a leading command."""
    handle = "@" + me.username.lower()
    cuts: list[tuple[int, int, bool]] = []  # (start, end, is a mention) as str indices
    mentioned = foreign = False
    for ent in entities:
        start = _index(text, ent.offset)
        end = _index(text, ent.offset + ent.length)
        piece = text[start:end]
        names_me = (ent.type == MessageEntity.MENTION and piece.lower() == handle) or (
            ent.type == MessageEntity.TEXT_MENTION and ent.user is not None and ent.user.id == me.id
        )
        if names_me:
            mentioned = True
            cuts.append((start, end, True))
        elif ent.type == MessageEntity.BOT_COMMAND and start == 0 and "@" in piece:
            at = piece.index("@")
            if piece[at:].lower() == handle:
                cuts.append((start + at, end, False))
            else:
                foreign = True
    out = text
    for start, end, spaced in sorted(cuts, reverse=True):
        left, right = out[:start], out[end:]
        if spaced:
            left, right = left.rstrip(" "), right.lstrip(" ")
            joint = " " if left and right and not _punctuation(right[0]) else ""
            out = left + joint + right
        else:
            out = left + right
    return _Read(text=out.strip(), mentioned=mentioned, foreign_command=foreign)


def _sender(msg: Message) -> Sender:
    user = msg.from_user
    if user is not None:
        name = user.full_name.strip() or user.username or None
        return Sender(id=str(user.id), name=name)
    chat = msg.sender_chat  # an anonymous group admin, or a channel posting in a group
    if chat is not None:
        return Sender(id=str(chat.id), name=chat.title or chat.username or None)
    raise MessageFormatError("message has neither from nor sender_chat")


def _media(msg: Message) -> list[Component]:
    out: list[Component] = []
    if msg.photo:
        best = max(msg.photo, key=lambda p: (p.width * p.height, p.file_size or 0))
        out.append(Image(file_id=best.file_id))
    for voice in (msg.voice, msg.audio):
        if voice is not None:
            out.append(Voice(file_id=voice.file_id, duration_s=seconds(voice, "duration")))
    doc = msg.document
    if doc is not None:
        out.append(File(name=doc.file_name or "document", file_id=doc.file_id, size=doc.file_size))
    return out


def from_elsewhere(msg: Message, me: Me) -> bool:
    """Whether a message is no conversation with the bot: a channel post, or the bot's
    own message."""
    if msg.chat.type not in GROUP_TYPES and msg.chat.type != "private":
        return True
    return msg.from_user is not None and msg.from_user.id == me.id


def to_event(msg: Message, platform_id: str, me: Me, wake: WakeConfig) -> Event | None:
    """The ``Event`` for a message (one ``from_elsewhere`` let through) when the wake
    rules say it is for the bot, else None. ``message_id`` is Telegram's message id
    (unique per chat, and the chat is in the session key): a message delivered twice
    maps to the same id. Raises ``MessageFormatError`` when the message does not fit."""
    chat = msg.chat
    chat_type = ChatType.GROUP if chat.type in GROUP_TYPES else ChatType.PRIVATE
    sender = _sender(msg)
    if msg.text is not None:
        read = _read_text(msg.text, msg.entities, me)
    else:
        read = _read_text(msg.caption or "", msg.caption_entities, me)
    if read.foreign_command and chat_type is ChatType.GROUP:
        return None
    components: list[Component] = []
    replied = msg.reply_to_message
    if replied is not None:
        components.append(ReplyTo(message_id=str(replied.message_id)))
    if read.text:
        components.append(Text(text=read.text))
    components.extend(_media(msg))
    replied_to_bot = (
        replied is not None and replied.from_user is not None and replied.from_user.id == me.id
    )
    if not group_woken(
        chat_type, components, wake, mentioned=read.mentioned, replied_to_bot=replied_to_bot
    ):
        return None
    try:
        return Event(
            platform_id=platform_id,
            chat_type=chat_type,
            chat_id=str(chat.id),
            sender=sender,
            message_id=str(msg.message_id),
            time=msg.date.timestamp(),
            components=tuple(components),
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise MessageFormatError(f"event does not fit: {where}: {first['msg']}") from None
