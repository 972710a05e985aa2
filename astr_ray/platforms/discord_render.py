"""Reply components → the Discord messages that carry them.

    Text, Mention (<@id>)       ─► content, split at 2000 characters over messages
    Image / Voice / File
        data: URL               ─► uploaded bytes, attached to the last text message
                                   (at most 10 a message; more go in messages of their own)
        other URL (http(s)...)  ─► a link in a message after the text (Discord unfurls
                                   image links into previews); nothing is fetched here
        file id only            ─► left out: Discord cannot send an attachment by id

Everything here is pure: no I/O, no state.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Sequence
from dataclasses import dataclass, field

from astr_ray.media import parse_data_url
from astr_ray.message import Component, File, Image, Mention, Text, Voice
from astr_ray.platforms.base import split_text

__all__ = ["MAX_FILES", "TEXT_LIMIT", "Outgoing", "Upload", "render_reply"]

TEXT_LIMIT = 2000
"""Characters of content in one Discord message."""

MAX_FILES = 10
"""Attachments in one Discord message."""


@dataclass(frozen=True)
class Upload:
    filename: str
    data: bytes


@dataclass
class Outgoing:
    """One message to create: its content and the files uploaded with it."""

    content: str = ""
    uploads: list[Upload] = field(default_factory=list)


def _filename(comp: Image | Voice | File, mime: str | None) -> str:
    if isinstance(comp, File):
        return comp.name
    stem = "image" if isinstance(comp, Image) else "voice"
    known = getattr(comp, "mime", None) or mime
    ext = mimetypes.guess_extension(known, strict=False) if known else None
    return stem + (ext or (".png" if isinstance(comp, Image) else ".ogg"))


def render_reply(
    components: Sequence[Component], *, text: bool = True, limit: int = TEXT_LIMIT
) -> list[Outgoing]:
    """The messages that carry ``components``, in sending order (see the module doc).
    With ``text=False`` only the media are rendered (after a streamed text). Empty when
    there is nothing to send."""
    content = ""
    uploads: list[Upload] = []
    links: list[str] = []
    for comp in components:
        if isinstance(comp, Text) and text:
            content += comp.text
        elif isinstance(comp, Mention) and text:
            content += f"<@{comp.user_id}>"
        elif isinstance(comp, Image | Voice | File) and comp.url:
            decoded = parse_data_url(comp.url)
            if decoded is not None:
                uploads.append(Upload(_filename(comp, decoded[1]), decoded[0]))
            elif not comp.url.startswith("data:"):
                links.append(f"{comp.name}: {comp.url}" if isinstance(comp, File) else comp.url)
    messages = [Outgoing(piece) for piece in split_text(content, limit) if piece.strip()]
    first = 0
    if messages and uploads:
        messages[-1].uploads = uploads[:MAX_FILES]
        first = MAX_FILES
    messages.extend(
        Outgoing("", uploads[i : i + MAX_FILES]) for i in range(first, len(uploads), MAX_FILES)
    )
    messages.extend(Outgoing(piece) for piece in split_text("\n".join(links), limit))
    return messages
