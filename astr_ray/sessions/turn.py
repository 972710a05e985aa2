"""One turn of one session: the pipeline from an event to its reply.

    event ─► duplicate? ─► stored reply (duplicate=True)
          ─► access: allow-list, bot switch, blocked words, rate limit ─► refusal
          ─► voice message? ─► transcribed by the STT pool (voice.py), then as text
          ─► a plugin dialog waiting for this user? ─► resume it
          ─► command? ─► built-in, or a plugin's (time-limited, contained)
          ─► plugin regex / message handlers (may answer)
          ─► LLM: persona + summary + history, fitted to the context window
                  (compressed when near the limit), before_llm hooks, agent loop
                  with the plugins' tools, after_llm hooks
          ─► decorate hooks, output filter ─► spoken? (TTS pool) ─► commit
          ─► reply (after_send hooks)

The store holds the truth; a ``LiveSession`` is the in-memory cache of one session,
rebuilt by ``load`` on activation. A turn whose LLM call fails for good commits nothing
(no half turn, no idempotency record), so the same message can be sent again and is
answered once. Refusals (allow-list, rate limit, blocked words) commit nothing either.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from astr_ray.batching import BatchRunner
from astr_ray.config import Config
from astr_ray.errors import (
    DuplicateEventError,
    StoreError,
)
from astr_ray.kb.tool import KnowledgeTools, Searcher
from astr_ray.message import Event, File, Image, Reply, Text
from astr_ray.plugins.manager import PluginManager, PluginTools, Target
from astr_ray.providers.chain import ProviderChain
from astr_ray.sessions.access import (
    GlobalSettings,
    TokenBucket,
    allowed,
    blocked_word,
    censor,
)
from astr_ray.sessions.commands import CommandRegistry, parse_command
from astr_ray.sessions.llm import LLMPath
from astr_ray.sessions.personas import Personas
from astr_ray.sessions.voice import MediaFetcher, Speech, VoicePath
from astr_ray.sessions.window import TokenCounter
from astr_ray.store import Activation, NewMessage, Store, StoredMessage, TurnRecord
from astr_ray.tools import ToolSource

__all__ = ["CommandContext", "DialogRef", "LiveSession", "TurnProcessor"]

log = logging.getLogger(__name__)

ChunkSink = Callable[[str], Awaitable[None]]

RECENT_EVENTS = 256


@dataclass
class DialogRef:
    """A plugin handler waiting for this sender's next message (``ctx.ask``)."""

    plugin: str
    dialog: str
    sender: str
    expires: float


@dataclass
class LiveSession:
    """The cached state of one session; valid only between ``load`` and passivation."""

    key: str
    conversation_id: str
    history: list[dict[str, str]]
    next_seq: int
    recent: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)
    summary: str | None = None
    persona: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    bucket: TokenBucket | None = None
    dialogs: dict[str, DialogRef] = field(default_factory=dict)  # by sender id

    def remember(self, event_id: str, reply: dict[str, Any]) -> None:
        self.recent[event_id] = reply
        while len(self.recent) > RECENT_EVENTS:
            self.recent.popitem(last=False)


@dataclass
class CommandContext:
    processor: TurnProcessor
    live: LiveSession
    event: Event
    is_admin: bool = False
    disabled: set[str] = field(default_factory=set)
    pending: list[NewMessage] = field(default_factory=list)  # committed with the reply


class TurnProcessor(LLMPath, VoicePath):
    """Runs turns. Shared by every session of a host; holds no per-session state."""

    def __init__(
        self,
        store: Store,
        chain: ProviderChain,
        cfg: Config,
        commands: CommandRegistry | None = None,
        plugins: PluginManager | None = None,
        broadcast_reload: Callable[[str | None], Awaitable[list[str]]] | None = None,
        tool_sources: Sequence[ToolSource] = (),
        knowledge: Searcher | None = None,
        speech: Speech | None = None,
        fetch_media: MediaFetcher | None = None,
    ) -> None:
        from astr_ray.sessions.builtins import builtin_commands

        self.store = store
        self.chain = chain
        self.cfg = cfg
        self.commands = commands or builtin_commands()
        self.plugins = plugins
        self.broadcast_reload = broadcast_reload
        # The agent's tools: the plugins' first, then the runtime's (sandbox, MCP).
        self.knowledge = knowledge
        self.speech = speech
        self.fetch_media = fetch_media
        self.tool_sources: list[ToolSource] = [
            *([PluginTools(plugins, cfg.agent.tool_timeout_s)] if plugins is not None else []),
            *tool_sources,
            *([KnowledgeTools(cfg, knowledge)] if knowledge is not None else []),
        ]
        self.history_messages = 2 * cfg.sessions.history_turns
        self.globals = GlobalSettings(
            lambda: store.get_settings("global"),
            lambda k, v: store.set_setting("global", k, v),
        )
        self.personas = Personas(cfg, store.list_personas)
        self.counter = TokenCounter(cfg.agent)
        # Turns finishing together share a transaction; sessions activated together
        # share one activation query (see astr_ray.batching).
        self.commits: BatchRunner[TurnRecord, None] = BatchRunner(store.commit_turns)
        self.activations: BatchRunner[str, Activation] = BatchRunner(self._activate_batch)

    # -- activation ---------------------------------------------------------------------
    async def _activate_batch(self, keys: list[str]) -> list[Activation]:
        acts = await self.store.activate_many(keys, self.history_messages, RECENT_EVENTS)
        return [acts[k] for k in keys]

    async def load(self, key: str) -> LiveSession:
        """Activate: read the session's current conversation and recent event ids."""
        act = await self.activations.submit(key)
        live = self._live(key, act.conversation_id, act.history, act.recent)
        live.persona, live.settings = act.persona, dict(act.settings)
        return live

    def _live(
        self,
        key: str,
        conversation_id: str,
        rows: list[StoredMessage],
        recent: dict[str, dict[str, Any]],
    ) -> LiveSession:
        summary, history = _history_from_rows(rows)
        return LiveSession(
            key,
            conversation_id,
            history,
            rows[-1].seq + 1 if rows else 0,
            OrderedDict(recent),
            summary=summary,
        )

    async def _load_conversation(self, key: str, conversation_id: str) -> LiveSession:
        rows = await self.store.load_history(conversation_id, limit=self.history_messages)
        recent = await self.store.recent_processed(key, limit=RECENT_EVENTS)
        return self._live(key, conversation_id, rows, recent)

    # -- the pipeline -------------------------------------------------------------------
    async def process(
        self, live: LiveSession, event: Event, on_chunk: ChunkSink | None = None
    ) -> Reply:
        """Answer one event; idempotent per ``event.message_id`` within the session."""
        stored = live.recent.get(event.message_id)
        if stored is not None:
            return Reply.from_dict({**stored, "duplicate": True})
        g = await self.globals.get()
        is_admin = self.is_admin(event, g)
        text = event.text.strip()
        parsed = parse_command(text)
        refusal = await self._gate(live, event, g, is_admin, text, parsed)
        if refusal is not None:
            return refusal
        if event.voice is not None:
            heard = await self.hear(live, event)
            if isinstance(heard, Reply):
                return heard
            event, text = heard, heard.text.strip()
            if blocked_word(text, self.cfg.access.blocked_words) is not None:
                return self._refuse(live, event, "Your message contains a blocked word.", "blocked")
            parsed = None  # a spoken "/command" is not a command
        disabled = self.disabled_plugins(g, live)
        builtin = parsed is not None and self.commands.get(parsed[0]) is not None
        ref = live.dialogs.pop(event.sender.id, None) if not builtin else None
        # A plugin asked this sender a question: this message is the answer (built-in
        # commands such as /help and /stop still work meanwhile).
        if ref is not None and ref.expires > time.monotonic() and self.plugins is not None:
            outcome = await self.plugins.resume(ref.plugin, ref.dialog, event)
            return await self._plugin_answer(live, event, ref.plugin, outcome, is_admin, disabled)
        if parsed is not None:
            return await self._command(live, event, parsed, is_admin, disabled)
        if self.plugins is not None:
            for target in self.plugins.message_targets(event, disabled, is_admin):
                outcome = await self.plugins.call(target, event, is_admin=is_admin)
                if "error" in outcome:
                    # Nobody asked this handler for anything: its fault is logged and
                    # counted (by the manager), not put on the user; the message goes on.
                    continue
                if outcome.get("ok") is None and "ask" not in outcome:
                    continue  # the handler let the message go on
                return await self._plugin_answer(
                    live, event, target.plugin, outcome, is_admin, disabled
                )
        if not text:
            reply = Reply.of_text(
                live.key, event.message_id, "I can only read text messages for now."
            )
            return await self._commit(live, event, [], reply)
        if live.settings.get("llm") is False:
            return Reply(session_key=live.key, event_id=event.message_id, error="llm_off")
        answered = await self._llm_turn(live, event, text, on_chunk, is_admin, disabled)
        if isinstance(answered, Reply):
            return answered  # refused or failed: nothing to decorate or commit
        answer, new, attachments = answered
        return await self._finish(live, event, answer, new, is_admin, disabled, attachments)

    def is_admin(self, event: Event, g: dict[str, Any]) -> bool:
        who = f"{event.platform_id}:{event.sender.id}"
        return who in self.cfg.access.admins or who in (g.get("admins") or [])

    def disabled_plugins(self, g: dict[str, Any], live: LiveSession) -> set[str]:
        states: dict[str, bool] = g.get("plugin_states") or {}
        off = {n for n in self.cfg.plugins.disabled if states.get(n) is not True}
        off |= {n for n, on in states.items() if on is False}
        return off | set(live.settings.get("plugins_off") or [])

    async def _gate(
        self,
        live: LiveSession,
        event: Event,
        g: dict[str, Any],
        is_admin: bool,
        text: str,
        parsed: tuple[str, str] | None,
    ) -> Reply | None:
        """A refusal, or None when the message may go on. Refusals commit nothing."""
        access = self.cfg.access
        if not is_admin and not allowed(live.key, access, g.get("allow") or []):
            return self._refuse(
                live, event, "This chat is not on the bot's allow-list.", "not_allowed"
            )
        if live.settings.get("bot") is False and not (parsed and parsed[0] == "bot"):
            return Reply(session_key=live.key, event_id=event.message_id, error="bot_off")
        word = blocked_word(text, access.blocked_words)
        if word is not None:
            return self._refuse(live, event, "Your message contains a blocked word.", "blocked")
        limit = access.rate_limit
        if limit.per_minute and not is_admin:
            if live.bucket is None:
                live.bucket = TokenBucket(limit)
            wait = live.bucket.take()
            if wait > 0:
                if limit.mode == "reply" or wait > self.cfg.sessions.turn_timeout_s / 2:
                    return self._refuse(
                        live,
                        event,
                        f"Slow down, please: try again in {max(1, round(wait))} s.",
                        "rate_limited",
                    )
                await asyncio.sleep(wait)
                live.bucket.take()
        return None

    async def _command(
        self,
        live: LiveSession,
        event: Event,
        parsed: tuple[str, str],
        is_admin: bool,
        disabled: set[str],
    ) -> Reply:
        name, args = parsed
        builtin = self.commands.get(name)
        if builtin is not None:
            if builtin.admin and not is_admin:
                answer = f"/{name} is for admins only."
                return await self._commit(
                    live, event, [], Reply.of_text(live.key, event.message_id, answer)
                )
            ctx = CommandContext(self, live, event, is_admin, disabled)
            answer = await builtin.handler(ctx, args)
            reply = Reply.of_text(live.key, event.message_id, answer)
            return await self._commit(live, event, ctx.pending, reply)
        hit = (
            self.plugins.find_command(name, args, disabled, admin=is_admin)
            if self.plugins
            else None
        )
        if isinstance(hit, str):
            return await self._commit(
                live, event, [], Reply.of_text(live.key, event.message_id, hit)
            )
        if hit is None:
            extra = self.plugins.help_entries(disabled) if self.plugins else []
            answer = self.commands.unknown(name, [u.split()[0][1:] for u, _ in extra])
            return await self._commit(
                live, event, [], Reply.of_text(live.key, event.message_id, answer)
            )
        assert self.plugins is not None
        plugin, spec, argtext = hit
        head = spec.usage.split(" <")[0].split(" [")[0]  # "/group sub" or "/name"
        if spec.filters.admin and not is_admin:
            answer = f"{head} is for admins only."
        elif not spec.filters.allows(event.platform_id, event.chat_type.value):
            answer = f"{head} is not available in this chat."
        else:
            outcome = await self.plugins.call(
                Target(plugin, spec.id, "command", argtext), event, is_admin=is_admin
            )
            return await self._plugin_answer(live, event, plugin, outcome, is_admin, disabled)
        return await self._commit(
            live, event, [], Reply.of_text(live.key, event.message_id, answer)
        )

    async def _plugin_answer(
        self,
        live: LiveSession,
        event: Event,
        plugin: str,
        outcome: dict[str, Any],
        is_admin: bool,
        disabled: set[str],
    ) -> Reply:
        error = None
        if "ask" in outcome:
            wait = min(float(outcome.get("timeout") or 120), self.cfg.plugins.max_dialog_wait_s)
            live.dialogs[event.sender.id] = DialogRef(
                plugin, outcome["dialog"], event.sender.id, time.monotonic() + wait
            )
            text = outcome["ask"]
        elif "error" in outcome:
            kind = outcome["error"]
            text = outcome["message"] if kind == "usage" else f"⚠️ {outcome['message']}"
            error = None if kind == "usage" else "plugin_" + kind
        else:
            text = outcome.get("ok") or ""
        return await self._finish(live, event, text, [], is_admin, disabled, error=error)

    async def _finish(
        self,
        live: LiveSession,
        event: Event,
        text: str,
        new: list[NewMessage],
        is_admin: bool,
        disabled: set[str],
        attachments: Sequence[Image | File] = (),
        error: str | None = None,
    ) -> Reply:
        """Decorate, filter, commit, then tell the after_send hooks."""
        if text and self.plugins is not None and error is None:
            out = await self._hooks("decorate", {"text": text}, event, is_admin, disabled)
            text = str(out.get("text", text))
        text = censor(text, self.cfg.access.blocked_words)
        voice = await self.voice_for(live, event, text) if error is None else None
        reply = Reply(
            session_key=live.key,
            event_id=event.message_id,
            components=(Text(text=text), *attachments, *([voice] if voice else [])),
            error=error,
        )
        reply = await self._commit(live, event, new, reply)
        if self.plugins is not None and self.plugins.hook_targets("after_send", disabled):
            task = asyncio.create_task(
                self._hooks("after_send", reply.to_dict(), event, is_admin, disabled)
            )
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return reply

    # -- commit (the LLM path is in llm.py) ----------------------------------------------
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
        live.history.extend(
            {"role": m.role, "content": m.content} for m in new if m.role in ("user", "assistant")
        )
        if len(live.history) > 2 * self.history_messages:
            del live.history[: len(live.history) - self.history_messages]
        live.remember(event.message_id, reply_dict)
        return reply

    async def stopped(self, live: LiveSession, event: Event) -> Reply:
        """Commit a turn that ``/stop`` cancelled: the question stays in the history and
        a redelivery of the same message gets "stopped", not a second answer."""
        reply = Reply.of_text(live.key, event.message_id, "Stopped.", error="stopped")
        text = event.text.strip()
        new = (
            [NewMessage("user", text, {"sender": event.sender.id, "stopped": True})] if text else []
        )
        return await self._commit(live, event, new, reply)

    async def reload(self, live: LiveSession) -> None:
        """Refresh a live session from the store after finding the cache stale."""
        state = await self.store.ensure_session(live.key)
        fresh = await self._load_conversation(live.key, state.conversation_id)
        live.conversation_id, live.history = fresh.conversation_id, fresh.history
        live.next_seq, live.recent, live.summary = fresh.next_seq, fresh.recent, fresh.summary
        info = await self.store.get_conversation(live.conversation_id)
        live.persona = info.persona if info else None
        live.settings = await self.store.get_settings(live.key)

    async def switch_conversation(self, live: LiveSession, conversation_id: str) -> None:
        fresh = await self._load_conversation(live.key, conversation_id)
        live.conversation_id, live.history = fresh.conversation_id, fresh.history
        live.next_seq, live.summary = fresh.next_seq, fresh.summary
        info = await self.store.get_conversation(conversation_id)
        live.persona = info.persona if info else None


def _history_from_rows(rows: list[StoredMessage]) -> tuple[str | None, list[dict[str, str]]]:
    """(summary, history) from stored rows: the latest summary row replaces what came
    before it, except the ``kept`` messages it left verbatim."""
    start = 0
    summary = None
    for i in range(len(rows) - 1, -1, -1):
        extra = rows[i].extra or {}
        if rows[i].role == "system" and extra.get("summary"):
            summary = rows[i].content
            kept = int(extra.get("kept") or 0)
            before = (
                [r for r in rows[:i] if r.role in ("user", "assistant")][-kept:] if kept else []
            )
            after = [r for r in rows[i + 1 :] if r.role in ("user", "assistant")]
            return summary, [{"role": r.role, "content": r.content} for r in before + after]
    return summary, [
        {"role": r.role, "content": r.content}
        for r in rows[start:]
        if r.role in ("user", "assistant")
    ]
