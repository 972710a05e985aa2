"""The agent loop: the LLM answers, or calls tools and answers with their results.

    messages ─► LLM (with tool schemas) ─► tool calls? ──no──► answer
                  ▲                          │yes
                  └── tool results ◄── run them concurrently, each time-limited

At most ``max_steps`` LLM calls; the last one is made without tools, so a turn always
ends with text. A tool that fails, times out, gets arguments that do not fit or does
not exist becomes an ``error: ...`` tool result: the model sees it and can recover.
Text from every step streams to ``on_chunk``; the final text is all steps' text joined
by blank lines, exactly what was streamed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from astr_ray.providers.chain import ChainResult, ProviderChain
from astr_ray.providers.transport import ToolCall
from astr_ray.tools import ToolFailure

__all__ = ["AgentResult", "ToolBox", "ToolFailure", "ToolRun", "run_agent"]

log = logging.getLogger(__name__)

ChunkSink = Callable[[str], Awaitable[None]]

OUT_OF_STEPS = "I couldn't finish that within my step limit. Ask me to continue."
EMPTY_ANSWER = "(The model gave an empty answer. Please try rephrasing.)"
TOO_MUCH_CONTEXT = "(The tools returned more than fits the model's context window.)"


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[cut: {len(text) - limit} more characters]"


class ToolBox(Protocol):
    def schemas(self) -> list[dict[str, Any]]: ...

    async def run(self, name: str, arguments: dict[str, Any]) -> str:
        """The tool's result as text; raises ``ToolFailure`` with a message for the model."""
        ...


@dataclass
class ToolRun:
    name: str
    ok: bool
    seconds: float


@dataclass
class AgentResult:
    text: str
    last: ChainResult
    steps: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tools: list[ToolRun] = field(default_factory=list)


async def run_agent(
    chain: ProviderChain,
    messages: list[dict[str, Any]],
    toolbox: ToolBox | None,
    on_chunk: ChunkSink | None,
    *,
    max_steps: int,
    tool_timeout_s: float,
    max_result_chars: int = 8000,
    fits: Callable[[list[dict[str, Any]]], Awaitable[bool]] | None = None,
    prefer: str | None = None,
    model: str | None = None,
    context: dict[str, Any] | None = None,
) -> AgentResult:
    msgs = list(messages)
    schemas = toolbox.schemas() if toolbox is not None else []
    texts: list[str] = []
    runs: list[ToolRun] = []
    prompt = completion = 0
    separate = [False]

    async def sink(piece: str) -> None:
        assert on_chunk is not None
        if separate[0]:
            separate[0] = False
            await on_chunk("\n\n")
        await on_chunk(piece)

    previous: ChainResult | None = None
    for step in range(1, max_steps + 1):
        offer = schemas if step < max_steps else []
        if step > 1 and fits is not None and not await fits(msgs):
            # The tool results pushed the request past the model's window: shorten them;
            # if that is not enough, answer without another call.
            for m in msgs:
                if m.get("role") == "tool":
                    m["content"] = _cut(m["content"], 300)
            if not await fits(msgs):
                text = "\n\n".join([*texts, TOO_MUCH_CONTEXT])
                if on_chunk is not None:
                    await sink(TOO_MUCH_CONTEXT)
                assert previous is not None
                return AgentResult(text, previous, step - 1, prompt, completion, runs)
        result = await chain.complete(
            msgs,
            sink if on_chunk is not None else None,
            tools=offer or None,
            prefer=prefer,
            model=model,
            context=context,
        )
        previous = result
        prompt += result.prompt_tokens
        completion += result.completion_tokens
        if result.content:
            texts.append(result.content)
            separate[0] = True
        if not result.tool_calls or not offer:
            text = "\n\n".join(texts)
            if not text:
                # Tool calls with no tools offered, or an empty answer: never send nothing.
                text = OUT_OF_STEPS if result.tool_calls else EMPTY_ANSWER
                if on_chunk is not None:
                    await sink(text)
            return AgentResult(text, result, step, prompt, completion, runs)
        assert toolbox is not None
        msgs.append(
            {
                "role": "assistant",
                "content": result.content or None,
                "tool_calls": [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": c.arguments},
                    }
                    for c in result.tool_calls
                ],
            }
        )
        outputs = await asyncio.gather(
            *(_run_one(toolbox, c, tool_timeout_s, runs) for c in result.tool_calls)
        )
        outputs = [_cut(o, max_result_chars) for o in outputs]
        for call, output in zip(result.tool_calls, outputs, strict=True):
            msgs.append({"role": "tool", "tool_call_id": call.id, "content": output})
    raise AssertionError("unreachable: the last step offers no tools")


async def _run_one(toolbox: ToolBox, call: ToolCall, limit: float, runs: list[ToolRun]) -> str:
    started = time.perf_counter()
    ok = False
    try:
        try:
            args = json.loads(call.arguments or "{}")
        except ValueError as exc:
            raise ToolFailure(f"the arguments are not valid JSON ({exc})") from None
        if not isinstance(args, dict):
            raise ToolFailure("the arguments must be a JSON object")
        out = await asyncio.wait_for(toolbox.run(call.name, args), limit)
        ok = True
        return out
    except ToolFailure as exc:
        return f"error: {exc}"
    except TimeoutError:
        return f"error: the tool {call.name} timed out after {limit:g}s"
    finally:
        runs.append(ToolRun(call.name, ok, time.perf_counter() - started))
