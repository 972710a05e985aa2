from __future__ import annotations

import asyncio

import pytest

from astr_ray.errors import ProviderUnavailableError
from astr_ray.providers.permits import Grant, Outcomes, PermitCache, PermitLedger


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_ledger_caps_concurrency_across_holders() -> None:
    ledger = PermitLedger(max_concurrency=5)
    assert ledger.acquire("h0", 3).permits == 3
    assert ledger.acquire("h1", 3).permits == 2
    assert ledger.acquire("h1", 1).permits == 0
    assert ledger.acquire("h0", 1, release=2).permits == 1  # released two, took one
    ledger.forget("h1")  # h1 restarted: its permits are free again
    assert ledger.in_use == 2


def test_ledger_rate_limit_refills_over_time() -> None:
    clock = Clock()
    ledger = PermitLedger(max_concurrency=100, requests_per_minute=60, clock=clock)
    assert ledger.acquire("h", 100).permits == 60
    g = ledger.acquire("h", 1, release=60)
    assert g.permits == 0 and g.healthy and g.retry_after > 0
    clock.t += 2.0
    assert ledger.acquire("h", 5).permits == 2


def test_breaker_opens_then_probes_then_closes() -> None:
    clock = Clock()
    ledger = PermitLedger(max_concurrency=10, failure_threshold=3, cooldown_s=5, clock=clock)
    ledger.acquire("h", 3)
    g = ledger.acquire("h", 1, release=3, outcomes=Outcomes(failures=3, last_error="503"))
    assert not g.healthy and g.permits == 0
    assert ledger.snapshot()["last_error"] == "503"
    clock.t += 5.1
    probe = ledger.acquire("h", 4)
    assert probe.permits == 1, "half-open: a single probe"
    assert ledger.acquire("h", 1).permits == 0
    ledger.acquire("h", 0, release=1, outcomes=Outcomes(successes=1))
    assert ledger.acquire("h", 4).permits == 4 and ledger.healthy()


async def test_cache_batches_waiters_and_reuses_permits() -> None:
    ledger = PermitLedger(max_concurrency=3)
    calls: list[int] = []

    async def fetch(want: int, release: int, outcomes: Outcomes) -> Grant:
        calls.append(want)
        await asyncio.sleep(0.01)  # a Ray round trip
        return ledger.acquire("host", want, release, outcomes)

    cache = PermitCache("p", fetch, prefetch=0)
    done: list[int] = []

    async def turn(i: int) -> None:
        await cache.acquire()
        await asyncio.sleep(0.02)
        done.append(i)
        cache.release(ok=True)

    await asyncio.gather(*(turn(i) for i in range(9)))
    assert sorted(done) == list(range(9))
    assert len(calls) <= 2, f"waiters share ledger requests, got {calls}"
    assert ledger.in_use <= 3
    # Idle permits go back to the ledger with the outcomes.
    cache.idle_return_s = 0
    await cache.maintain()
    assert ledger.in_use == 0 and ledger.successes == 9


async def test_cache_fails_fast_when_provider_unhealthy() -> None:
    ledger = PermitLedger(max_concurrency=3, failure_threshold=1, cooldown_s=30)
    ledger.record(Outcomes(failures=1))

    async def fetch(want: int, release: int, outcomes: Outcomes) -> Grant:
        return ledger.acquire("host", want, release, outcomes)

    cache = PermitCache("p", fetch)
    with pytest.raises(ProviderUnavailableError, match="circuit open"):
        await cache.acquire()
    assert cache.known_unhealthy()
