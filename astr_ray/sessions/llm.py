"""The LLM part of a turn: the request (persona, summary, history) fitted to the
model's context window, compression, and the agent loop with the plugins' tools.

``LLMPath`` is a mixin of ``TurnProcessor`` (``turn.py``), which provides the store,
the chain, the plugins and the reply helpers it uses.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from astr_ray.config import Config, ProviderConfig
from astr_ray.errors import KnowledgeError, ProviderUnavailableError
from astr_ray.kb.tool import Searcher, bases_for, context_note
from astr_ray.message import Event, File, Image, Reply
from astr_ray.plugins.manager import PluginManager, Target
from astr_ray.providers.chain import ProviderChain
from astr_ray.sessions.agent import run_agent
from astr_ray.sessions.personas import Personas
from astr_ray.sessions.window import TokenCounter, estimate
from astr_ray.store import NewMessage, Persona
from astr_ray.tools import ToolBox, ToolContext, ToolSource

if TYPE_CHECKING:
    from astr_ray.sessions.turn import LiveSession

__all__ = ["SUMMARY_PROMPT", "LLMPath", "TooLong"]

log = logging.getLogger(__name__)

ChunkSink = Callable[[str], Awaitable[None]]

SUMMARY_PROMPT = (
    "Summarize the conversation below for your own later reference: the facts, names, "
    "decisions and open questions, in the language of the conversation, at most 200 words."
)


class TooLong(Exception):
    """The request cannot fit the model's window even without history."""


class LLMPath:
    cfg: Config
    chain: ProviderChain
    plugins: PluginManager | None
    tool_sources: list[ToolSource]
    knowledge: Searcher | None
    personas: Personas
    counter: TokenCounter
    history_messages: int

    async def _hooks(
        self, hook: str, payload: dict[str, Any], event: Event, is_admin: bool, disabled: set[str]
    ) -> dict[str, Any]:
        """Run a hook chain; a hook that fails is skipped (and logged by the manager)."""
        assert self.plugins is not None
        for target in self.plugins.hook_targets(hook, disabled):
            out = await self.plugins.call(
                Target(target.plugin, target.handler, "hook", payload), event, is_admin=is_admin
            )
            value = out.get("ok")
            if isinstance(value, dict):
                payload = value
        return payload

    @staticmethod
    def _refuse(live: LiveSession, event: Event, text: str, error: str) -> Reply:
        return Reply.of_text(live.key, event.message_id, text, error=error)

    def provider_for(self, live: LiveSession) -> ProviderConfig | None:
        chain = self.cfg.provider_chain()
        prefer = live.settings.get("provider")
        for p in chain:
            if p.id == prefer:
                return p
        return chain[0] if chain else None

    def _head(self, persona: Persona, summary: str | None) -> list[dict[str, Any]]:
        head: list[dict[str, Any]] = [{"role": "system", "content": persona.system_prompt}]
        for user, assistant in persona.begin_dialogs:
            head += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        if summary:
            head.append(
                {"role": "system", "content": f"Summary of the earlier conversation: {summary}"}
            )
        return head

    async def fit(
        self,
        live: LiveSession,
        persona: Persona,
        text: str,
        *,
        tools: list[dict[str, Any]] | None = None,
        compress: bool = True,
    ) -> tuple[list[dict[str, Any]], list[NewMessage]]:
        """The request for this turn, inside the model's window: compressed (summary
        stored with the turn) or with the oldest history left out. ``TooLong`` if the
        message does not fit even alone. The tools' schemas count too: the model reads
        them as part of its input."""
        provider = self.provider_for(live)
        user = {"role": "user", "content": text}
        history = list(live.history[-self.history_messages :])
        if provider is None:
            return [*self._head(persona, live.summary), *history, user], []
        model = live.settings.get("model") or provider.model
        messages = [*self._head(persona, live.summary), *history, user]
        extra = _tools_as_text(tools)
        budget = await self.counter.budget(provider, estimate(messages + extra))
        tokens = await self.counter.count(model, messages + extra, budget.limit)
        new: list[NewMessage] = []
        if tokens > budget.limit and compress and self.cfg.agent.compression == "summarize":
            summary = await self.compress(live)
            if summary is not None:
                new.append(summary)
                history = list(live.history)
                messages = [*self._head(persona, live.summary), *history, user]
                tokens = await self.counter.count(model, messages + extra, budget.limit)
        while tokens > budget.limit and history:
            drop = 2 if len(history) > 1 else 1
            history = history[drop:]
            messages = [*self._head(persona, live.summary), *history, user]
            tokens = await self.counter.count(model, messages + extra, budget.limit)
        if tokens > budget.limit:
            raise TooLong(f"{tokens} tokens; this model takes {budget.limit}")
        return messages, new

    async def compress(self, live: LiveSession, *, force: bool = False) -> NewMessage | None:
        """Summarize all but the last ``keep_recent_turns`` turns into ``live.summary``.
        Returns the summary message to store with the turn (None: nothing to do)."""
        keep = 2 * self.cfg.agent.keep_recent_turns
        older = live.history[:-keep] if keep else list(live.history)
        if not older and not (force and live.history):
            return None
        if not older:
            older, keep = list(live.history), 0
        transcript = "\n".join(f"{m['role']}: {m['content']}" for m in older)
        if live.summary:
            transcript = f"(earlier summary) {live.summary}\n{transcript}"
        provider = self.provider_for(live)
        if provider is not None:
            budget = await self.counter.budget(provider, estimate([{"content": transcript}]))
            room = max(budget.limit - 200, 100) * 3  # bytes, by the estimate's ratio
            transcript = transcript.encode()[-room:].decode(errors="ignore")
        result = await self.chain.complete(
            [
                {"role": "system", "content": SUMMARY_PROMPT},
                {"role": "user", "content": transcript},
            ],
            context={"session": live.key, "purpose": "summary"},
        )
        live.summary = result.content.strip()
        live.history = live.history[-keep:] if keep else []
        return NewMessage("system", live.summary, {"summary": True, "kept": len(live.history)})

    async def _with_knowledge(self, persona: Persona, bases: tuple[str, ...], text: str) -> Persona:
        """The persona with the passages that best match ``text`` added to its system
        prompt (counted by ``fit`` like the rest); unchanged when the search fails."""
        assert self.knowledge is not None
        try:
            passages = await self.knowledge.search(bases, text, self.cfg.knowledge.top_k)
        except KnowledgeError as exc:
            log.warning("knowledge context skipped: %s", exc)
            return persona
        if not passages:
            return persona
        prompt = f"{persona.system_prompt}\n\n{context_note(passages)}"
        return replace(persona, system_prompt=prompt)

    def _fits(
        self, live: LiveSession, tools: list[dict[str, Any]] | None
    ) -> Callable[[list[dict[str, Any]]], Awaitable[bool]]:
        """Whether a request (with tool results) still fits the session's model."""
        extra = _tools_as_text(tools)

        async def fits(messages: list[dict[str, Any]]) -> bool:
            provider = self.provider_for(live)
            if provider is None:
                return True
            model = live.settings.get("model") or provider.model
            request = messages + extra
            budget = await self.counter.budget(provider, estimate(request))
            return await self.counter.count(model, request, budget.limit) <= budget.limit

        return fits

    async def _llm_turn(
        self,
        live: LiveSession,
        event: Event,
        text: str,
        on_chunk: ChunkSink | None,
        is_admin: bool,
        disabled: set[str],
    ) -> Reply | tuple[str, list[NewMessage], list[Image | File]]:
        """The answer, the messages to store with it and what tools attached, or a
        ``Reply`` that ends the turn as it is (too long, no provider)."""
        persona = await self.personas.resolve(live.persona)
        context = {"session": live.key, "event": event.message_id}
        bases = bases_for(self.cfg, persona.knowledge) if self.knowledge is not None else ()
        if bases and self.cfg.knowledge.mode in ("context", "both"):
            persona = await self._with_knowledge(persona, bases, text)
        try:
            tool_ctx = ToolContext(event, is_admin, disabled, knowledge=bases)
            toolbox = ToolBox(self.tool_sources, tool_ctx, persona.tools)
            schemas = toolbox.schemas()
            messages, new = await self.fit(live, persona, text, tools=schemas)
            if self.plugins is not None:
                req = await self._hooks(
                    "before_llm",
                    {"system_prompt": persona.system_prompt, "messages": messages},
                    event,
                    is_admin,
                    disabled,
                )
                messages = list(req.get("messages") or messages)
                if req.get("system_prompt") != persona.system_prompt and messages:
                    messages[0] = {"role": "system", "content": str(req["system_prompt"])}
            result = await run_agent(
                self.chain,
                messages,
                toolbox if toolbox else None,
                on_chunk,
                max_steps=self.cfg.agent.max_steps,
                tool_timeout_s=self.cfg.agent.tool_timeout_s,
                max_result_chars=self.cfg.agent.max_tool_result_chars,
                fits=self._fits(live, schemas),
                prefer=live.settings.get("provider"),
                model=live.settings.get("model"),
                context=context,
            )
        except TooLong as exc:
            return self._refuse(
                live, event, f"Your message is too long for the model ({exc}).", "too_long"
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
        answer = result.text
        if self.plugins is not None:
            out = await self._hooks("after_llm", {"text": answer}, event, is_admin, disabled)
            answer = str(out.get("text", answer))
        last = result.last
        new += [
            NewMessage("user", text, _user_extra(event)),
            NewMessage(
                "assistant",
                answer,
                {
                    "provider": last.provider_id,
                    "model": last.model,
                    "prompt_tokens": result.prompt_tokens,
                    "completion_tokens": result.completion_tokens,
                    "steps": result.steps,
                    "tools": [t.name for t in result.tools],
                },
            ),
        ]
        return answer, new, tool_ctx.attachments


def _tools_as_text(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The tools' schemas as one pseudo-message, for counting what the model reads."""
    return [{"role": "system", "content": json.dumps(tools)}] if tools else []


def _user_extra(event: Event) -> dict[str, Any]:
    """What is kept with the user's message: who sent it and, for a voice message, that
    its text is a transcript (and how long the audio was)."""
    extra: dict[str, Any] = {"sender": event.sender.id}
    voice = event.voice
    if voice is not None and voice.transcript:
        extra["voice"] = {"duration_s": voice.duration_s, "transcript": True}
    return extra
