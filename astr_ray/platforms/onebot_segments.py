"""OneBot v11 message segments ⇄ our message components.

A OneBot message arrives in one of two formats and leaves as segment arrays::

    array   [{"type": "at", "data": {"qq": "10001"}}, {"type": "text", "data": {...}}]
    string  "[CQ:at,qq=10001] hi &#91;1&#93;"  ─ parse_cq ─► the same array
                │
                ▼  to_components
    (Mention, Text, ReplyTo, Image, Voice, File)  ─ an Event's components

    Reply components ─ render_reply ─► [[segment, ...], ...]   one list per send_msg

Everything here is pure: no I/O, no state.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_to_bytes

from astr_ray.errors import MessageFormatError
from astr_ray.message import Component, File, Image, Mention, ReplyTo, Text, Voice
from astr_ray.platforms.base import split_text

__all__ = [
    "TEXT_LIMIT",
    "Parsed",
    "Segment",
    "escape_cq",
    "media_file",
    "normalize_message",
    "parse_cq",
    "render_reply",
    "to_components",
]

Segment = dict[str, Any]

TEXT_LIMIT = 4500
"""Characters of text in one outgoing message; QQ refuses much longer ones."""

_CQ = re.compile(r"\[CQ:([^,\[\]]+)((?:,[^\[\]]*)?)\]")


def _unescape(text: str, *, param: bool) -> str:
    if param:
        text = text.replace("&#44;", ",")
    # "&amp;" last, so that an escaped "&#91;" ("&amp;#91;") stays literal.
    return text.replace("&#91;", "[").replace("&#93;", "]").replace("&amp;", "&")


def escape_cq(text: str, *, param: bool = False) -> str:
    """Escape text for the CQ string format (inside a CQ code when ``param``)."""
    text = text.replace("&", "&amp;").replace("[", "&#91;").replace("]", "&#93;")
    return text.replace(",", "&#44;") if param else text


def parse_cq(message: str) -> list[Segment]:
    """Parse the CQ string format into segments, unescaping text and parameter values.

    Per the OneBot v11 string format: the type runs to the first ``,`` or ``]``, the
    parameters are split at ``,`` and each at its first ``=``.
    """
    segments: list[Segment] = []
    pos = 0
    for match in _CQ.finditer(message):
        if match.start() > pos:
            text = _unescape(message[pos : match.start()], param=False)
            segments.append({"type": "text", "data": {"text": text}})
        data: dict[str, str] = {}
        for part in match.group(2)[1:].split(",") if match.group(2) else ():
            key, _, value = part.partition("=")
            if key:
                data[key] = _unescape(value, param=True)
        segments.append({"type": match.group(1), "data": data})
        pos = match.end()
    if pos < len(message):
        segments.append({"type": "text", "data": {"text": _unescape(message[pos:], param=False)}})
    return segments


def normalize_message(raw: Any) -> list[Segment]:
    """The ``message`` field of an event as a segment array, whichever format it came in.

    Raises ``MessageFormatError`` when it is neither a string nor a list of
    ``{"type": str, "data": dict}`` (a missing or null ``data`` reads as empty).
    """
    if isinstance(raw, str):
        return parse_cq(raw)
    if not isinstance(raw, list):
        raise MessageFormatError("message must be a segment array or a CQ string")
    out: list[Segment] = []
    for i, seg in enumerate(raw):
        if not isinstance(seg, dict) or not isinstance(seg.get("type"), str):
            raise MessageFormatError("segment must be an object with a string type", index=i)
        data = seg.get("data")
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise MessageFormatError("segment data must be an object", index=i)
        out.append({"type": seg["type"], "data": data})
    return out


def _str(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None or isinstance(value, bool | dict | list):
        return None
    text = str(value)
    return text or None


def _is_url(value: str | None) -> bool:
    return value is not None and value.startswith(("http://", "https://", "file://", "data:"))


@dataclass
class Parsed:
    """What ``to_components`` found: the components in order, and how the bot was
    addressed (an ``at`` of its own id; the ids of the messages quoted)."""

    components: list[Component] = field(default_factory=list)
    mentions_bot: bool = False
    replies_to: list[str] = field(default_factory=list)


def to_components(segments: Sequence[Segment], self_id: str | None) -> Parsed:
    """Turn segments into components.

    text → Text; at → Mention (``qq=all`` is kept as text "@all"); reply → ReplyTo;
    image → Image; record → Voice; file → File; face → Text "[face:<id>]". Other
    segment types (json cards, forwards, pokes...) are dropped. An ``at`` of
    ``self_id`` sets ``mentions_bot`` and is left out of the components, and the
    whitespace after it is trimmed, so that the text reads as if addressed to no one.
    Raises ``MessageFormatError`` for a known segment that lacks its key field.
    """
    out = Parsed()
    trim_next = False
    for seg in segments:
        kind, data = seg["type"], seg["data"]
        if kind == "text":
            text = data.get("text")
            if not isinstance(text, str):
                raise MessageFormatError("text segment without text")
            if trim_next:
                text = text.lstrip()
            if text:
                out.components.append(Text(text=text))
            trim_next = False
            continue
        trim_next = False
        if kind == "at":
            qq = _str(data, "qq")
            if qq is None:
                raise MessageFormatError("at segment without qq")
            if self_id is not None and qq == self_id:
                out.mentions_bot = True
                trim_next = True
            elif qq == "all":
                out.components.append(Text(text="@all "))
            else:
                out.components.append(Mention(user_id=qq, name=_str(data, "name")))
        elif kind == "reply":
            mid = _str(data, "id")
            if mid is None:
                raise MessageFormatError("reply segment without id")
            out.replies_to.append(mid)
            out.components.append(ReplyTo(message_id=mid))
        elif kind == "image":
            file, url = _str(data, "file"), _str(data, "url")
            if url is None and _is_url(file):
                url = file
            if file is None and url is None:
                raise MessageFormatError("image segment without file or url")
            out.components.append(Image(url=url, file_id=file))
        elif kind == "record":
            file, url = _str(data, "file"), _str(data, "url")
            if url is None and _is_url(file):
                url = file
            if file is None and url is None:
                raise MessageFormatError("record segment without file or url")
            out.components.append(Voice(url=url, file_id=file))
        elif kind == "file":
            file, url = _str(data, "file"), _str(data, "url")
            file_id = _str(data, "file_id") or file
            name = _str(data, "name") or file or "file"
            size = data.get("file_size", data.get("size"))
            size_int = int(size) if isinstance(size, int | str) and str(size).isdigit() else None
            out.components.append(File(name=name, url=url, file_id=file_id, size=size_int))
        elif kind == "face":
            out.components.append(Text(text=f"[face:{_str(data, 'id') or '?'}]"))
    return out


def media_file(url: str | None, file_id: str | None) -> str | None:
    """The ``file`` parameter for an outgoing image/record/file segment.

    A data URL becomes ``base64://<payload>`` (what OneBot implementations accept for
    inline bytes); other URLs go as they are; without a URL, the platform file id.
    """
    if url is None:
        return file_id
    if not url.startswith("data:"):
        return url
    head, sep, payload = url.partition(",")
    if not sep:
        return None
    if head.endswith(";base64"):
        return "base64://" + payload
    return "base64://" + base64.b64encode(unquote_to_bytes(payload)).decode("ascii")


def render_reply(
    components: Sequence[Component], quote: str | None = None, limit: int = TEXT_LIMIT
) -> list[list[Segment]]:
    """Turn reply components into one segment list per message to send.

    Text and images share a message; long text is split (``split_text``) over several;
    a voice (``record``) or a file goes in a message of its own, as QQ wants. When
    ``quote`` is given, the first message starts with a ``reply`` segment quoting it.
    Components with nothing to send (an image with neither URL nor file id) are left
    out; the result is empty when nothing is left.
    """
    messages: list[list[Segment]] = []
    current: list[Segment] = []
    used = 0

    def flush() -> None:
        nonlocal current, used
        if current:
            messages.append(current)
        current, used = [], 0

    for comp in components:
        if isinstance(comp, Text):
            pieces = split_text(comp.text, limit)
            for i, piece in enumerate(pieces):
                if i > 0 or used + len(piece) > limit:
                    flush()
                current.append({"type": "text", "data": {"text": piece}})
                used += len(piece)
        elif isinstance(comp, Image):
            file = media_file(comp.url, comp.file_id)
            if file:
                current.append({"type": "image", "data": {"file": file}})
        elif isinstance(comp, Mention):
            current.append({"type": "at", "data": {"qq": comp.user_id}})
        elif isinstance(comp, ReplyTo):
            if quote is None and not messages and not current:
                quote = comp.message_id
        elif isinstance(comp, Voice | File):
            file = media_file(comp.url, comp.file_id)
            if not file:
                continue
            flush()
            if isinstance(comp, Voice):
                current.append({"type": "record", "data": {"file": file}})
            else:
                current.append({"type": "file", "data": {"file": file, "name": comp.name}})
            flush()
    flush()
    if quote is not None and messages:
        messages[0].insert(0, {"type": "reply", "data": {"id": quote}})
    return messages
