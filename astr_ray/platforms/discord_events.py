"""Discord messages (as discord.py parsed them) → our ``Event``, and the wake rules.

    discord.Message ─┬─ content: the bot's <@id> / <@!id> stripped (→ mentioned);
                     │           other users' <@id> → "@Name" in the text + Mention
                     ├─ reference → ReplyTo (a reply to the bot when it points at one of
                     │              the bot's messages)
                     └─ attachments → Image (image/*), Voice (voice messages, audio/*),
                                      File (anything else)
        │ wake(cfg.wake)
        ▼
    Event | None (not for the bot)

A guild channel or a thread is a group chat whose id is the channel's (a thread is a
session of its own); a DM is a private chat whose id is the DM channel's (what
``push`` sends to). The Event's ``message_id`` is the Discord message id (a
snowflake): the same message delivered twice maps to the same id.
"""

from __future__ import annotations

import re
from collections.abc import Container, Mapping

from pydantic import ValidationError

from astr_ray.config import WakeConfig
from astr_ray.errors import MessageFormatError
from astr_ray.message import (
    ChatType,
    Component,
    Event,
    File,
    Image,
    Mention,
    ReplyTo,
    Sender,
    Text,
    Voice,
)
from astr_ray.platforms.base import group_woken
from astr_ray.platforms.discord_gateway import discord

__all__ = ["CHAT_MESSAGE_TYPES", "attachment_component", "split_mentions", "to_event"]

CHAT_MESSAGE_TYPES = frozenset({discord.MessageType.default, discord.MessageType.reply})
"""What users write; everything else (joins, pins, thread creation...) is not for the bot."""

_USER_MENTION = re.compile(r"<@!?(\d+)>")


def split_mentions(
    content: str, bot_id: int, names: Mapping[int, str]
) -> tuple[str, list[Mention], bool]:
    """The text with the bot's own mentions removed and other users' shown as
    ``@Name``, the Mention components of those others, and whether the bot was
    mentioned. Only the spaces around the bot's mention go with it (code keeps its
    indentation)."""
    own = re.compile(rf"[ \t]*<@!?{bot_id}>[ \t]*")
    text, found = own.subn(" ", content)
    if found:
        text = text.strip()
    others: list[Mention] = []

    def render(match: re.Match[str]) -> str:
        user_id = int(match.group(1))
        name = names.get(user_id)
        if all(m.user_id != str(user_id) for m in others):
            others.append(Mention(user_id=str(user_id), name=name))
        return f"@{name}" if name else match.group(0)

    return _USER_MENTION.sub(render, text), others, found > 0


def attachment_component(att: discord.Attachment) -> Component:
    """An incoming attachment: images and voice by URL with the attachment id as their
    file id; anything else as a File with its name and size."""
    mime = att.content_type.split(";")[0].strip() if att.content_type else None
    if mime is not None and mime.startswith("image/"):
        return Image(url=att.url, file_id=str(att.id), mime=mime)
    if att.is_voice_message() or (mime is not None and mime.startswith("audio/")):
        return Voice(url=att.url, file_id=str(att.id), duration_s=att.duration)
    return File(name=att.filename, url=att.url, file_id=str(att.id), size=att.size)


def _replies_to_bot(message: discord.Message, bot_id: int, bot_messages: Container[str]) -> bool:
    ref = message.reference
    if ref is None or ref.message_id is None:
        return False
    if str(ref.message_id) in bot_messages:
        return True
    # The referenced message comes along (resolved); it tells after a restart too.
    resolved = ref.resolved
    return isinstance(resolved, discord.Message) and resolved.author.id == bot_id


def to_event(
    message: discord.Message,
    platform_id: str,
    bot_id: int,
    cfg: WakeConfig,
    bot_messages: Container[str],
) -> Event | None:
    """The ``Event`` for a user's chat message meant for the bot, or None when the wake
    rules say the bot should stay quiet (or nothing is left to answer). Raises
    ``MessageFormatError`` when the message does not fit the model."""
    private = isinstance(message.channel, discord.DMChannel)
    chat_type = ChatType.PRIVATE if private else ChatType.GROUP
    names = {u.id: u.display_name for u in message.mentions}
    text, others, mentioned = split_mentions(message.content, bot_id, names)
    components: list[Component] = []
    ref = message.reference
    if ref is not None and ref.message_id is not None:
        components.append(ReplyTo(message_id=str(ref.message_id)))
    components.extend(others)
    if text:
        components.append(Text(text=text))
    components.extend(attachment_component(a) for a in message.attachments)
    woken = group_woken(
        chat_type,
        components,
        cfg,
        mentioned=mentioned,
        replied_to_bot=_replies_to_bot(message, bot_id, bot_messages),
    )
    if not woken or not any(isinstance(c, Text | Image | Voice | File) for c in components):
        return None
    try:
        return Event(
            platform_id=platform_id,
            chat_type=chat_type,
            chat_id=str(message.channel.id),
            sender=Sender(id=str(message.author.id), name=message.author.display_name or None),
            message_id=str(message.id),
            time=message.created_at.timestamp(),
            components=tuple(components),
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise MessageFormatError(f"event does not fit: {where}: {first['msg']}") from None
