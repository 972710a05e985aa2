"""Media bytes: ``data:`` URLs and bounded downloads.

Components (``Image``, ``Voice``, ``File``) carry media as an http(s) URL, a ``data:``
URL or a platform file id. This module turns the first two into bytes, with a size cap
checked while reading (a hostile peer cannot make us buffer more than ``max_bytes``).

    parse_data_url / make_data_url    data: URLs ⇄ (bytes, media type)
    decode_base64, check_size         inline payloads and declared sizes, capped
    fetch_url                         a bounded GET (the platform bridges add who may be
                                      asked: ``url_allowed``)
    media_type                        the type a download is, from its header or its name
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
from collections.abc import Mapping, Sequence
from urllib.parse import unquote_to_bytes, urlsplit

import aiohttp
from yarl import URL

from astr_ray.errors import AstrRayError

__all__ = [
    "MediaError",
    "check_size",
    "decode_base64",
    "fetch_url",
    "make_data_url",
    "media_type",
    "parse_data_url",
    "url_allowed",
]

GENERIC_TYPES = frozenset({"application/octet-stream", "binary/octet-stream"})
"""Content-Types that say nothing about the media (file servers send them for all)."""


class MediaError(AstrRayError):
    """Media that could not be read: a broken data URL, a failed or oversized download."""


def parse_data_url(url: str) -> tuple[bytes, str | None] | None:
    """The bytes and media type of a ``data:`` URL; None when it is not one or is
    broken (bad base64, no comma)."""
    if not url.startswith("data:"):
        return None
    head, sep, payload = url[5:].partition(",")
    if not sep:
        return None
    params = head.split(";")
    mime = params[0] or None
    try:
        if "base64" in params[1:]:
            return base64.b64decode(payload, validate=True), mime
        return unquote_to_bytes(payload), mime
    except (binascii.Error, ValueError):
        return None


def check_size(size: int, max_bytes: int) -> None:
    """Raise ``MediaError`` when ``size`` bytes are over ``max_bytes``."""
    if size > max_bytes:
        raise MediaError(f"media is over the {max_bytes:,} byte limit")


def decode_base64(payload: str, max_bytes: int) -> bytes:
    """Decode base64 (whitespace allowed: some peers wrap lines) of at most ``max_bytes``
    decoded bytes; the size is checked before decoding. Raises ``MediaError``."""
    compact = "".join(payload.split())
    check_size(len(compact) * 3 // 4 - compact[-2:].count("="), max_bytes)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise MediaError("media is not valid base64") from None


def url_allowed(
    url: str,
    *,
    origins: Sequence[str] = (),
    https_hosts: Sequence[str] = (),
    https_domains: Sequence[str] = (),
) -> bool:
    """Whether ``url`` may be fetched with a platform's credentials: it has the origin
    (scheme, host, port) of one of ``origins`` (URLs, e.g. a configured API base), or is
    https on one of ``https_hosts``, on one of ``https_domains`` or a subdomain of one.
    URLs with user info (``https://files.slack.com@evil.example/``) or that do not parse
    are never allowed. Parsed with yarl, as aiohttp parses what it then fetches."""
    try:
        target = URL(url)
        if not target.absolute or target.user is not None or target.password is not None:
            return False
        host = (target.host or "").lower()
        for base in origins:
            allowed = URL(base)
            if (target.scheme, host, target.port) == (
                allowed.scheme,
                (allowed.host or "").lower(),
                allowed.port,
            ):
                return True
    except ValueError:
        return False
    if target.scheme != "https" or target.port != 443:
        return False
    return host in https_hosts or any(host == d or host.endswith("." + d) for d in https_domains)


def media_type(content_type: str | None, name: str | None = None) -> str | None:
    """The media type of a download: its Content-Type without parameters, unless that
    is missing or generic (``application/octet-stream``); then a guess from ``name``
    (a file name or URL), else whatever the server said."""
    given = content_type.split(";", 1)[0].strip().lower() if content_type else None
    if given and given not in GENERIC_TYPES:
        return given
    if name:
        path = urlsplit(name).path if "://" in name else name
        guessed = mimetypes.guess_type(path, strict=False)[0]
        if guessed:
            return guessed
    return given or None


def make_data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


async def fetch_url(
    url: str,
    max_bytes: int,
    *,
    timeout_s: float = 30.0,
    headers: Mapping[str, str] | None = None,
) -> tuple[bytes, str | None]:
    """GET an http(s) URL: (body, Content-Type). Raises ``MediaError`` for another
    scheme, a status other than 200, a body over ``max_bytes`` (stops reading there),
    a time-out or a connection failure. ``headers`` (e.g. a bearer token) never appear
    in the error."""
    if not url.startswith(("http://", "https://")):
        raise MediaError("only http(s) URLs can be fetched")
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.get(url, headers=dict(headers or {})) as resp,
        ):
            if resp.status != 200:
                raise MediaError(f"fetching the media gave HTTP {resp.status}")
            declared = resp.content_length
            if declared is not None and declared > max_bytes:
                raise MediaError(f"media is over the {max_bytes:,} byte limit")
            body = bytearray()
            async for piece in resp.content.iter_chunked(64 * 1024):
                body += piece
                if len(body) > max_bytes:
                    raise MediaError(f"media is over the {max_bytes:,} byte limit")
            return bytes(body), resp.headers.get("Content-Type")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise MediaError(f"cannot fetch the media: {type(exc).__name__}") from None
