"""Virtual sessions: many sessions inside one host, each a mailbox processing one turn
at a time (Orleans grains / Akka cluster sharding; see DESIGN.md).

    submit(event) ──► mailbox of event.session_key ──► worker (one turn at a time)
                         │ activated on first message: LiveSession loaded from the store
                         │ passivated when idle > idle_timeout_s, or LRU-evicted past
                         │ max_active_per_host (only when idle: never mid-turn)

A session's worker task exists only while its mailbox has work, so an idle active
session costs its cached history and nothing else. A full mailbox answers "busy"
(backpressure) instead of queueing without bound.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from astr_ray.config import SessionsConfig
from astr_ray.errors import AstrRayError
from astr_ray.message import Event, Reply
from astr_ray.metrics import Metrics
from astr_ray.sessions.commands import parse_command
from astr_ray.sessions.turn import LiveSession, TurnProcessor

__all__ = ["SessionManager"]

log = logging.getLogger(__name__)

ChunkSink = Callable[[str], Awaitable[None]]


@dataclass
class _Mailbox:
    key: str
    queue: deque[tuple[Event, ChunkSink | None, asyncio.Future[Reply]]] = field(
        default_factory=deque
    )
    live: LiveSession | None = None
    worker: asyncio.Task[None] | None = None
    current: asyncio.Future[Reply] | None = None  # the turn running now
    stopping: bool = False
    last_active: float = field(default_factory=time.monotonic)

    @property
    def busy(self) -> bool:
        return bool(self.queue) or (self.worker is not None and not self.worker.done())


class SessionManager:
    def __init__(
        self,
        processor: TurnProcessor,
        cfg: SessionsConfig,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self.processor = processor
        self.metrics = metrics
        self.cfg = cfg
        self.clock = clock
        self.sessions: OrderedDict[str, _Mailbox] = OrderedDict()
        self.activations = 0
        self.passivations = 0
        self.turns = 0
        self.busy_refusals = 0

    @property
    def active(self) -> int:
        return len(self.sessions)

    def mailbox_depth(self) -> int:
        return sum(len(b.queue) for b in self.sessions.values())

    async def submit(self, event: Event, on_chunk: ChunkSink | None = None) -> Reply:
        """Queue the event in its session's mailbox and wait for the reply.

        Turns of one session run in arrival order, one at a time; different sessions
        run concurrently. A full mailbox gets a "busy" reply at once.
        """
        key = event.session_key
        box = self.sessions.get(key)
        if box is None:
            box = _Mailbox(key)
            self.sessions[key] = box
            self._evict_over_cap()
        else:
            self.sessions.move_to_end(key)
        stopped = await self._stop(box, event)
        if stopped is not None:
            return stopped
        if len(box.queue) >= self.cfg.mailbox_size:
            self.busy_refusals += 1
            return Reply.of_text(
                key,
                event.message_id,
                "I'm still working on your earlier messages; please wait "
                "a moment and send this again.",
                error="busy",
            )
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        box.queue.append((event, on_chunk, fut))
        box.last_active = self.clock()
        if box.worker is None or box.worker.done():
            box.worker = asyncio.create_task(self._work(box))
        return await fut

    async def _stop(self, box: _Mailbox, event: Event) -> Reply | None:
        """``/stop`` does not queue behind the turn it stops: it cancels the running turn
        (and a plugin waiting for this user's answer) at once. None: nothing to stop,
        and the message goes through the mailbox like any other."""
        parsed = parse_command(event.text)
        if parsed is None or parsed[0] != "stop":
            return None
        what = None
        if box.current is not None and not box.current.done():
            box.stopping = True
            box.current.cancel()
            what = "Stopped the answer."
        ref = box.live.dialogs.pop(event.sender.id, None) if box.live is not None else None
        if ref is not None:
            if self.processor.plugins is not None:
                await self.processor.plugins.cancel(ref.plugin, ref.dialog)
            what = what or f"Stopped {ref.plugin}'s question."
        if what is None:
            return None
        return Reply.of_text(box.key, event.message_id, what)

    async def _turn(self, box: _Mailbox, event: Event, on_chunk: ChunkSink | None) -> Reply:
        assert box.live is not None
        turn = asyncio.ensure_future(self.processor.process(box.live, event, on_chunk))
        box.current = turn
        try:
            return await asyncio.wait_for(turn, self.cfg.turn_timeout_s)
        except asyncio.CancelledError:
            if not box.stopping:
                raise
            box.stopping = False
            log.info("turn stopped session=%s event=%s", box.key, event.message_id)
            return await self.processor.stopped(box.live, event)
        finally:
            box.current = None

    async def _work(self, box: _Mailbox) -> None:
        while box.queue:
            event, on_chunk, fut = box.queue[0]
            started = time.perf_counter()
            try:
                if box.live is None:
                    box.live = await self.processor.load(box.key)
                    self.activations += 1
                reply = await self._turn(box, event, on_chunk)
            except TimeoutError:
                log.error("turn timed out session=%s event=%s", box.key, event.message_id)
                reply = Reply.of_text(
                    box.key,
                    event.message_id,
                    "Sorry, that took too long. Please try again.",
                    error="timeout",
                )
            except Exception as exc:
                if isinstance(exc, AstrRayError):  # a known failure: one line says it all
                    log.error("turn failed session=%s event=%s: %s", box.key, event.message_id, exc)
                else:
                    log.exception("turn crashed session=%s event=%s", box.key, event.message_id)
                reply = Reply.of_text(
                    box.key,
                    event.message_id,
                    "Sorry, something went wrong on my side. Please try again.",
                    error="internal",
                )
                box.live = None  # the cache may be stale: reload from the store next turn
            box.queue.popleft()
            self.turns += 1
            if self.metrics is not None:
                self.metrics.turn_seconds.labels(reply.error or "ok").observe(
                    time.perf_counter() - started
                )
                if reply.error is not None:
                    self.metrics.errors.labels("session", reply.error).inc()
            box.last_active = self.clock()
            if not fut.done():
                fut.set_result(reply)

    def _evict_over_cap(self) -> None:
        excess = len(self.sessions) - self.cfg.max_active_per_host
        if excess <= 0:
            return
        for key in list(self.sessions):
            if excess <= 0:
                break
            if not self.sessions[key].busy:
                del self.sessions[key]
                self.passivations += 1
                excess -= 1

    def passivate_idle(self, idle_s: float | None = None) -> int:
        """Drop sessions idle longer than ``idle_s`` (default: the configured timeout)
        and not mid-turn; returns how many were dropped. Their state is in the store."""
        cutoff = self.clock() - (self.cfg.idle_timeout_s if idle_s is None else idle_s)
        dropped = 0
        for key in list(self.sessions):
            box = self.sessions[key]
            if box.last_active <= cutoff and not box.busy:
                del self.sessions[key]
                dropped += 1
        self.passivations += dropped
        return dropped

    async def release(self, matches: Callable[[str], bool], within: float) -> int:
        """Passivate every session whose key ``matches`` once its turns are done (a shard
        move). The caller has stopped new messages for them. Sessions still mid-turn
        after ``within`` seconds are left running. Returns how many were released."""
        keys = [k for k in self.sessions if matches(k)]
        workers = {
            box.worker
            for k in keys
            if (box := self.sessions[k]).worker is not None and not box.worker.done()
        }
        if workers:
            await asyncio.wait(workers, timeout=within)
        released = 0
        for key in keys:
            idle = self.sessions.get(key)
            if idle is not None and not idle.busy:
                del self.sessions[key]
                released += 1
        self.passivations += released
        return released

    def is_active(self, key: str) -> bool:
        return key in self.sessions

    def stats(self) -> dict[str, Any]:
        return {
            "active_sessions": self.active,
            "mailbox_depth": self.mailbox_depth(),
            "activations": self.activations,
            "passivations": self.passivations,
            "turns": self.turns,
            "busy_refusals": self.busy_refusals,
        }
