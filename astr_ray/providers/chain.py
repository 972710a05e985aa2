"""The fallback chain a session host calls: permits, retries with backoff, fallback.

For each provider in order: skip it while its breaker is known open; take a permit;
call; on a retryable failure wait (the provider's Retry-After, else exponential
backoff) and try again up to ``max_retries``; then fall back to the next provider.
When every provider failed, ``ProviderUnavailableError`` says why, per provider.

Streaming: text pieces go to ``on_chunk`` as they arrive. Once a piece has gone out,
a failure is not retried (the listener would see the answer twice); it ends the turn
with the error.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from astr_ray.config import ProviderConfig
from astr_ray.errors import ProviderError, ProviderRetryableError, ProviderUnavailableError
from astr_ray.metrics import Metrics
from astr_ray.providers.permits import PermitCache
from astr_ray.providers.transport import ChatResult, Transport

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
    content: str
    provider_id: str
    model: str
    llm_seconds: float
    attempts: int
    prompt_tokens: int = 0
    completion_tokens: int = 0


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
        context: dict[str, Any] | None = None,
    ) -> ChainResult:
        """Answer ``messages`` with the first provider that works; see module docstring."""
        if not self.slots:
            raise ProviderUnavailableError(
                "no LLM provider is configured: add one under `providers` in the config",
                **(context or {}),
            )
        reasons: list[str] = []
        attempts = 0
        for slot in self.slots:
            pid = slot.cfg.id
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
                    result = await self._call(slot, messages, on_chunk, emitted)
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
                    slot.cfg.model,
                    time.perf_counter() - started,
                    attempts,
                    result.prompt_tokens,
                    result.completion_tokens,
                )
        raise ProviderUnavailableError(
            "; ".join(reasons) or "no provider answered", **(context or {})
        )

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
    ) -> ChatResult:
        if on_chunk is None:
            return await slot.transport.complete(messages)
        parts: list[str] = []
        final = ChatResult("")
        async for item in slot.transport.stream(messages):
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
