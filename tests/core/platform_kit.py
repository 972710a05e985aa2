"""What the platform bridge tests share: an in-process bot (the real turn pipeline with
the fake LLM behind it) wired to a bridge's ``on_message`` / ``on_stream``.

    peer (fake platform) ◄══ real sockets ══► Bridge ── on_message / on_stream ──► bot
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from astr_ray.message import Event, Reply
from astr_ray.platforms.base import OnMessage, OnStream
from tests.core.test_plugins import Bot, make_bot
from tests.peers.openai_server import FakeLLM

__all__ = ["Turns", "bot", "until"]


async def until(predicate: Callable[[], Any], within: float = 10.0) -> None:
    """Wait until ``predicate()`` is truthy; fail the test after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


@pytest.fixture
async def bot(tmp_path: Path, fake_llm: FakeLLM) -> AsyncIterator[Bot]:
    b = await make_bot(tmp_path, fake_llm, [])
    yield b
    await b.plugins.close()
    await b.processor.chain.close()
    await b.store.close()


@dataclass
class Turns:
    """The real pipeline as a bridge sees it; ``seen`` holds every event handed over
    and ``metrics`` every happening the bridge counted."""

    bot: Bot
    seen: list[Event] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)

    @property
    def on_message(self) -> OnMessage:
        async def on_message(event: Event) -> Reply | None:
            self.seen.append(event)
            return await self.bot.manager.submit(event)

        return on_message

    @property
    def on_stream(self) -> OnStream:
        async def on_stream(event: Event) -> AsyncIterator[dict[str, Any]]:
            self.seen.append(event)
            chunks: asyncio.Queue[str | None] = asyncio.Queue()

            async def sink(text: str) -> None:
                await chunks.put(text)

            turn = asyncio.create_task(self.bot.manager.submit(event, on_chunk=sink))
            turn.add_done_callback(lambda _: chunks.put_nowait(None))
            while (chunk := await chunks.get()) is not None:
                yield {"chunk": chunk}
            yield {"reply": await turn}

        return on_stream
