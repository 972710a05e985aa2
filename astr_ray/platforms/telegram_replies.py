"""Turns and their answers for the Telegram bridge: ask the pipeline, send the reply.

    Event ─┬─ cfg.stream and on_stream: chunks ─► EditStream (sendMessage, then
           │                            editMessageText at most once per interval)
           │                            final reply text ─► finish; media after
           └─ else on_message(event) ─► Reply ─► text split at 4096, then media
                                                 (sendPhoto / sendVoice / sendDocument)

In groups the first message of an answer replies to the message that woke the bot.
Every answer (streamed or not) goes through the delivery ledger: a duplicate reply (the
pipeline's stored answer to a message delivered again) is sent again only when its
first delivery failed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from telegram import Message

from astr_ray.config import TelegramConfig
from astr_ray.errors import PlatformError
from astr_ray.message import ChatType, Component, Event, File, Image, Reply, ReplyTo, Text, Voice
from astr_ray.platforms.base import EditStream, OnMessage, OnStream, should_deliver, split_text
from astr_ray.platforms.delivery import DeliveryLedger
from astr_ray.platforms.telegram_calls import BotCalls

__all__ = ["TEXT_LIMIT", "Replies", "chat_param"]

log = logging.getLogger(__name__)

TEXT_LIMIT = 4096  # characters in one message


def chat_param(chat_id: str) -> int | str:
    """A chat id for the Bot API: numeric ids as integers, ``@channelname`` as is."""
    return int(chat_id) if chat_id.lstrip("-").isdigit() else chat_id


class Replies:
    """Runs turns for one bot and delivers their answers. ``count`` is the bridge's
    counter ("replies", "send_failures", "duplicates")."""

    def __init__(
        self,
        cfg: TelegramConfig,
        calls: BotCalls,
        count: Callable[[str], None],
        on_message: OnMessage,
        on_stream: OnStream | None,
    ) -> None:
        self.cfg = cfg
        self.calls = calls
        self.ledger = DeliveryLedger()
        self._count = count
        self._on_message = on_message
        self._on_stream = on_stream

    async def handle(self, event: Event) -> None:
        """One turn: streamed when ``cfg.stream`` and ``on_stream`` allow, else asked of
        ``on_message``; then delivered. Failures are logged, never raised."""
        try:
            if self.cfg.stream and self._on_stream is not None:
                await self._streamed(event, self._on_stream)
            else:
                await self._answer(event, await self._on_message(event))
        except Exception:
            log.exception("telegram %s: turn failed for %s", self.cfg.id, event.session_key)

    async def send(
        self,
        chat_id: int | str,
        components: tuple[Component, ...],
        quote: int | None,
    ) -> None:
        """Send a reply: its text split at the limit, then each media component as its
        own message. The first message quotes ``quote``, or
        the reply's own ``ReplyTo``. Raises ``PlatformError`` at the first failed send."""
        for comp in components:
            if isinstance(comp, ReplyTo) and comp.message_id.isdigit():
                quote = int(comp.message_id)
        body = "".join(c.text for c in components if isinstance(c, Text))
        for piece in split_text(body.strip(), TEXT_LIMIT):
            await self.calls.send_text(chat_id, piece, quote)
            quote = None
        for comp in components:
            if not isinstance(comp, Image | Voice | File):
                continue
            if await self.calls.send_media(chat_id, comp, quote) is not None:
                quote = None

    @staticmethod
    def _key(event: Event) -> str:
        return f"{event.session_key}|{event.message_id}"

    @staticmethod
    def _quote(event: Event) -> int | None:
        return int(event.message_id) if event.chat_type is ChatType.GROUP else None

    async def _answer(self, event: Event, reply: Reply | None) -> None:
        key = self._key(event)
        if reply is None or not await should_deliver(reply, key, self.ledger, self._count):
            return
        chat_id = chat_param(event.chat_id)
        quote = self._quote(event)
        await self._deliver(key, lambda: self.send(chat_id, reply.components, quote))

    async def _deliver(
        self,
        key: str,
        send: Callable[[], Awaitable[None]],
        done: asyncio.Future[bool] | None = None,
    ) -> None:
        """Run ``send`` under the ledger (``done``: a delivery begun earlier); a
        failure is logged and counted."""
        if done is None:
            done = self.ledger.begin(key)
        delivered = False
        try:
            await send()
            delivered = True
            self._count("replies")
        except PlatformError as exc:
            self._count("send_failures")
            log.warning("telegram %s: reply to %s not delivered: %s", self.cfg.id, key, exc)
        finally:
            self.ledger.finish(key, done, delivered)

    async def _streamed(self, event: Event, on_stream: OnStream) -> None:
        """A streamed turn: the first chunk sends a message, later ones edit it, and the
        final reply's text is what the message(s) end up showing; media follow. A turn
        that streams nothing (commands, errors, duplicates) is answered the normal way.
        A send that fails mid-stream is tried again, once, when the turn is over."""
        calls = self.calls
        chat_id = chat_param(event.chat_id)
        quote = self._quote(event)

        async def send(text: str) -> int:
            sent: Message = await calls.send_text(chat_id, text, None if stream.started else quote)
            return sent.message_id

        async def edit(message_id: int, text: str) -> None:
            await calls.edit_text(chat_id, message_id, text)

        stream: EditStream[int] = EditStream(
            send, edit, limit=TEXT_LIMIT, interval_s=self.cfg.stream_interval_s
        )
        key = self._key(event)
        done: asyncio.Future[bool] | None = None
        failed: PlatformError | None = None
        streamed = ""
        reply: Reply | None = None
        try:
            async for item in on_stream(event):
                chunk = item.get("chunk")
                if isinstance(chunk, str):
                    streamed += chunk
                    if done is None:
                        done = self.ledger.begin(key)
                    if failed is None:
                        try:
                            await stream.feed(chunk)
                        except PlatformError as exc:
                            failed = exc
                elif isinstance(item.get("reply"), Reply):
                    reply = item["reply"]
        except BaseException:
            if done is not None:
                self.ledger.finish(key, done, False)
            raise
        if done is None:
            await self._answer(event, reply)
            return
        final = reply.text if reply is not None and reply.text.strip() else streamed
        media = tuple(c for c in (reply.components if reply else ()) if not isinstance(c, Text))

        async def finish() -> None:
            if stream.started:
                await stream.finish(final)
                await self.send(chat_id, media, None)
            else:  # the first message could not be sent
                await self.send(chat_id, (Text(text=final), *media), quote)

        if failed is not None:
            log.info("telegram %s: a stream send failed (%s); retrying", self.cfg.id, failed)
        await self._deliver(key, finish, done)
