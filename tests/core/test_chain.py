"""ProviderChain with real transports (native and litellm) against the fake LLM."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from astr_ray.config import ProviderConfig
from astr_ray.errors import ProviderUnavailableError
from astr_ray.providers import PermitCache, PermitLedger, ProviderChain, ProviderSlot
from astr_ray.providers.permits import Grant, Outcomes
from astr_ray.providers.transport import (
    LiteLLMTransport,
    NativeOpenAITransport,
    make_transport,
    parse_retry_after,
)
from tests.peers.openai_server import FakeLLM, Scripted

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "ping"}]


def _slot(fake: FakeLLM, pid: str, transport: str, **kw: Any) -> ProviderSlot:
    cfg = ProviderConfig(
        id=pid,
        model=f"openai/{pid}",
        api_base=fake.base_url,
        api_key="sk-test",
        transport=transport,
        backoff_s=0.01,
        **kw,
    )
    ledger = PermitLedger(
        cfg.max_concurrency, cfg.requests_per_minute, cfg.failure_threshold, cfg.cooldown_s
    )

    async def fetch(want: int, release: int, outcomes: Outcomes) -> Grant:
        return ledger.acquire("test", want, release, outcomes)

    return ProviderSlot(cfg, make_transport(cfg), PermitCache(pid, fetch))


@pytest.fixture(params=["native", "litellm"])
async def chain_kind(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    yield request.param


def test_auto_transport_choice() -> None:
    native = ProviderConfig(id="a", model="openai/x", api_base="http://h/v1")
    assert isinstance(make_transport(native), NativeOpenAITransport)
    other = ProviderConfig(id="b", model="anthropic/claude-x")
    assert isinstance(make_transport(other), LiteLLMTransport)
    assert parse_retry_after("2") == 2.0 and parse_retry_after("soon") is None


async def test_answers_and_streams(chain_kind: str, fake_llm: FakeLLM) -> None:
    chain = ProviderChain([_slot(fake_llm, "p", chain_kind)])
    try:
        result = await chain.complete(MESSAGES)
        assert result.content == "echo: ping (turn 1)" and result.provider_id == "p"
        pieces: list[str] = []

        async def sink(piece: str) -> None:
            pieces.append(piece)

        streamed = await chain.complete(MESSAGES, sink)
        assert "".join(pieces) == streamed.content == "echo: ping (turn 1)"
        assert len(pieces) > 1
        sent = fake_llm.requests[-1]
        assert sent["model"] == "p" and sent["messages"] == MESSAGES
    finally:
        await chain.close()


async def test_retries_429_honouring_retry_after(chain_kind: str, fake_llm: FakeLLM) -> None:
    slept: list[float] = []

    async def sleep(d: float) -> None:
        slept.append(d)

    fake_llm.script.extend([Scripted(429, {"Retry-After": "1.25"}), Scripted(503)])
    chain = ProviderChain([_slot(fake_llm, "p", chain_kind, max_retries=2)], sleep=sleep)
    try:
        result = await chain.complete(MESSAGES)
    finally:
        await chain.close()
    assert result.content == "echo: ping (turn 1)" and result.attempts == 3
    assert slept[0] == 1.25, "the first wait is the server's Retry-After"
    assert len(slept) == 2


async def test_falls_back_then_gives_up_with_reasons(
    chain_kind: str, fake_llm: FakeLLM, fake_fallback: FakeLLM
) -> None:
    async def sleep(d: float) -> None:
        return None

    fake_llm.mode = "down"
    chain = ProviderChain(
        [
            _slot(fake_llm, "a", chain_kind, max_retries=1),
            _slot(fake_fallback, "b", chain_kind, max_retries=0),
        ],
        sleep=sleep,
    )
    try:
        result = await chain.complete(MESSAGES)
        assert result.provider_id == "b" and fake_llm.calls == 2
        fake_fallback.mode = "down"
        with pytest.raises(ProviderUnavailableError) as err:
            await chain.complete(MESSAGES, context={"session": "s1"})
    finally:
        await chain.close()
    text = str(err.value)
    assert "a:" in text and "b:" in text and "503" in text and "session=s1" in text


async def test_non_retryable_error_goes_straight_to_fallback(
    fake_llm: FakeLLM, fake_fallback: FakeLLM
) -> None:
    fake_llm.script.append(Scripted(400, body={"error": {"message": "bad request"}}))
    chain = ProviderChain(
        [_slot(fake_llm, "a", "native", max_retries=3), _slot(fake_fallback, "b", "native")]
    )
    try:
        result = await chain.complete(MESSAGES)
    finally:
        await chain.close()
    assert result.provider_id == "b" and fake_llm.calls == 1


async def test_no_provider_configured_is_a_clear_error() -> None:
    with pytest.raises(ProviderUnavailableError, match="no LLM provider is configured"):
        await ProviderChain([]).complete(MESSAGES)


@pytest.mark.parametrize("garbage", ["garbage", "not-json"])
async def test_garbage_from_a_model_falls_back_then_fails_clearly(
    chain_kind: str, garbage: str, fake_llm: FakeLLM, fake_fallback: FakeLLM
) -> None:
    fake_llm.mode = garbage
    chain = ProviderChain(
        [_slot(fake_llm, "a", chain_kind, max_retries=0), _slot(fake_fallback, "b", chain_kind)]
    )
    try:
        assert (await chain.complete(MESSAGES)).provider_id == "b"
        fake_fallback.mode = garbage
        with pytest.raises(ProviderUnavailableError) as err:
            await chain.complete(MESSAGES)
    finally:
        await chain.close()
    assert "a:" in str(err.value) and "b:" in str(err.value)
