"""One OneBot v11 WebSocket connection: frames in, actions out, answers matched by echo.

    bridge ── call(action, params) ──► {"action", "params", "echo": "<serial>-<n>"}
           ◄── future resolved ────── {"status", "retcode", "data", "echo"}

Both ends of the link look the same from here (our server's socket in reverse mode, our
client's in forward mode). The bridge reads frames (``serve``) and gets the answers
routed here; a closed connection fails its unanswered actions at once.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
import time
from typing import Any

import aiohttp
from aiohttp import web

from astr_ray.errors import PlatformError

__all__ = ["Connection", "Socket", "token_ok"]

log = logging.getLogger(__name__)

Socket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


class Connection:
    """A live link to one OneBot implementation (one QQ account).

    ``self_id`` is the account (from ``X-Self-ID``, an event's ``self_id`` or
    ``get_login_info``); ``heartbeat_s`` the interval its heartbeats announced, which
    makes a silent link stale after three intervals.
    """

    def __init__(self, ws: Socket, serial: int, platform_id: str, self_id: str | None) -> None:
        self.ws = ws
        self.serial = serial
        self.platform_id = platform_id
        self.self_id = self_id
        self.opened = time.monotonic()
        self.last_seen = self.opened
        self.heartbeat_s: float | None = None
        self._echo = itertools.count(1)
        self._pending: dict[str, tuple[str, asyncio.Future[Any]]] = {}

    @property
    def open(self) -> bool:
        return not self.ws.closed

    def stale_after(self) -> float | None:
        """Seconds of silence after which the link counts as dead (None: no limit)."""
        return 3 * self.heartbeat_s if self.heartbeat_s else None

    async def call(self, action: str, params: dict[str, Any], wait_s: float) -> Any:
        """Send one action and wait up to ``wait_s`` seconds for its answer's ``data``.

        Raises ``PlatformError`` when the answer says ``failed``, when it does not come
        in time, or when the link closes first. ``ConnectionResetError`` means the
        frame was never written (the link was already closing): safe to send elsewhere.
        """
        if self.ws.closed:
            raise ConnectionResetError("connection closed")
        echo = f"{self.serial}-{next(self._echo)}"
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[echo] = (action, fut)
        try:
            await self.ws.send_str(json.dumps({"action": action, "params": params, "echo": echo}))
            async with asyncio.timeout(wait_s):
                return await fut
        except TimeoutError:
            raise PlatformError(
                "action timed out", platform=self.platform_id, action=action, after_s=wait_s
            ) from None
        finally:
            self._pending.pop(echo, None)

    def answer(self, frame: dict[str, Any]) -> bool:
        """Route an action answer to its caller; False when no caller waits for it."""
        pending = self._pending.get(str(frame.get("echo")))
        if pending is None:
            return False
        action, fut = pending
        if fut.done():
            return True
        status = frame.get("status")
        if status in ("ok", "async"):
            fut.set_result(frame.get("data"))
        else:
            why = frame.get("wording") or frame.get("message") or frame.get("msg") or ""
            fut.set_exception(
                PlatformError(
                    f"action failed: {why}" if why else "action failed",
                    platform=self.platform_id,
                    action=action,
                    retcode=frame.get("retcode"),
                )
            )
        return True

    def fail_pending(self) -> None:
        """The link is gone: every unanswered action fails (it may or may not have run)."""
        for action, fut in self._pending.values():
            if not fut.done():
                fut.set_exception(
                    PlatformError(
                        "connection closed before the answer",
                        platform=self.platform_id,
                        action=action,
                    )
                )
        self._pending.clear()

    async def close(self) -> None:
        self.fail_pending()
        if not self.ws.closed:
            await self.ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"bye")


def token_ok(request: web.Request, token: str) -> bool:
    """Whether a connecting implementation knows ``token`` (always, when it is empty):
    ``Authorization: Bearer <token>`` (or the older ``Token <token>``), else the
    ``access_token`` query parameter. Compared in constant time."""
    if not token:
        return True
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() not in ("bearer", "token"):
        given = request.query.get("access_token", "")
    return hmac.compare_digest(given.strip().encode(), token.encode())
