"""What the Slack bridge adds to slack-sdk's clients.

    RateLimitRetry   a retry handler for the Web API: on HTTP 429 it waits the
                     Retry-After Slack gave (reported to the bridge) and tries again
    SocketLink       slack-sdk's aiohttp Socket Mode client with every frame parsed
                     here (garbage reported, never raised), and reconnect delays from
                     ``Backoff``
    EventsEndpoint   the Events API receiver: signed POSTs checked (v0 HMAC over the
                     body, at most 5 minutes old), answered at once

Socket Mode, as slack-sdk runs it: ``apps.connections.open`` (with the app token)
hands out a ``wss://`` URL; the server greets each connection with ``hello``; a
``disconnect`` envelope, a close frame or failing pings make the client fetch a new
URL and connect again. Every other envelope goes to the bridge's listener, which
acknowledges it (``{"envelope_id"}``) once its event is handed off; Slack re-sends an
envelope that got no acknowledgement, also after a reconnect.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.signature import SignatureVerifier
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.web.async_client import AsyncWebClient

from astr_ray.platforms.base import Backoff
from astr_ray.platforms.net import listen

log = logging.getLogger(__name__)

__all__ = [
    "PING_S",
    "EventsEndpoint",
    "RateLimitRetry",
    "SocketLink",
    "retry_after",
    "signature_ok",
]

MAX_BODY = 1024 * 1024  # an Events API request

PING_S = 5.0
"""Socket Mode ping interval; a link without pongs for four of them is renewed."""


def retry_after(headers: dict[str, list[str] | str]) -> float:
    """Seconds from a ``Retry-After`` header (1 when missing or not a number)."""
    for name, value in headers.items():
        if name.lower() == "retry-after":
            first = value[0] if isinstance(value, list) and value else value
            try:
                return max(0.0, float(str(first)))
            except ValueError:
                break
    return 1.0


class RateLimitRetry(AsyncRetryHandler):
    """Retry a Web API call that got HTTP 429 after the Retry-After Slack gave.

    ``on_wait(seconds)`` is told of each wait. The number of tries is not what bounds
    the retries: the bridge bounds each whole call (waits included) by its
    ``action_timeout_s``.
    """

    def __init__(self, on_wait: Callable[[float], None], max_retry_count: int = 100) -> None:
        super().__init__(max_retry_count=max_retry_count)
        self._on_wait = on_wait

    async def _can_retry_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        return response is not None and response.status_code == 429

    async def prepare_for_next_attempt_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> None:
        wait = retry_after(response.headers) if response is not None else 1.0
        self._on_wait(wait)
        state.next_attempt_requested = True
        await asyncio.sleep(wait)
        state.increment_current_attempt()


class SocketLink(SocketModeClient):
    """slack-sdk's Socket Mode client, with two changes.

    Frames are parsed here: one that is not a JSON object goes to ``on_garbage(why,
    raw)`` and is skipped (the SDK would log a traceback, or hand listeners ``{}``).
    A reconnect (any URL after the first) first sleeps ``backoff.next()``; the bridge
    marks the link up with ``backoff.connected()`` when a ``hello`` arrives.
    Must be created inside a running event loop (the SDK starts a task there).
    """

    def __init__(
        self,
        *,
        app_token: str,
        web_client: AsyncWebClient,
        backoff: Backoff,
        on_garbage: Callable[[str, str], None],
        logger: logging.Logger,
    ) -> None:
        super().__init__(
            app_token=app_token, web_client=web_client, logger=logger, ping_interval=PING_S
        )
        self.backoff = backoff
        self._on_garbage = on_garbage
        self._urls = 0
        self._dispatch: set[asyncio.Task[None]] = set()

    def is_open(self) -> bool:
        session = self.current_session
        return not self.closed and session is not None and not session.closed

    async def issue_new_wss_url(self) -> str:
        if self._urls:
            self.backoff.lost()
            await asyncio.sleep(self.backoff.next())
        self._urls += 1
        return await super().issue_new_wss_url()

    async def process_message(self) -> None:
        raw = await self.message_queue.get()
        if raw is None:
            return
        try:
            message: Any = json.loads(raw)
        except ValueError:
            self._on_garbage("not JSON", raw)
            return
        if not isinstance(message, dict):
            self._on_garbage("not an object", raw)
            return
        task = asyncio.ensure_future(self.run_message_listeners(message, raw))
        self._dispatch.add(task)
        task.add_done_callback(self._dispatch.discard)

    async def close(self) -> None:
        await super().close()
        for task in list(self._dispatch):
            task.cancel()


def signature_ok(verifier: SignatureVerifier, body: bytes, timestamp: Any, signature: Any) -> bool:
    """Whether an Events API request is Slack's: ``X-Slack-Signature`` is the v0 HMAC
    of the body under the signing secret, and ``X-Slack-Request-Timestamp`` is within
    five minutes of now. Garbled headers read as a bad signature."""
    if not isinstance(timestamp, str) or not isinstance(signature, str):
        return False
    try:
        return verifier.is_valid(body=body, timestamp=timestamp, signature=signature)
    except ValueError:  # a timestamp that is not a number
        return False


class EventsEndpoint:
    """Where Slack posts events (the Events API): an HTTP server of our own.

    A request whose signature is wrong or stale gets 401 (``on_refused(remote)``); one
    that is not a JSON object 400 (``on_garbage(why, body)``); ``url_verification`` is
    answered with its challenge. Everything else is handed to ``on_payload`` and
    answered 200 at once, so that Slack, which retries what it got no 200 for within
    3 s, seldom retries; its retries (``X-Slack-Retry-Num``) are handed on like the
    first delivery. The signing secret is never logged.
    """

    def __init__(
        self,
        signing_secret: str,
        *,
        on_payload: Callable[[dict[str, Any]], None],
        on_refused: Callable[[str | None], None],
        on_garbage: Callable[[str, Any], None],
    ) -> None:
        self._verifier = SignatureVerifier(signing_secret)
        self._on_payload = on_payload
        self._on_refused = on_refused
        self._on_garbage = on_garbage
        self._runner: web.AppRunner | None = None

    @property
    def listening(self) -> bool:
        return self._runner is not None

    async def start(self, host: str, port: int, path: str, platform_id: str) -> int:
        """Listen at ``host:port`` (0: a free port) on ``path``; the bound port.
        Raises ``PlatformError`` when the port is taken."""
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post(path, self._on_request)
        self._runner, bound = await listen(app, host, port, platform_id)
        return bound

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _on_request(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        stamp = request.headers.get("X-Slack-Request-Timestamp")
        if not signature_ok(self._verifier, body, stamp, request.headers.get("X-Slack-Signature")):
            self._on_refused(request.remote)
            return web.Response(status=401, text="bad signature")
        try:
            payload = json.loads(body)
        except ValueError:
            self._on_garbage("not JSON", body)
            return web.Response(status=400, text="not JSON")
        if not isinstance(payload, dict):
            self._on_garbage("not an object", body)
            return web.Response(status=400, text="not an object")
        if payload.get("type") == "url_verification":
            return web.json_response({"challenge": payload.get("challenge")})
        retry = request.headers.get("X-Slack-Retry-Num")
        if retry:
            reason = request.headers.get("X-Slack-Retry-Reason")
            log.info("slack: Events API retry #%s (%s)", retry, reason)
        self._on_payload(payload)
        return web.Response(status=200)
