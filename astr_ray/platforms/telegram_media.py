"""Incoming Telegram media → bytes, for ``TelegramBridge.fetch_media``.

    file id ── getFile (BotCalls: flood control, token scrubbed) ──► file_size, file_path
        │ file_size over the cap: refused, nothing downloaded
        ▼
    GET <file_base><token>/<file_path> ── capped while reading ──► (bytes, media type)

The download URL carries the bot token, so it stays inside this module: it goes into
no event, error or log line (``fetch_url``'s errors never name the URL, and aiohttp logs
no request URLs).
"""

from __future__ import annotations

from astr_ray.config import TelegramConfig
from astr_ray.errors import PlatformError
from astr_ray.media import check_size, fetch_url, media_type
from astr_ray.platforms.telegram_calls import BotCalls

__all__ = ["fetch_file", "file_base"]

_API_SUFFIX = "/bot"


def file_base(cfg: TelegramConfig) -> str:
    """Where the Bot API serves files: ``cfg.file_base`` when set; otherwise derived
    from ``cfg.api_base`` (``<server>/bot`` → ``<server>/file/bot``), so that an account
    pointed at a local Bot API server downloads from that server too, not from
    api.telegram.org."""
    if "file_base" in cfg.model_fields_set or not cfg.api_base.endswith(_API_SUFFIX):
        return cfg.file_base
    return cfg.api_base.removesuffix(_API_SUFFIX) + "/file" + _API_SUFFIX


async def fetch_file(
    calls: BotCalls, file_id: str, max_bytes: int, timeout_s: float
) -> tuple[bytes, str | None]:
    """The bytes and media type of the file ``file_id``. ``getFile`` is bounded by the
    calls' action time-out, the download by ``timeout_s``. Raises ``PlatformError``
    (an unknown file id: Telegram's "invalid file_id") or ``MediaError`` (too large, a
    failed download)."""
    found = await calls.run("getFile", lambda: calls.bot.get_file(file_id))
    if found.file_size is not None:
        check_size(found.file_size, max_bytes)
    url = found.file_path
    if not url:
        raise PlatformError("getFile gave no file path", platform=calls.platform_id)
    data, content_type = await fetch_url(url, max_bytes, timeout_s=timeout_s)
    # Telegram serves every file as application/octet-stream; the path's extension
    # (voice/file_7.oga) says more.
    return data, media_type(content_type, url)
