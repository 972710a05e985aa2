"""Bot API calls for the Telegram bridge: flood control, link failures, media, secrets.

    bridge ── send_text / edit_text / send_media ──► BotCalls.run(method, call)
                                                        │ RetryAfter (429): wait, retry
                                                        │ never reached Telegram: retry
                                                        │ anything else: PlatformError
                                                        ▼ all within action_timeout_s
                                                   telegram.Bot (python-telegram-bot)

A call that may have reached Telegram (the link broke mid-request, a read timed out) is
not repeated: chat platforms do not deduplicate sends, and a lost reply is recorded in
the delivery ledger (resent if the message is delivered again) while a doubled one
cannot be taken back.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse
from urllib.request import url2pathname

import httpx
from telegram import Bot, InputFile, Message, ReplyParameters
from telegram.error import BadRequest, NetworkError, RetryAfter, TelegramError, TimedOut

from astr_ray.errors import PlatformError
from astr_ray.media import parse_data_url
from astr_ray.message import File, Image, Voice
from astr_ray.platforms.telegram_updates import seconds

__all__ = ["REDACTED_LOGGERS", "BotCalls", "Redact"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# PTB 22 warns on every read of a time period given in seconds (``RetryAfter`` reads its
# own while it is built), unless one opts in to the coming ``timedelta`` form; our
# readers (``seconds``) take either.
os.environ.setdefault("PTB_TIMEDELTA", "true")

REDACTED_LOGGERS = ("httpx", "telegram.Bot", "telegram.BaseRequest", "telegram.HTTPXRequest")
"""Loggers that print secrets: Bot API URLs carry the token (httpx logs every request at
INFO, PTB its base URL at DEBUG), and PTB logs call parameters (``setWebhook``'s
``secret_token``) at DEBUG."""

_UNSENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def _unsent(exc: NetworkError) -> bool:
    """Whether a failed call certainly did not run: the connection was never made, or
    Telegram answered with an HTTP error status (5xx) instead of running it."""
    if isinstance(exc.__cause__, _UNSENT):
        return True
    return exc.__cause__ is None and not isinstance(exc, TimedOut)


class Redact(logging.Filter):
    """Replaces secrets in log records (message and arguments) with ``<token>``."""

    def __init__(self, *secrets: str) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:
            return True
        if any(s in text for s in self.secrets):
            for secret in self.secrets:
                text = text.replace(secret, "<token>")
            record.msg = text
            record.args = None
        return True


async def _media_input(comp: Image | Voice | File) -> str | InputFile | None:
    """What the Bot API takes for a media component: an http(s) URL as is (Telegram
    fetches it), a data: or file: URL as uploaded bytes, else the Telegram file id."""
    url = comp.url
    name = comp.name if isinstance(comp, File) else None
    if url is None or not url.startswith(("data:", "file:", "http://", "https://")):
        return comp.file_id
    if url.startswith(("http://", "https://")):
        return url
    if url.startswith("data:"):
        parsed = parse_data_url(url)
        if parsed is None:
            raise ValueError("a broken data URL")
        data, mime = parsed
        ext = (mimetypes.guess_extension(mime) if mime else None) or ""
        return InputFile(data, filename=name or f"{comp.type}{ext}")
    path = Path(url2pathname(urlparse(url).path))
    data = await asyncio.to_thread(path.read_bytes)
    return InputFile(data, filename=name or path.name)


class BotCalls:
    """The Bot API calls the bridge makes, each bounded by ``timeout_s`` (waits for
    flood control and retries included). Failures raise ``PlatformError`` with the
    method named and the token scrubbed. ``count`` is told of each "rate_limited"."""

    def __init__(
        self,
        bot: Bot,
        *,
        platform_id: str,
        token: str,
        timeout_s: float,
        count: Callable[[str], None],
    ) -> None:
        self.bot = bot
        self.platform_id = platform_id
        self.timeout_s = timeout_s
        self._token = token
        self._count = count

    def scrub(self, text: str) -> str:
        return text.replace(self._token, "<token>")

    def _error(self, why: str, method: str, exc: BaseException | None = None) -> PlatformError:
        detail = f"{why}: {self.scrub(str(exc))}" if exc is not None else why
        return PlatformError(detail, platform=self.platform_id, method=method)

    async def run(self, method: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run one Bot API call. On ``RetryAfter`` waits what Telegram asked (counted
        "rate_limited") and tries again; a call that never reached Telegram is retried
        after a short pause; both only while ``timeout_s`` allows."""
        deadline = time.monotonic() + self.timeout_s
        pause = 0.1
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._error("no success within the action time-out", method)
            try:
                async with asyncio.timeout(remaining):
                    return await call()
            except TimeoutError:
                raise self._error("no answer within the action time-out", method) from None
            except RetryAfter as exc:
                self._count("rate_limited")
                wait = seconds(exc, "retry_after") or 1.0
                if time.monotonic() + wait > deadline:
                    raise self._error("rate limited past the action time-out", method) from None
                log.info("%s: %s rate limited; retrying in %.1fs", self.platform_id, method, wait)
                await asyncio.sleep(wait)
            except BadRequest as exc:
                raise self._error("refused", method, exc) from None
            except NetworkError as exc:
                if not _unsent(exc):
                    raise self._error("link failed mid-call (not repeated)", method, exc) from None
                log.debug("%s: %s did not reach Telegram: %s", self.platform_id, method, exc)
                await asyncio.sleep(min(pause, max(deadline - time.monotonic(), 0)))
                pause = min(pause * 2, 2.0)
            except TelegramError as exc:
                raise self._error("failed", method, exc) from None

    async def send_text(self, chat_id: int | str, text: str, quote: int | None) -> Message:
        return await self.run(
            "sendMessage",
            lambda: self.bot.send_message(chat_id, text, reply_parameters=_reply_to(quote)),
        )

    async def edit_text(self, chat_id: int | str, message_id: int, text: str) -> None:
        """Replace a message's text; Telegram's "message is not modified" is success."""

        async def edit() -> Any:
            try:
                return await self.bot.edit_message_text(
                    text, chat_id=chat_id, message_id=message_id
                )
            except BadRequest as exc:
                if "not modified" not in str(exc).lower():
                    raise
                return True

        await self.run("editMessageText", edit)

    async def send_media(
        self, chat_id: int | str, comp: Image | Voice | File, quote: int | None
    ) -> Message | None:
        """Send one media component (photo, voice or document); None when it carries
        nothing Telegram can take (logged)."""
        try:
            media = await _media_input(comp)
        except (OSError, ValueError) as exc:
            log.warning("%s: cannot read a %s to send: %s", self.platform_id, comp.type, exc)
            return None
        if media is None:
            log.warning("%s: a %s without url or file id; skipped", self.platform_id, comp.type)
            return None
        reply = _reply_to(quote)
        if isinstance(comp, Image):
            return await self.run(
                "sendPhoto", lambda: self.bot.send_photo(chat_id, media, reply_parameters=reply)
            )
        if isinstance(comp, Voice):
            return await self.run(
                "sendVoice", lambda: self.bot.send_voice(chat_id, media, reply_parameters=reply)
            )
        return await self.run(
            "sendDocument", lambda: self.bot.send_document(chat_id, media, reply_parameters=reply)
        )


def _reply_to(quote: int | None) -> ReplyParameters | None:
    if quote is None:
        return None
    return ReplyParameters(message_id=quote, allow_sending_without_reply=True)
