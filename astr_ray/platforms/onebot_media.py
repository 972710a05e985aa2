"""Incoming OneBot media → bytes, for ``OneBotBridge.fetch_media``.

What a segment gives, and what is done with it::

    base64://<payload>               decoded (url or file)
    Voice with a file name           get_record {"file", "out_format": "mp3"}
    http(s) url                      fetched, capped (no credential goes along)
    Image / File with a file name    get_image {"file"} / get_file {"file_id"}
        answer: "base64" ─► decoded; else an http(s) "url" ─► fetched; else refused

A voice message prefers ``get_record`` over its URL: QQ voice is SILK, and the URL
NapCat reports gives the raw SILK bytes, which no speech-to-text reads; ``get_record``
has the implementation transcode it (NapCat: ffmpeg) to mp3. A ``file://`` URL or a
local path is the implementation's disk, not ours, and is never read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from astr_ray.errors import PlatformError
from astr_ray.media import decode_base64, fetch_url, media_type
from astr_ray.message import File, Image, Voice

__all__ = ["CallAction", "fetch_media"]

CallAction = Callable[[str, dict[str, Any]], Awaitable[Any]]
"""``OneBotBridge.call_action``: (action, params) → the answer's ``data``."""

BASE64 = "base64://"
RECORD_FORMAT = "mp3"
_HTTP = ("http://", "https://")


def _is_name(value: str | None) -> bool:
    """A file name the implementation knows (not a URL, not inline bytes)."""
    return bool(value) and "://" not in str(value)


async def fetch_media(
    call_action: CallAction,
    comp: Voice | Image | File,
    max_bytes: int,
    *,
    platform_id: str,
    timeout_s: float,
) -> tuple[bytes, str | None]:
    """The bytes and media type of an incoming OneBot media component (see the module
    doc). Raises ``PlatformError`` (nothing to fetch by, an action that failed or gave
    neither bytes nor a URL) or ``MediaError`` (too large, bad base64, a failed
    download)."""
    for ref in (comp.url, comp.file_id):
        if ref is not None and ref.startswith(BASE64):
            return decode_base64(ref.removeprefix(BASE64), max_bytes), None
    if isinstance(comp, Voice) and _is_name(comp.file_id):
        return await _by_action(call_action, comp, max_bytes, platform_id, timeout_s)
    if comp.url is not None and comp.url.startswith(_HTTP):
        data, content_type = await fetch_url(comp.url, max_bytes, timeout_s=timeout_s)
        return data, media_type(content_type, comp.url)
    if _is_name(comp.file_id):
        return await _by_action(call_action, comp, max_bytes, platform_id, timeout_s)
    raise PlatformError("onebot cannot fetch this media", platform=platform_id, media=comp.type)


async def _by_action(
    call_action: CallAction,
    comp: Voice | Image | File,
    max_bytes: int,
    platform_id: str,
    timeout_s: float,
) -> tuple[bytes, str | None]:
    assert comp.file_id is not None
    action: str
    params: dict[str, Any]
    if isinstance(comp, Voice):
        action, params = "get_record", {"file": comp.file_id, "out_format": RECORD_FORMAT}
    elif isinstance(comp, Image):
        action, params = "get_image", {"file": comp.file_id}
    else:
        action, params = "get_file", {"file_id": comp.file_id}
    data = await call_action(action, params)
    if not isinstance(data, dict):
        raise PlatformError(f"{action} gave no file", platform=platform_id, action=action)
    if isinstance(comp, Voice):
        mime: str | None = "audio/mpeg"  # asked for as mp3
    else:
        name = data.get("file_name") or data.get("file")
        mime = media_type(None, name) if isinstance(name, str) else None
    inline = data.get("base64")
    if isinstance(inline, str) and inline:
        return decode_base64(inline.removeprefix(BASE64), max_bytes), mime
    url = data.get("url")
    if isinstance(url, str) and url.startswith(_HTTP):
        body, content_type = await fetch_url(url, max_bytes, timeout_s=timeout_s)
        return body, mime if isinstance(comp, Voice) else media_type(content_type, url) or mime
    raise PlatformError(
        f"{action} gave neither base64 nor an http(s) URL (a file on the implementation's "
        "own disk cannot be read from here)",
        platform=platform_id,
        action=action,
    )
