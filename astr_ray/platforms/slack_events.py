"""Slack message events → our ``Event``, and the wake rules.

    {"type": "message", "channel": "C1", "channel_type": "channel", "user": "U7",
     "ts": "1700000000.000100", "text": "<@UBOT> hi &amp; bye", "files": [...]}
        │ parse_event   (checks fields and types: MessageFormatError; None: not a
        ▼                person's message, e.g. a bot's, an edit, a channel join)
    SlackMessage ── wake(cfg.wake, the bot's messages) ──► Event | None (not for us)

Text. Slack's ``text`` is mrkdwn: ``<@U123>`` mentions, ``<#C1|name>`` channels,
``<!here>``, ``<url|label>`` links, and ``& < >`` escaped as ``&amp; &lt; &gt;``.
``decode_text`` turns that into plain text: the bot's own mention removed (it never
reaches the LLM), another user's kept as ``@U123`` (or ``@name``).

Files. An incoming file becomes an ``Image`` (image/*), a ``Voice`` (audio/*) or a
``File``, carrying the Slack file id, never ``url_private``: that URL needs the bot
token (``Authorization: Bearer``), so it is no URL anyone else could open. Fetch a
file by id (``files.info``, scope files:read) when its bytes are needed.

Sessions. An IM is a private chat (chat id: the IM channel, ``D...``); a channel,
private channel or group DM is a group chat (chat id: the channel). A message inside
a thread is a conversation of its own: ``<channel>:<thread_ts>``.

Wake rules (group chats): the bot's ``<@mention>`` (or an ``app_mention`` event), a
message in a thread whose parent is the bot's (``wake.reply``), a prefix, a command.

Everything here is pure: no I/O, no state.
"""

from __future__ import annotations

import re
from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from astr_ray.config import WakeConfig
from astr_ray.errors import MessageFormatError
from astr_ray.message import ChatType, Component, Event, File, Image, Sender, Text, Voice
from astr_ray.platforms.base import group_woken

__all__ = [
    "SlackMessage",
    "decode_text",
    "files_to_components",
    "parse_event",
    "wake",
]

USER_SUBTYPES = frozenset({"file_share", "thread_broadcast", "me_message"})
"""Message subtypes that a person wrote; every other subtype (edits, deletions, joins,
bot messages...) is not a message for the bot."""

CHAT_TYPES = {
    "im": ChatType.PRIVATE,
    "channel": ChatType.GROUP,
    "group": ChatType.GROUP,
    "mpim": ChatType.GROUP,
}

_TOKEN = re.compile(r"<([^<>]*)>")


def _unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _link(target: str, label: str) -> str:
    url, label = _unescape(target), _unescape(label)
    if not label or label == url:
        return url
    if url.endswith(label):  # <mailto:a@b.c|a@b.c>, <http://x.org|x.org>
        return label
    return f"{label} ({url})"


def decode_text(text: str, bot_user: str | None) -> tuple[str, bool]:
    """Slack mrkdwn as plain text, and whether it mentions ``bot_user``.

    The bot's mention is removed with the whitespace after it; another user's becomes
    ``@<name or id>``, a channel ``#<name or id>``, ``<!here>`` ``@here``, a link
    its label and URL. The result is stripped.
    """
    out: list[str] = []
    mentioned = trim = False
    pos = 0
    for match in _TOKEN.finditer(text):
        chunk = _unescape(text[pos : match.start()])
        out.append(chunk.lstrip() if trim else chunk)
        trim = False
        pos = match.end()
        target, _, label = match.group(1).partition("|")
        if target.startswith("@"):
            user = target[1:]
            if bot_user is not None and user == bot_user:
                mentioned = trim = True
            else:
                out.append("@" + (_unescape(label) or user))
        elif target.startswith("#"):
            out.append("#" + (_unescape(label) or target[1:]))
        elif target.startswith("!"):
            special = target[1:]
            if special in ("here", "channel", "everyone"):
                out.append("@" + special)
            else:  # <!subteam^S1|@team>, <!date^...|fallback>
                out.append(_unescape(label))
        else:
            out.append(_link(target, label))
    rest = _unescape(text[pos:])
    out.append(rest.lstrip() if trim else rest)
    return "".join(out).strip(), mentioned


def _optional_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) and value else None


def _required_str(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise MessageFormatError(f"{key} must be a non-empty string")
    return value


def files_to_components(files: Any) -> list[Component]:
    """The ``files`` of a message as components (see the module doc); deleted files
    (``mode: tombstone``) are left out. Raises ``MessageFormatError`` when ``files``
    is not a list of objects with an ``id``."""
    if files is None:
        return []
    if not isinstance(files, list):
        raise MessageFormatError("files must be a list")
    out: list[Component] = []
    for i, item in enumerate(files):
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
            raise MessageFormatError("a file must be an object with an id", index=i)
        if item.get("mode") == "tombstone":
            continue
        file_id = item["id"]
        mime = _optional_str(item, "mimetype")
        size = item.get("size")
        if mime is not None and mime.startswith("image/"):
            out.append(Image(file_id=file_id, mime=mime))
        elif (mime is not None and mime.startswith("audio/")) or item.get("subtype") == (
            "slack_audio"
        ):
            out.append(Voice(file_id=file_id))
        else:
            out.append(
                File(
                    name=_optional_str(item, "name") or _optional_str(item, "title") or file_id,
                    file_id=file_id,
                    size=size if isinstance(size, int) and not isinstance(size, bool) else None,
                )
            )
    return out


@dataclass(frozen=True)
class SlackMessage:
    """A person's message, checked; ``chat_id`` is the channel, or
    ``<channel>:<thread_ts>`` inside a thread (a thread is a conversation of its own)."""

    kind: str  # "message" or "app_mention"
    channel: str
    ts: str
    chat_type: ChatType
    chat_id: str
    thread_ts: str | None  # the thread it is in (None: the channel itself)
    parent_user: str | None  # who started that thread, when Slack says
    user: str
    user_name: str | None
    time: float
    components: list[Component] = field(default_factory=list)
    mentions_bot: bool = False


def parse_event(event: Mapping[str, Any], bot_user: str | None) -> SlackMessage | None:
    """Check a ``message`` or ``app_mention`` event.

    Returns None for what is not a person's message: other event types, subtypes
    other than ``USER_SUBTYPES``, messages by bots (``bot_id``) or by ``bot_user``.
    Raises ``MessageFormatError`` when a field is missing or of the wrong type.
    ``ts`` is the message id: the same message delivered twice has the same ``ts``.
    """
    kind = event.get("type")
    if kind not in ("message", "app_mention"):
        return None
    subtype = event.get("subtype")
    if subtype is not None and subtype not in USER_SUBTYPES:
        return None
    if event.get("bot_id") is not None:
        return None
    user = _required_str(event, "user")
    if user == bot_user:
        return None
    channel = _required_str(event, "channel")
    ts = _required_str(event, "ts")
    try:
        sent_at = float(ts)
    except ValueError:
        raise MessageFormatError("ts must be a Slack timestamp") from None
    text = event.get("text")
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise MessageFormatError("text must be a string")
    channel_type = event.get("channel_type")
    if channel_type is None:
        private = kind == "message" and channel.startswith("D")
        chat_type = ChatType.PRIVATE if private else ChatType.GROUP
    elif channel_type in CHAT_TYPES:
        chat_type = CHAT_TYPES[channel_type]
    else:
        raise MessageFormatError("channel_type must be im, channel, group or mpim")
    thread_ts = event.get("thread_ts")
    if thread_ts is not None and (not isinstance(thread_ts, str) or not thread_ts):
        raise MessageFormatError("thread_ts must be a non-empty string")
    if thread_ts == ts:
        thread_ts = None  # the parent of a thread is a message of the channel
    body, mentioned = decode_text(text, bot_user)
    components: list[Component] = [Text(text=body)] if body else []
    components += files_to_components(event.get("files"))
    profile = event.get("user_profile")
    name = None
    if isinstance(profile, dict):
        name = _optional_str(profile, "display_name") or _optional_str(profile, "real_name")
    return SlackMessage(
        kind=kind,
        channel=channel,
        ts=ts,
        chat_type=chat_type,
        chat_id=f"{channel}:{thread_ts}" if thread_ts else channel,
        thread_ts=thread_ts,
        parent_user=_optional_str(event, "parent_user_id"),
        user=user,
        user_name=name,
        time=sent_at,
        components=components,
        mentions_bot=mentioned,
    )


def wake(
    msg: SlackMessage,
    platform_id: str,
    bot_user: str | None,
    cfg: WakeConfig,
    bot_messages: Container[str],
) -> Event | None:
    """The ``Event`` for a message meant for the bot, or None when the wake rules say
    the bot should stay quiet. ``bot_messages`` holds ``<channel>:<ts>`` of the
    messages the bot sent (a thread under one of them is a reply to the bot). Raises
    ``MessageFormatError`` when the event does not fit the model."""
    components = list(msg.components)
    parent_is_bot = msg.thread_ts is not None and (
        (bot_user is not None and msg.parent_user == bot_user)
        or f"{msg.channel}:{msg.thread_ts}" in bot_messages
    )
    woken = group_woken(
        msg.chat_type,
        components,
        cfg,
        mentioned=msg.mentions_bot or msg.kind == "app_mention",
        replied_to_bot=parent_is_bot,
    )
    if not woken:
        return None
    try:
        return Event(
            platform_id=platform_id,
            chat_type=msg.chat_type,
            chat_id=msg.chat_id,
            sender=Sender(id=msg.user, name=msg.user_name),
            message_id=msg.ts,
            time=msg.time,
            components=tuple(components),
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise MessageFormatError(f"event does not fit: {where}: {first['msg']}") from None
