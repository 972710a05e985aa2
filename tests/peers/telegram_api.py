"""A fake Telegram Bot API server for tests, over real HTTP on 127.0.0.1.

    bridge (python-telegram-bot) ── POST /bot<token>/<method> ──► FakeTelegram
        params form-encoded (values JSON-encoded unless strings), multipart when a file
        is uploaded, or a JSON body; method names are case-insensitive, as Telegram's
    FakeTelegram ── POST <webhook url> (X-Telegram-Bot-Api-Secret-Token) ──► bridge

Answers are ``{"ok": true, "result": ...}`` with objects shaped like Telegram's; a wrong
token gets 401 ``{"ok": false, "error_code": 401}``. The users' side: ``private()`` and
``group()`` post a message (text with entities, a reply, a photo, a voice, a document),
which waits for ``getUpdates`` (long poll up to ``timeout``; an ``offset`` confirms and
drops the updates below it, and unconfirmed ones come again) or, while a webhook is
set, is posted to it at once. ``queue()`` takes any update, garbage included.

Files. ``add_file(file_id, data)`` registers a file that ``getFile`` describes
(``file_size``, ``file_path``) and that is served, like Telegram's, at
``<base>/file/bot<token>/<file_path>``; ``endless=True`` serves a body that never
ends, without a declared size (the client must hang up). Each download is recorded in
``downloads``; an unknown ``file_id`` gets 400 "invalid file_id".

The bot's side: every call is recorded in ``calls``; ``sent()`` / ``wait_sent(n)``
give the successful sends (sendMessage, sendPhoto, sendVoice, sendDocument), and
``text_of()`` what a bot message shows now (after edits). Faults, per method:
``rate_limit`` (429 with ``retry_after``), ``fail`` (an HTTP error status),
``lose_response`` (the call runs, then the connection closes unanswered); and
``go_down()`` / ``go_up()`` close the server (open connections dropped) and reopen it
on the same port.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from tests.peers.endless import stream_endless

__all__ = ["Call", "Download", "FakeTelegram", "Upload", "mention", "text_mention"]

SENDS = ("sendMessage", "sendPhoto", "sendVoice", "sendDocument")
TEXT_LIMIT = 4096
# Parameters that are strings in the Bot API (PTB sends strings as they are, all other
# values JSON-encoded).
STRING_PARAMS = frozenset(
    {
        "text",
        "caption",
        "url",
        "secret_token",
        "parse_mode",
        "photo",
        "voice",
        "document",
        "file_id",
    }
)


@dataclass(frozen=True)
class Upload:
    """A file the bot uploaded (multipart)."""

    filename: str | None
    content_type: str
    data: bytes


@dataclass
class Download:
    """One request for a file: ``status`` answered, ``sent`` bytes written, and
    ``hung_up`` when the client closed the connection before the body ended."""

    path: str
    status: int = 200
    sent: int = 0
    hung_up: bool = False


@dataclass
class _Stored:
    data: bytes
    path: str
    declared: bool
    endless: bool


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    status: int = 200
    at: float = field(default_factory=time.monotonic)


def mention(text: str, handle: str) -> dict[str, Any]:
    """The ``mention`` entity of the first ``handle`` ("@name") in ``text`` (UTF-16)."""
    start = text.index(handle)
    return {"type": "mention", "offset": _utf16_len(text[:start]), "length": _utf16_len(handle)}


def text_mention(text: str, name: str, user_id: int) -> dict[str, Any]:
    """A ``text_mention`` entity (a user without a username) of ``name`` in ``text``."""
    start = text.index(name)
    return {
        "type": "text_mention",
        "offset": _utf16_len(text[:start]),
        "length": _utf16_len(name),
        "user": {"id": user_id, "is_bot": user_id == 0, "first_name": name},
    }


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _decode(key: str, value: str) -> Any:
    if key in STRING_PARAMS:
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def _commands(text: str) -> list[dict[str, Any]]:
    """The ``bot_command`` entity Telegram adds to a text starting with "/"."""
    if not text.startswith("/"):
        return []
    word = text.split(maxsplit=1)[0]
    return [{"type": "bot_command", "offset": 0, "length": _utf16_len(word)}]


class FakeTelegram:
    def __init__(
        self,
        token: str,
        *,
        bot_id: int = 7_000_001,
        username: str = "astr_test_bot",
        first_name: str = "Astr",
    ) -> None:
        self.token = token
        self.me: dict[str, Any] = {
            "id": bot_id,
            "is_bot": True,
            "first_name": first_name,
            "username": username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }
        self.calls: list[Call] = []
        self.pending: list[dict[str, Any]] = []  # updates not confirmed yet
        self.updates: dict[int, dict[str, Any]] = {}  # every update, by id
        self.webhook: dict[str, Any] | None = None
        self.webhook_statuses: list[int] = []
        self.messages: dict[tuple[int, int], dict[str, Any]] = {}  # the bot's, by chat
        self.port = 0
        self._chats: dict[int, dict[str, Any]] = {}
        self._message_ids: dict[int, itertools.count[int]] = {}
        self._update_ids = itertools.count(1000)
        self._file_ids = itertools.count(1)
        self._arrived = asyncio.Event()
        self._rate_limited: dict[str, tuple[int, int]] = {}  # method: (times, retry_after)
        self._failing: dict[str, tuple[int, int]] = {}  # method: (times, status)
        self._losing: Counter[str] = Counter()
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        self.files: dict[str, _Stored] = {}
        self.downloads: list[Download] = []

    # -- server --------------------------------------------------------------------------
    @property
    def api_base(self) -> str:
        """What the bridge takes as ``api_base`` (the token is appended to it)."""
        return f"http://127.0.0.1:{self.port}/bot"

    @property
    def file_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/file/bot"

    async def start(self, port: int = 0) -> str:
        """Listen on 127.0.0.1 (``port`` 0: a free one); returns ``api_base``."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        app.router.add_get("/file/bot{token}/{path:.+}", self._download)
        self._runner = web.AppRunner(app, shutdown_timeout=0.2, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port or self.port, reuse_address=True)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self.api_base

    async def go_down(self) -> None:
        """Stop listening and drop every open connection (long polls included)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def go_up(self) -> None:
        """Listen again on the same port."""
        await self.start(self.port)

    async def stop(self) -> None:
        await self.go_down()
        if self._client is not None:
            await self._client.close()
            self._client = None

    # -- faults ----------------------------------------------------------------------------
    def rate_limit(self, method: str, *, times: int = 1, retry_after: int = 1) -> None:
        """The next ``times`` calls of ``method`` get 429 with ``retry_after`` seconds."""
        self._rate_limited[method.lower()] = (times, retry_after)

    def fail(self, method: str, *, status: int = 502, times: int = 1) -> None:
        """The next ``times`` calls of ``method`` get HTTP ``status`` (not run)."""
        self._failing[method.lower()] = (times, status)

    def lose_response(self, method: str, *, times: int = 1) -> None:
        """The next ``times`` calls of ``method`` run, but their connection closes before
        the answer."""
        self._losing[method.lower()] += times

    # -- files ----------------------------------------------------------------------------
    def add_file(
        self,
        file_id: str,
        data: bytes = b"",
        *,
        path: str | None = None,
        declared: bool = True,
        endless: bool = False,
    ) -> str:
        """Register a file; returns its ``file_path``. ``declared=False`` leaves
        ``file_size`` out of ``getFile`` (Telegram may); ``endless`` implies it."""
        file_path = path or f"voice/file_{len(self.files) + 1}.oga"
        self.files[file_id] = _Stored(data, file_path, declared and not endless, endless)
        return file_path

    async def _download(self, request: web.Request) -> web.StreamResponse:
        down = Download(request.match_info["path"])
        self.downloads.append(down)
        found = next((f for f in self.files.values() if f.path == down.path), None)
        if request.match_info["token"] != self.token or found is None:
            down.status = 404 if found is None else 401
            return web.json_response({"ok": False, "error_code": down.status}, status=down.status)
        if not found.endless:
            down.sent = len(found.data)
            return web.Response(body=found.data, content_type="application/octet-stream")
        return await stream_endless(request, {"Content-Type": "application/octet-stream"}, down)

    # -- the users' side ------------------------------------------------------------------
    async def private(
        self, user_id: int, text: str | None = None, *, name: str = "Alice", **kw: Any
    ) -> int:
        """A user writes to the bot; returns the message id. ``kw``: see ``message``."""
        chat = {"id": user_id, "type": "private", "first_name": name}
        return await self.send_update(self.message(chat, user_id, text, name=name, **kw))

    async def group(
        self,
        chat_id: int,
        user_id: int,
        text: str | None = None,
        *,
        name: str = "Bob",
        **kw: Any,
    ) -> int:
        """A user writes in a supergroup; returns the message id."""
        chat = {"id": chat_id, "type": "supergroup", "title": f"group {chat_id}"}
        return await self.send_update(self.message(chat, user_id, text, name=name, **kw))

    def message(
        self,
        chat: dict[str, Any],
        user_id: int,
        text: str | None,
        *,
        name: str,
        username: str | None = None,
        entities: list[dict[str, Any]] | None = None,
        reply_to: int | None = None,
        photo: str | None = None,
        voice: str | None = None,
        audio: str | None = None,
        document: tuple[str, str, int] | None = None,
        caption: str | None = None,
        message_id: int | None = None,
    ) -> dict[str, Any]:
        """A message object: ``reply_to`` quotes a message of this chat (the bot's or
        not), ``photo``/``voice``/``audio`` are file ids, ``document`` is (file id, name,
        size). ``message_id`` repeats an earlier message (a redelivery)."""
        self._chats[chat["id"]] = chat
        msg: dict[str, Any] = {
            "message_id": message_id or self._next_message_id(chat["id"]),
            "from": {"id": user_id, "is_bot": False, "first_name": name, "language_code": "en"},
            "chat": chat,
            "date": int(time.time()),
        }
        if username:
            msg["from"]["username"] = username
        if text is not None:
            msg["text"] = text
            found = (entities or []) + _commands(text)
            if found:
                msg["entities"] = found
        if reply_to is not None:
            msg["reply_to_message"] = self.messages.get(
                (chat["id"], reply_to),
                {
                    "message_id": reply_to,
                    "from": {"id": 4242, "is_bot": False, "first_name": "Someone"},
                    "chat": chat,
                    "date": int(time.time()) - 60,
                    "text": "an earlier message",
                },
            )
        if photo is not None:
            msg["photo"] = [
                self._photo_size(f"{photo}-s", 90, 60),
                self._photo_size(photo, 1280, 853),
                self._photo_size(f"{photo}-m", 320, 213),
            ]
        if voice is not None:
            msg["voice"] = {
                "file_id": voice,
                "file_unique_id": f"u-{voice}",
                "duration": 3,
                "mime_type": "audio/ogg",
                "file_size": 5000,
            }
        if audio is not None:
            msg["audio"] = {"file_id": audio, "file_unique_id": f"u-{audio}", "duration": 180}
        if document is not None:
            file_id, file_name, size = document
            msg["document"] = {
                "file_id": file_id,
                "file_unique_id": f"u-{file_id}",
                "file_name": file_name,
                "file_size": size,
            }
        if caption is not None:
            msg["caption"] = caption
            if entities:
                msg["caption_entities"] = entities
                msg.pop("entities", None)
        return msg

    @staticmethod
    def _photo_size(file_id: str, width: int, height: int) -> dict[str, Any]:
        return {
            "file_id": file_id,
            "file_unique_id": f"u-{file_id}",
            "width": width,
            "height": height,
            "file_size": width * height // 10,
        }

    async def send_update(self, message: dict[str, Any]) -> int:
        """Deliver a message as an update; returns its message id."""
        await self.queue({"message": message})
        return int(message["message_id"])

    async def queue(self, body: dict[str, Any]) -> Any:
        """Deliver any update (``update_id`` added unless given); returns the update id.
        Posted to the webhook while one is set (the status goes to
        ``webhook_statuses``), else kept for ``getUpdates``."""
        update = {"update_id": next(self._update_ids), **body}
        update_id = update["update_id"]
        self.updates[update_id] = update
        if self.webhook is not None:
            self.webhook_statuses.append(await self.repost(update_id))
        else:
            self.pending.append(update)
            self._arrived.set()
        return update_id

    async def repost(self, update_id: int) -> int:
        """Post an update to the webhook again (as Telegram does when it got no 200)."""
        assert self.webhook is not None, "no webhook set"
        return await self.post_update(
            self.webhook["url"], self.updates[update_id], self.webhook.get("secret_token")
        )

    async def post_update(self, url: str, update: Any, secret: str | None) -> int:
        """POST ``update`` (any JSON, or raw text when a ``str``) to a webhook; the status."""
        if self._client is None:
            self._client = aiohttp.ClientSession()
        headers = {"Content-Type": "application/json"}
        if secret is not None:
            headers["X-Telegram-Bot-Api-Secret-Token"] = secret
        data = update if isinstance(update, str) else json.dumps(update)
        async with self._client.post(url, data=data, headers=headers) as resp:
            return resp.status

    # -- the bot's side ----------------------------------------------------------------------
    def sent(self, method: str | None = None) -> list[dict[str, Any]]:
        """The params of the successful sends (of ``method``, or of any send)."""
        names = (method,) if method else SENDS
        return [c.params for c in self.calls if c.method in names and c.status == 200]

    async def wait_sent(
        self, n: int, method: str | None = None, within: float = 10.0
    ) -> list[dict[str, Any]]:
        """Wait until ``n`` sends have succeeded; returns them all."""
        deadline = time.monotonic() + within
        while len(self.sent(method)) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.sent(method))} sends, wanted {n}")
            await asyncio.sleep(0.02)
        return self.sent(method)

    def text_of(self, chat_id: int, message_id: int) -> str:
        """What a message of the bot shows now."""
        msg = self.messages[(chat_id, message_id)]
        return str(msg.get("text", msg.get("caption", "")))

    def called(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    # -- HTTP ---------------------------------------------------------------------------------
    async def _params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = {k: _decode(k, v) for k, v in request.query.items()}
        if request.content_type == "application/json":
            body = await request.json()
            params.update(body if isinstance(body, dict) else {})
        elif request.method == "POST":
            form = await request.post()
            for key, value in form.items():
                if isinstance(value, web.FileField):
                    params[key] = Upload(value.filename, value.content_type, value.file.read())
                else:
                    params[key] = _decode(key, str(value))
        return params

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] != self.token:
            return web.json_response(
                {"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401
            )
        params = await self._params(request)
        asked = request.match_info["method"]
        method = next((m for m in _METHODS if m.lower() == asked.lower()), asked)
        call = Call(method, params)
        self.calls.append(call)
        key = method.lower()
        times, retry_after = self._rate_limited.get(key, (0, 0))
        if times:
            self._rate_limited[key] = (times - 1, retry_after)
            call.status = 429
            return self._error(
                429, f"Too Many Requests: retry after {retry_after}", retry_after=retry_after
            )
        times, status = self._failing.get(key, (0, 0))
        if times:
            self._failing[key] = (times - 1, status)
            call.status = status
            return self._error(status, "Bad Gateway" if status == 502 else "Internal Error")
        handler = _METHODS.get(method)
        if handler is None:
            call.status = 404
            return self._error(404, "Not Found")
        try:
            result = await handler(self, params)
        except _Refused as exc:
            call.status = exc.status
            return self._error(exc.status, exc.description)
        if self._losing[key]:
            self._losing[key] -= 1
            call.status = 0  # it ran; the answer never left
            assert request.transport is not None
            request.transport.abort()
            raise asyncio.CancelledError  # aiohttp ends the handler quietly
        return web.json_response({"ok": True, "result": result})

    @staticmethod
    def _error(status: int, description: str, **parameters: Any) -> web.Response:
        body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
        if parameters:
            body["parameters"] = parameters
        return web.json_response(body, status=status)

    # -- methods --------------------------------------------------------------------------------
    async def _get_me(self, params: dict[str, Any]) -> Any:
        return self.me

    async def _get_file(self, params: dict[str, Any]) -> Any:
        file_id = params.get("file_id")
        found = self.files.get(file_id) if isinstance(file_id, str) else None
        if found is None:
            raise _Refused(400, "Bad Request: invalid file_id")
        result: dict[str, Any] = {
            "file_id": file_id,
            "file_unique_id": f"u-{file_id}",
            "file_path": found.path,
        }
        if found.declared:
            result["file_size"] = len(found.data)
        return result

    async def _get_updates(self, params: dict[str, Any]) -> Any:
        if self.webhook is not None:
            raise _Refused(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        offset = params.get("offset")
        if isinstance(offset, int):
            self.pending = [
                u
                for u in self.pending
                if isinstance(u["update_id"], int) and u["update_id"] >= offset
            ]
        limit = params.get("limit") or 100
        deadline = time.monotonic() + float(params.get("timeout") or 0)
        while not self.pending and (remaining := deadline - time.monotonic()) > 0:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                break
        return self.pending[:limit]

    async def _set_webhook(self, params: dict[str, Any]) -> Any:
        self.webhook = {"url": params["url"], "secret_token": params.get("secret_token")}
        self.webhook.update({k: v for k, v in params.items() if k not in self.webhook})
        return True

    async def _delete_webhook(self, params: dict[str, Any]) -> Any:
        self.webhook = None
        return True

    def _next_message_id(self, chat_id: int) -> int:
        return next(self._message_ids.setdefault(chat_id, itertools.count(100)))

    def _chat(self, chat_id: Any) -> dict[str, Any]:
        if not isinstance(chat_id, int):
            raise _Refused(400, "Bad Request: chat not found")
        return self._chats.get(chat_id) or {"id": chat_id, "type": "private", "first_name": "?"}

    def _bot_message(self, params: dict[str, Any], **content: Any) -> dict[str, Any]:
        chat = self._chat(params.get("chat_id"))
        msg = {
            "message_id": self._next_message_id(chat["id"]),
            "from": {k: self.me[k] for k in ("id", "is_bot", "first_name", "username")},
            "chat": chat,
            "date": int(time.time()),
            **content,
        }
        quoted = (params.get("reply_parameters") or {}).get("message_id")
        if quoted is not None:
            msg["reply_to_message"] = {"message_id": quoted, "chat": chat, "date": msg["date"]}
        self.messages[(chat["id"], msg["message_id"])] = msg
        return msg

    async def _send_message(self, params: dict[str, Any]) -> Any:
        text = params.get("text")
        if not isinstance(text, str) or not text.strip():
            raise _Refused(400, "Bad Request: message text is empty")
        if len(text) > TEXT_LIMIT:
            raise _Refused(400, "Bad Request: message is too long")
        return self._bot_message(params, text=text)

    async def _edit_message_text(self, params: dict[str, Any]) -> Any:
        key = (params.get("chat_id"), params.get("message_id"))
        msg = self.messages.get(key)  # type: ignore[arg-type]
        if msg is None:
            raise _Refused(400, "Bad Request: message to edit not found")
        text = params.get("text")
        if not isinstance(text, str) or not text.strip() or len(text) > TEXT_LIMIT:
            raise _Refused(400, "Bad Request: bad message text")
        if msg.get("text") == text:
            raise _Refused(
                400,
                "Bad Request: message is not modified: specified new message content and "
                "reply markup are exactly the same as a current content and reply markup "
                "of the message",
            )
        msg["text"] = text
        msg["edit_date"] = int(time.time())
        return msg

    def _file(self, params: dict[str, Any], name: str) -> dict[str, Any]:
        given = params.get(name)
        if not given:
            raise _Refused(400, f"Bad Request: there is no {name} in the request")
        n = next(self._file_ids)
        return {"file_id": f"sent-{name}-{n}", "file_unique_id": f"u-sent-{n}", "file_size": 1}

    async def _send_photo(self, params: dict[str, Any]) -> Any:
        size = {**self._file(params, "photo"), "width": 640, "height": 480}
        return self._bot_message(params, photo=[size], **self._caption(params))

    async def _send_voice(self, params: dict[str, Any]) -> Any:
        voice = {**self._file(params, "voice"), "duration": 1}
        return self._bot_message(params, voice=voice, **self._caption(params))

    async def _send_document(self, params: dict[str, Any]) -> Any:
        doc = self._file(params, "document")
        given = params["document"]
        doc["file_name"] = given.filename if isinstance(given, Upload) else "file"
        return self._bot_message(params, document=doc, **self._caption(params))

    @staticmethod
    def _caption(params: dict[str, Any]) -> dict[str, Any]:
        caption = params.get("caption")
        return {"caption": caption} if caption else {}


class _Refused(Exception):
    def __init__(self, status: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.description = description


_METHODS = {
    "getMe": FakeTelegram._get_me,
    "getFile": FakeTelegram._get_file,
    "getUpdates": FakeTelegram._get_updates,
    "setWebhook": FakeTelegram._set_webhook,
    "deleteWebhook": FakeTelegram._delete_webhook,
    "sendMessage": FakeTelegram._send_message,
    "editMessageText": FakeTelegram._edit_message_text,
    "sendPhoto": FakeTelegram._send_photo,
    "sendVoice": FakeTelegram._send_voice,
    "sendDocument": FakeTelegram._send_document,
}
