"""The OneBot v11 bridge: QQ (through NapCat, Lagrange...) to the turn pipeline.

    reverse:  NapCat ──ws connect (X-Self-ID, Bearer)──► our server at cfg.path
    forward:  we ──ws connect (Bearer), get_login_info──► NapCat at cfg.url (reconnects)

    frame ─┬─ answer {"echo"...}      ─► the waiting action (onebot_conn)
           ├─ meta_event              ─► liveness only
           ├─ notice / request        ─► ignored (counted)
           ├─ garbage                 ─► logged, counted as malformed, skipped
           └─ message ─ wake rules ─► one task per turn: on_message(event) ─► send_msg

Delivery. An outgoing action waits for a connection (up to ``action_timeout_s``), so a
reply whose connection dropped mid-turn goes out once the implementation is back. An
implementation may re-deliver a message after a reconnect; the pipeline answers the
repeat with its stored reply (``duplicate=True``), which is sent again only when the
first delivery failed (``delivery``): the user sees each answer once.

Media. ``fetch_media`` gets the bytes of an incoming image, voice or file: inline
base64, an http(s) URL, or the implementation's ``get_record`` / ``get_image`` /
``get_file`` (``onebot_media``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from astr_ray.config import OneBotConfig
from astr_ray.errors import MessageFormatError, PlatformError
from astr_ray.lifecycle import Lifecycle, State
from astr_ray.message import ChatType, Component, Event, Text
from astr_ray.platforms.base import Backoff, Bridge, Media, OnMessage, should_deliver
from astr_ray.platforms.delivery import DeliveryLedger
from astr_ray.platforms.net import listen
from astr_ray.platforms.onebot_conn import Connection, Socket, token_ok
from astr_ray.platforms.onebot_events import onebot_id, parse_message_frame, wake
from astr_ray.platforms.onebot_media import fetch_media
from astr_ray.platforms.onebot_segments import render_reply

__all__ = ["OneBotBridge"]

log = logging.getLogger(__name__)

REMEMBERED = 4096  # ids of the bot's own messages kept for reply-wake; failed deliveries
MAX_FRAME = 64 * 1024 * 1024  # get_msg answers can carry base64 media


def _id_param(chat_id: str) -> int | str:
    return int(chat_id) if chat_id.isdigit() else chat_id


class OneBotBridge(Bridge):
    """One OneBot v11 account, bridged to ``on_message``.

    Lifecycle: ``start()`` once (a second call is refused), ``stop()`` idempotently;
    stop closes the links, fails unanswered actions and cancels turns in flight.
    Counters and ``metrics_hook``: see ``Bridge``.
    """

    platform = "onebot"

    def __init__(
        self,
        cfg: OneBotConfig,
        on_message: OnMessage,
        *,
        metrics_hook: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(cfg.id, metrics_hook)
        self.cfg = cfg
        self.lifecycle = Lifecycle(f"onebot-{cfg.id}", self._on_start, self._on_stop)
        self.port: int | None = None
        self._on_message = on_message
        self._token = cfg.access_token.get_secret_value() if cfg.access_token else ""
        self._conns: dict[int, Connection] = {}
        self._serial = 0
        self._up = asyncio.Event()
        self._ledger = DeliveryLedger(REMEMBERED)
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        self._forward: asyncio.Task[None] | None = None
        self._counts["heartbeats"] = 0

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Reverse mode: listen (``port`` is the bound port, also when cfg.port is 0).
        Forward mode: start the connect loop and return; the link comes up in the
        background (``wait_connected``). Raises ``PlatformError`` if the port is taken."""
        await self.lifecycle.start()

    async def stop(self) -> None:
        await self.lifecycle.stop()

    async def _on_start(self) -> None:
        if self.cfg.mode == "reverse":
            app = web.Application()
            app.router.add_get(self.cfg.path, self._accept)
            self._runner, self.port = await listen(app, self.cfg.host, self.cfg.port, self.cfg.id)
            log.info(
                "onebot %s: listening on %s:%s%s",
                self.cfg.id,
                self.cfg.host,
                self.port,
                self.cfg.path,
            )
        else:
            self._client = aiohttp.ClientSession()
            self._forward = asyncio.create_task(self._forward_loop())

    async def _on_stop(self) -> None:
        if self._forward is not None:
            self._forward.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._forward
        await self.cancel_turns()
        for conn in list(self._conns.values()):
            await conn.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._client is not None:
            await self._client.close()

    async def wait_connected(self, within: float) -> bool:
        """True once some implementation is connected; False after ``within`` seconds."""
        try:
            async with asyncio.timeout(within):
                await self._up.wait()
        except TimeoutError:
            return False
        return True

    def connected(self) -> bool:
        return any(c.open for c in self._conns.values())

    def stats(self) -> dict[str, Any]:
        """A snapshot: ``connected``, ``connections`` (open links), ``self_ids`` (their
        accounts), and counters since start: ``reconnects`` (links made after the
        first), ``events`` (well-formed message events), ``ignored`` (not for the bot:
        unwoken, own, notices, requests), ``malformed``, ``replies`` (delivered),
        ``send_failures`` (failed send_msg), ``duplicates``, ``heartbeats``."""
        live = [c for c in self._conns.values() if c.open]
        return {
            "connected": bool(live),
            "connections": len(live),
            "self_ids": sorted({c.self_id for c in live if c.self_id}),
            **self._counts,
        }

    # -- links ----------------------------------------------------------------------------
    async def _accept(self, request: web.Request) -> web.StreamResponse:
        """Reverse mode: an implementation connects; refused with 401 before the upgrade
        when the token is wrong or missing."""
        if not token_ok(request, self._token):
            log.warning("onebot %s: refused %s: bad or missing token", self.cfg.id, request.remote)
            return web.Response(status=401, text="unauthorized")
        if self.lifecycle.state in (State.STOPPING, State.STOPPED):
            return web.Response(status=503, text="stopping")
        role = request.headers.get("X-Client-Role", "Universal")
        if role.lower() != "universal":
            return web.Response(status=400, text="only X-Client-Role: Universal is supported")
        ws = web.WebSocketResponse(max_msg_size=MAX_FRAME)
        await ws.prepare(request)
        self_id = request.headers.get("X-Self-ID") or None
        await self._serve(ws, self_id)
        return ws

    async def _forward_loop(self) -> None:
        """Forward mode: connect, serve, and reconnect with exponential backoff (jittered,
        capped at ``reconnect_max_s``) whenever the link drops or cannot be made."""
        assert self._client is not None and self.cfg.url
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        backoff = Backoff(self.cfg.reconnect_max_s)
        while True:
            try:
                ws = await self._client.ws_connect(
                    self.cfg.url,
                    headers=headers,
                    max_msg_size=MAX_FRAME,
                    timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
                )
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.warning("onebot %s: cannot reach %s: %s", self.cfg.id, self.cfg.url, exc)
            else:
                backoff.connected()
                await self._serve(ws, None)
                backoff.lost()
            await asyncio.sleep(backoff.next())

    async def _learn_self(self, conn: Connection) -> None:
        """Ask the implementation which account it is (forward mode has no X-Self-ID)."""
        try:
            data = await conn.call("get_login_info", {}, self.cfg.action_timeout_s)
            if not isinstance(data, dict):
                raise MessageFormatError("get_login_info data is not an object")
            conn.self_id = onebot_id(data.get("user_id"), "user_id")
            log.info("onebot %s: logged in as %s", self.cfg.id, conn.self_id)
        except (PlatformError, MessageFormatError, ConnectionResetError) as exc:
            log.warning("onebot %s: get_login_info failed: %s", self.cfg.id, exc)

    async def _serve(self, ws: Socket, self_id: str | None) -> None:
        """Read frames until the link closes or goes silent past its heartbeats."""
        self._serial += 1
        conn = Connection(ws, self._serial, self.cfg.id, self_id)
        if self._serial > 1:
            self.count("reconnects")
        self._conns[conn.serial] = conn
        self._up.set()
        log.info("onebot %s: connected (self_id=%s)", self.cfg.id, self_id)
        learner = None
        if self_id is None:
            learner = asyncio.create_task(self._learn_self(conn))
        try:
            while True:
                try:
                    msg = await ws.receive(timeout=conn.stale_after())
                except TimeoutError:
                    log.warning("onebot %s: silent past its heartbeats; closing", self.cfg.id)
                    break
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self._on_frame(conn, msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    self._on_frame(conn, msg.data.decode("utf-8", "replace"))
                elif msg.type in (aiohttp.WSMsgType.PING, aiohttp.WSMsgType.PONG):
                    conn.last_seen = time.monotonic()
                else:
                    break  # close, closing, closed or error
        finally:
            if learner is not None:
                learner.cancel()
            del self._conns[conn.serial]
            if not any(c.open for c in self._conns.values()):
                self._up.clear()
            await conn.close()
            log.info("onebot %s: disconnected (self_id=%s)", self.cfg.id, conn.self_id)

    def _current(self) -> Connection | None:
        live = [c for c in self._conns.values() if c.open]
        return live[-1] if live else None

    # -- frames ---------------------------------------------------------------------------
    def _on_frame(self, conn: Connection, text: str) -> None:
        conn.last_seen = time.monotonic()
        try:
            frame = json.loads(text)
        except ValueError:
            self.malformed("not JSON", text)
            return
        if not isinstance(frame, dict):
            self.malformed("not an object", text)
        elif "post_type" in frame:
            self._on_event(conn, frame)
        elif "echo" in frame and ("status" in frame or "retcode" in frame):
            if not conn.answer(frame):
                log.debug("onebot %s: answer nobody waits for: %.200r", self.cfg.id, frame)
        else:
            self.malformed("neither an event nor an answer", text)

    def _on_event(self, conn: Connection, frame: dict[str, Any]) -> None:
        post_type = frame["post_type"]
        if conn.self_id is None and frame.get("self_id") is not None:
            with contextlib.suppress(MessageFormatError):
                conn.self_id = onebot_id(frame["self_id"], "self_id")
        if post_type == "meta_event":
            if frame.get("meta_event_type") == "heartbeat":
                self._counts["heartbeats"] += 1
            interval = frame.get("interval")
            if (
                isinstance(interval, int | float)
                and not isinstance(interval, bool)
                and interval > 0
            ):
                conn.heartbeat_s = interval / 1000
            return
        if post_type != "message":
            # notices, friend/group requests, NapCat's "message_sent" echo of our own.
            self.count("ignored")
            return
        try:
            msg = parse_message_frame(frame)
            self_id = msg.self_id or conn.self_id
            if self_id is not None and msg.sender.id == self_id:
                self.count("ignored")
                return
            self.count("events")
            event = wake(msg, self.cfg.id, self_id, self.cfg.wake, self._ledger.bot_messages)
        except MessageFormatError as exc:
            self.malformed(str(exc), frame)
            return
        if event is None:
            self.count("ignored")
            return
        self.spawn(self._handle(event))

    # -- turns and sends --------------------------------------------------------------------
    async def _handle(self, event: Event) -> None:
        """One turn: ask ``on_message``, then deliver its reply (see the module doc on
        duplicates)."""
        try:
            reply = await self._on_message(event)
        except Exception:
            log.exception("onebot %s: turn failed for %s", self.cfg.id, event.session_key)
            return
        key = f"{event.session_key}|{event.message_id}"
        if reply is None or not await should_deliver(reply, key, self._ledger, self.count):
            return
        quote = event.message_id if event.chat_type is ChatType.GROUP else None
        await self._deliver(key, event.chat_type, event.chat_id, reply.components, quote)

    async def _deliver(
        self,
        key: str,
        chat_type: ChatType,
        chat_id: str,
        components: tuple[Component, ...],
        quote: str | None,
    ) -> None:
        done = self._ledger.begin(key)
        delivered = False
        try:
            await self._send(chat_type, chat_id, components, quote)
            delivered = True
            self.count("replies")
        except PlatformError as exc:
            log.warning("onebot %s: reply to %s not delivered: %s", self.cfg.id, key, exc)
        finally:
            self._ledger.finish(key, done, delivered)

    async def _send(
        self,
        chat_type: ChatType,
        chat_id: str,
        components: tuple[Component, ...],
        quote: str | None,
    ) -> None:
        target: dict[str, Any] = (
            {"message_type": "group", "group_id": _id_param(chat_id)}
            if chat_type is ChatType.GROUP
            else {"message_type": "private", "user_id": _id_param(chat_id)}
        )
        for message in render_reply(components, quote):
            try:
                data = await self.call_action("send_msg", {**target, "message": message})
            except PlatformError:
                self.count("send_failures")
                raise
            if isinstance(data, dict) and data.get("message_id") is not None:
                self._ledger.sent(str(data["message_id"]))

    async def _fetch_media(self, comp: Media, max_bytes: int) -> tuple[bytes, str | None]:
        """Inline base64, an http(s) URL, or a ``get_*`` action (``onebot_media``)."""
        return await fetch_media(
            self.call_action,
            comp,
            max_bytes,
            platform_id=self.cfg.id,
            timeout_s=self.cfg.action_timeout_s,
        )

    async def push(self, session_key: str, text: str) -> None:
        """Send ``text`` to a chat on the bot's own initiative (``send_msg``, split when
        long). Waits for a connection up to ``action_timeout_s``; raises
        ``PlatformError`` when the key is not this platform's or the send fails."""
        chat_type, chat_id = self.own_chat(session_key)
        await self._send(chat_type, chat_id, (Text(text=text),), None)

    async def call_action(self, action: str, params: dict[str, Any]) -> Any:
        """Call a OneBot action and return its ``data``.

        Waits for a connection when none is up; the whole call (waiting included) is
        bounded by ``action_timeout_s``. A frame that could not be written because its
        link was closing goes out on the next link; one that was written when its link
        dropped is not retried (it may have run). Raises ``PlatformError`` on time-out,
        on ``status: failed`` and on a link lost before the answer.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.action_timeout_s
        while True:
            conn = self._current()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise PlatformError(
                    "no connection to the OneBot implementation in time",
                    platform=self.cfg.id,
                    action=action,
                )
            if conn is None:
                if self._up.is_set():  # a link is closing; its reader will unregister it
                    await asyncio.sleep(min(0.05, remaining))
                    continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self._up.wait()
                continue
            try:
                return await conn.call(action, params, remaining)
            except ConnectionResetError:
                await asyncio.sleep(0.05)
