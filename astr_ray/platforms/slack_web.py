"""The Slack Web API as the bridge uses it (slack-sdk's ``AsyncWebClient``).

    SlackWeb.call(method, coroutine) ── 429: wait Retry-After, try again ──► Slack
             │  bounded by action_timeout_s, waits included
             └─ SlackApiError / time-out / connection error ─► PlatformError

Every message posted is noted in the ``DeliveryLedger`` (as ``<channel>:<ts>``), so a
thread under it reads as a reply to the bot. Tokens stay inside the SDK client: they
never reach an error message or a log line.

Files. ``download(file_id)`` asks ``files.info`` for the file's ``url_private_download``
and fetches it with ``Authorization: Bearer <bot token>``, only from Slack's own hosts
(``FILE_DOMAINS``) or the configured API base's origin: a file object that points
anywhere else is refused, so the token never leaves for another host.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.builtin_async_handlers import AsyncConnectionErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from astr_ray.config import SlackConfig
from astr_ray.errors import PlatformError
from astr_ray.media import check_size, fetch_url, media_type, url_allowed
from astr_ray.message import Component
from astr_ray.platforms.delivery import DeliveryLedger
from astr_ray.platforms.slack_links import RateLimitRetry
from astr_ray.platforms.slack_render import Post, Upload, render_reply

__all__ = ["FILE_DOMAINS", "SlackWeb"]

FILE_DOMAINS = ("slack.com",)
"""Where Slack serves files (files.slack.com, over https): the bot token may go there."""


class SlackWeb:
    """Web API calls for one bot token. ``open()`` makes the HTTP session and returns
    ``auth.test``'s answer; ``close()`` ends it (calls then raise ``PlatformError``).
    ``on_rate_limited(seconds)`` is told of each 429 wait."""

    def __init__(
        self,
        cfg: SlackConfig,
        ledger: DeliveryLedger,
        on_rate_limited: Callable[[float], None],
    ) -> None:
        self.cfg = cfg
        self._ledger = ledger
        self._on_rate_limited = on_rate_limited
        self._http: aiohttp.ClientSession | None = None
        self._client: AsyncWebClient | None = None
        self._ims: dict[str, str] = {}  # user id → IM channel

    @property
    def client(self) -> AsyncWebClient:
        if self._client is None:
            raise PlatformError("not started", platform=self.cfg.id)
        return self._client

    async def open(self) -> AsyncSlackResponse:
        """Start the HTTP session and check the token (``auth.test``); raises
        ``PlatformError`` when Slack refuses it or cannot be reached."""
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.cfg.action_timeout_s)
        )
        self._client = AsyncWebClient(
            token=self.cfg.bot_token.get_secret_value(),
            base_url=self.cfg.api_base,
            session=self._http,
            logger=logging.getLogger(__name__),
            retry_handlers=[
                AsyncConnectionErrorRetryHandler(),
                RateLimitRetry(self._on_rate_limited),
            ],
        )
        return await self.call("auth.test", self._client.auth_test())

    async def close(self) -> None:
        http, self._http, self._client = self._http, None, None
        if http is not None:
            await http.close()

    async def call(self, method: str, call: Awaitable[AsyncSlackResponse]) -> AsyncSlackResponse:
        """Await one Web API call (429s waited out inside), bounded by
        ``action_timeout_s``; raises ``PlatformError`` naming Slack's error code."""
        try:
            async with asyncio.timeout(self.cfg.action_timeout_s):
                return await call
        except SlackApiError as exc:
            error = exc.response.get("error") if exc.response is not None else None
            raise PlatformError(
                f"{method} failed: {error or 'error'}", platform=self.cfg.id, method=method
            ) from None
        except TimeoutError:
            raise PlatformError(
                f"{method} timed out", platform=self.cfg.id, after_s=self.cfg.action_timeout_s
            ) from None
        except (SlackClientError, aiohttp.ClientError, OSError) as exc:
            raise PlatformError(
                f"{method} failed: {type(exc).__name__}: {exc}", platform=self.cfg.id
            ) from None

    async def post(
        self,
        channel: str,
        thread_ts: str | None,
        text: str,
        blocks: list[dict[str, Any]] | None = None,
    ) -> str:
        """Post a message (``text`` is mrkdwn) to a channel or a thread; its ``ts``."""
        args: dict[str, Any] = {"channel": channel, "text": text}
        if thread_ts is not None:
            args["thread_ts"] = thread_ts
        if blocks is not None:
            args["blocks"] = blocks
        resp = await self.call("chat.postMessage", self.client.chat_postMessage(**args))
        ts = resp.get("ts")
        if not isinstance(ts, str):
            raise PlatformError("chat.postMessage answered without a ts", platform=self.cfg.id)
        self._ledger.sent(f"{channel}:{ts}")
        return ts

    async def update(self, channel: str, ts: str, text: str) -> None:
        """Replace the text of one of the bot's messages."""
        await self.call("chat.update", self.client.chat_update(channel=channel, ts=ts, text=text))

    async def send(
        self, channel: str, thread_ts: str | None, components: Sequence[Component]
    ) -> None:
        """Send reply components (``render_reply``) in order; the first failure raises."""
        for item in render_reply(components):
            if isinstance(item, Post):
                await self.post(channel, thread_ts, item.text, item.blocks)
            elif isinstance(item, Upload):
                upload = self.client.files_upload_v2(
                    channel=channel, thread_ts=thread_ts, filename=item.filename, content=item.data
                )
                await self.call("files_upload_v2", upload)

    async def im(self, user: str) -> str:
        """The IM channel with a user (``conversations.open``), remembered."""
        channel = self._ims.get(user)
        if channel is None:
            resp = await self.call("conversations.open", self.client.conversations_open(users=user))
            info = resp.get("channel")
            channel = info.get("id") if isinstance(info, dict) else None
            if not isinstance(channel, str) or not channel:
                raise PlatformError("conversations.open gave no channel", platform=self.cfg.id)
            self._ims[user] = channel
        return channel

    async def download(self, file_id: str, max_bytes: int) -> tuple[bytes, str | None]:
        """The bytes and media type of the file ``file_id`` (``files.info``, scope
        files:read). A size over ``max_bytes`` is refused before the download, which is
        capped too. Raises ``PlatformError`` (unknown file: ``file_not_found``; a URL on
        a host not allowed) or ``MediaError`` (too large, a failed download)."""
        resp = await self.call("files.info", self.client.files_info(file=file_id))
        info = resp.get("file")
        if not isinstance(info, dict):
            raise PlatformError("files.info gave no file", platform=self.cfg.id)
        size = info.get("size")
        if isinstance(size, int) and not isinstance(size, bool):
            check_size(size, max_bytes)
        url = info.get("url_private_download") or info.get("url_private")
        if not isinstance(url, str) or not url:
            raise PlatformError("the file has no download URL", platform=self.cfg.id)
        if not url_allowed(url, origins=[self.cfg.api_base], https_domains=FILE_DOMAINS):
            raise PlatformError(
                "refused to send the bot token to a host that is not Slack's",
                platform=self.cfg.id,
                file=file_id,
            )
        token = self.cfg.bot_token.get_secret_value()
        data, content_type = await fetch_url(
            url,
            max_bytes,
            timeout_s=self.cfg.action_timeout_s,
            headers={"Authorization": f"Bearer {token}"},
        )
        mime = info.get("mimetype")
        return data, mime if isinstance(mime, str) and mime else media_type(content_type, url)
