"""HostRouter: how an adapter reaches the SessionHost that owns a session.

    adapter ──send(event)──► HostRouter ──batch per host──► host.handle_batch
                                 ▲            retried on RayActorError      │
                                 └── replies (stragglers via collect) ◄─────┘

Batching adapts to load: an idle router sends at once; while calls to a host follow
each other within ``window_ms``, what arrives in that window goes in one call.

Delivery is at-least-once with the platform message id as the idempotency key: when a
host dies mid-batch, the items that had not come back are sent again (with backoff,
until ``deadline_s``). If the dead host had committed a turn before dying, the retry
gets the stored reply, which this router then treats as the first delivery (it never
reached the adapter), so the user sees exactly one reply.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ray.exceptions import RayActorError

from actors.common import ACTOR_GONE, ACTOR_UNAVAILABLE, DIRECTORY, get_actor
from astr_ray.config import Config
from astr_ray.errors import MessageFormatError
from astr_ray.message import Event, Reply
from astr_ray.sessions.shards import ShardTable

log = logging.getLogger(__name__)


@dataclass
class _Item:
    event: dict[str, Any]
    future: asyncio.Future[Reply]
    first_sent: float = field(default_factory=time.monotonic)
    attempts: int = 0


class HostRouter:
    def __init__(
        self,
        namespace: str,
        *,
        window_ms: float = 2.0,
        hold_ms: float = 10.0,
        deadline_s: float = 60.0,
    ) -> None:
        self.namespace = namespace
        self.window = window_ms / 1000
        self.hold_ms = hold_ms
        self.deadline_s = deadline_s
        self.table: ShardTable | None = None
        self._handles: dict[str, Any] = {}
        self._pending: dict[str, list[_Item]] = {}
        self._last_flush: dict[str, float] = {}
        self._refreshing: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Future[None]] = set()  # keep batch tasks referenced
        self.batches = 0
        self.retries = 0

    @classmethod
    def for_config(cls, cfg: Config) -> HostRouter:
        """An adapter's router, with the batching and retry settings of ``sessions``."""
        sess = cfg.sessions
        return cls(
            cfg.runtime.namespace,
            window_ms=sess.batch_window_ms,
            hold_ms=sess.batch_hold_ms,
            deadline_s=max(60.0, sess.turn_timeout_s),
        )

    async def refresh(self) -> None:
        """Fetch the shard table; concurrent callers share one fetch."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._refresh())
        await asyncio.shield(self._refreshing)

    async def _refresh(self) -> None:
        directory = get_actor(DIRECTORY, self.namespace)
        self.table = ShardTable.from_dict(await directory.table.remote())

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh()
        except Exception as exc:  # the directory is restarting: keep the table we have
            log.warning("shard table refresh failed: %s", type(exc).__name__)

    def _handle(self, host: str) -> Any:
        handle = self._handles.get(host)
        if handle is None:
            handle = self._handles[host] = get_actor(host, self.namespace)
        return handle

    async def send(self, event: Event) -> Reply:
        """Deliver one event and return its reply (exactly one per message id)."""
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        await self._enqueue(_Item(event.to_dict(), fut))
        return await fut

    async def _enqueue(self, item: _Item) -> None:
        if self.table is None:
            await self.refresh()
        assert self.table is not None
        host = self.table.host_of(_key(item.event))
        batch = self._pending.get(host)
        if batch is not None:
            batch.append(item)
            return
        self._pending[host] = [item]
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_flush.get(host, -1e9) < self.window:
            # Under load: gather what arrives within the window into one call.
            loop.call_later(self.window, self._flush, host)
        else:
            # Idle: send on the next loop tick (messages of this tick still share it).
            loop.call_soon(self._flush, host)

    def _flush(self, host: str) -> None:
        self._last_flush[host] = asyncio.get_running_loop().time()
        items = self._pending.pop(host, [])
        if items:
            task = asyncio.ensure_future(self._run_batch(host, items))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _run_batch(self, host: str, items: list[_Item]) -> None:
        """One batch to one host. Every item leaves with a reply, an error, or is sent
        again (retry or re-route): none is ever dropped, whatever fails when."""
        assert self.table is not None
        epoch = self.table.epoch
        self.batches += 1
        remaining = dict(enumerate(items))
        reroute: list[_Item] = []
        try:
            handle = self._handle(host)
            answer = await handle.handle_batch.remote(
                epoch, [it.event for it in items], self.hold_ms
            )
            while True:
                for idx, result in answer["done"]:
                    item = remaining.pop(idx)
                    if "wrong_shard" in result:
                        reroute.append(item)
                    elif "invalid" in result:
                        item.future.set_exception(ValueError(result["invalid"]))
                    else:
                        try:
                            reply = Reply.from_dict(result)
                        except MessageFormatError as exc:
                            item.future.set_exception(exc)
                            continue
                        self._deliver(item, reply)
                if answer.get("lost"):
                    raise RayActorError()  # the host restarted between our calls
                if not answer["more"]:
                    break
                answer = await handle.collect.remote(answer["more"], self.hold_ms)
        except ACTOR_GONE as exc:
            log.warning(
                "host %s unavailable (%s); retrying %d messages",
                host,
                type(exc).__name__,
                len(remaining),
            )
            await self._retry(list(remaining.values()), host)
        except Exception as exc:
            log.exception("batch to %s failed", host)
            for item in remaining.values():
                if not item.future.done():
                    item.future.set_exception(exc)
        if reroute:
            # A shard is moving (or our table is stale): wait a moment for the new
            # placement to be published, then route again.
            await asyncio.sleep(0.05)
            await self._refresh_quietly()
            for item in reroute:
                await self._enqueue(item)

    @staticmethod
    def _deliver(item: _Item, reply: Reply) -> None:
        if not item.future.done():
            item.future.set_result(_first_delivery(reply, retried=bool(item.attempts)))

    async def _retry(self, items: list[_Item], host: str) -> None:
        """Send again after a backoff; the handle is looked up again (it may be new)."""
        self._handles.pop(host, None)
        now = time.monotonic()
        alive = []
        for item in items:
            if now - item.first_sent > self.deadline_s:
                item.future.set_result(
                    Reply.of_text(
                        _key(item.event),
                        item.event["message_id"],
                        "Sorry, I'm restarting and couldn't answer in time. Please send that "
                        "again.",
                        error="unavailable",
                    )
                )
            else:
                item.attempts += 1
                alive.append(item)
        if not alive:
            return
        self.retries += len(alive)
        delay = min(2.0, 0.2 * 2 ** min(alive[0].attempts, 4))
        await asyncio.sleep(delay)
        await self._refresh_quietly()  # the host may have been replaced meanwhile
        for item in alive:
            await self._enqueue(item)

    async def stream(self, event: Event) -> AsyncIterator[dict[str, Any]]:
        """Stream one turn: ``{"chunk": text}`` items, then ``{"reply": Reply}``.

        Retried like ``send`` while nothing has been streamed yet; after that a lost host
        ends the stream with the stored reply fetched by a non-streamed retry.
        """
        data = event.to_dict()
        first_sent = time.monotonic()
        attempts = 0
        streamed = False
        while True:
            if self.table is None:
                await self.refresh()
            assert self.table is not None
            host = self.table.host_of(event.session_key)
            try:
                try:
                    handle = self._handle(host)
                except ValueError as exc:  # being recreated
                    raise RayActorError() from exc
                gen = handle.stream_turn.remote(self.table.epoch, data)
                async for ref in gen:
                    item = await ref
                    if "wrong_shard" in item:
                        await asyncio.sleep(0.05)
                        await self._refresh_quietly()
                        break
                    if "invalid" in item:
                        raise ValueError(item["invalid"])
                    if "chunk" in item:
                        streamed = True
                        yield item
                    else:
                        reply = Reply.from_dict(item["reply"])
                        yield {"reply": _first_delivery(reply, retried=bool(attempts))}
                        return
            except ACTOR_UNAVAILABLE:
                self._handles.pop(host, None)
                attempts += 1
                if time.monotonic() - first_sent > self.deadline_s:
                    yield {
                        "reply": Reply.of_text(
                            event.session_key,
                            event.message_id,
                            "Sorry, I'm restarting and couldn't answer in time.",
                            error="unavailable",
                        )
                    }
                    return
                await asyncio.sleep(min(2.0, 0.2 * 2 ** min(attempts, 4)))
                if streamed:
                    yield {"reply": _first_delivery(await self.send(event), retried=True)}
                    return


def _first_delivery(reply: Reply, *, retried: bool) -> Reply:
    """A stored reply coming back to our own retry is the first delivery: the earlier
    attempt committed the turn but its answer never reached the adapter."""
    if retried and reply.duplicate:
        return reply.model_copy(update={"duplicate": False})
    return reply


def _key(event: dict[str, Any]) -> str:
    return f"{event['platform_id']}:{event['chat_type']}:{event['chat_id']}"
