"""The Discord bridge: a bot account over the gateway (discord.py) to the turn pipeline.

    start() ─► login (REST users/@me) ─► gateway URL (GET /gateway/bot, with api_base)
            ─► client.connect(reconnect=True): discord.py keeps the gateway up and
               RESUMEs after a drop, so the events missed meanwhile are replayed
               (the client and its hooks: discord_gateway)

    MESSAGE_CREATE ─ own / system message ─► ignored (counted)
                   ─ wake rules (discord_events) ─► one task per turn:
                       on_message(event)  ─► POST /channels/{id}/messages (discord_render)
                       on_stream(event)   ─► one POST, then PATCHes (EditStream)

Pointing at another server. ``cfg.api_base`` replaces discord.py's ``Route.BASE`` and
the gateway URL then comes from that server's ``GET /gateway/bot``. Both are class
attributes of discord.py, so this is process-wide: fine, as each account runs in its
own adapter actor process. Plain JSON text frames are what discord.py reads when the
server sends text (it only inflates binary frames). ``wait_connected`` waits for READY
(or RESUMED), not for discord.py's ``on_ready``, which comes ``guild_ready_timeout``
(2 s) after the last GUILD_CREATE and only matters to its caches.

Delivery. A reply is sent once: the same message delivered again (a replay after a
RESUME, a redelivery) gets the pipeline's stored reply (``duplicate=True``), which is
sent again only when the first delivery failed (``delivery``). discord.py waits out a
429 by its ``retry_after`` (counted "rate_limited" from an aiohttp trace hook); one send
is bounded by ``action_timeout_s``.

Robustness. A dispatch discord.py cannot parse (a MESSAGE_CREATE without its fields...)
is counted as malformed and skipped (discord_gateway). A frame that breaks the gateway
loop itself (not JSON) makes the bridge open a new gateway session after a
``Backoff(reconnect_max_s)`` delay.
discord.py's own delays after failed gateway connects are its own exponential backoff
(not capped by ``reconnect_max_s``). A refused token or a fatal close code (4004, 4014)
ends the bridge's attempts: logged, ``stats()["error"]`` says why.

Media. An incoming attachment carries its URL; ``fetch_media`` downloads it (capped,
without the token) from Discord's CDN hosts (``CDN_HOSTS``) or the ``api_base``
server's origin, and refuses any other URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import Callable
from typing import Any

import aiohttp

from astr_ray.config import DiscordConfig
from astr_ray.errors import MessageFormatError, PlatformError
from astr_ray.lifecycle import Lifecycle
from astr_ray.media import check_size, fetch_url, media_type, url_allowed
from astr_ray.message import ChatType, Event, File, Reply, Text
from astr_ray.platforms.base import (
    Backoff,
    Bridge,
    EditStream,
    Media,
    OnMessage,
    OnStream,
    should_deliver,
)
from astr_ray.platforms.delivery import DeliveryLedger
from astr_ray.platforms.discord_events import CHAT_MESSAGE_TYPES, to_event
from astr_ray.platforms.discord_gateway import GatewayClient, GatewayHooks, discord, use_server
from astr_ray.platforms.discord_render import TEXT_LIMIT, Outgoing, render_reply

__all__ = ["CDN_HOSTS", "DiscordBridge"]

log = logging.getLogger(__name__)

REMEMBERED = 4096  # the bot's own message ids (reply wake) and failed deliveries
FATAL = (discord.LoginFailure, discord.ConnectionClosed, discord.PrivilegedIntentsRequired)
SEND_ERRORS = (discord.HTTPException, aiohttp.ClientError, OSError, TimeoutError)
TRANSIENT = (*SEND_ERRORS, discord.GatewayNotFound)
CDN_HOSTS = ("cdn.discordapp.com", "media.discordapp.net")
"""Where Discord serves attachments (over https)."""


class DiscordBridge(Bridge):
    """One Discord bot account, bridged to ``on_message`` / ``on_stream``.

    Lifecycle: ``start()`` once (a second call is refused) returns at once, the login
    and the gateway come up in the background (``wait_connected``); ``stop()``
    idempotently cancels turns in flight and closes the client. Counters and
    ``metrics_hook``: see ``Bridge``.
    """

    platform = "discord"

    def __init__(
        self,
        cfg: DiscordConfig,
        on_message: OnMessage,
        *,
        on_stream: OnStream | None = None,
        metrics_hook: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(cfg.id, metrics_hook)
        self.cfg = cfg
        self.port: int | None = None  # no server of our own
        self.lifecycle = Lifecycle(f"discord-{cfg.id}", self._on_start, self._on_stop)
        self._on_message = on_message
        self._on_stream = on_stream if cfg.stream else None
        self._client: GatewayClient | None = None
        self._runner: asyncio.Task[None] | None = None
        self._up = asyncio.Event()
        self._logged_in = asyncio.Event()
        self._sessions = 0
        self._error: str | None = None
        self._ledger = DeliveryLedger(REMEMBERED)

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        await self.lifecycle.start()

    async def stop(self) -> None:
        await self.lifecycle.stop()

    async def _on_start(self) -> None:
        if self.cfg.api_base:
            use_server(self.cfg.api_base)
        hooks = GatewayHooks(
            session_up=self._session_up,
            session_lost=self._up.clear,
            message=self._on_discord_message,
            rate_limited=self._rate_limited,
            malformed=self.malformed,
        )
        self._client = GatewayClient(hooks)
        self._runner = asyncio.create_task(self._run(self._client))

    async def _on_stop(self) -> None:
        await self.cancel_turns()
        if self._client is not None:
            await self._client.close()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        self._up.clear()

    async def wait_connected(self, within: float) -> bool:
        """True once a gateway session is up (READY or RESUMED); False after ``within``
        seconds."""
        try:
            async with asyncio.timeout(within):
                await self._up.wait()
        except TimeoutError:
            return False
        return True

    def connected(self) -> bool:
        return self._up.is_set() and self._client is not None and not self._client.is_closed()

    def stats(self) -> dict[str, Any]:
        """``connected``, ``bot_user`` (id and name, once logged in), ``error`` (why the
        bridge gave up, else None) and the counters since start (see ``Bridge``):
        ``reconnects`` counts gateway sessions resumed or made after the first."""
        user = self._client.user if self._client is not None else None
        return {
            "connected": self.connected(),
            "bot_user": {"id": str(user.id), "name": user.name} if user else None,
            "error": self._error,
            **self._counts,
        }

    # -- the gateway ---------------------------------------------------------------------
    async def _run(self, client: GatewayClient) -> None:
        """Log in, find the gateway, and keep a session up until stopped (see the module
        doc on what is retried)."""
        backoff = Backoff(self.cfg.reconnect_max_s)
        try:
            while not client.is_closed():
                try:
                    await self._login(client)
                    backoff.connected()
                    await client.connect(reconnect=True)
                    return  # closed by stop()
                except FATAL as exc:
                    self._error = _why(exc)
                    log.error("discord %s: giving up: %s", self.cfg.id, self._error)
                    await client.close()
                    return
                except TRANSIENT as exc:
                    log.warning("discord %s: cannot reach Discord: %s", self.cfg.id, _why(exc))
                except Exception as exc:
                    # discord.py's gateway loop broke on a frame it could not read; its
                    # socket is closed here and a new session opened below.
                    self.malformed(f"gateway frame: {_why(exc)}", None)
                    if client.ws is not None:
                        await client.ws.close(4000)
                self._up.clear()
                backoff.lost()
                await asyncio.sleep(backoff.next())
        finally:
            self._up.clear()

    async def _login(self, client: GatewayClient) -> None:
        """Log in once (a refused token raises ``LoginFailure``); with ``api_base``, ask
        that server for its gateway URL."""
        if not self._logged_in.is_set():
            try:
                await client.login(self.cfg.token.get_secret_value())
            except Exception:
                await client.http.close()  # each try opens an HTTP session of its own
                raise
            self._logged_in.set()
            log.info("discord %s: logged in as %s", self.cfg.id, client.user)
        if self.cfg.api_base:
            await client.follow_server_gateway()

    def _session_up(self, resumed: bool) -> None:
        if resumed or self._sessions > 0:
            self.count("reconnects")
        self._sessions += 1
        self._up.set()
        log.info("discord %s: gateway session %s", self.cfg.id, "resumed" if resumed else "up")

    def _rate_limited(self, retry_after: str | None) -> None:
        # discord.py waits the time out and retries by itself.
        self.count("rate_limited")
        log.info("discord %s: rate limited; retrying after %s s", self.cfg.id, retry_after)

    # -- messages in --------------------------------------------------------------------------
    def _on_discord_message(self, message: discord.Message) -> None:
        client = self._client
        me = client.user if client is not None else None
        try:
            if (
                me is None
                or message.author.id == me.id
                or message.author.bot  # other bots: two bots must not answer each other
                or message.type not in CHAT_MESSAGE_TYPES
            ):
                self.count("ignored")
                return
            self.count("events")
            event = to_event(message, self.cfg.id, me.id, self.cfg.wake, self._ledger.bot_messages)
        except (MessageFormatError, ValueError, AttributeError, TypeError) as exc:
            # discord.py leaves out attributes whose fields were missing (an author...).
            self.malformed(f"message: {type(exc).__name__}: {exc}", message.id)
            return
        if event is None:
            self.count("ignored")
            return
        self.spawn(self._handle(event))

    # -- turns and replies ----------------------------------------------------------------------
    async def _handle(self, event: Event) -> None:
        """One turn: ask the pipeline (streamed when configured), deliver its reply."""
        quote = event.message_id if event.chat_type is ChatType.GROUP else None
        try:
            if self._on_stream is not None:
                reply = await self._stream(event, quote)
            else:
                reply = await self._on_message(event)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("discord %s: turn failed for %s", self.cfg.id, event.session_key)
            return
        key = f"{event.session_key}|{event.message_id}"
        if reply is None or not await should_deliver(reply, key, self._ledger, self.count):
            return
        done = self._ledger.begin(key)
        delivered = False
        try:
            await self._send(event.chat_id, render_reply(reply.components), quote)
            delivered = True
            self.count("replies")
        except PlatformError as exc:
            log.warning("discord %s: reply to %s not delivered: %s", self.cfg.id, key, exc)
        finally:
            self._ledger.finish(key, done, delivered)

    async def _stream(self, event: Event, quote: str | None) -> Reply | None:
        """Show the answer as it streams (one message, edited); returns the final reply
        when nothing was streamed (it is then delivered the normal way), else None."""
        assert self._on_stream is not None

        async def send(text: str) -> discord.Message:
            return await self._post(event.chat_id, Outgoing(text), None if shown.started else quote)

        async def edit(message: discord.Message, text: str) -> None:
            try:
                async with asyncio.timeout(self.cfg.action_timeout_s):
                    await message.edit(content=text)
            except SEND_ERRORS as exc:
                raise PlatformError(
                    f"edit failed: {_why(exc)}", platform=self.cfg.id, channel=event.chat_id
                ) from None

        shown: EditStream[discord.Message] = EditStream(
            send, edit, limit=TEXT_LIMIT, interval_s=self.cfg.stream_interval_s
        )
        key = f"{event.session_key}|{event.message_id}"
        done: asyncio.Future[bool] | None = None
        delivered = False
        reply: Reply | None = None
        paused = False
        try:
            async for item in self._on_stream(event):
                if "reply" in item:
                    reply = item["reply"]
                elif "chunk" in item and not paused:
                    if done is None:
                        done = self._ledger.begin(key)
                    try:
                        await shown.feed(str(item["chunk"]))
                    except PlatformError as exc:  # the final text is shown in full below
                        paused = True
                        log.warning("discord %s: stream to %s paused: %s", self.cfg.id, key, exc)
            if done is None:
                return reply
            try:
                await shown.finish(reply.text if reply is not None else None)
                media = render_reply(reply.components, text=False) if reply is not None else []
                await self._send(event.chat_id, media, None)
                delivered = True
                self.count("replies")
            except PlatformError as exc:
                log.warning("discord %s: reply to %s not delivered: %s", self.cfg.id, key, exc)
            return None
        finally:
            if done is not None:  # also when the turn failed or was cancelled mid-stream
                self._ledger.finish(key, done, delivered)

    async def _send(self, chat_id: str, messages: list[Outgoing], quote: str | None) -> None:
        for i, out in enumerate(messages):
            await self._post(chat_id, out, quote if i == 0 else None)

    async def _post(self, chat_id: str, out: Outgoing, quote: str | None) -> discord.Message:
        """Create one message (replying to ``quote``); raises ``PlatformError`` (counted
        as a send failure) when Discord refuses it or it takes past ``action_timeout_s``
        (rate-limit waits included)."""
        client = self._client
        if client is None or not chat_id.isdigit():
            raise PlatformError("cannot send there", platform=self.cfg.id, channel=chat_id)
        channel = client.get_partial_messageable(int(chat_id))
        options: dict[str, Any] = {}
        if out.uploads:
            options["files"] = [discord.File(io.BytesIO(u.data), u.filename) for u in out.uploads]
        if quote is not None:
            options["reference"] = discord.MessageReference(
                message_id=int(quote), channel_id=int(chat_id), fail_if_not_exists=False
            )
        try:
            async with asyncio.timeout(self.cfg.action_timeout_s):
                await self._logged_in.wait()
                sent = await channel.send(out.content or None, **options)
        except SEND_ERRORS as exc:
            self.count("send_failures")
            raise PlatformError(
                f"send failed: {_why(exc)}", platform=self.cfg.id, channel=chat_id
            ) from None
        self._ledger.sent(str(sent.id))
        return sent

    async def _fetch_media(self, comp: Media, max_bytes: int) -> tuple[bytes, str | None]:
        """An attachment by its URL, from ``CDN_HOSTS`` or the ``api_base`` origin only
        (see the module doc); a ``File`` whose size is over ``max_bytes`` is refused
        before the download."""
        url = comp.url
        if url is None or not url.startswith(("http://", "https://")):
            return await super()._fetch_media(comp, max_bytes)
        origins = [self.cfg.api_base] if self.cfg.api_base else []
        if not url_allowed(url, origins=origins, https_hosts=CDN_HOSTS):
            raise PlatformError(
                "refused to fetch media from a host that is not Discord's", platform=self.cfg.id
            )
        if isinstance(comp, File) and comp.size is not None:
            check_size(comp.size, max_bytes)
        data, content_type = await fetch_url(url, max_bytes, timeout_s=self.cfg.action_timeout_s)
        return data, media_type(content_type, url)

    async def push(self, session_key: str, text: str) -> None:
        """Send ``text`` to a channel (a DM channel for a private session) on the bot's
        own initiative, split when long. Raises ``PlatformError`` when the key is not
        this platform's or the send fails (not logged in within ``action_timeout_s``
        included)."""
        _, chat_id = self.own_chat(session_key)
        await self._send(chat_id, render_reply([Text(text=text)]), None)


def _why(exc: BaseException) -> str:
    """An exception for a log line; discord.py's never carry the token."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
