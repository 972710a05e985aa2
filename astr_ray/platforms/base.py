"""What every platform bridge shares: its interface, wake rules, backoff, text splitting,
and streaming an answer by editing the message that carries it.

    platform ══► Bridge ── wake rules ──► on_message(event) / on_stream(event) ──► hosts
                   ◄──── send / edit (split at the platform's limit, rate-limited) ──┘

A bridge is one chat account. The adapter actor (``actors.platform_adapter``) builds it
with ``make_bridge`` (``astr_ray.platforms``), starts it, routes its events to the
session hosts, and reports its ``stats()``.

Incoming media (``Voice``, ``Image``, ``File``) carry a platform file id or URL, never
bytes; ``Bridge.fetch_media`` gets the bytes when a host needs them (to transcribe a
voice message)::

    component ─ data: URL ─────────────────────────► decoded here, for every bridge
              └ file id / URL ─ bridge._fetch_media ─► the platform's way (getFile,
                                                        files.info, get_record...)
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

from pydantic import ValidationError

from astr_ray.config import WakeConfig
from astr_ray.errors import MessageFormatError, PlatformError
from astr_ray.media import MediaError, check_size, parse_data_url
from astr_ray.message import (
    ChatType,
    Component,
    Event,
    File,
    Image,
    Reply,
    Text,
    Voice,
    parse_session_key,
)
from astr_ray.platforms.delivery import DeliveryLedger

__all__ = [
    "SILENT_ERRORS",
    "Backoff",
    "Bridge",
    "EditStream",
    "Media",
    "OnMessage",
    "OnStream",
    "group_woken",
    "is_command",
    "media_component",
    "should_deliver",
    "split_text",
    "strip_prefix",
]

log = logging.getLogger(__name__)

OnMessage = Callable[[Event], Awaitable[Reply | None]]
"""One turn: the reply to an event (``HostRouter.send``)."""

OnStream = Callable[[Event], AsyncIterator[dict[str, Any]]]
"""One streamed turn: ``{"chunk": text}`` items, then ``{"reply": Reply}``
(``HostRouter.stream``)."""

SILENT_ERRORS = frozenset({"bot_off", "llm_off"})
"""Replies with these errors carry nothing to say: the bot or its LLM is switched off."""

H = TypeVar("H")

Media = Voice | Image | File
"""The components whose bytes a bridge can fetch."""

_MEDIA_TYPES: dict[str, type[Voice] | type[Image] | type[File]] = {
    "voice": Voice,
    "image": Image,
    "file": File,
}


def media_component(data: Any) -> Media:
    """A ``Voice``, ``Image`` or ``File`` from its transport dict (``model_dump``);
    raises ``MessageFormatError`` for anything else."""
    kind = data.get("type") if isinstance(data, dict) else None
    cls = _MEDIA_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise MessageFormatError("a media component must be a voice, image or file")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise MessageFormatError(f"invalid {kind}: {path}: {first['msg']}") from None


class Bridge:
    """The interface of one chat account, and the counters every bridge keeps.

    Lifecycle: ``start()`` once, ``stop()`` idempotently. ``metrics_hook`` is called
    with the name of each counted happening ("event", "ignored", "malformed", "reply",
    "send_failure", "duplicate", "reconnect", "rate_limited").
    """

    platform = "?"
    port: int | None = None

    COUNTERS = (
        "events",
        "ignored",
        "malformed",
        "replies",
        "send_failures",
        "duplicates",
        "reconnects",
        "rate_limited",
    )
    HOOKS = {
        "events": "event",
        "ignored": "ignored",
        "malformed": "malformed",
        "replies": "reply",
        "send_failures": "send_failure",
        "duplicates": "duplicate",
        "reconnects": "reconnect",
        "rate_limited": "rate_limited",
    }

    def __init__(self, platform_id: str, metrics_hook: Callable[[str], None] | None) -> None:
        self.platform_id = platform_id
        self._metrics_hook = metrics_hook
        self._counts: dict[str, int] = dict.fromkeys(self.COUNTERS, 0)
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def push(self, session_key: str, text: str) -> None:
        """Send ``text`` to a chat on the bot's own initiative; raises ``PlatformError``."""
        raise NotImplementedError

    async def wait_connected(self, within: float) -> bool:
        raise NotImplementedError

    def connected(self) -> bool:
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        """``connected`` and the counters since start (see the class doc)."""
        return {"connected": self.connected(), **self._counts}

    async def fetch_media(self, comp: Media, max_bytes: int) -> tuple[bytes, str | None]:
        """The bytes of an incoming media component and its media type (None when
        unknown).

        Contract: never more than ``max_bytes`` are read (a declared size over it is
        refused before any download, a body is cut off as it grows past it). A
        ``data:`` URL is decoded here for every bridge; any other reference goes to the
        platform's own way (``_fetch_media``), which asks only the platform's hosts
        when a credential goes along. Every failure (nothing this bridge can fetch, an
        unknown file, too large, a host not allowed, the link down) raises
        ``PlatformError`` naming this account; no message carries a token or a URL
        that holds one. Nothing is cached: each call fetches again.
        """
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise PlatformError("max_bytes must be a positive integer", platform=self.platform_id)
        try:
            if comp.url is not None and comp.url.startswith("data:"):
                parsed = parse_data_url(comp.url)
                if parsed is None:
                    raise MediaError("the data URL is broken")
                check_size(len(parsed[0]), max_bytes)
                return parsed
            return await self._fetch_media(comp, max_bytes)
        except MediaError as exc:
            raise PlatformError(exc.message, platform=self.platform_id, media=comp.type) from None

    async def _fetch_media(self, comp: Media, max_bytes: int) -> tuple[bytes, str | None]:
        """The platform's way to fetch what is not a ``data:`` URL (see ``fetch_media``);
        may raise ``MediaError`` (turned into ``PlatformError`` there)."""
        raise PlatformError(f"{self.platform} cannot fetch this media", platform=self.platform_id)

    def count(self, key: str) -> None:
        self._counts[key] += 1
        if self._metrics_hook is not None:
            try:
                self._metrics_hook(self.HOOKS.get(key, key))
            except Exception:
                log.exception("%s metrics hook failed", self.platform_id)

    def spawn(self, turn: Coroutine[Any, Any, None]) -> None:
        """Run one turn in its own task, kept until it ends (``cancel_turns``)."""
        task = asyncio.create_task(turn)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def cancel_turns(self, within: float = 5.0) -> None:
        """Cancel the turns in flight (at stop) and wait up to ``within`` for them."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=within)

    def own_chat(self, session_key: str) -> tuple[ChatType, str]:
        """The chat type and id of one of this account's session keys; raises
        ``PlatformError`` for a malformed key or another platform's."""
        try:
            platform_id, chat_type, chat_id = parse_session_key(session_key)
        except MessageFormatError as exc:
            raise PlatformError(str(exc), platform=self.platform_id) from None
        if platform_id != self.platform_id:
            raise PlatformError(
                "not this platform's session", platform=self.platform_id, session_key=session_key
            )
        return chat_type, chat_id

    def malformed(self, why: str, raw: Any) -> None:
        """Count and log a payload that does not fit; the bridge goes on serving."""
        self.count("malformed")
        log.warning("%s: skipped a malformed payload (%s): %.200r", self.platform_id, why, raw)


async def should_deliver(
    reply: Reply | None, key: str, ledger: DeliveryLedger, count: Callable[[str], None]
) -> bool:
    """Whether a turn's reply must be sent: not when it says nothing (no components, or
    the bot or its LLM is switched off); for a message delivered again (``duplicate``),
    only when the first delivery failed (``DeliveryLedger``; counted "duplicates")."""
    if reply is None or not reply.components or reply.error in SILENT_ERRORS:
        return False
    if reply.duplicate:
        count("duplicates")
        return await ledger.resend_duplicate(key)
    return True


class Backoff:
    """Exponential reconnect delays, jittered, capped; reset after a steady link.

    ``next()`` is the delay to sleep before the next try; ``connected()`` marks a link
    up, and ``lost()`` marks it gone (the delay resets if it lived ``steady_s``).
    """

    def __init__(self, cap_s: float, first_s: float = 0.25, steady_s: float = 10.0) -> None:
        self.cap_s = cap_s
        self.first_s = min(first_s, cap_s)
        self.steady_s = steady_s
        self._delay = self.first_s
        self._since: float | None = None

    def next(self) -> float:
        delay = self._delay * random.uniform(0.5, 1.0)
        self._delay = min(self._delay * 2, self.cap_s)
        return delay

    def connected(self) -> None:
        self._since = time.monotonic()

    def lost(self) -> None:
        if self._since is not None and time.monotonic() - self._since >= self.steady_s:
            self._delay = self.first_s
        self._since = None


def split_text(text: str, limit: int) -> list[str]:
    """Split text into pieces of at most ``limit`` characters, preferring a paragraph
    break, then a line break, then a space in the last fifth of each piece."""
    pieces: list[str] = []
    while len(text) > limit:
        cut, skip = limit, 0
        for sep in ("\n\n", "\n", " "):
            at = text.rfind(sep, limit * 4 // 5, limit + len(sep))  # may end right at limit
            if at > 0:
                cut, skip = at, len(sep)
                break
        pieces.append(text[:cut])
        text = text[cut + skip :]
    if text:
        pieces.append(text)
    return pieces


def strip_prefix(components: list[Component], prefixes: list[str]) -> bool:
    """Strip the first matching wake prefix from the first text component, in place;
    True when one matched."""
    for i, comp in enumerate(components):
        if not isinstance(comp, Text):
            continue
        text = comp.text.lstrip()
        for prefix in prefixes:
            if prefix and text.startswith(prefix):
                rest = text[len(prefix) :].lstrip()
                if rest:
                    components[i] = Text(text=rest)
                else:
                    del components[i]
                return True
        return False
    return False


def is_command(components: list[Component]) -> bool:
    first = next((c for c in components if isinstance(c, Text)), None)
    return first is not None and first.text.lstrip().startswith("/")


def group_woken(
    chat_type: ChatType,
    components: list[Component],
    cfg: WakeConfig,
    *,
    mentioned: bool,
    replied_to_bot: bool,
) -> bool:
    """The wake rules. A private chat always wakes the bot; a group message wakes it
    when it mentions the bot (``cfg.mention``), replies to one of the bot's messages
    (``cfg.reply``), starts with a prefix (stripped from ``components``, in place), or
    is a command."""
    prefixed = strip_prefix(components, cfg.prefixes)
    if chat_type is not ChatType.GROUP:
        return True
    return (
        (cfg.mention and mentioned)
        or (cfg.reply and replied_to_bot)
        or prefixed
        or is_command(components)
    )


class EditStream(Generic[H]):
    """Show a streamed answer in one message that grows by edits.

    ``send(text) -> handle`` posts a new message; ``edit(handle, text)`` replaces its
    text. ``feed(chunk)`` edits at most once per ``interval_s``; when the text outgrows
    ``limit`` the message is finished and the rest goes on in a new one. ``finish(text)``
    makes the messages hold exactly the final text (the stored reply, which may differ
    from the chunks, e.g. after blocked words were starred) and returns their handles.

    Failures: a failed edit mid-stream is logged and retried at the next step; a failed
    send (the first message, or one past the limit) raises, as does any failure in
    ``finish``, so that the caller can count the delivery as failed.
    """

    def __init__(
        self,
        send: Callable[[str], Awaitable[H]],
        edit: Callable[[H, str], Awaitable[None]],
        *,
        limit: int,
        interval_s: float,
        cursor: str = " ▌",
    ) -> None:
        self._send = send
        self._edit = edit
        self.limit = limit
        self.interval_s = interval_s
        self.cursor = cursor
        self.handles: list[H] = []
        self._shown: list[str] = []  # what each message shows now
        self._text = ""
        self._last = 0.0
        self.edits = 0

    @property
    def started(self) -> bool:
        return bool(self.handles)

    async def feed(self, chunk: str) -> None:
        self._text += chunk
        now = time.monotonic()
        if self.handles and now - self._last < self.interval_s:
            return
        if not self._text.strip():
            return
        self._last = now
        await self._show(self._text, partial=True)

    async def finish(self, text: str | None = None) -> list[H]:
        """Make the messages show ``text`` (when empty: the chunks so far) and return
        their handles; nothing is sent when both are blank."""
        final = self._text if text is None or not text.strip() else text
        if final.strip():
            await self._show(final, partial=False)  # also takes the cursor away
        return self.handles

    async def _show(self, text: str, *, partial: bool) -> None:
        room = self.limit - (len(self.cursor) if partial else 0)
        pieces = split_text(text, room)
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            body = piece + (self.cursor if partial and last else "")
            if i < len(self.handles):
                if self._shown[i] != body:
                    try:
                        await self._edit(self.handles[i], body)
                        self._shown[i] = body
                        self.edits += 1
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        if not partial:
                            raise
                        log.warning("stream edit failed (retried at the next step): %s", exc)
            else:
                self.handles.append(await self._send(body))
                self._shown.append(body)
