"""One turn of one session: the pipeline from an event to its reply.

    event ─► duplicate? ──yes──► the stored reply (duplicate=True)
               │no
               ▼
          command? ──yes──► command handler ─┐
               │no                           │
               ▼                             ▼
          LLM (fallback chain) ──────► commit (messages + idempotency record, one
                                       transaction) ─► reply

The store holds the truth; a ``LiveSession`` is the in-memory cache of one session's
current conversation, rebuilt by ``load`` on activation. A turn whose LLM call fails
for good commits nothing (no half turn, no idempotency record), so the same message can
be sent again and is answered once.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from astr_ray.batching import BatchRunner
from astr_ray.config import Config
from astr_ray.errors import DuplicateEventError, ProviderUnavailableError, StoreError
from astr_ray.message import Event, Reply
from astr_ray.providers.chain import ProviderChain
from astr_ray.sessions.commands import CommandRegistry, parse_command
from astr_ray.store import Activation, NewMessage, Store, StoredMessage, TurnRecord

__all__ = ["CommandContext", "LiveSession", "TurnProcessor", "builtin_commands"]

log = logging.getLogger(__name__)

ChunkSink = Callable[[str], Awaitable[None]]

RECENT_EVENTS = 256


@dataclass
class LiveSession:
    """The cached state of one session; valid only between ``load`` and passivation."""

    key: str
    conversation_id: str
    history: list[dict[str, str]]
    next_seq: int
    recent: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)

    def remember(self, event_id: str, reply: dict[str, Any]) -> None:
        self.recent[event_id] = reply
        while len(self.recent) > RECENT_EVENTS:
            self.recent.popitem(last=False)


@dataclass
class CommandContext:
    processor: TurnProcessor
    live: LiveSession
    event: Event


class TurnProcessor:
    """Runs turns. Shared by every session of a host; holds no per-session state."""

    def __init__(
        self,
        store: Store,
        chain: ProviderChain,
        cfg: Config,
        commands: CommandRegistry | None = None,
    ) -> None:
        self.store = store
        self.chain = chain
        self.cfg = cfg
        self.commands = commands or builtin_commands()
        self.history_messages = 2 * cfg.sessions.history_turns
        # Turns finishing together share a transaction; sessions activated together
        # share one activation query (see astr_ray.batching).
        self.commits: BatchRunner[TurnRecord, None] = BatchRunner(store.commit_turns)
        self.activations: BatchRunner[str, Activation] = BatchRunner(self._activate_batch)

    async def _activate_batch(self, keys: list[str]) -> list[Activation]:
        acts = await self.store.activate_many(keys, self.history_messages, RECENT_EVENTS)
        return [acts[k] for k in keys]

    async def load(self, key: str) -> LiveSession:
        """Activate: read the session's current conversation and recent event ids."""
        act = await self.activations.submit(key)
        return self._live(key, act.conversation_id, act.history, act.recent)

    def _live(
        self,
        key: str,
        conversation_id: str,
        rows: list[StoredMessage],
        recent: dict[str, dict[str, Any]],
    ) -> LiveSession:
        history = [
            {"role": m.role, "content": m.content} for m in rows if m.role in ("user", "assistant")
        ]
        return LiveSession(
            key, conversation_id, history, rows[-1].seq + 1 if rows else 0, OrderedDict(recent)
        )

    async def _load_conversation(self, key: str, conversation_id: str) -> LiveSession:
        rows = await self.store.load_history(conversation_id, limit=self.history_messages)
        recent = await self.store.recent_processed(key, limit=RECENT_EVENTS)
        return self._live(key, conversation_id, rows, recent)

    async def process(
        self, live: LiveSession, event: Event, on_chunk: ChunkSink | None = None
    ) -> Reply:
        """Answer one event; idempotent per ``event.message_id`` within the session."""
        stored = live.recent.get(event.message_id)
        if stored is not None:
            return Reply.from_dict({**stored, "duplicate": True})
        text = event.text.strip()
        parsed = parse_command(text)
        if parsed is not None:
            name, args = parsed
            command = self.commands.get(name)
            ctx = CommandContext(self, live, event)
            answer = (
                await command.handler(ctx, args)
                if command is not None
                else self.commands.unknown(name)
            )
            reply = Reply.of_text(live.key, event.message_id, answer)
            return await self._commit(live, event, [], reply)
        if not text:
            reply = Reply.of_text(
                live.key, event.message_id, "I can only read text messages for now."
            )
            return await self._commit(live, event, [], reply)
        messages = [
            {"role": "system", "content": self.cfg.system_prompt},
            *live.history[-self.history_messages :],
            {"role": "user", "content": text},
        ]
        try:
            result = await self.chain.complete(
                messages, on_chunk, context={"session": live.key, "event": event.message_id}
            )
        except ProviderUnavailableError as exc:
            if not self.chain.slots:
                return Reply.of_text(
                    live.key,
                    event.message_id,
                    "No LLM provider is configured yet: add one under `providers:` in the "
                    "config (see `astr-ray init`) and restart. Commands work meanwhile: /help",
                    error="no_provider",
                )
            log.error(
                "no provider answered session=%s event=%s: %s",
                live.key,
                event.message_id,
                exc.message,
            )
            return Reply.of_text(
                live.key,
                event.message_id,
                "Sorry, I can't reach the language model right now. Please try again in a moment.",
                error="provider_unavailable",
            )
        reply = Reply.of_text(live.key, event.message_id, result.content)
        new = [
            NewMessage("user", text, {"sender": event.sender.id}),
            NewMessage(
                "assistant",
                result.content,
                {
                    "provider": result.provider_id,
                    "model": result.model,
                    "prompt_tokens": result.prompt_tokens,
                    "completion_tokens": result.completion_tokens,
                },
            ),
        ]
        return await self._commit(live, event, new, reply)

    async def _commit(
        self, live: LiveSession, event: Event, new: list[NewMessage], reply: Reply
    ) -> Reply:
        reply_dict = reply.to_dict()
        record = TurnRecord(
            live.key, live.conversation_id, event.message_id, new, reply_dict, live.next_seq
        )
        try:
            await self.commits.submit(record)
        except DuplicateEventError:
            # Another host (or an earlier life of this one) committed this event first.
            stored = await self.store.get_processed(live.key, event.message_id)
            await self.reload(live)
            if stored is None:
                raise
            return Reply.from_dict({**stored, "duplicate": True})
        except StoreError:
            await self.reload(live)
            raise
        live.next_seq += len(new)
        live.history.extend({"role": m.role, "content": m.content} for m in new)
        if len(live.history) > 2 * self.history_messages:
            del live.history[: len(live.history) - self.history_messages]
        live.remember(event.message_id, reply_dict)
        return reply

    async def reload(self, live: LiveSession) -> None:
        """Refresh a live session from the store after finding the cache stale."""
        state = await self.store.ensure_session(live.key)
        fresh = await self._load_conversation(live.key, state.conversation_id)
        live.conversation_id, live.history = fresh.conversation_id, fresh.history
        live.next_seq, live.recent = fresh.next_seq, fresh.recent

    async def switch_conversation(self, live: LiveSession, conversation_id: str) -> None:
        fresh = await self._load_conversation(live.key, conversation_id)
        live.conversation_id, live.history = fresh.conversation_id, fresh.history
        live.next_seq = fresh.next_seq


def builtin_commands() -> CommandRegistry:
    reg = CommandRegistry()

    @reg.command("help", "/help", "list the commands")
    async def _help(ctx: CommandContext, args: str) -> str:
        return ctx.processor.commands.help_text()

    @reg.command("new", "/new [title]", "start a new conversation (the old one is kept)")
    async def _new(ctx: CommandContext, args: str) -> str:
        cid = await ctx.processor.store.new_conversation(ctx.live.key, title=args or None)
        await ctx.processor.switch_conversation(ctx.live, cid)
        return "Started a new conversation."

    @reg.command("reset", "/reset", "forget the current conversation's history")
    async def _reset(ctx: CommandContext, args: str) -> str:
        n = await ctx.processor.store.clear_conversation(ctx.live.conversation_id)
        ctx.live.history.clear()
        ctx.live.next_seq = 0
        return f"Cleared this conversation ({n} messages)."

    @reg.command("history", "/history [n]", "show the last n turns (default 5)")
    async def _history(ctx: CommandContext, args: str) -> str:
        try:
            n = int(args) if args else 5
        except ValueError:
            return "Usage: /history [n] (n is a number of turns)"
        n = max(1, min(n, 50))
        rows = await ctx.processor.store.load_history(ctx.live.conversation_id, limit=2 * n)
        if not rows:
            return "This conversation has no history yet."
        lines = [f"{m.role}: {_clip(m.content)}" for m in rows if m.role in ("user", "assistant")]
        return "\n".join(lines)

    return reg


def _clip(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
