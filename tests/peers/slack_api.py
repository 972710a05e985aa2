"""A fake Slack for tests, over real sockets on 127.0.0.1: the Web API methods a bot
uses, the Socket Mode WebSocket, and a signed Events API poster.

    bridge ── POST /api/<method> (Bearer token) ──► FakeSlack   auth.test, chat.*, files.*
           ── ws /socket?ticket= (from apps.connections.open) ◄── hello, events_api envelopes
           ◄── POST cfg.path, signed (EventsPoster) ── the test, in Events API mode

Web API. Parameters are read from the query string, a form or a JSON body (as
slack-sdk sends them). The token must be the bot token (the app token for
``apps.connections.open``), else ``{"ok": false, "error": "invalid_auth"}``. Every
call is recorded in ``calls``; ``sent(method)`` gives the parameters of those that
succeeded. ``rate_limit(method, times, retry_after)`` answers the next calls of a
method with HTTP 429 and a Retry-After header; ``failures[method] = "error"`` answers
``ok: false`` until removed. Messages (people's and the bot's) live in ``messages``
by (channel, ts), so a test can read what a streamed message finally shows; uploads
in ``uploads`` by file id, the shares of ``files.completeUploadExternal`` in
``shared``.

Files people sent. ``add_file(file_id, data)`` registers one: ``files.info`` describes
it (unknown ids: ``file_not_found``) with a ``url_private_download`` on this server
(or any ``url`` given), served only with ``Authorization: Bearer <bot token>`` (else
403). Every download request is recorded in ``downloads`` as (file id, the
Authorization header it carried).

Socket Mode. Each connection gets ``hello``, then every envelope not yet acknowledged
(re-sent ones with ``retry_attempt`` raised). ``lose_acks`` drops acknowledgements
(as if they were lost with the link); ``drop()`` closes the socket, ``disconnect()``
sends a ``disconnect`` envelope; ``send_raw`` sends any frame, garbage included.
``im`` and ``channel_message`` send a person's message as Slack does (in a channel, a
mention also comes as an ``app_mention`` twin) and return its ``ts``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

BOT_TOKEN = "xoxb-fake-bot-token-0123456789"
APP_TOKEN = "xapp-fake-app-token-9876543210"
SIGNING_SECRET = "fake-signing-secret-abcdef"


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    status: int
    ok: bool


def slack_file(
    file_id: str, name: str, mimetype: str, size: int = 1024, **extra: Any
) -> dict[str, Any]:
    """A file object as it comes in a message's ``files``."""
    return {
        "id": file_id,
        "name": name,
        "title": name,
        "mimetype": mimetype,
        "filetype": name.rsplit(".", 1)[-1],
        "size": size,
        "url_private": f"https://files.slack.com/files-pri/T1-{file_id}/{name}",
        "url_private_download": f"https://files.slack.com/files-pri/T1-{file_id}/download/{name}",
        "mode": "hosted",
        **extra,
    }


class FakeSlack:
    def __init__(
        self,
        *,
        bot_token: str = BOT_TOKEN,
        app_token: str = APP_TOKEN,
        bot_user: str = "UBOT",
        bot_id: str = "BBOT",
        team_id: str = "T1",
    ) -> None:
        self.bot_token = bot_token
        self.app_token = app_token
        self.bot_user = bot_user
        self.bot_id = bot_id
        self.team_id = team_id
        self.calls: list[Call] = []
        self.messages: dict[tuple[str, str], dict[str, Any]] = {}
        self.uploads: dict[str, bytes] = {}
        self.shared: list[dict[str, Any]] = []
        self.failures: dict[str, str] = {}
        self.acks: list[str] = []
        self.envelopes: list[dict[str, Any]] = []  # every envelope sent, re-sends included
        self.connects = 0
        self.lose_acks = False
        self.port = 0
        self._limits: dict[str, tuple[int, str]] = {}
        self._unacked: OrderedDict[str, tuple[dict[str, Any], bool]] = OrderedDict()
        self._ws: web.WebSocketResponse | None = None
        self._tickets: set[str] = set()
        self._serial = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.files: dict[str, tuple[dict[str, Any], bytes]] = {}
        self.downloads: list[tuple[str, str | None]] = []

    # -- server ---------------------------------------------------------------------------
    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    async def start(self) -> str:
        """Listen on a free port; returns the Web API base URL."""
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_post("/upload/{file_id}", self._upload)
        app.router.add_get("/files-pri/{file_id}/{name}", self._download)
        app.router.add_get("/socket", self._socket)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.api_base

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- Web API ----------------------------------------------------------------------------
    def sent(self, method: str) -> list[dict[str, Any]]:
        """The parameters of the successful calls of ``method``, in order."""
        return [c.params for c in self.calls if c.method == method and c.ok]

    def posts(self) -> list[dict[str, Any]]:
        return self.sent("chat.postMessage")

    def bot_messages(self, channel: str) -> list[str]:
        """The ts of each message the bot posted in ``channel``, in order."""
        return [
            ts
            for (ch, ts), m in self.messages.items()
            if ch == channel and m["user"] == self.bot_user
        ]

    async def wait_calls(self, method: str, n: int, within: float = 10.0) -> list[dict[str, Any]]:
        """Wait until ``method`` succeeded ``n`` times; its parameters."""
        deadline = time.monotonic() + within
        while len(self.sent(method)) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"{method}: {len(self.sent(method))} calls, not {n}")
            await asyncio.sleep(0.02)
        return self.sent(method)

    def rate_limit(self, method: str, times: int = 1, retry_after: str = "1") -> None:
        self._limits[method] = (times, retry_after)

    def text_of(self, channel: str, ts: str) -> str:
        return str(self.messages[(channel, ts)]["text"])

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params: dict[str, Any] = dict(request.query)
        if request.can_read_body:
            if request.content_type == "application/json":
                params.update(await request.json())
            else:
                params.update({k: v for k, v in (await request.post()).items()})
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token if scheme == "Bearer" else params.pop("token", "")
        want = self.app_token if method == "apps.connections.open" else self.bot_token
        if token != want:
            self.calls.append(Call(method, params, 200, False))
            return web.json_response({"ok": False, "error": "invalid_auth"})
        times, after = self._limits.get(method, (0, ""))
        if times > 0:
            self._limits[method] = (times - 1, after)
            self.calls.append(Call(method, params, 429, False))
            return web.json_response(
                {"ok": False, "error": "ratelimited"}, status=429, headers={"Retry-After": after}
            )
        if method in self.failures:
            self.calls.append(Call(method, params, 200, False))
            return web.json_response({"ok": False, "error": self.failures[method]})
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        result = handler(params) if handler else {"ok": False, "error": "unknown_method"}
        self.calls.append(Call(method, params, 200, bool(result["ok"])))
        return web.json_response(result)

    def new_ts(self) -> str:
        n = next(self._serial)
        return f"{1700000000 + n}.{n:06d}"

    def _m_auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": "https://fake.slack.com/",
            "team": "Fake Team",
            "user": "astr",
            "team_id": self.team_id,
            "user_id": self.bot_user,
            "bot_id": self.bot_id,
        }

    def _m_apps_connections_open(self, params: dict[str, Any]) -> dict[str, Any]:
        ticket = f"ticket-{next(self._serial)}"
        self._tickets.add(ticket)
        return {"ok": True, "url": f"ws://127.0.0.1:{self.port}/socket?ticket={ticket}"}

    def _m_chat_postMessage(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = params.get("channel")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if not params.get("text") and not params.get("blocks"):
            return {"ok": False, "error": "no_text"}
        ts = self.new_ts()
        message = {
            "type": "message",
            "user": self.bot_user,
            "bot_id": self.bot_id,
            "text": params.get("text", ""),
            "ts": ts,
            "thread_ts": params.get("thread_ts"),
            "blocks": params.get("blocks"),
        }
        self.messages[(channel, ts)] = message
        return {"ok": True, "channel": channel, "ts": ts, "message": message}

    def _m_chat_update(self, params: dict[str, Any]) -> dict[str, Any]:
        key = (params.get("channel", ""), params.get("ts", ""))
        message = self.messages.get(key)
        if message is None or message.get("user") != self.bot_user:
            return {"ok": False, "error": "message_not_found"}
        message["text"] = params.get("text", "")
        return {"ok": True, "channel": key[0], "ts": key[1], "text": message["text"]}

    def _m_conversations_open(self, params: dict[str, Any]) -> dict[str, Any]:
        users = str(params.get("users", ""))
        if not users:
            return {"ok": False, "error": "users_list_not_supplied"}
        return {"ok": True, "channel": {"id": "D" + users.split(",")[0]}}

    def _m_files_getUploadURLExternal(self, params: dict[str, Any]) -> dict[str, Any]:
        if not params.get("filename") or not str(params.get("length", "")).isdigit():
            return {"ok": False, "error": "invalid_arguments"}
        file_id = f"F{next(self._serial)}"
        return {
            "ok": True,
            "upload_url": f"http://127.0.0.1:{self.port}/upload/{file_id}",
            "file_id": file_id,
        }

    def _m_files_completeUploadExternal(self, params: dict[str, Any]) -> dict[str, Any]:
        files = json.loads(params.get("files", "[]"))
        if not files or any(f.get("id") not in self.uploads for f in files):
            return {"ok": False, "error": "file_not_found"}
        for f in files:
            self.shared.append(
                {
                    "id": f["id"],
                    "title": f.get("title"),
                    "channel_id": params.get("channel_id"),
                    "thread_ts": params.get("thread_ts"),
                }
            )
        return {"ok": True, "files": [{"id": f["id"], "title": f.get("title")} for f in files]}

    async def _upload(self, request: web.Request) -> web.Response:
        data = await request.read()
        self.uploads[request.match_info["file_id"]] = data
        return web.Response(text=f"OK - {len(data)}", content_type="text/plain")

    # -- files people sent ----------------------------------------------------------------
    def add_file(
        self,
        file_id: str,
        data: bytes,
        *,
        name: str = "audio_message.m4a",
        mimetype: str = "audio/mp4",
        size: int | None = None,
        url: str | None = None,
    ) -> dict[str, Any]:
        """Register a file (``size`` defaults to the data's) and return its file object,
        as it comes in a message's ``files`` and from ``files.info``."""
        info = slack_file(file_id, name, mimetype, len(data) if size is None else size)
        own = f"http://127.0.0.1:{self.port}/files-pri/{file_id}/{name}"
        info["url_private"] = info["url_private_download"] = url or own
        self.files[file_id] = (info, data)
        return info

    def _m_files_info(self, params: dict[str, Any]) -> dict[str, Any]:
        found = self.files.get(str(params.get("file", "")))
        if found is None:
            return {"ok": False, "error": "file_not_found"}
        return {"ok": True, "file": found[0], "comments": [], "response_metadata": {}}

    async def _download(self, request: web.Request) -> web.Response:
        file_id = request.match_info["file_id"]
        auth = request.headers.get("Authorization")
        self.downloads.append((file_id, auth))
        if auth != f"Bearer {self.bot_token}":
            return web.Response(status=403, text="forbidden")
        found = self.files.get(file_id)
        if found is None:
            return web.Response(status=404, text="not found")
        info, data = found
        return web.Response(body=data, content_type=info["mimetype"])

    # -- Socket Mode ------------------------------------------------------------------------
    @property
    def linked(self) -> bool:
        return self._ws is not None and not self._ws.closed

    async def wait_connects(self, n: int, within: float = 10.0) -> None:
        deadline = time.monotonic() + within
        while self.connects < n or not self.linked:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.connects} Socket Mode connections, not {n}")
            await asyncio.sleep(0.02)

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        if ticket not in self._tickets:
            return web.Response(status=401, text="invalid ticket")
        self._tickets.discard(ticket)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._ws = ws
        self.connects += 1
        await ws.send_json(
            {
                "type": "hello",
                "num_connections": 1,
                "debug_info": {"host": "fake-slack", "approximate_connection_time": 3600},
                "connection_info": {"app_id": "A1"},
            }
        )
        for envelope_id, (envelope, delivered) in list(self._unacked.items()):
            if delivered:
                envelope = {**envelope, "retry_attempt": envelope["retry_attempt"] + 1}
                envelope["retry_reason"] = "timeout"
            await self._deliver(ws, envelope_id, envelope)
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    continue
                envelope_id = data.get("envelope_id") if isinstance(data, dict) else None
                if envelope_id and not self.lose_acks:
                    self._unacked.pop(envelope_id, None)
                    self.acks.append(envelope_id)
        finally:
            if self._ws is ws:
                self._ws = None
        return ws

    async def _deliver(
        self, ws: web.WebSocketResponse, envelope_id: str, envelope: dict[str, Any]
    ) -> None:
        self._unacked[envelope_id] = (envelope, True)
        self.envelopes.append(envelope)
        await ws.send_json(envelope)

    async def send_envelope(self, envelope: dict[str, Any]) -> None:
        """Send an envelope now, or at the next connection; kept until acknowledged."""
        envelope_id = envelope["envelope_id"]
        self._unacked[envelope_id] = (envelope, False)
        if self.linked:
            assert self._ws is not None
            await self._deliver(self._ws, envelope_id, envelope)

    async def send_event(self, event: dict[str, Any]) -> str:
        """Send an event in an ``events_api`` envelope; returns the envelope id."""
        envelope_id = f"env-{next(self._serial)}"
        await self.send_envelope(
            {
                "envelope_id": envelope_id,
                "type": "events_api",
                "payload": self.callback(event),
                "accepts_response_payload": False,
                "retry_attempt": 0,
                "retry_reason": "",
            }
        )
        return envelope_id

    async def send_raw(self, text: str) -> None:
        assert self._ws is not None
        await self._ws.send_str(text)

    async def drop(self) -> None:
        """Close the current Socket Mode connection (the client reconnects)."""
        if self._ws is not None:
            await self._ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"dropped")

    async def disconnect(self, reason: str = "refresh_requested") -> None:
        """Ask the client to reconnect, as Slack does before it retires a connection."""
        assert self._ws is not None
        await self._ws.send_json(
            {"type": "disconnect", "reason": reason, "debug_info": {"host": "fake-slack"}}
        )

    def acked(self, envelope_id: str) -> bool:
        return envelope_id in self.acks

    # -- people's messages --------------------------------------------------------------------
    def callback(self, event: dict[str, Any]) -> dict[str, Any]:
        """An event in its ``event_callback`` wrapper (a Socket Mode payload, or the
        body of an Events API request)."""
        return {
            "token": "verification-token",
            "team_id": self.team_id,
            "api_app_id": "A1",
            "event": event,
            "type": "event_callback",
            "event_id": f"Ev{next(self._serial)}",
            "event_time": int(time.time()),
            "authorizations": [{"user_id": self.bot_user, "is_bot": True}],
        }

    def message(
        self,
        channel: str,
        user: str,
        text: str,
        *,
        channel_type: str,
        thread_ts: str | None = None,
        files: list[dict[str, Any]] | None = None,
        ts: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """A person's ``message`` event (remembered, so threads know their parent)."""
        ts = ts or self.new_ts()
        event: dict[str, Any] = {
            "type": "message",
            "channel": channel,
            "user": user,
            "text": text,
            "ts": ts,
            "event_ts": ts,
            "channel_type": channel_type,
            "team": self.team_id,
        }
        if thread_ts is not None:
            event["thread_ts"] = thread_ts
            parent = self.messages.get((channel, thread_ts))
            if parent is not None:
                event["parent_user_id"] = parent["user"]
        if files:
            event["files"] = files
            event["subtype"] = "file_share"
        event.update(extra)
        self.messages[(channel, ts)] = {"user": user, "text": text, "thread_ts": thread_ts}
        return event

    async def im(self, user: str, text: str, **kwargs: Any) -> str:
        """A direct message from ``user`` (IM channel ``D<user>``); returns its ts."""
        event = self.message("D" + user, user, text, channel_type="im", **kwargs)
        await self.send_event(event)
        return str(event["ts"])

    async def channel_message(
        self,
        channel: str,
        user: str,
        text: str,
        *,
        thread_ts: str | None = None,
        files: list[dict[str, Any]] | None = None,
        ts: str | None = None,
        app_mention: bool | None = None,
        channel_type: str = "channel",
    ) -> str:
        """A message in a channel; when it mentions the bot (or ``app_mention``), its
        ``app_mention`` twin follows, as Slack sends both. Returns its ts."""
        event = self.message(
            channel,
            user,
            text,
            channel_type=channel_type,
            thread_ts=thread_ts,
            files=files,
            ts=ts,
        )
        await self.send_event(event)
        if app_mention is None:
            app_mention = f"<@{self.bot_user}>" in text
        if app_mention:
            twin = {k: v for k, v in event.items() if k not in ("channel_type", "subtype")}
            await self.send_event({**twin, "type": "app_mention"})
        return str(event["ts"])


class EventsPoster:
    """Posts Events API requests to a bridge, signed as Slack signs them (v0)."""

    def __init__(self, url: str, signing_secret: str = SIGNING_SECRET) -> None:
        self.url = url
        self.signing_secret = signing_secret

    @staticmethod
    def sign(secret: str, timestamp: str, body: bytes) -> str:
        base = f"v0:{timestamp}:".encode() + body
        return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()

    async def post(
        self,
        payload: dict[str, Any] | bytes,
        *,
        retry_num: int | None = None,
        timestamp: str | None = None,
        secret: str | None = None,
        signature: str | None = None,
    ) -> tuple[int, str]:
        """POST one request; ``secret``/``timestamp``/``signature`` override the
        honest ones (a wrong secret, a stale time, garbage). Returns (status, body)."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        stamp = timestamp or str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": signature or self.sign(secret or self.signing_secret, stamp, body),
        }
        if retry_num is not None:
            headers["X-Slack-Retry-Num"] = str(retry_num)
            headers["X-Slack-Retry-Reason"] = "http_timeout"
        async with (
            aiohttp.ClientSession() as session,
            session.post(self.url, data=body, headers=headers) as resp,
        ):
            return resp.status, await resp.text()
