"""The Telegram bridge: a bot account (python-telegram-bot) to the turn pipeline.

    polling:  we ── getMe, deleteWebhook, getUpdates(offset, timeout) ──► Bot API  (loop)
    webhook:  we ── getMe, setWebhook(public_url, secret_token) ──► Bot API
              Bot API ── POST cfg.path (X-Telegram-Bot-Api-Secret-Token) ──► our server

    update ─┬─ not parseable          ─► logged, counted as malformed, skipped
            ├─ not a new message      ─► ignored (edits, channel posts, callbacks...)
            └─ message ─ wake rules ─► one task per turn: on_message / on_stream ─► send

No loss, no doubles. Polling confirms an update (the next ``offset``) only after it was
handed to its turn, so updates in a response that never arrived come again. Telegram
re-posts a webhook update that got no 200; a repeated message keeps its ``message_id``
(the turn's idempotency key), the pipeline answers it with its stored reply
(``duplicate=True``), and the delivery ledger sends that again only when the first
delivery failed. Sends wait out flood control and retry calls that never reached
Telegram, within ``action_timeout_s`` (``telegram_calls``).

The token is in every Bot API URL: it is scrubbed from the loggers that print URLs
(``Redact``) and from our errors, and never put into events or stats. Incoming media
are file ids; ``fetch_media`` gets their bytes (``telegram_media``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from telegram import Bot, Update
from telegram.error import InvalidToken, RetryAfter, TelegramError
from telegram.request import HTTPXRequest

from astr_ray.config import TelegramConfig
from astr_ray.errors import MessageFormatError, PlatformError
from astr_ray.lifecycle import Lifecycle, State
from astr_ray.message import Text
from astr_ray.platforms.base import Backoff, Bridge, Media, OnMessage, OnStream
from astr_ray.platforms.net import listen
from astr_ray.platforms.telegram_calls import REDACTED_LOGGERS, BotCalls, Redact
from astr_ray.platforms.telegram_media import fetch_file, file_base
from astr_ray.platforms.telegram_replies import Replies, chat_param
from astr_ray.platforms.telegram_updates import Me, from_elsewhere, seconds, to_event

__all__ = ["TelegramBridge"]

log = logging.getLogger(__name__)

ALLOWED_UPDATES = ("message",)  # edits, channel posts... are not asked for
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"


class TelegramBridge(Bridge):
    """One Telegram bot, bridged to ``on_message`` (or ``on_stream`` when ``cfg.stream``).

    Lifecycle: ``start()`` once (a second call is refused); the link (``getMe``, then
    polling or ``setWebhook``) comes up in the background with backoff
    (``wait_connected``). ``stop()`` is idempotent: it stops polling, cancels turns in
    flight and closes the webhook server and the HTTP client. Counters and
    ``metrics_hook``: see ``Bridge``; webhook posts with a wrong secret count "refused".
    """

    platform = "telegram"

    def __init__(
        self,
        cfg: TelegramConfig,
        on_message: OnMessage,
        *,
        on_stream: OnStream | None = None,
        metrics_hook: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(cfg.id, metrics_hook)
        self.cfg = cfg
        self.lifecycle = Lifecycle(f"telegram-{cfg.id}", self._on_start, self._on_stop)
        self.port: int | None = None
        self._on_message = on_message
        self._on_stream = on_stream
        self._token = cfg.token.get_secret_value()
        self._secret = cfg.secret_token.get_secret_value() if cfg.secret_token else ""
        self._redact = Redact(self._token, self._secret)
        self._request: HTTPXRequest | None = None
        self._calls: BotCalls | None = None
        self._replies: Replies | None = None
        self._me: Me | None = None
        self._up = asyncio.Event()
        self._ever_up = False
        self._failing = False
        self._link: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self._counts["refused"] = 0

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Webhook mode listens first (``port`` is the bound port, also when cfg.port is
        0; raises ``PlatformError`` if it is taken); then the link comes up in the
        background."""
        await self.lifecycle.start()

    async def stop(self) -> None:
        await self.lifecycle.stop()

    async def _on_start(self) -> None:
        for name in REDACTED_LOGGERS:  # before the Bot exists: it logs its URL at once
            logging.getLogger(name).addFilter(self._redact)
        if self.cfg.mode == "webhook":
            await self._listen()
        self._request = HTTPXRequest(connection_pool_size=32)
        bot = Bot(
            self._token,
            base_url=self.cfg.api_base,
            base_file_url=file_base(self.cfg),
            request=self._request,
            get_updates_request=self._request,
        )
        self._calls = BotCalls(
            bot,
            platform_id=self.cfg.id,
            token=self._token,
            timeout_s=self.cfg.action_timeout_s,
            count=self.count,
        )
        self._replies = Replies(
            self.cfg, self._calls, self.count, self._on_message, self._on_stream
        )
        loop = self._poll_loop() if self.cfg.mode == "polling" else self._register_loop()
        self._link = asyncio.create_task(loop)

    async def _listen(self) -> None:
        app = web.Application()
        app.router.add_post(self.cfg.path, self._on_post)
        self._runner, self.port = await listen(app, self.cfg.host, self.cfg.port, self.cfg.id)
        log.info(
            "telegram %s: webhook on %s:%s%s", self.cfg.id, self.cfg.host, self.port, self.cfg.path
        )

    async def _on_stop(self) -> None:
        self._up.clear()
        if self._link is not None:
            self._link.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._link
        await self.cancel_turns()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._request is not None:
            await self._request.shutdown()
        for name in REDACTED_LOGGERS:
            logging.getLogger(name).removeFilter(self._redact)

    async def wait_connected(self, within: float) -> bool:
        """True once the bot knows who it is and polls (or its webhook is set); False
        after ``within`` seconds."""
        try:
            async with asyncio.timeout(within):
                await self._up.wait()
        except TimeoutError:
            return False
        return True

    def connected(self) -> bool:
        return self._up.is_set()

    def stats(self) -> dict[str, Any]:
        """``connected``, ``mode``, ``bot_user`` ("@name" once known), and the counters
        since start (see ``Bridge``; ``reconnects``: links regained after a loss,
        ``refused``: webhook posts with a wrong secret)."""
        return {
            "connected": self.connected(),
            "mode": self.cfg.mode,
            "bot_user": f"@{self._me.username}" if self._me else None,
            **self._counts,
        }

    # -- the link ---------------------------------------------------------------------------
    def _link_up(self, backoff: Backoff) -> None:
        self._failing = False
        if self._up.is_set():
            return
        if self._ever_up:
            self.count("reconnects")
            log.info("telegram %s: link regained", self.cfg.id)
        self._ever_up = True
        backoff.connected()
        self._up.set()

    def _link_down(self, backoff: Backoff, exc: Exception) -> None:
        """A Bot API call of the link failed: logged once per outage (token scrubbed)."""
        assert self._calls is not None
        if not self._failing:
            why = self._calls.scrub(str(exc))
            if isinstance(exc, InvalidToken):
                log.error("telegram %s: the bot token was rejected: %s", self.cfg.id, why)
            else:
                log.warning(
                    "telegram %s: Bot API unreachable (%s): %s",
                    self.cfg.id,
                    type(exc).__name__,
                    why,
                )
        self._failing = True
        if self._up.is_set():
            backoff.lost()
            self._up.clear()

    async def _whoami(self) -> Me:
        assert self._calls is not None
        user = await self._calls.bot.get_me()
        if not user.username:
            raise MessageFormatError("getMe gave no username")
        log.info("telegram %s: logged in as @%s", self.cfg.id, user.username)
        return Me(id=user.id, username=user.username)

    async def _poll_loop(self) -> None:
        """Long-poll ``getUpdates``; reconnect with backoff when it fails."""
        assert self._calls is not None
        bot = self._calls.bot
        backoff = Backoff(self.cfg.reconnect_max_s)
        offset: int | None = None
        webhook_cleared = False
        while True:
            try:
                if self._me is None:
                    self._me = await self._whoami()
                if not webhook_cleared:  # Telegram refuses getUpdates while one is set
                    await bot.delete_webhook()
                    webhook_cleared = True
                # A link not known to be up is tried with a short poll, so that it counts
                # as up (or back) at once. Raw dicts (the method name in lower case: the
                # Bot API ignores case, and PTB warns on names it has methods for) so that
                # one update PTB cannot parse is skipped alone; Bot.get_updates parses,
                # and fails, the batch as a whole.
                wait_s = self.cfg.poll_timeout_s if self._up.is_set() else 0
                batch = await bot.do_api_request(
                    "getupdates",
                    api_kwargs={
                        "offset": offset,
                        "timeout": wait_s,
                        "allowed_updates": ALLOWED_UPDATES,
                    },
                    read_timeout=wait_s + 10,
                )
            except RetryAfter as exc:
                self.count("rate_limited")
                await asyncio.sleep(seconds(exc, "retry_after") or 1.0)
                continue
            except (TelegramError, MessageFormatError) as exc:
                self._link_down(backoff, exc)
                await asyncio.sleep(backoff.next())
                continue
            self._link_up(backoff)
            offset = self._take(batch, offset)

    def _take(self, batch: Any, offset: int | None) -> int | None:
        """Hand each new update of a getUpdates result to its turn; the next offset."""
        if not isinstance(batch, list):
            self.malformed("getUpdates result is not a list", batch)
            return offset
        for raw in batch:
            update_id = raw.get("update_id") if isinstance(raw, dict) else None
            if not isinstance(update_id, int) or isinstance(update_id, bool):
                self.malformed("update without an update_id", raw)
                continue
            if offset is not None and update_id < offset:
                continue  # handed off already
            self._on_update(raw)
            offset = update_id + 1
        return offset

    async def _register_loop(self) -> None:
        """Webhook mode: learn who we are and set the webhook, with backoff."""
        assert self._calls is not None and self.cfg.public_url
        backoff = Backoff(self.cfg.reconnect_max_s)
        while True:
            try:
                if self._me is None:
                    self._me = await self._whoami()
                await self._calls.bot.set_webhook(
                    url=self.cfg.public_url,
                    secret_token=self._secret,
                    allowed_updates=ALLOWED_UPDATES,
                )
            except (TelegramError, MessageFormatError) as exc:
                self._link_down(backoff, exc)
                await asyncio.sleep(backoff.next())
                continue
            log.info("telegram %s: webhook set", self.cfg.id)
            self._link_up(backoff)
            return

    async def _on_post(self, request: web.Request) -> web.Response:
        """A webhook update: 403 for a wrong secret, 503 until we know who we are, 400
        for a body that is not an update, else 200 at once (the turn runs on)."""
        given = request.headers.get(SECRET_HEADER, "")
        if not hmac.compare_digest(given.encode(), self._secret.encode()):
            self.count("refused")
            log.warning(
                "telegram %s: refused a webhook post from %s: wrong or missing secret token",
                self.cfg.id,
                request.remote,
            )
            return web.Response(status=403, text="forbidden")
        if self._me is None or self.lifecycle.state is not State.RUNNING:
            return web.Response(status=503, text="not ready")
        body = await request.text()
        try:
            raw = json.loads(body)
        except ValueError:
            self.malformed("webhook body is not JSON", body)
            return web.Response(status=400, text="not JSON")
        if not isinstance(raw, dict) or not self._on_update(raw):
            if not isinstance(raw, dict):
                self.malformed("webhook body is not an object", body)
            return web.Response(status=400, text="not an update")
        return web.Response(text="ok")

    # -- updates ---------------------------------------------------------------------------
    def _on_update(self, raw: dict[str, Any]) -> bool:
        """Start the turn for one update; False (counted as malformed) when it does not
        parse."""
        assert self._calls is not None and self._replies is not None and self._me is not None
        try:
            update = Update.de_json(raw, self._calls.bot)
            msg = update.message
            if msg is None or from_elsewhere(msg, self._me):
                self.count("ignored")  # edits, channel posts, our own, other update kinds
                return True
            event = to_event(msg, self.cfg.id, self._me, self.cfg.wake)
        except Exception as exc:  # PTB raises KeyError, TypeError... on odd payloads
            self.malformed(f"{type(exc).__name__}: {exc}", raw)
            return False
        self.count("events")
        if event is None:
            self.count("ignored")
            return True
        self.spawn(self._replies.handle(event))
        return True

    async def _fetch_media(self, comp: Media, max_bytes: int) -> tuple[bytes, str | None]:
        """By file id: ``getFile``, then the download, capped (``telegram_media``)."""
        if comp.file_id is None:
            return await super()._fetch_media(comp, max_bytes)
        if self._calls is None or self.lifecycle.state is not State.RUNNING:
            raise PlatformError("not running", platform=self.cfg.id)
        return await fetch_file(self._calls, comp.file_id, max_bytes, self.cfg.action_timeout_s)

    async def push(self, session_key: str, text: str) -> None:
        """Send ``text`` to a chat on the bot's own initiative (split when long), with the
        same flood-control waits and retries as replies. Raises ``PlatformError`` when
        the key is not this platform's, the bridge is not running, or a send fails."""
        _, chat_id = self.own_chat(session_key)
        if self._replies is None or self.lifecycle.state is not State.RUNNING:
            raise PlatformError("not running", platform=self.cfg.id, session_key=session_key)
        try:
            await self._replies.send(chat_param(chat_id), (Text(text=text),), None)
        except PlatformError:
            self.count("send_failures")
            raise
