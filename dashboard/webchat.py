"""The web chat API: HTTP and WebSocket endpoints over a ``ChatBackend``.

    GET  /health           no token; 200 when the actor tree is up, 503 otherwise
    GET  /metrics          Prometheus text format, every actor's figures (token)
    POST /api/chat         {"session", "text", "message_id"?, "voice"?} -> {"reply", ...}
    GET  /api/outbox       ?session=: messages the bot sent on its own, kept for polling
    GET  /api/platforms    each chat account: state, connected, reconnects, counters
    ...  /api/kb...        knowledge bases (dashboard.knowledge_api)
    WS   /ws/chat          client: {"type": "message", "session", "text", "message_id"?,
                                    "voice"?}
                           server: {"type": "chunk", "message_id", "text"} ...
                                   {"type": "reply", "message_id", "text", "duplicate",
                                    "error"}  |  {"type": "error", "message"}

Everything but ``/health`` needs the web chat token: ``Authorization: Bearer <token>``,
or ``?token=`` on the WebSocket (browsers cannot set headers there). A message id sent
again returns the same reply marked ``duplicate`` instead of a second answer.

A voice message is ``"voice": "data:audio/<type>;base64,..."`` (any format ffmpeg
reads: what a browser's MediaRecorder makes, ogg, mp3, wav...), with or without text;
it is transcribed and answered as text. A spoken reply comes back as an attachment of
type ``voice`` (a data: URL) beside the text.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from astr_ray.media import parse_data_url
from astr_ray.message import ChatType, Component, Event, Reply, Sender, Text, Voice
from dashboard.knowledge_api import knowledge_routes

__all__ = [
    "PLATFORM_ID",
    "BadRequest",
    "ChatBackend",
    "create_app",
    "parse_message",
    "read_body",
    "reply_json",
    "serve_chat_socket",
]

log = logging.getLogger(__name__)

PLATFORM_ID = "webchat"
_SESSION = re.compile(r"^[A-Za-z0-9_.@-]{1,128}$")
_MESSAGE_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
MAX_VOICE_BODY = 8 * 1024 * 1024  # a message carrying a voice recording (base64)


class Outbox:
    """Messages the bot sends on its own (a plugin's ``ctx.send``), per web chat
    session: pushed at once to the WebSockets that talk in that session, else kept (the
    newest ``keep``) until fetched with ``GET /api/outbox?session=...``."""

    def __init__(self, keep: int = 100) -> None:
        self.keep = keep
        self._queued: dict[str, deque[dict[str, Any]]] = {}
        self._subscribers: dict[str, set[Callable[[dict[str, Any]], Awaitable[None]]]] = {}

    async def push(self, session: str, text: str) -> None:
        item = {"type": "push", "session": session, "text": text, "time": time.time()}
        delivered = False
        for deliver in list(self._subscribers.get(session, ())):
            try:
                await deliver(item)
                delivered = True
            except Exception:
                self.unsubscribe(session, deliver)
        if not delivered:
            self._queued.setdefault(session, deque(maxlen=self.keep)).append(item)

    def take(self, session: str) -> list[dict[str, Any]]:
        return list(self._queued.pop(session, ()))

    def subscribe(self, session: str, deliver: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        self._subscribers.setdefault(session, set()).add(deliver)

    def unsubscribe(
        self, session: str, deliver: Callable[[dict[str, Any]], Awaitable[None]]
    ) -> None:
        subs = self._subscribers.get(session)
        if subs is not None:
            subs.discard(deliver)
            if not subs:
                del self._subscribers[session]


class ChatBackend(Protocol):
    outbox: Outbox

    async def send(self, event: Event) -> Reply: ...

    def stream(self, event: Event) -> AsyncIterator[dict[str, Any]]: ...

    async def health(self) -> dict[str, Any]: ...

    async def platforms(self) -> list[dict[str, Any]]: ...

    async def metrics_text(self) -> bytes: ...

    async def knowledge(self, method: str, *args: Any, **kwargs: Any) -> Any: ...


class BadRequest(ValueError):
    pass


def parse_message(data: Any, max_chars: int) -> Event:
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object")
    session = data.get("session", "default")
    text = data.get("text")
    message_id = data.get("message_id") or uuid.uuid4().hex
    if not isinstance(session, str) or not _SESSION.match(session):
        raise BadRequest("session must be 1-128 characters of letters, digits, _ . @ -")
    voice = data.get("voice")
    components: list[Component] = []
    if voice is not None:
        components.append(_voice(voice))
        text = text or ""
    if not isinstance(text, str) or not (text.strip() or components):
        raise BadRequest("text must be a non-empty string (or send a voice message)")
    if text.strip():
        components.insert(0, Text(text=text))
    if len(text) > max_chars:
        raise BadRequest(f"text is longer than {max_chars} characters")
    if not isinstance(message_id, str) or not _MESSAGE_ID.match(message_id):
        raise BadRequest("message_id must be 1-128 characters of letters, digits, _ . : -")
    return Event(
        platform_id=PLATFORM_ID,
        chat_type=ChatType.PRIVATE,
        chat_id=session,
        sender=Sender(id=session),
        message_id=message_id,
        components=tuple(components),
    )


def _voice(value: Any) -> Voice:
    if not isinstance(value, str) or not value.startswith("data:"):
        raise BadRequest('voice must be a data: URL ("data:audio/ogg;base64,...")')
    parsed = parse_data_url(value)
    if parsed is None:
        raise BadRequest("voice is not a valid base64 data: URL")
    data, mime = parsed
    if not data:
        raise BadRequest("voice is empty")
    if mime is not None and not mime.startswith(("audio/", "video/", "application/ogg")):
        raise BadRequest(f"voice must be audio, not {mime}")
    return Voice(url=value)


def reply_json(reply: Reply) -> dict[str, Any]:
    return {
        "type": "reply",
        "session_key": reply.session_key,
        "message_id": reply.event_id,
        "text": reply.text,
        # Images and files a tool handed back (data: URLs for the web chat).
        "attachments": [c.model_dump(mode="json") for c in reply.components if c.type != "text"],
        "duplicate": reply.duplicate,
        "error": reply.error,
    }


async def serve_chat_socket(
    ws: WebSocket,
    stream: Callable[[Event], AsyncIterator[dict[str, Any]]],
    parse: Callable[[dict[str, Any]], Event],
    *,
    on_event: Callable[[Event, Callable[[dict[str, Any]], Awaitable[None]]], Awaitable[None]]
    | None = None,
) -> None:
    """Serve one accepted chat WebSocket until the client leaves: each message frame is
    parsed (a bad one gets an ``error`` frame, the socket stays), its turn streams back
    as ``chunk`` frames and one ``reply`` frame, and several turns may run at once.
    Turns still running when the client leaves are cancelled here; they are committed
    by the host all the same, and a resend of the message id gets the stored reply."""
    lock = asyncio.Lock()
    tasks: set[asyncio.Task[None]] = set()

    async def send(obj: dict[str, Any]) -> None:
        async with lock:
            await ws.send_text(json.dumps(obj))

    async def turn(event: Event) -> None:
        try:
            async for item in stream(event):
                if "chunk" in item:
                    await send(
                        {"type": "chunk", "message_id": event.message_id, "text": item["chunk"]}
                    )
                else:
                    await send(reply_json(item["reply"]))
        except (WebSocketDisconnect, RuntimeError):
            pass  # the client left; the turn is committed and can be fetched again
        except Exception:
            log.exception("chat turn failed event=%s", event.message_id)
            await send(
                {"type": "error", "message_id": event.message_id, "message": "internal error"}
            )

    try:
        while True:
            raw = await ws.receive_text()
            if len(raw) > MAX_VOICE_BODY:
                await send({"type": "error", "message": "message too large"})
                continue
            try:
                data = json.loads(raw)
                if not isinstance(data, dict) or data.get("type", "message") != "message":
                    raise BadRequest('expected {"type": "message", ...}')
                event = parse(data)
            except (ValueError, BadRequest) as exc:
                msg = str(exc) if isinstance(exc, BadRequest) else "not valid JSON"
                await send({"type": "error", "message": msg})
                continue
            if on_event is not None:
                await on_event(event, send)
            task = asyncio.create_task(turn(event))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    except WebSocketDisconnect:
        pass
    finally:
        for task in tasks:
            task.cancel()


async def read_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None when it is over ``limit`` (read no further)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            return None
    return bytes(body)


def create_app(
    backend: ChatBackend,
    token: str,
    *,
    max_chars: int = 16_000,
    max_upload: int = 20 * 1024 * 1024,
) -> Starlette:
    if not token:
        raise ValueError("the web chat needs a token (run `astr-ray init`)")
    expected = token.encode()

    def authorized(supplied: str | None) -> bool:
        return supplied is not None and hmac.compare_digest(supplied.encode(), expected)

    def bearer(conn: Request | WebSocket) -> str | None:
        auth = conn.headers.get("authorization", "")
        return auth[7:] if auth.lower().startswith("bearer ") else None

    async def health(request: Request) -> Response:
        info = await backend.health()
        return JSONResponse(info, status_code=200 if info.get("ok") else 503)

    async def metrics(request: Request) -> Response:
        if not authorized(bearer(request)):
            return JSONResponse({"error": "missing or wrong token"}, status_code=401)
        return Response(
            await backend.metrics_text(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    async def chat(request: Request) -> Response:
        if not authorized(bearer(request)):
            return JSONResponse({"error": "missing or wrong token"}, status_code=401)
        body = await read_body(request, MAX_VOICE_BODY)
        if body is None:
            return JSONResponse({"error": "request body too large"}, status_code=413)
        try:
            event = parse_message(json.loads(body or b"null"), max_chars)
        except (ValueError, BadRequest) as exc:
            msg = str(exc) if isinstance(exc, BadRequest) else "body is not valid JSON"
            return JSONResponse({"error": msg}, status_code=400)
        reply = await backend.send(event)
        return JSONResponse(reply_json(reply))

    async def platforms(request: Request) -> Response:
        if not authorized(bearer(request)):
            return JSONResponse({"error": "missing or wrong token"}, status_code=401)
        return JSONResponse({"platforms": await backend.platforms()})

    async def outbox(request: Request) -> Response:
        if not authorized(bearer(request)):
            return JSONResponse({"error": "missing or wrong token"}, status_code=401)
        session = request.query_params.get("session", "")
        if not _SESSION.match(session):
            return JSONResponse({"error": "session is missing or invalid"}, status_code=400)
        return JSONResponse({"messages": backend.outbox.take(session)})

    async def ws_chat(ws: WebSocket) -> None:
        supplied = ws.query_params.get("token")
        if supplied is None:
            supplied = bearer(ws)
        if not authorized(supplied):
            await ws.close(code=4401, reason="missing or wrong token")
            return
        await ws.accept()
        sessions: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {}

        async def on_event(event: Event, send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
            if event.chat_id not in sessions:  # messages the bot sends on its own come here
                sessions[event.chat_id] = send
                backend.outbox.subscribe(event.chat_id, send)
                for item in backend.outbox.take(event.chat_id):
                    await send(item)

        try:
            await serve_chat_socket(
                ws, backend.stream, lambda data: parse_message(data, max_chars), on_event=on_event
            )
        finally:
            for session, send in sessions.items():
                backend.outbox.unsubscribe(session, send)

    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/api/chat", chat, methods=["POST"]),
            Route("/api/outbox", outbox, methods=["GET"]),
            Route("/api/platforms", platforms, methods=["GET"]),
            WebSocketRoute("/ws/chat", ws_chat),
            *knowledge_routes(backend, lambda r: authorized(bearer(r)), max_upload),
        ]
    )
