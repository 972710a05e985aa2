"""Reply components → Slack sends.

    (Text, Mention, Image, Voice, File...) ─ render_reply ─► [Post, ..., Upload, ...]

    Post     one chat.postMessage: mrkdwn text (split at TEXT_LIMIT), or an image block
    Upload   one files_upload_v2 of bytes

Text goes out escaped (``& < >``, as Slack asks), a ``Mention`` as ``<@id>``. Media
given as a data: URL are uploaded; an http(s) image goes as an image block, an http(s)
voice or file as a link, an image known by its Slack file id as an image block
(``slack_file``). A voice or file known only by a file id or a local path cannot be
sent and is left out.

Everything here is pure: no I/O, no state.
"""

from __future__ import annotations

import logging
import mimetypes
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from astr_ray.media import parse_data_url
from astr_ray.message import Component, File, Image, Mention, Text, Voice
from astr_ray.platforms.base import split_text

__all__ = ["TEXT_LIMIT", "Post", "Send", "Upload", "escape", "render_reply"]

log = logging.getLogger(__name__)

TEXT_LIMIT = 4000
"""Characters of text in one message: Slack truncates ``chat.postMessage`` text past
40,000 characters and recommends staying under 4,000."""


def escape(text: str) -> str:
    """Escape plain text for Slack's ``text`` field (``& < >``, as Slack asks)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@dataclass(frozen=True)
class Post:
    """One ``chat.postMessage``: mrkdwn ``text`` (the notification text beside blocks)."""

    text: str
    blocks: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class Upload:
    """One ``files_upload_v2`` of bytes into the chat."""

    filename: str
    data: bytes


Send = Post | Upload


def _filename(stem: str, mime: str | None) -> str:
    ext = mimetypes.guess_extension(mime) if mime else None
    return stem + (ext or ".bin")


def _image(comp: Image) -> Send | None:
    if comp.url is not None:
        inline = parse_data_url(comp.url)
        if inline is not None:
            data, mime = inline
            return Upload(_filename("image", mime or comp.mime or "image/png"), data)
        if comp.url.startswith(("http://", "https://")):
            block: dict[str, Any] = {"type": "image", "image_url": comp.url, "alt_text": "image"}
            return Post(text="image", blocks=[block])
    if comp.file_id is not None:
        by_id = {"type": "image", "slack_file": {"id": comp.file_id}, "alt_text": "image"}
        return Post(text="image", blocks=[by_id])
    return None


def _attachment(comp: Voice | File) -> Send | None:
    name = comp.name if isinstance(comp, File) else None
    if comp.url is not None:
        inline = parse_data_url(comp.url)
        if inline is not None:
            data, mime = inline
            return Upload(name or _filename("voice", mime or "audio/mpeg"), data)
        if comp.url.startswith(("http://", "https://")):
            return Post(text=f"<{comp.url}|{escape(name or 'voice message')}>")
    return None


def render_reply(components: Sequence[Component], limit: int = TEXT_LIMIT) -> list[Send]:
    """The sends that carry a reply: its text (``Mention`` as ``<@id>``, the rest
    escaped) split at ``limit`` over as many posts as needed, then each medium in
    order. Components that cannot be sent (a voice or file known only by a file id
    or a local path) are logged and left out."""
    text: list[str] = []
    media: list[Send] = []
    for comp in components:
        send: Send | None = None
        if isinstance(comp, Text):
            text.append(escape(comp.text))
            continue
        if isinstance(comp, Mention):
            text.append(f"<@{comp.user_id}>")
            continue
        if isinstance(comp, Image):
            send = _image(comp)
        elif isinstance(comp, Voice | File):
            send = _attachment(comp)
        else:  # ReplyTo: a thread decides where replies go
            continue
        if send is None:
            log.info("slack: a %s with neither data nor a public URL is not sent", comp.type)
        else:
            media.append(send)
    posts: list[Send] = [Post(p) for p in split_text("".join(text), limit) if p.strip()]
    return posts + media
