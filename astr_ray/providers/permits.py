"""Provider limits as leased permits, so the ProviderPool is not a hop per message.

The ``PermitLedger`` lives in the ProviderPool actor and owns one provider's limits:
concurrency (permits out at once), rate (a token bucket, permits per minute) and health
(a circuit breaker over the outcomes hosts report). A ``PermitCache`` lives in each
SessionHost: it asks the ledger for permits in batches, hands them to turns locally,
and gives idle ones back piggybacked on its next request::

    SessionHost                         ProviderPool
    PermitCache ──acquire(want, release, outcomes)──► PermitLedger
                ◄──Grant(permits, healthy, retry_after)──

Without a rate limit a released permit is reused locally (no pool call at all in the
steady state); with one, every permit is used once and released to the ledger, because
a reused permit would bypass the bucket.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from astr_ray.errors import ProviderUnavailableError

__all__ = ["Grant", "Outcomes", "PermitCache", "PermitLedger"]


@dataclass
class Outcomes:
    """What a holder saw since its last report: calls that worked and that failed."""

    successes: int = 0
    failures: int = 0
    last_error: str | None = None

    def __bool__(self) -> bool:
        return bool(self.successes or self.failures)


@dataclass
class Grant:
    permits: int
    healthy: bool = True
    retry_after: float = 0.0


@dataclass
class _Breaker:
    threshold: int
    cooldown_s: float
    consecutive_failures: int = 0
    open_until: float = 0.0
    probing: bool = False
    last_error: str | None = None


class PermitLedger:
    """One provider's limits and health. Pure logic; the pool actor holds one."""

    def __init__(
        self,
        max_concurrency: int,
        requests_per_minute: int | None = None,
        failure_threshold: int = 3,
        cooldown_s: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_concurrency = max_concurrency
        self.rpm = requests_per_minute
        self.clock = clock
        self.outstanding: dict[str, int] = {}
        self.breaker = _Breaker(failure_threshold, cooldown_s)
        self.tokens = float(requests_per_minute or 0)
        self._refilled = clock()
        self.granted_total = 0
        self.successes = 0
        self.failures = 0

    @property
    def in_use(self) -> int:
        return sum(self.outstanding.values())

    def _refill(self) -> None:
        if self.rpm is None:
            return
        now = self.clock()
        self.tokens = min(float(self.rpm), self.tokens + (now - self._refilled) * self.rpm / 60)
        self._refilled = now

    def healthy(self) -> bool:
        b = self.breaker
        return b.consecutive_failures < b.threshold or self.clock() >= b.open_until

    def record(self, outcomes: Outcomes) -> None:
        b = self.breaker
        self.successes += outcomes.successes
        self.failures += outcomes.failures
        if outcomes.successes:
            b.consecutive_failures = 0
            b.probing = False
        if outcomes.failures:
            b.consecutive_failures += outcomes.failures
            b.last_error = outcomes.last_error
            b.probing = False
            if b.consecutive_failures >= b.threshold:
                b.open_until = self.clock() + b.cooldown_s

    def release(self, holder: str, n: int) -> None:
        if n > 0:
            self.outstanding[holder] = max(0, self.outstanding.get(holder, 0) - n)

    def forget(self, holder: str) -> None:
        """A holder restarted: whatever it held is free again."""
        self.outstanding.pop(holder, None)

    def acquire(
        self, holder: str, want: int, release: int = 0, outcomes: Outcomes | None = None
    ) -> Grant:
        """Return released permits, record outcomes, and grant up to ``want`` new ones.

        While the breaker is open only one probe permit is granted at a time after the
        cool-down; an unhealthy grant has ``healthy=False`` and the time to wait.
        """
        self.release(holder, release)
        if outcomes:
            self.record(outcomes)
        if want <= 0:
            return Grant(0, self.healthy())
        b = self.breaker
        now = self.clock()
        if b.consecutive_failures >= b.threshold:
            if now < b.open_until or b.probing:
                return Grant(0, False, max(0.0, b.open_until - now) or b.cooldown_s)
            b.probing = True
            want = 1
        free = self.max_concurrency - self.in_use
        n = min(want, free)
        if self.rpm is not None:
            self._refill()
            n = min(n, int(self.tokens))
        if n <= 0:
            wait = 0.05 if free <= 0 else 60.0 / self.rpm if self.rpm else 0.05
            return Grant(0, True, wait)
        if self.rpm is not None:
            self.tokens -= n
        self.outstanding[holder] = self.outstanding.get(holder, 0) + n
        self.granted_total += n
        return Grant(n)

    def snapshot(self) -> dict[str, Any]:
        b = self.breaker
        return {
            "healthy": self.healthy(),
            "in_use": self.in_use,
            "max_concurrency": self.max_concurrency,
            "requests_per_minute": self.rpm,
            "granted_total": self.granted_total,
            "successes": self.successes,
            "failures": self.failures,
            "consecutive_failures": b.consecutive_failures,
            "last_error": b.last_error,
        }


AcquireFn = Callable[[int, int, Outcomes], Awaitable[Grant]]


@dataclass
class PermitCache:
    """A host's local share of one provider's permits.

    ``acquire()`` returns at once when a local permit is free; otherwise concurrent
    waiters are served by one batched request to the ledger. Raises
    ``ProviderUnavailableError`` when the ledger says the provider is unhealthy.
    """

    provider_id: str
    fetch: AcquireFn
    reuse: bool = True
    prefetch: int = 4
    idle_return_s: float = 1.0
    free: int = 0
    in_use: int = 0
    to_release: int = 0
    outcomes: Outcomes = field(default_factory=Outcomes)
    unhealthy_until: float = 0.0
    _waiters: deque[asyncio.Future[None]] = field(default_factory=deque)
    _fetcher: asyncio.Task[None] | None = None
    _last_used: float = 0.0

    def known_unhealthy(self) -> bool:
        return time.monotonic() < self.unhealthy_until

    async def acquire(self) -> None:
        if self.free > 0:
            self.free -= 1
            self.in_use += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        if self._fetcher is None or self._fetcher.done():
            self._fetcher = asyncio.create_task(self._fetch_loop())
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release()  # we were granted but nobody will use it
            raise
        self.in_use += 1

    def release(self, ok: bool | None = None, error: str | None = None) -> None:
        """Give a permit back; ``ok`` records the outcome of the call it covered."""
        self.in_use = max(0, self.in_use - 1)
        if ok is True:
            self.outcomes.successes += 1
        elif ok is False:
            self.outcomes.failures += 1
            self.outcomes.last_error = error
        self._last_used = time.monotonic()
        if not self.reuse:
            self.to_release += 1
            return
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.free += 1

    async def _fetch_loop(self) -> None:
        while self._waiters:
            want = len(self._waiters) + (self.prefetch if self.reuse else 0)
            release, outcomes = self.to_release, self.outcomes
            self.to_release, self.outcomes = 0, Outcomes()
            try:
                grant = await self.fetch(want, release, outcomes)
            except Exception as exc:  # the pool is restarting: the waiters decide to wait
                self.to_release += release
                self._merge(outcomes)
                self._fail_all(
                    ProviderUnavailableError(
                        f"provider pool unreachable: {type(exc).__name__}",
                        provider=self.provider_id,
                    )
                )
                return
            if not grant.healthy:
                self.unhealthy_until = time.monotonic() + max(grant.retry_after, 0.5)
                self.free += grant.permits
                self._fail_all(
                    ProviderUnavailableError(
                        "provider is unhealthy (circuit open)", provider=self.provider_id
                    )
                )
                return
            self.unhealthy_until = 0.0
            granted = grant.permits
            while granted and self._waiters:
                fut = self._waiters.popleft()
                if not fut.done():
                    fut.set_result(None)
                    granted -= 1
            self.free += granted
            if grant.permits == 0:
                await asyncio.sleep(grant.retry_after or 0.05)

    def _merge(self, outcomes: Outcomes) -> None:
        self.outcomes.successes += outcomes.successes
        self.outcomes.failures += outcomes.failures
        self.outcomes.last_error = outcomes.last_error or self.outcomes.last_error

    def _fail_all(self, exc: Exception) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(exc)

    async def maintain(self) -> None:
        """Return idle permits and report outcomes; the host calls this periodically."""
        if self.free and time.monotonic() - self._last_used > self.idle_return_s:
            self.to_release += self.free
            self.free = 0
        if (self.to_release or self.outcomes) and (self._fetcher is None or self._fetcher.done()):
            release, outcomes = self.to_release, self.outcomes
            self.to_release, self.outcomes = 0, Outcomes()
            try:
                grant = await self.fetch(0, release, outcomes)
            except Exception:
                self.to_release += release
                self._merge(outcomes)
                return
            if not grant.healthy:
                self.unhealthy_until = time.monotonic() + 1.0
