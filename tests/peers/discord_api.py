"""A fake Discord: the REST API and the gateway of one bot account, over real sockets.

One aiohttp server on 127.0.0.1 serves both::

    /api/v10/...          REST: users/@me, oauth2/applications/@me, gateway/bot,
                          channels/{id}, channels/{id}/messages (JSON or multipart),
                          PATCH channels/{id}/messages/{mid}, users/@me/channels
    /gateway              the gateway WebSocket, plain JSON text frames
    /gateway/resume       the ``resume_gateway_url`` READY hands out
    /attachments/...      the bytes of attachments made with ``data`` (or ``endless``)

The gateway speaks what discord.py needs: HELLO (op 10), heartbeats (op 1 → op 11),
IDENTIFY (op 2) → READY (the guild unavailable) then GUILD_CREATE (one text channel and
one thread), RESUME (op 6) → the dispatches the client missed (by sequence number), then
RESUMED. A dispatch made while no gateway socket is up is kept and replayed on RESUME,
as Discord does. A wrong token gets 401 on REST and close code 4004 on the gateway.

Like Discord, the fake echoes the bot's own messages back as MESSAGE_CREATE (``echo_own``).

Test controls: ``send_guild_message`` / ``send_thread_message`` / ``send_dm`` dispatch a
realistic MESSAGE_CREATE and return its id (``message_payload`` builds one without
sending it); ``dispatch`` and ``send_raw`` send anything; ``drop(code)`` closes the
gateway socket and ``hold`` keeps a new one waiting before its HELLO;
``rate_limit_next(n, retry_after)`` answers the next ``n`` REST calls with 429 (with
``Retry-After``, ``retry_after`` and ``Via``, which discord.py needs to wait rather than
fail), ``fail_next(n)`` with 403. ``posts()`` and ``edits()`` are the message calls
recorded (``wait_sent(n)`` waits for posts); ``messages[mid]`` is every message as it
shows now (edits applied). ``attachment(..., data=b"...")`` serves those bytes at the
attachment's URL (on this server; without ``data`` the URL is Discord's CDN, as
before), ``endless=True`` a body that never ends; each download is in ``downloads``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSMsgType, web

from tests.peers.endless import stream_endless

API = "/api/v10"
VOICE_FLAG = 1 << 13  # MessageFlags.voice (IS_VOICE_MESSAGE)
EVERYONE_PERMISSIONS = "1071698660929"  # view, send, read history, attach, embed...


def _json(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer as Discord sends it: discord.py reads a body as JSON only when the
    Content-Type is exactly ``application/json`` (no charset)."""
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers={**(headers or {}), "Content-Type": "application/json"},
    )


def _iso(ts: float | None = None) -> str:
    return datetime.fromtimestamp(ts or time.time(), UTC).isoformat()


@dataclass
class Call:
    """One REST call as the fake got it: ``json`` is the JSON body (or a multipart's
    ``payload_json``), ``files`` the uploaded ``(field, filename, bytes)``, ``status``
    the answer's, ``at`` when it came (``time.monotonic()``)."""

    method: str
    path: str
    json: Any = None
    files: list[tuple[str, str, bytes]] = field(default_factory=list)
    status: int = 200
    at: float = field(default_factory=time.monotonic)

    @property
    def channel_id(self) -> str:
        return self.path.split("/")[2]


@dataclass
class Download:
    """One request for an attachment's bytes: ``sent`` bytes written, ``hung_up`` when
    the client closed the connection before the body ended, ``authorization`` the
    header it carried (attachments need none)."""

    attachment_id: str
    authorization: str | None
    status: int = 200
    sent: int = 0
    hung_up: bool = False


class FakeDiscord:
    def __init__(
        self,
        token: str,
        *,
        bot_id: str = "900000000000000001",
        bot_name: str = "astr",
        guild_id: str = "910000000000000001",
        channel_id: str = "920000000000000001",
        thread_id: str = "930000000000000001",
        echo_own: bool = True,
    ) -> None:
        self.token = token
        self.bot_id = bot_id
        self.other_bots: set[str] = set()  # user ids that are bot accounts besides ours
        self.bot_name = bot_name
        self.guild_id = guild_id
        self.channel_id = channel_id
        self.thread_id = thread_id
        self.echo_own = echo_own
        self.calls: list[Call] = []
        self.messages: dict[str, dict[str, Any]] = {}  # every message, by id; edits applied
        self.identifies = 0
        self.resumes = 0
        self.gateway_urls: list[str] = []  # each URL the client dialled, query included
        self.port = 0
        self._ids = itertools.count(1_300_000_000_000_000_001)
        self._seq = 0
        self._log: list[tuple[int, str, Any]] = []  # dispatches of the current session
        self._session: str | None = None
        self._ws: web.WebSocketResponse | None = None
        self._live = asyncio.Event()  # a socket is up and identified or resumed
        self._rate_limits: list[float] = []
        self._failures = 0
        self._dm_channels: dict[str, str] = {}
        self._runner: web.AppRunner | None = None
        self._sent = asyncio.Condition()
        self._released = asyncio.Event()  # cleared while ``hold`` is on
        self._released.set()
        # attachment id → (bytes, None when endless; Content-Type)
        self.files: dict[str, tuple[bytes | None, str]] = {}
        self.downloads: list[Download] = []

    # -- server -----------------------------------------------------------------------
    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}{API}"

    async def start(self) -> str:
        """Serve on a free port; returns the REST base (``DiscordConfig.api_base``)."""
        app = web.Application()
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/gateway/resume", self._gateway)
        app.router.add_route("*", API + "/{tail:.*}", self._rest)
        app.router.add_get("/attachments/{channel}/{aid}/{filename}", self._attachment)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.api_base

    async def close(self) -> None:
        await self.drop(1001)
        if self._runner is not None:
            await self._runner.cleanup()

    # -- test controls: the gateway -----------------------------------------------------
    @property
    def linked(self) -> bool:
        return self._live.is_set()

    async def wait_linked(self, within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            await self._live.wait()

    @property
    def hold(self) -> bool:
        """While on, a new gateway socket is accepted but its HELLO waits (the client
        stays disconnected); switching it off lets the waiting sockets go on."""
        return not self._released.is_set()

    @hold.setter
    def hold(self, on: bool) -> None:
        if on:
            self._released.clear()
        else:
            self._released.set()

    async def drop(self, code: int = 4000) -> None:
        """Close the gateway socket with ``code`` (4000: the client should RESUME)."""
        ws, self._ws = self._ws, None
        self._live.clear()
        if ws is not None and not ws.closed:
            await ws.close(code=code, message=b"dropped by the test")

    async def dispatch(self, event: str, data: Any) -> int:
        """Send a dispatch (op 0) and return its sequence number; kept for replay when
        no socket is up."""
        self._seq += 1
        self._log.append((self._seq, event, data))
        if self._ws is not None and self._live.is_set():
            await self._send_dispatch(self._ws, self._seq, event, data)
        return self._seq

    async def send_raw(self, text: str) -> None:
        assert self._ws is not None, "no gateway socket"
        await self._ws.send_str(text)

    def user(self, user_id: str, name: str | None = None) -> dict[str, Any]:
        name = name or f"user{user_id[-4:]}"
        return {
            "id": user_id,
            "username": name,
            "global_name": name.title(),
            "discriminator": "0",
            "avatar": None,
            "public_flags": 0,
            "bot": user_id == self.bot_id or user_id in self.other_bots,
        }

    def attachment(
        self,
        filename: str,
        content_type: str | None,
        *,
        size: int = 1024,
        voice_seconds: float | None = None,
        data: bytes | None = None,
        endless: bool = False,
    ) -> dict[str, Any]:
        """An attachment as Discord describes it (a voice message's has its duration
        and waveform). With ``data`` (its size then is the data's) or ``endless`` the
        bytes are served by this server, at the attachment's URL."""
        aid = str(next(self._ids))
        url = f"https://cdn.discordapp.com/attachments/{self.channel_id}/{aid}/{filename}"
        if data is not None or endless:
            self.files[aid] = (None if endless else data, content_type or "")
            url = f"http://127.0.0.1:{self.port}/attachments/{self.channel_id}/{aid}/{filename}"
            size = len(data) if data is not None else size
        described: dict[str, Any] = {
            "id": aid,
            "filename": filename,
            "size": size,
            "url": url,
            "proxy_url": url.replace("cdn.discordapp.com", "media.discordapp.net"),
        }
        if content_type is not None:
            described["content_type"] = content_type
        if voice_seconds is not None:
            described["duration_secs"] = voice_seconds
            described["waveform"] = base64.b64encode(bytes(range(0, 256, 4))).decode()
        return described

    async def send_guild_message(
        self,
        author_id: str,
        content: str,
        *,
        channel_id: str | None = None,
        mentions: Iterable[str] = (),
        reply_to: str | None = None,
        attachments: Iterable[dict[str, Any]] = (),
        message_id: str | None = None,
    ) -> str:
        """A user's message in the guild's text channel (or ``channel_id``); ``mentions``
        are user ids (put ``<@id>`` in ``content`` too), ``reply_to`` a message id."""
        channel = channel_id or self.channel_id
        data = self.message_payload(
            author_id,
            content,
            channel,
            guild_id=self.guild_id,
            mentions=mentions,
            reply_to=reply_to,
            attachments=attachments,
            message_id=message_id,
        )
        await self.dispatch("MESSAGE_CREATE", data)
        return str(data["id"])

    async def send_thread_message(self, author_id: str, content: str, **kw: Any) -> str:
        return await self.send_guild_message(author_id, content, channel_id=self.thread_id, **kw)

    async def send_dm(
        self,
        author_id: str,
        content: str,
        *,
        attachments: Iterable[dict[str, Any]] = (),
        message_id: str | None = None,
    ) -> str:
        """A user's direct message to the bot; returns its id (``dm_channel(author_id)``
        is the channel)."""
        channel = self.dm_channel(author_id)
        data = self.message_payload(
            author_id, content, channel, attachments=attachments, message_id=message_id
        )
        await self.dispatch("MESSAGE_CREATE", data)
        return str(data["id"])

    def dm_channel(self, user_id: str) -> str:
        if user_id not in self._dm_channels:
            self._dm_channels[user_id] = str(next(self._ids))
        return self._dm_channels[user_id]

    # -- test controls: REST ----------------------------------------------------------------
    def rate_limit_next(self, n: int = 1, retry_after: float = 0.3) -> None:
        self._rate_limits.extend([retry_after] * n)

    def fail_next(self, n: int = 1) -> None:
        """Answer the next ``n`` REST calls with 403 Missing Permissions."""
        self._failures += n

    def posts(self) -> list[Call]:
        """Messages the bot created (successful POST .../messages), in order."""
        return [
            c
            for c in self.calls
            if c.method == "POST" and c.path.endswith("/messages") and c.status == 200
        ]

    def edits(self) -> list[Call]:
        return [c for c in self.calls if c.method == "PATCH" and c.status == 200]

    async def wait_sent(self, n: int, within: float = 10.0) -> list[Call]:
        """Wait until the bot created at least ``n`` messages; returns the posts."""
        async with asyncio.timeout(within), self._sent:
            await self._sent.wait_for(lambda: len(self.posts()) >= n)
        return self.posts()

    def bot_messages(self) -> list[dict[str, Any]]:
        return [m for m in self.messages.values() if m["author"]["id"] == self.bot_id]

    # -- gateway ------------------------------------------------------------------------------
    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        self.gateway_urls.append(str(request.rel_url))
        await self._released.wait()
        if self._ws is not None:
            await self.drop(4000)
        self._ws = ws
        await ws.send_json({"op": 10, "d": {"heartbeat_interval": 41250}, "s": None, "t": None})
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                break
            frame = json.loads(msg.data)
            op, data = frame.get("op"), frame.get("d")
            if op == 1:
                await ws.send_json({"op": 11, "d": None, "s": None, "t": None})
            elif op == 2:
                await self._identify(ws, data)
            elif op == 6:
                await self._resume(ws, data)
        if self._ws is ws:
            self._ws = None
            self._live.clear()
        return ws

    async def _identify(self, ws: web.WebSocketResponse, data: dict[str, Any]) -> None:
        if data.get("token") != self.token:
            await ws.close(code=4004, message=b"Authentication failed.")
            return
        self.identifies += 1
        self._session = f"session-{self.identifies}"
        self._log.clear()
        self._seq = 0
        me = {**self.user(self.bot_id, self.bot_name), "bot": True, "verified": True}
        ready = {
            "v": 10,
            "user": me,
            "guilds": [{"id": self.guild_id, "unavailable": True}],
            "session_id": self._session,
            "resume_gateway_url": f"ws://127.0.0.1:{self.port}/gateway/resume",
            "application": {"id": self.bot_id, "flags": 0},
            "private_channels": [],
        }
        self._live.set()
        await self.dispatch("READY", ready)
        await self.dispatch("GUILD_CREATE", self._guild())

    async def _resume(self, ws: web.WebSocketResponse, data: dict[str, Any]) -> None:
        if data.get("token") != self.token:
            await ws.close(code=4004, message=b"Authentication failed.")
            return
        if data.get("session_id") != self._session:
            await ws.send_json({"op": 9, "d": False, "s": None, "t": None})
            return
        self.resumes += 1
        after = data.get("seq") or 0
        for seq, event, payload in list(self._log):
            if seq > after:
                await self._send_dispatch(ws, seq, event, payload)
        self._live.set()
        self._seq += 1
        await self._send_dispatch(ws, self._seq, "RESUMED", {})

    async def _send_dispatch(
        self, ws: web.WebSocketResponse, seq: int, event: str, data: Any
    ) -> None:
        # The socket may be gone: the dispatch stays in the log for a RESUME.
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_json({"op": 0, "s": seq, "t": event, "d": data})

    def _guild(self) -> dict[str, Any]:
        everyone = {
            "id": self.guild_id,
            "name": "@everyone",
            "permissions": EVERYONE_PERMISSIONS,
            "position": 0,
            "color": 0,
            "hoist": False,
            "managed": False,
            "mentionable": False,
            "flags": 0,
        }
        channel = {
            "id": self.channel_id,
            "type": 0,
            "guild_id": self.guild_id,
            "name": "general",
            "position": 0,
            "permission_overwrites": [],
            "nsfw": False,
            "parent_id": None,
            "rate_limit_per_user": 0,
            "topic": None,
            "last_message_id": None,
        }
        thread = {
            "id": self.thread_id,
            "type": 11,
            "guild_id": self.guild_id,
            "parent_id": self.channel_id,
            "owner_id": "800000000000000001",
            "name": "a thread",
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "message_count": 0,
            "member_count": 2,
            "thread_metadata": {
                "archived": False,
                "auto_archive_duration": 1440,
                "archive_timestamp": _iso(),
                "locked": False,
            },
        }
        return {
            "id": self.guild_id,
            "name": "test guild",
            "icon": None,
            "owner_id": "800000000000000001",
            "roles": [everyone],
            "emojis": [],
            "stickers": [],
            "features": [],
            "member_count": 3,
            "members": [
                {
                    "user": {**self.user(self.bot_id, self.bot_name), "bot": True},
                    "roles": [],
                    "joined_at": _iso(),
                    "deaf": False,
                    "mute": False,
                    "flags": 0,
                }
            ],
            "channels": [channel],
            "threads": [thread],
            "voice_states": [],
            "presences": [],
            "joined_at": _iso(),
            "large": False,
            "unavailable": False,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "premium_tier": 0,
            "preferred_locale": "en-US",
            "system_channel_flags": 0,
            "nsfw_level": 0,
        }

    def message_payload(
        self,
        author_id: str,
        content: str,
        channel_id: str,
        *,
        guild_id: str | None = None,
        mentions: Iterable[str] = (),
        reply_to: str | None = None,
        attachments: Iterable[dict[str, Any]] = (),
        message_id: str | None = None,
    ) -> dict[str, Any]:
        """A user's MESSAGE_CREATE payload as Discord sends it (remembered in
        ``messages``, not dispatched): a guild message when ``guild_id`` is given."""
        mid = message_id or str(next(self._ids))
        files = list(attachments)
        data: dict[str, Any] = {
            "id": mid,
            "type": 19 if reply_to else 0,
            "channel_id": channel_id,
            "author": self.user(author_id),
            "content": content,
            "timestamp": _iso(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [
                self.user(uid, self.bot_name if uid == self.bot_id else None) for uid in mentions
            ],
            "mention_roles": [],
            "attachments": files,
            "embeds": [],
            "pinned": False,
            "flags": VOICE_FLAG if any("waveform" in f for f in files) else 0,
            "nonce": str(next(self._ids)),
        }
        if guild_id is not None:
            data["guild_id"] = guild_id
            data["member"] = {"roles": [], "joined_at": _iso(), "deaf": False, "mute": False}
        if reply_to is not None:
            data["message_reference"] = {
                "type": 0,
                "message_id": reply_to,
                "channel_id": channel_id,
                **({"guild_id": guild_id} if guild_id else {}),
            }
            data["referenced_message"] = self.messages.get(reply_to)
        self.messages[mid] = data
        return data

    # -- attachments --------------------------------------------------------------------------
    async def _attachment(self, request: web.Request) -> web.StreamResponse:
        aid = request.match_info["aid"]
        down = Download(aid, request.headers.get("Authorization"))
        self.downloads.append(down)
        if aid not in self.files:
            down.status = 404
            return web.Response(status=404, text="not found")
        body, content_type = self.files[aid]
        headers = {"Content-Type": content_type} if content_type else {}
        if body is not None:
            down.sent = len(body)
            return web.Response(body=body, headers=headers)
        return await stream_endless(request, headers, down)

    # -- REST -----------------------------------------------------------------------------------
    async def _rest(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        call = Call(request.method, path)
        if request.headers.get("Authorization") != f"Bot {self.token}":
            call.status = 401
            self.calls.append(call)
            return _json({"message": "401: Unauthorized", "code": 0}, status=401)
        await self._read_body(request, call)
        self.calls.append(call)
        if self._rate_limits:
            retry_after = self._rate_limits.pop(0)
            call.status = 429
            return _json(
                {
                    "message": "You are being rate limited.",
                    "retry_after": retry_after,
                    "global": False,
                },
                status=429,
                headers={
                    "Retry-After": str(retry_after),
                    "Via": "1.1 google",
                    "X-RateLimit-Scope": "user",
                },
            )
        if self._failures:
            self._failures -= 1
            call.status = 403
            return _json({"message": "Missing Permissions", "code": 50013}, status=403)
        answer = await self._route(request.method, path, call)
        if answer is None:
            call.status = 404
            return _json({"message": "404: Not Found", "code": 0}, status=404)
        async with self._sent:
            self._sent.notify_all()
        return _json(answer)

    async def _read_body(self, request: web.Request, call: Call) -> None:
        if not request.body_exists:
            return
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            async for part in reader:
                if part.name == "payload_json":
                    call.json = json.loads(await part.text())  # type: ignore[union-attr]
                else:
                    blob = await part.read()  # type: ignore[union-attr]
                    call.files.append((part.name or "", part.filename or "", bytes(blob)))
        else:
            call.json = await request.json()

    async def _route(self, method: str, path: str, call: Call) -> Any:
        parts = path.strip("/").split("/")
        me = {
            **self.user(self.bot_id, self.bot_name),
            "bot": True,
            "verified": True,
            "mfa_enabled": False,
            "flags": 0,
        }
        if method == "GET" and path == "/users/@me":
            return me
        if method == "GET" and path == "/oauth2/applications/@me":
            return {
                "id": self.bot_id,
                "name": self.bot_name,
                "description": "",
                "icon": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "owner": self.user("800000000000000001", "owner"),
                "verify_key": "0" * 64,
                "flags": 0,
            }
        if method == "GET" and path in ("/gateway", "/gateway/bot"):
            return {
                "url": f"ws://127.0.0.1:{self.port}/gateway",
                "shards": 1,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": 999,
                    "reset_after": 14_400_000,
                    "max_concurrency": 1,
                },
            }
        if method == "POST" and path == "/users/@me/channels":
            user_id = str((call.json or {}).get("recipient_id"))
            return {
                "id": self.dm_channel(user_id),
                "type": 1,
                "recipients": [self.user(user_id)],
                "last_message_id": None,
            }
        if parts[0] != "channels" or len(parts) < 2:
            return None
        channel_id = parts[1]
        if method == "GET" and len(parts) == 2:
            return self._channel(channel_id)
        if method == "POST" and parts[2:] == ["messages"]:
            return await self._bot_message(channel_id, call)
        if method == "PATCH" and len(parts) == 4 and parts[2] == "messages":
            found = self.messages.get(parts[3])
            if found is None or found["author"]["id"] != self.bot_id:
                return None
            body = call.json or {}
            if "content" in body:
                found["content"] = body["content"]
            found["edited_timestamp"] = _iso()
            return found
        return None

    def _channel(self, channel_id: str) -> dict[str, Any] | None:
        if channel_id in self._dm_channels.values():
            user_id = next(u for u, c in self._dm_channels.items() if c == channel_id)
            return {
                "id": channel_id,
                "type": 1,
                "recipients": [self.user(user_id)],
                "last_message_id": None,
            }
        if channel_id in (self.channel_id, self.thread_id):
            guild = self._guild()
            return next(c for c in guild["channels"] + guild["threads"] if c["id"] == channel_id)
        return None

    async def _bot_message(self, channel_id: str, call: Call) -> dict[str, Any] | None:
        if self._channel(channel_id) is None:
            return None
        body = call.json or {}
        mid = str(next(self._ids))
        attachments = [
            {
                "id": str(next(self._ids)),
                "filename": filename,
                "size": len(blob),
                "url": f"https://cdn.discordapp.com/attachments/{channel_id}/{mid}/{filename}",
                "proxy_url": f"https://media.discordapp.net/attachments/{channel_id}/{filename}",
            }
            for _, filename, blob in call.files
        ]
        ref = body.get("message_reference")
        data: dict[str, Any] = {
            "id": mid,
            "type": 19 if ref else 0,
            "channel_id": channel_id,
            "author": {**self.user(self.bot_id, self.bot_name), "bot": True},
            "content": body.get("content") or "",
            "timestamp": _iso(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": attachments,
            "embeds": body.get("embeds") or [],
            "pinned": False,
            "flags": 0,
        }
        if channel_id in (self.channel_id, self.thread_id):
            data["guild_id"] = self.guild_id
        if ref:
            data["message_reference"] = {**ref, "channel_id": channel_id}
            data["referenced_message"] = self.messages.get(str(ref.get("message_id")))
        self.messages[mid] = data
        if self.echo_own:
            await self.dispatch("MESSAGE_CREATE", data)
        return data
