"""A fake NapCat: a OneBot v11 implementation peer for tests, over real WebSockets.

Reverse mode (the bot is the server): ``connect(url)`` dials the bot with the headers
NapCat sends (``X-Self-ID``, ``X-Client-Role: Universal``, ``Authorization: Bearer``)
and announces itself with a lifecycle ``connect`` event. Forward mode (the bot is the
client): ``serve()`` listens, checks the token and serves one bot link at a time;
``restart()`` takes the server down (links dropped) and up again on the same port.

Either way the fake sends message events as NapCat does (``message_format: array``; a
plain string goes as one text segment, or as a CQ-string message with ``cq=True``),
answers actions (``send_msg`` returns a fresh ``message_id``; ``get_login_info`` returns
the account; ``get_record`` / ``get_image`` the files registered with ``add_file``, as
``base64`` like NapCat, or only as a path on NapCat's own disk when registered with
``None``; an unknown file fails) and records every action it gets in ``actions``.
``fail`` names actions to answer with ``status: failed``; ``silent`` makes it answer
nothing at all. ``drop()`` closes the link on demand and ``send_raw`` sends any frame,
garbage included.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import socket
import time
from typing import Any

import aiohttp
from aiohttp import web

Segment = dict[str, Any]
Message = list[Segment] | str


def text(t: str) -> Segment:
    return {"type": "text", "data": {"text": t}}


def at(qq: int | str) -> Segment:
    return {"type": "at", "data": {"qq": str(qq), "name": ""}}


def reply(message_id: int | str) -> Segment:
    return {"type": "reply", "data": {"id": str(message_id)}}


def image(file: str, url: str) -> Segment:
    return {
        "type": "image",
        "data": {"summary": "", "file": file, "sub_type": 0, "url": url, "file_size": "1024"},
    }


def record(file: str, url: str) -> Segment:
    return {"type": "record", "data": {"file": file, "url": url, "file_size": "2048"}}


def face(face_id: int) -> Segment:
    return {"type": "face", "data": {"id": str(face_id)}}


def _answer(status: str, retcode: int, data: Any, echo: Any, why: str) -> dict[str, Any]:
    return {
        "status": status,
        "retcode": retcode,
        "data": data,
        "message": why,
        "wording": why,
        "echo": echo,
    }


class FakeNapCat:
    def __init__(self, self_id: int = 10001, nickname: str = "astr", token: str | None = None):
        self.self_id = self_id
        self.nickname = nickname
        self.token = token
        self.actions: list[dict[str, Any]] = []
        self.bot_message_ids: list[int] = []  # given to the bot's sent messages, in order
        self.fail: set[str] = set()
        self.silent = False
        self.connects = 0
        self._ids = itertools.count(7_000_001)
        self._ws: aiohttp.ClientWebSocketResponse | web.WebSocketResponse | None = None
        self._http: aiohttp.ClientSession | None = None
        self._reader: asyncio.Task[None] | None = None
        self._url: str | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._linked = asyncio.Event()
        self.files: dict[str, bytes | None] = {}  # get_record / get_image by file name

    def add_file(self, file: str, data: bytes | None) -> None:
        """A file that ``get_record`` / ``get_image`` give by its name (``file``):
        as base64, or (``None``) only as a path on NapCat's disk."""
        self.files[file] = data

    # -- reverse mode: we dial the bot --------------------------------------------------
    async def connect(self, url: str, *, token: str | None = None, in_query: bool = False) -> None:
        """Dial the bot's reverse WebSocket; ``token`` defaults to ``self.token``.
        Raises ``aiohttp.WSServerHandshakeError`` when the bot refuses (e.g. 401)."""
        token = self.token if token is None else token
        headers = {"X-Self-ID": str(self.self_id), "X-Client-Role": "Universal"}
        params = {}
        if token and in_query:
            params["access_token"] = token
        elif token:
            headers["Authorization"] = f"Bearer {token}"
        if self._http is None:
            self._http = aiohttp.ClientSession()
        self._url = url
        ws = await self._http.ws_connect(url, headers=headers, params=params)
        await self._link(ws)

    async def reconnect(self) -> None:
        assert self._url is not None
        await self.connect(self._url)

    async def drop(self) -> None:
        """Close the link from this side, as NapCat does when it restarts."""
        ws, self._ws = self._ws, None
        self._linked.clear()
        if ws is not None:
            await ws.close()
        if self._reader is not None:
            await asyncio.wait([self._reader], timeout=5)

    async def _link(self, ws: aiohttp.ClientWebSocketResponse | web.WebSocketResponse) -> None:
        self._ws = ws
        self.connects += 1
        self._linked.set()
        await self.send_meta("lifecycle", sub_type="connect")
        self._reader = asyncio.create_task(self._read(ws))

    # -- forward mode: the bot dials us ---------------------------------------------------
    async def serve(self, port: int = 0) -> int:
        app = web.Application()
        app.router.add_get("/", self._accept)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port or self.port))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        return self.port

    async def stop_serving(self) -> None:
        ws, self._ws = self._ws, None
        self._linked.clear()
        if ws is not None:
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def restart(self, down_s: float = 0.3) -> None:
        await self.stop_serving()
        await asyncio.sleep(down_s)
        await self.serve(self.port)

    async def _accept(self, request: web.Request) -> web.StreamResponse:
        if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.Response(status=401)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._ws = ws
        self.connects += 1
        self._linked.set()
        await self.send_meta("lifecycle", sub_type="connect")
        await self._read(ws)
        return ws

    @property
    def linked(self) -> bool:
        return self._ws is not None and not self._ws.closed

    async def wait_linked(self, within: float = 10) -> None:
        async with asyncio.timeout(within):
            await self._linked.wait()

    # -- actions from the bot -------------------------------------------------------------
    async def _read(self, ws: aiohttp.ClientWebSocketResponse | web.WebSocketResponse) -> None:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            self.actions.append(frame)
            if self.silent:
                continue
            await ws.send_str(json.dumps(self._answer(frame)))
        if self._ws is ws:
            self._ws = None
            self._linked.clear()

    def _answer(self, frame: dict[str, Any]) -> dict[str, Any]:
        action, echo = frame.get("action"), frame.get("echo")
        if action in self.fail:
            return _answer("failed", 100, None, echo, "scripted failure")
        if action in ("send_msg", "send_private_msg", "send_group_msg"):
            data: Any = {"message_id": next(self._ids)}
            self.bot_message_ids.append(data["message_id"])
        elif action == "get_login_info":
            data = {"user_id": self.self_id, "nickname": self.nickname}
        elif action == "get_status":
            data = {"online": True, "good": True}
        elif action in ("get_record", "get_image"):
            return self._file_answer(action, frame.get("params") or {}, echo)
        else:
            return _answer("failed", 1404, None, echo, "不支持的Api")
        return _answer("ok", 0, data, echo, "")

    def _file_answer(self, action: str, params: dict[str, Any], echo: Any) -> dict[str, Any]:
        name = str(params.get("file", ""))
        if name not in self.files:
            return _answer("failed", 1200, None, echo, f"file not found: {name}")
        blob = self.files[name]
        ext = "." + str(params["out_format"]) if action == "get_record" else ""
        path = f"/root/.config/QQ/NapCat/temp/{name}{ext}"
        data: dict[str, Any] = {"file": path, "url": path, "file_name": f"{name}{ext}"}
        if blob is not None:
            data["file_size"] = str(len(blob))
            data["base64"] = base64.b64encode(blob).decode("ascii")
        return _answer("ok", 0, data, echo, "")

    def sent(self, action: str = "send_msg") -> list[dict[str, Any]]:
        """The params of every ``action`` received, oldest first."""
        return [a["params"] for a in self.actions if a.get("action") == action]

    async def wait_sent(self, n: int, action: str = "send_msg", within: float = 15) -> list[Any]:
        """Wait until ``n`` ``action``s have arrived; returns all their params."""
        deadline = time.monotonic() + within
        while len(self.sent(action)) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"{n} {action} expected, got {self.sent(action)}")
            await asyncio.sleep(0.02)
        return self.sent(action)

    # -- events to the bot ----------------------------------------------------------------
    async def send_raw(self, data: str) -> None:
        assert self._ws is not None, "not linked"
        await self._ws.send_str(data)

    async def send_event(self, event: dict[str, Any]) -> None:
        await self.send_raw(json.dumps(event, ensure_ascii=False))

    async def send_meta(self, kind: str, **fields: Any) -> None:
        await self.send_event(
            {
                "time": int(time.time()),
                "self_id": self.self_id,
                "post_type": "meta_event",
                "meta_event_type": kind,
                **fields,
            }
        )

    async def heartbeat(self, interval_ms: int = 30_000) -> None:
        await self.send_meta(
            "heartbeat", status={"online": True, "good": True}, interval=interval_ms
        )

    def _message(
        self, message: Message, message_id: int | None, user_id: int, nickname: str, cq: bool
    ) -> dict[str, Any]:
        if isinstance(message, str) and not cq:
            message = [text(message)]
        mid = message_id if message_id is not None else next(self._ids)
        return {
            "self_id": self.self_id,
            "user_id": user_id,
            "time": int(time.time()),
            "message_id": mid,
            "message_seq": mid,
            "real_id": mid,
            "sender": {"user_id": user_id, "nickname": nickname, "card": ""},
            "raw_message": message if isinstance(message, str) else "",
            "font": 14,
            "message": message,
            "message_format": "string" if isinstance(message, str) else "array",
            "post_type": "message",
        }

    async def private(
        self,
        user_id: int,
        message: Message,
        *,
        message_id: int | None = None,
        nickname: str = "Alice",
        cq: bool = False,
    ) -> int:
        """A friend's private message; returns its message_id."""
        event = self._message(message, message_id, user_id, nickname, cq)
        event.update(message_type="private", sub_type="friend", target_id=self.self_id)
        await self.send_event(event)
        return int(event["message_id"])

    async def group(
        self,
        group_id: int,
        user_id: int,
        message: Message,
        *,
        message_id: int | None = None,
        nickname: str = "Bob",
        cq: bool = False,
    ) -> int:
        """A group member's message; returns its message_id."""
        event = self._message(message, message_id, user_id, nickname, cq)
        event.update(message_type="group", sub_type="normal", group_id=group_id)
        event["sender"]["role"] = "member"
        await self.send_event(event)
        return int(event["message_id"])

    async def close(self) -> None:
        await self.drop()
        await self.stop_serving()
        if self._http is not None:
            await self._http.close()
            self._http = None
