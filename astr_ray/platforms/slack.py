"""The Slack bridge: a Slack app to the turn pipeline (slack-sdk).

    start: auth.test (bot token) ─► the bot's user id, then
      socket:  apps.connections.open (app token) ─► wss ─► hello, events_api envelopes
      events:  our HTTP endpoint at cfg.path ◄── signed POSTs from Slack

    event ─┬─ not a person's message (bots, us, edits, joins) ─► ignored (counted)
           ├─ the app_mention twin of a message already seen   ─► ignored (counted)
           ├─ garbage                                          ─► logged, malformed
           └─ message ─ wake rules ─► one task per turn ─► chat.postMessage (in its thread)
                                                           (streamed: chat.update)

Sessions. An IM is a private chat (chat id: the IM channel, ``D...``); a channel,
private channel or group DM a group chat (chat id: the channel). A message inside a
thread is a conversation of its own, ``<channel>:<thread_ts>``, answered in that
thread; a channel's own messages are answered in the channel.

Wake rules (groups): the bot's ``<@mention>``, a message in a thread whose parent is
the bot's, a prefix, a command. Slack may deliver a mention twice (as ``message`` and
as ``app_mention``): the second is ignored.

Delivery. Envelopes are acknowledged once handed off; the Events API is answered 200
at once. Slack re-sends what got no acknowledgement (after a reconnect, or a retry
with ``X-Slack-Retry-Num``); the same message keeps its ``ts``, the idempotency key,
so the pipeline answers the repeat with its stored reply (``duplicate=True``), which
is sent again only when the first delivery failed (``delivery``). Web API calls wait
out HTTP 429 (Retry-After) and are bounded by ``action_timeout_s``.

    slack_events   events → ``Event``, wake rules        slack_render   reply → sends
    slack_web      Web API calls (timeouts, 429s),        slack_links    Socket Mode, Events API
                   file downloads (``fetch_media``)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from slack_sdk.socket_mode.async_client import AsyncBaseSocketModeClient
from slack_sdk.socket_mode.response import SocketModeResponse

from astr_ray.config import SlackConfig
from astr_ray.errors import MessageFormatError, PlatformError
from astr_ray.lifecycle import Lifecycle
from astr_ray.message import ChatType, Event, Reply, Text
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
from astr_ray.platforms.slack_events import SlackMessage, parse_event, wake
from astr_ray.platforms.slack_links import EventsEndpoint, SocketLink
from astr_ray.platforms.slack_render import TEXT_LIMIT, escape
from astr_ray.platforms.slack_web import SlackWeb

__all__ = ["SlackBridge"]

log = logging.getLogger(__name__)

REMEMBERED = 4096  # bot message ids, failed deliveries, messages seen (for the twins)


def _target(chat_id: str) -> tuple[str, str | None]:
    """The channel and thread a chat id names (``<channel>[:<thread_ts>]``)."""
    channel, _, thread_ts = chat_id.partition(":")
    return channel, thread_ts or None


class SlackBridge(Bridge):
    """One Slack app (bot user), bridged to ``on_message`` / ``on_stream``.

    Lifecycle: ``start()`` once (a second call is refused): checks the bot token with
    ``auth.test`` (raises ``PlatformError`` when Slack refuses it), then opens the
    Socket Mode link in the background or starts listening for the Events API
    (``port`` is the bound port, also when cfg.port is 0). ``stop()`` is idempotent:
    it closes the link or server and cancels turns in flight. Counters: see
    ``Bridge``, plus ``bad_signatures`` (Events API requests refused with 401).
    """

    platform = "slack"

    def __init__(
        self,
        cfg: SlackConfig,
        on_message: OnMessage,
        *,
        on_stream: OnStream | None = None,
        metrics_hook: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(cfg.id, metrics_hook)
        self.cfg = cfg
        self.lifecycle = Lifecycle(f"slack-{cfg.id}", self._on_start, self._on_stop)
        self.port: int | None = None
        self.bot_user: str | None = None
        self._on_message = on_message
        self._on_stream = on_stream
        self._ledger = DeliveryLedger(REMEMBERED)
        self._seen: OrderedDict[str, str] = OrderedDict()  # "<channel>:<ts>" → event type
        self.web = SlackWeb(cfg, self._ledger, self._waited)
        self._socket: SocketLink | None = None
        self._connector: asyncio.Task[None] | None = None
        self._endpoint: EventsEndpoint | None = None
        self._hellos = 0
        self._counts["bad_signatures"] = 0

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        await self.lifecycle.start()

    async def stop(self) -> None:
        await self.lifecycle.stop()

    async def _on_start(self) -> None:
        try:
            who = await self.web.open()
            self.bot_user = who.get("user_id") or None
            log.info("slack %s: signed in as %s (%s)", self.cfg.id, self.bot_user, who.get("team"))
            if self.cfg.mode == "socket":
                await self._open_socket()
            else:
                await self._listen()
        except BaseException:
            await self._on_stop()
            raise

    async def _open_socket(self) -> None:
        assert self.cfg.app_token is not None
        self._socket = SocketLink(
            app_token=self.cfg.app_token.get_secret_value(),
            web_client=self.web.client,
            backoff=Backoff(self.cfg.reconnect_max_s),
            on_garbage=self.malformed,
            logger=logging.getLogger(f"{__name__}.socket"),
        )
        self._socket.message_listeners.append(self._on_envelope)
        self._connector = asyncio.create_task(self._socket.connect())

    async def _listen(self) -> None:
        assert self.cfg.signing_secret is not None
        self._endpoint = EventsEndpoint(
            self.cfg.signing_secret.get_secret_value(),
            on_payload=self._on_callback,
            on_refused=self._refused,
            on_garbage=self.malformed,
        )
        self.port = await self._endpoint.start(
            self.cfg.host, self.cfg.port, self.cfg.path, self.cfg.id
        )
        log.info(
            "slack %s: Events API at %s:%s%s", self.cfg.id, self.cfg.host, self.port, self.cfg.path
        )

    async def _on_stop(self) -> None:
        socket, self._socket = self._socket, None
        if socket is not None:
            await socket.close()
        connector, self._connector = self._connector, None
        if connector is not None:
            connector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await connector
        await self.cancel_turns()
        endpoint, self._endpoint = self._endpoint, None
        if endpoint is not None:
            await endpoint.close()
        await self.web.close()

    async def wait_connected(self, within: float) -> bool:
        """True once the Socket Mode link is up (or the Events API server listens);
        False after ``within`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not self.connected():
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    def connected(self) -> bool:
        if self.cfg.mode == "events":
            return self._endpoint is not None and self._endpoint.listening
        return self._socket is not None and self._hellos > 0 and self._socket.is_open()

    def stats(self) -> dict[str, Any]:
        """A snapshot: ``connected``, ``mode``, ``bot_user``, and the counters since
        start: ``events`` (people's messages), ``ignored`` (bots', edits, unwoken, the
        second of a twin), ``malformed``, ``replies`` (delivered), ``send_failures``,
        ``duplicates``, ``reconnects`` (Socket Mode links after the first),
        ``rate_limited`` (429 waits), ``bad_signatures``."""
        return {
            "connected": self.connected(),
            "mode": self.cfg.mode,
            "bot_user": self.bot_user,
            **self._counts,
        }

    # -- links ------------------------------------------------------------------------------
    def _waited(self, seconds: float) -> None:
        self.count("rate_limited")
        log.info("slack %s: rate limited; retrying in %.1f s", self.cfg.id, seconds)

    async def _on_envelope(
        self, client: AsyncBaseSocketModeClient, message: dict[str, Any], raw: str | None
    ) -> None:
        """A Socket Mode frame (``disconnect`` is the SDK's): hand off, then acknowledge."""
        kind = message.get("type")
        if kind == "hello":
            self._hellos += 1
            if self._hellos > 1:
                self.count("reconnects")
            if self._socket is not None:
                self._socket.backoff.connected()
            log.info("slack %s: Socket Mode connected", self.cfg.id)
            return
        envelope_id = message.get("envelope_id")
        if kind == "events_api":
            payload = message.get("payload")
            if isinstance(payload, dict):
                self._on_callback(payload)
            else:
                self.malformed("events_api envelope without a payload object", raw)
        elif kind in ("slash_commands", "interactive"):
            self.count("ignored")
        else:
            self.malformed(f"unknown envelope type {kind!r}", raw)
        if isinstance(envelope_id, str) and envelope_id:
            try:
                await client.send_socket_mode_response(SocketModeResponse(envelope_id))
            except Exception as exc:
                # Best effort: Slack re-sends it after the reconnect, as a duplicate.
                log.info("slack %s: could not acknowledge %s: %s", self.cfg.id, envelope_id, exc)

    def _refused(self, remote: str | None) -> None:
        self.count("bad_signatures")
        log.warning(
            "slack %s: refused a request from %s: bad or stale signature", self.cfg.id, remote
        )

    # -- events -------------------------------------------------------------------------------
    def _on_callback(self, payload: dict[str, Any]) -> None:
        """An ``event_callback`` (from either link): check it and start its turn."""
        if payload.get("type") != "event_callback":
            self.count("ignored")
            return
        raw = payload.get("event")
        if not isinstance(raw, dict):
            self.malformed("event_callback without an event object", payload)
            return
        try:
            msg = parse_event(raw, self.bot_user)
            if msg is None or self._twin(msg):
                self.count("ignored")
                return
            self.count("events")
            event = wake(msg, self.cfg.id, self.bot_user, self.cfg.wake, self._ledger.bot_messages)
        except MessageFormatError as exc:
            self.malformed(str(exc), raw)
            return
        if event is None:
            self.count("ignored")
            return
        self.spawn(self._handle(event))

    def _twin(self, msg: SlackMessage) -> bool:
        """Whether ``msg`` was seen as the other event type (message / app_mention)."""
        key = f"{msg.channel}:{msg.ts}"
        first = self._seen.get(key)
        if first is not None:
            return first != msg.kind
        self._seen[key] = msg.kind
        while len(self._seen) > REMEMBERED:
            self._seen.popitem(last=False)
        return False

    # -- turns --------------------------------------------------------------------------------
    async def _handle(self, event: Event) -> None:
        if self.cfg.stream and self._on_stream is not None:
            await self._streamed(event)
            return
        try:
            reply = await self._on_message(event)
        except Exception:
            log.exception("slack %s: turn failed for %s", self.cfg.id, event.session_key)
            return
        await self._answer(event, reply)

    async def _answer(self, event: Event, reply: Reply | None) -> None:
        """Deliver a whole reply (see the module doc on duplicates)."""
        key = f"{event.session_key}|{event.message_id}"
        if reply is None or not await should_deliver(reply, key, self._ledger, self.count):
            return
        channel, thread_ts = _target(event.chat_id)
        done = self._ledger.begin(key)
        delivered = False
        try:
            await self.web.send(channel, thread_ts, reply.components)
            delivered = True
            self.count("replies")
        except PlatformError as exc:
            self.count("send_failures")
            log.warning("slack %s: reply to %s not delivered: %s", self.cfg.id, key, exc)
        finally:
            self._ledger.finish(key, done, delivered)

    async def _streamed(self, event: Event) -> None:
        """One streamed turn: the first chunk posts a message, later ones edit it (at
        most once per ``stream_interval_s``), the final reply's text is what stays;
        other components follow. Without chunks the reply goes the normal way."""
        assert self._on_stream is not None
        channel, thread_ts = _target(event.chat_id)

        async def send(text: str) -> str:
            return await self.web.post(channel, thread_ts, escape(text))

        async def edit(ts: str, text: str) -> None:
            await self.web.update(channel, ts, escape(text))

        stream = EditStream(send, edit, limit=TEXT_LIMIT, interval_s=self.cfg.stream_interval_s)
        key = f"{event.session_key}|{event.message_id}"
        done: asyncio.Future[bool] | None = None
        reply: Reply | None = None
        delivered = broken = False
        try:
            try:
                async for item in self._on_stream(event):
                    chunk = item.get("chunk")
                    if isinstance(chunk, str):
                        if done is None:
                            done = self._ledger.begin(key)
                        if not broken:
                            try:
                                await stream.feed(chunk)
                            except PlatformError as exc:
                                broken = True  # the final text is tried once more below
                                log.warning("slack %s: stream send failed: %s", self.cfg.id, exc)
                    elif isinstance(item.get("reply"), Reply):
                        reply = item["reply"]
            except Exception:
                log.exception("slack %s: streamed turn failed for %s", self.cfg.id, key)
            if done is None:
                await self._answer(event, reply)
                return
            try:
                final = reply.text if reply is not None and reply.text.strip() else None
                if not await stream.finish(final):
                    raise PlatformError("nothing was shown", platform=self.cfg.id)
                if reply is not None:
                    media = [c for c in reply.components if not isinstance(c, Text)]
                    if media:
                        await self.web.send(channel, thread_ts, media)
                    delivered = True
                    self.count("replies")
            except PlatformError as exc:
                self.count("send_failures")
                log.warning(
                    "slack %s: streamed reply to %s not delivered: %s", self.cfg.id, key, exc
                )
        finally:
            if done is not None:
                self._ledger.finish(key, done, delivered)

    # -- media and pushes ----------------------------------------------------------------------
    async def _fetch_media(self, comp: Media, max_bytes: int) -> tuple[bytes, str | None]:
        """By Slack file id: ``files.info``, then the download with the bot token, from
        Slack's hosts only (``SlackWeb.download``)."""
        if comp.file_id is None:
            return await super()._fetch_media(comp, max_bytes)
        return await self.web.download(comp.file_id, max_bytes)

    async def push(self, session_key: str, text: str) -> None:
        """Send ``text`` to a chat on the bot's own initiative: a channel, a thread
        (``<channel>:<thread_ts>``), an IM channel, or a user id (``U...``, a private
        key: the IM is opened first). Raises ``PlatformError`` when the key is not this
        platform's or the send fails."""
        chat_type, chat_id = self.own_chat(session_key)
        channel, thread_ts = _target(chat_id)
        try:
            if chat_type is ChatType.PRIVATE and channel[:1] in ("U", "W"):
                channel = await self.web.im(channel)
            await self.web.send(channel, thread_ts, (Text(text=text),))
        except PlatformError:
            self.count("send_failures")
            raise
