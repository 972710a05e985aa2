"""Tool calling and per-call provider/model choice, through real transports (native and
litellm) against the fake OpenAI-compatible server."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from astr_ray.errors import ProviderError, ProviderUnavailableError
from astr_ray.providers import (
    ChainResult,
    ProviderChain,
    ToolCall,
)
from tests.core.test_chain import _slot
from tests.peers.openai_server import FakeLLM, Scripted

# litellm 1.106 builds its pydantic `Message` model lazily, and pydantic warns there
# about a `ReadOnly` TypedDict item (a UserWarning, once, harmless); with warnings as
# errors the build fails inside litellm, in whichever test first builds a Message.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Item 'summary' on TypedDict class 'ChatCompletionReasoningItem':UserWarning"
)

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "weather?"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {"name": "now", "description": "The time.", "parameters": {"type": "object"}},
    },
]
TWO_CALLS = [
    {"name": "get_weather", "arguments": {"city": "Paris"}},
    {"name": "now", "arguments": "{}"},
]


@pytest.fixture(params=["native", "litellm"])
async def kind(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    yield request.param


@pytest.fixture(params=[False, True], ids=["plain", "streamed"])
def streamed(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


async def _ask(
    chain: ProviderChain, messages: list[dict[str, Any]], streamed: bool, **kw: Any
) -> tuple[ChainResult, list[str]]:
    """One chain call, streamed or not; returns the result and the pieces streamed."""
    pieces: list[str] = []

    async def sink(piece: str) -> None:
        pieces.append(piece)

    result = await chain.complete(messages, sink if streamed else None, **kw)
    return result, pieces


async def test_tool_calls_come_back_parsed(kind: str, streamed: bool, fake_llm: FakeLLM) -> None:
    fake_llm.script.append(Scripted(tool_calls=TWO_CALLS))
    chain = ProviderChain([_slot(fake_llm, "p", kind)])
    try:
        result, pieces = await _ask(chain, MESSAGES, streamed, tools=TOOLS)
    finally:
        await chain.close()
    assert result.tool_calls == [
        ToolCall("call_1", "get_weather", '{"city": "Paris"}'),
        ToolCall("call_2", "now", "{}"),
    ]
    assert result.finish_reason == "tool_calls"
    assert result.content == "" and pieces == []
    assert fake_llm.requests[-1]["tools"] == TOOLS, "the tools went out on the wire"


async def test_text_streams_beside_tool_calls(kind: str, fake_llm: FakeLLM) -> None:
    fake_llm.script.append(
        Scripted(content="let me look that up", tool_calls=[TWO_CALLS[0]]),
    )
    chain = ProviderChain([_slot(fake_llm, "p", kind)])
    try:
        result, pieces = await _ask(chain, MESSAGES, True, tools=TOOLS)
    finally:
        await chain.close()
    assert len(pieces) > 1 and "".join(pieces) == result.content == "let me look that up"
    assert [(c.name, json.loads(c.arguments)) for c in result.tool_calls] == [
        ("get_weather", {"city": "Paris"})
    ]


async def test_arguments_stay_raw_text(kind: str, streamed: bool, fake_llm: FakeLLM) -> None:
    """Invalid JSON is the agent loop's to report back to the model, not a failure here."""
    fake_llm.script.append(Scripted(tool_calls=[{"name": "now", "arguments": '{"tz": "UTC",'}]))
    chain = ProviderChain([_slot(fake_llm, "p", kind)])
    try:
        result, _ = await _ask(chain, MESSAGES, streamed, tools=TOOLS)
    finally:
        await chain.close()
    assert [c.arguments for c in result.tool_calls] == ['{"tz": "UTC",']


async def test_two_step_exchange(kind: str, streamed: bool, fake_llm: FakeLLM) -> None:
    fake_llm.script.append(Scripted(tool_calls=TWO_CALLS))
    chain = ProviderChain([_slot(fake_llm, "p", kind)])
    try:
        first, _ = await _ask(chain, MESSAGES, streamed, tools=TOOLS)
        outputs = {"get_weather": "18C and sunny", "now": "12:00"}
        follow_up = [
            *MESSAGES,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": c.arguments},
                    }
                    for c in first.tool_calls
                ],
            },
            *(
                {"role": "tool", "tool_call_id": c.id, "content": outputs[c.name]}
                for c in first.tool_calls
            ),
        ]
        second, pieces = await _ask(chain, follow_up, streamed, tools=TOOLS)
    finally:
        await chain.close()
    assert second.content == "tool results: 18C and sunny | 12:00"
    assert second.tool_calls == [] and second.finish_reason == "stop"
    if streamed:
        assert "".join(pieces) == second.content
    sent = fake_llm.requests[-1]["messages"]
    assert [m.get("tool_call_id") for m in sent[-2:]] == ["call_1", "call_2"]
    assert sent[2]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city": "Paris"}',
    }


async def test_no_tools_key_without_tools(kind: str, fake_llm: FakeLLM) -> None:
    chain = ProviderChain([_slot(fake_llm, "p", kind)])
    try:
        result = await chain.complete(MESSAGES, tools=[])
    finally:
        await chain.close()
    assert result.content == "echo: weather? (turn 1)" and result.finish_reason == "stop"
    assert "tools" not in fake_llm.requests[-1]


async def test_nameless_tool_call_is_a_clear_error(
    kind: str, streamed: bool, fake_llm: FakeLLM
) -> None:
    slot = _slot(fake_llm, "p", kind, max_retries=0)
    fake_llm.script.append(Scripted(tool_calls=[{"arguments": "{}"}]))
    with pytest.raises(ProviderError, match="provider sent a tool call without a name"):
        if streamed:
            async for _ in slot.transport.stream(MESSAGES, tools=TOOLS):
                pass
        else:
            await slot.transport.complete(MESSAGES, tools=TOOLS)
    fake_llm.script.append(Scripted(tool_calls=[{"arguments": "{}"}]))
    chain = ProviderChain([slot])
    try:
        with pytest.raises(ProviderUnavailableError, match="tool call without a name"):
            await _ask(chain, MESSAGES, streamed, tools=TOOLS)
    finally:
        await chain.close()


async def test_streamed_usage_reaches_the_result(fake_llm: FakeLLM) -> None:
    fake_llm.script.append(Scripted(content="one two three", tool_calls=[TWO_CALLS[1]]))
    chain = ProviderChain([_slot(fake_llm, "p", "native")])
    try:
        result, _ = await _ask(chain, MESSAGES, True, tools=TOOLS)
    finally:
        await chain.close()
    assert result.completion_tokens == 3 and result.prompt_tokens > 0
    assert result.tool_calls[0].name == "now"


async def test_prefer_and_model_override_first_provider_only(
    kind: str, streamed: bool, fake_llm: FakeLLM, fake_fallback: FakeLLM
) -> None:
    async def sleep(d: float) -> None:
        return None

    chain = ProviderChain(
        [
            _slot(fake_llm, "a", kind, max_retries=0),
            _slot(fake_fallback, "b", kind, max_retries=0),
        ],
        sleep=sleep,
    )
    try:
        result, _ = await _ask(chain, MESSAGES, streamed, prefer="b", model="openai/big")
        assert (result.provider_id, result.model) == ("b", "openai/big")
        assert fake_fallback.requests[-1]["model"] == "big" and fake_llm.calls == 0

        # Without prefer the override goes to the first provider in the usual order.
        result, _ = await _ask(chain, MESSAGES, streamed, model="openai/big")
        assert (result.provider_id, result.model) == ("a", "openai/big")
        assert fake_llm.requests[-1]["model"] == "big"

        # The preferred provider fails: the fallback keeps its own model, and the
        # preferred one is not tried a second time on the way.
        fake_fallback.mode = "down"
        calls_before = fake_fallback.calls
        result, _ = await _ask(chain, MESSAGES, streamed, prefer="b", model="openai/big")
        assert (result.provider_id, result.model) == ("a", "openai/a")
        assert fake_llm.requests[-1]["model"] == "a"
        assert fake_fallback.calls == calls_before + 1
    finally:
        await chain.close()


async def test_unknown_prefer_uses_the_usual_order(
    fake_llm: FakeLLM, fake_fallback: FakeLLM, caplog: pytest.LogCaptureFixture
) -> None:
    chain = ProviderChain([_slot(fake_llm, "a", "native"), _slot(fake_fallback, "b", "native")])
    try:
        with caplog.at_level(logging.WARNING, logger="astr_ray.providers.chain"):
            result = await chain.complete(MESSAGES, prefer="nope", context={"session": "s1"})
    finally:
        await chain.close()
    assert result.provider_id == "a" and result.content == "echo: weather? (turn 1)"
    assert fake_fallback.calls == 0
    assert any(
        "'nope'" in r.getMessage() and "session=s1" in r.getMessage() for r in caplog.records
    )


async def test_scripted_delay_then_answer(fake_llm: FakeLLM) -> None:
    """The fake server's own contract: a 200 step without content or calls is the default."""
    fake_llm.script.extend([Scripted(delay=0.01), Scripted(content=None, tool_calls=[])])
    chain = ProviderChain([_slot(fake_llm, "p", "native")])
    try:
        first = await chain.complete(MESSAGES)
        second = await chain.complete(MESSAGES)
    finally:
        await chain.close()
    assert first.content == second.content == "echo: weather? (turn 1)"
