"""The fallback chain a session host calls: permits, retries with backoff, fallback.

For each provider in order: skip it while its breaker is known open; take a permit;
call; on a retryable failure wait (the provider's Retry-After, else exponential
backoff) and try again up to ``max_retries``; then fall back to the next provider.
When every provider failed, ``ProviderUnavailableError`` says why, per provider.

Streaming: text pieces go to ``on_chunk`` as they arrive. Once a piece has gone out,
a failure is not retried (the listener would see the answer twice); it ends the turn
with the error.

Per call, ``prefer`` moves one provider to the front of the order and ``model``
replaces the model of the first provider in that order only (a model name means
nothing to another provider, so fallbacks keep their own)::

    slots a, b, c   prefer="b", model="m"   ->   b (model m), a, c
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from astr_ray.config import ProviderConfig
from astr_ray.errors import ProviderError, ProviderRetryableError, ProviderUnavailableError
from astr_ray.metrics import Metrics
from astr_ray.providers.permits import PermitCache
from astr_ray.providers.transport import ChatResult, ToolCall, Transport

__all__ = ["ChainResult", "ProviderChain", "ProviderSlot"]

log = logging.getLogger(__name__)

ChunkSink = Callable[[str], Awaitable[None]]


@dataclass
class ProviderSlot:
    cfg: ProviderConfig
    transport: Transport
    permits: PermitCache


@dataclass
class ChainResult:
    """The answer and who gave it. ``model`` is the model actually asked (an override
    included); ``tool_calls`` are the calls the model wants run, in its order."""

    content: str
    provider_id: str
    model: str
    llm_seconds: float
    attempts: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None


class ProviderChain:
    def __init__(
        self,
        slots: list[ProviderSlot],
        *,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        metrics: Metrics | None = None,
    ) -> None:
        self.slots = slots
        self._sleep = sleep
        self.metrics = metrics

    async def close(self) -> None:
        for slot in self.slots:
            await slot.transport.close()

    async def complete(
        self,
        messages: list[dict[str, Any]],
        on_chunk: ChunkSink | None = None,
        *,
        tools: list[dict[str, Any]] | None = None,
        prefer: str | None = None,
        model: str | None = None,
        context: dict[str, Any] | None = None,
    ) -> ChainResult:
        """Answer ``messages`` with the first provider that works; see module docstring.

        ``tools`` (the OpenAI ``tools`` array) goes to every provider tried. ``prefer``
        is a provider id to try first; an unknown id is logged and ignored. ``model``
        applies to the first provider of the order only, even when that one is
        skipped (circuit open) or fails.
        """
        if not self.slots:
            raise ProviderUnavailableError(
                "no LLM provider is configured: add one under `providers` in the config",
                **(context or {}),
            )
        reasons: list[str] = []
        attempts = 0
        for position, slot in enumerate(self._order(prefer, context)):
            pid = slot.cfg.id
            slot_model = model if position == 0 and model else None
            if slot.permits.known_unhealthy():
                reasons.append(f"{pid}: circuit open")
                continue
            for attempt in range(slot.cfg.max_retries + 1):
                attempts += 1
                emitted = [False]
                try:
                    await slot.permits.acquire()
                except ProviderUnavailableError as exc:
                    reasons.append(f"{pid}: {exc.message}")
                    break
                started = time.perf_counter()
                try:
                    result = await self._call(slot, messages, on_chunk, emitted, tools, slot_model)
                except ProviderRetryableError as exc:
                    slot.permits.release(ok=False, error=exc.message)
                    self._count_error(pid)
                    log.warning(
                        "LLM call failed (attempt %d) provider=%s: %s %s",
                        attempt + 1,
                        pid,
                        exc.message,
                        _ctx(context),
                    )
                    if emitted[0]:
                        raise ProviderUnavailableError(
                            f"{pid} failed mid-answer: {exc.message}", **(context or {})
                        ) from None
                    if attempt < slot.cfg.max_retries:
                        await self._sleep(self._delay(slot.cfg, attempt, exc.retry_after))
                        continue
                    reasons.append(f"{pid}: {exc.message}")
                    break
                except ProviderError as exc:
                    slot.permits.release(ok=False, error=exc.message)
                    self._count_error(pid)
                    log.warning(
                        "LLM call failed provider=%s: %s %s", pid, exc.message, _ctx(context)
                    )
                    if emitted[0]:
                        raise ProviderUnavailableError(
                            f"{pid} failed mid-answer: {exc.message}", **(context or {})
                        ) from None
                    reasons.append(f"{pid}: {exc.message}")
                    break
                except BaseException:
                    slot.permits.release(ok=None)
                    raise
                slot.permits.release(ok=True)
                if self.metrics is not None:
                    self.metrics.llm_seconds.labels(pid).observe(time.perf_counter() - started)
                    self.metrics.llm_tokens.labels(pid, "prompt").inc(result.prompt_tokens)
                    self.metrics.llm_tokens.labels(pid, "completion").inc(result.completion_tokens)
                return ChainResult(
                    result.content,
                    pid,
                    slot_model or slot.cfg.model,
                    time.perf_counter() - started,
                    attempts,
                    result.prompt_tokens,
                    result.completion_tokens,
                    result.tool_calls,
                    result.finish_reason,
                )
        raise ProviderUnavailableError(
            "; ".join(reasons) or "no provider answered", **(context or {})
        )

    def _order(self, prefer: str | None, context: dict[str, Any] | None) -> list[ProviderSlot]:
        """The slots in fallback order, the preferred one (when known) moved first."""
        if prefer is None:
            return self.slots
        first = [s for s in self.slots if s.cfg.id == prefer]
        if not first:
            log.warning(
                "preferred provider %r is not configured, using the usual order %s",
                prefer,
                _ctx(context),
            )
            return self.slots
        return first + [s for s in self.slots if s.cfg.id != prefer]

    def _count_error(self, provider_id: str) -> None:
        if self.metrics is not None:
            self.metrics.llm_errors.labels(provider_id).inc()

    @staticmethod
    def _delay(cfg: ProviderConfig, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, cfg.max_backoff_s)
        base = cfg.backoff_s * (2**attempt)
        return min(cfg.max_backoff_s, base * (0.75 + random.random() / 2))

    @staticmethod
    async def _call(
        slot: ProviderSlot,
        messages: list[dict[str, Any]],
        on_chunk: ChunkSink | None,
        emitted: list[bool],
        tools: list[dict[str, Any]] | None,
        model: str | None,
    ) -> ChatResult:
        if on_chunk is None:
            return await slot.transport.complete(messages, tools=tools, model=model)
        parts: list[str] = []
        final = ChatResult("")
        async for item in slot.transport.stream(messages, tools=tools, model=model):
            if isinstance(item, ChatResult):
                final = item
                continue
            parts.append(item)
            emitted[0] = True
            await on_chunk(item)
        final.content = "".join(parts)
        return final


def _ctx(context: dict[str, Any] | None) -> str:
    return " ".join(f"{k}={v}" for k, v in (context or {}).items())
