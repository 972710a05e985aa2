"""The agent loop, personas, context compression, access control and the conversation
commands, in-process on a real SQLite store against the fake LLM."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from astr_ray.message import ChatType, Event, Sender, Text
from tests.core.test_plugins import ADMIN, Bot, chat, make_bot
from tests.peers.openai_server import FakeLLM, Scripted

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


@pytest.fixture
async def bot(tmp_path: Path, fake_llm: FakeLLM) -> AsyncIterator[Bot]:
    b = await make_bot(
        tmp_path,
        fake_llm,
        ["greeter", "raiser"],
        personas=[
            {
                "name": "pirate",
                "system_prompt": "You are a pirate.",
                "begin_dialogs": [["Who are you?", "Arr, a pirate bot!"]],
                "tools": ["add_numbers"],
            }
        ],
    )
    yield b
    await b.plugins.close()
    await b.processor.chain.close()
    await b.store.close()


async def close(b: Bot) -> None:
    await b.plugins.close()
    await b.processor.chain.close()
    await b.store.close()


def tool_messages(request: dict[str, Any]) -> list[str]:
    return [m["content"] for m in request["messages"] if m.get("role") == "tool"]


# -- the agent loop ---------------------------------------------------------------------------


async def test_a_multi_step_tool_conversation(bot: Bot, fake_llm: FakeLLM) -> None:
    fake_llm.script.append(
        Scripted(tool_calls=[{"name": "add_numbers", "arguments": {"a": 2, "b": 3}}])
    )
    fake_llm.script.append(
        Scripted(tool_calls=[{"name": "add_numbers", "arguments": {"a": 5, "b": 10}}])
    )
    reply = await bot.say(chat(), "what is 2+3+10?")
    assert reply.text == "tool results: 15", "the answer after the second step"
    assert fake_llm.calls == 3
    first = fake_llm.requests[0]
    names = [t["function"]["name"] for t in first["tools"]]
    assert "add_numbers" in names and "marked_wait" in names
    assert tool_messages(fake_llm.requests[2]) == ["5", "15"], "both results went back"


async def test_tool_calls_of_one_step_run_concurrently(bot: Bot, fake_llm: FakeLLM) -> None:
    fake_llm.script.append(
        Scripted(
            tool_calls=[
                {"name": "marked_wait", "arguments": {"label": "a", "seconds": 0.4}},
                {"name": "marked_wait", "arguments": {"label": "b", "seconds": 0.4}},
            ]
        )
    )
    reply = await bot.say(chat(), "wait twice")
    assert reply.text == "tool results: waited a | waited b"
    a = await bot.store.kv_get("greeter", "wait:a")
    b = await bot.store.kv_get("greeter", "wait:b")
    assert a[0] < b[1] and b[0] < a[1], f"the two waits did not overlap: {a} {b}"


async def test_tool_errors_go_back_to_the_model(bot: Bot, fake_llm: FakeLLM) -> None:
    fake_llm.script.append(
        Scripted(
            tool_calls=[
                {"name": "broken_tool", "arguments": {}},
                {"name": "slow_tool", "arguments": {}},
                {"name": "add_numbers", "arguments": {"a": "two", "b": 1}},
                {"name": "add_numbers", "arguments": "{not json"},
                {"name": "no_such_tool", "arguments": {}},
                {"name": "add_numbers", "arguments": {"a": 1, "b": 2, "c": 3}},
            ]
        )
    )
    reply = await bot.say(chat(), "try everything")
    assert reply.error is None
    results = tool_messages(fake_llm.requests[1])
    assert "RuntimeError: the tool broke" in results[0]
    assert "took longer than 1s" in results[1] or "timed out" in results[1]
    assert results[2].startswith("error: invalid arguments: a:")
    assert "not valid JSON" in results[3]
    assert "no tool named 'no_such_tool'" in results[4]
    assert "c: Extra inputs are not permitted" in results[5]
    assert all(r.startswith("error: ") for r in results)


async def test_max_steps_ends_with_an_answer_without_tools(
    tmp_path: Path, fake_llm: FakeLLM
) -> None:
    b = await make_bot(tmp_path, fake_llm, ["greeter"], agent={"max_steps": 2})
    try:
        for _ in range(5):
            fake_llm.script.append(
                Scripted(tool_calls=[{"name": "add_numbers", "arguments": {"a": 1, "b": 1}}])
            )
        reply = await b.say(chat(), "loop forever")
        assert fake_llm.calls == 2
        assert "tools" not in fake_llm.requests[1], "the last step offers no tools"
        assert reply.error is None and "step limit" in reply.text
    finally:
        await close(b)


async def test_the_final_answer_streams(bot: Bot, fake_llm: FakeLLM) -> None:
    fake_llm.script.append(
        Scripted(tool_calls=[{"name": "add_numbers", "arguments": {"a": 1, "b": 2}}])
    )
    pieces: list[str] = []

    async def sink(piece: str) -> None:
        pieces.append(piece)

    event = Event(
        platform_id="webchat",
        chat_type=ChatType.PRIVATE,
        chat_id=chat(),
        sender=Sender(id="s"),
        message_id=uuid.uuid4().hex,
        components=(Text(text="add"),),
    )
    reply = await bot.manager.submit(event, sink)
    assert reply.text == "tool results: 3"
    assert len(pieces) > 1 and "".join(pieces) == reply.text


# -- personas ---------------------------------------------------------------------------------


async def test_personas_are_chosen_per_conversation(bot: Bot, fake_llm: FakeLLM) -> None:
    c = chat()
    assert "Available: pirate" in (await bot.say(c, "/persona")).text
    assert "now uses persona pirate" in (await bot.say(c, "/persona pirate")).text
    await bot.say(c, "hello")
    req = fake_llm.requests[-1]
    assert req["messages"][0] == {"role": "system", "content": "You are a pirate."}
    assert req["messages"][1:3] == [
        {"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "Arr, a pirate bot!"},
    ]
    assert [t["function"]["name"] for t in req["tools"]] == ["add_numbers"], "allowed tools only"
    await bot.say(c, "/new")
    await bot.say(c, "hello again")
    assert fake_llm.requests[-1]["messages"][0]["content"] == "You are a helpful assistant."
    other = chat()
    await bot.say(other, "hi")
    assert fake_llm.requests[-1]["messages"][0]["content"] == "You are a helpful assistant."


async def test_stored_personas_and_the_default(tmp_path: Path, fake_llm: FakeLLM) -> None:
    b = await make_bot(
        tmp_path,
        fake_llm,
        [],
        personas=[{"name": "terse", "system_prompt": "Be terse."}],
        agent={"default_persona": "terse"},
    )
    try:
        c = chat()
        await b.say(c, "hi")
        assert fake_llm.requests[-1]["messages"][0]["content"] == "Be terse."
        assert "admins only" in (await b.say(c, "/persona new poet Speak in verse.")).text
        assert (
            "Saved persona poet"
            in (await b.say(c, "/persona new poet Speak in verse.", sender=ADMIN)).text
        )
        await b.say(c, "/persona poet")
        await b.say(c, "hi")
        assert fake_llm.requests[-1]["messages"][0]["content"] == "Speak in verse."
        assert "No persona 'ghost'" in (await b.say(c, "/persona ghost")).text
    finally:
        await close(b)


# -- context management -----------------------------------------------------------------------


async def test_compression_keeps_requests_inside_the_window(
    tmp_path: Path, fake_llm: FakeLLM
) -> None:
    import litellm

    window = 400
    b = await make_bot(
        tmp_path,
        fake_llm,
        [],
        chain_kw={"context_window": window},
        agent={"reply_reserve_tokens": 50, "keep_recent_turns": 1, "compress_at": 0.8},
    )
    try:
        c = chat()
        for i in range(12):
            reply = await b.say(c, f"message number {i}: " + "lorem ipsum dolor sit amet " * 4)
            assert reply.error is None, reply
        chats = [
            r
            for r in fake_llm.requests
            if "Summarize the conversation" not in str(r["messages"][0])
        ]
        summaries = [
            r for r in fake_llm.requests if "Summarize the conversation" in str(r["messages"][0])
        ]
        assert summaries, "a long conversation was summarized"
        limit = min(int(window * 0.8), window - 50)
        for r in chats:
            assert litellm.token_counter(model="openai/primary", messages=r["messages"]) <= limit
        last = chats[-1]["messages"]
        assert any("Summary of the earlier conversation" in str(m["content"]) for m in last)
        assert "message number 11" in last[-1]["content"]
        state = await b.store.ensure_session(f"webchat:private:{c}")
        rows = await b.store.load_history(state.conversation_id)
        assert any((m.extra or {}).get("summary") for m in rows), "the summary is stored"
    finally:
        await close(b)


async def test_a_message_too_long_for_the_model_is_refused(
    tmp_path: Path, fake_llm: FakeLLM
) -> None:
    b = await make_bot(
        tmp_path, fake_llm, [], chain_kw={"context_window": 300}, agent={"reply_reserve_tokens": 50}
    )
    try:
        reply = await b.say(chat(), "word " * 2000)
        assert reply.error == "too_long" and "too long" in reply.text
        assert fake_llm.calls == 0, "never sent a request the model would reject"
    finally:
        await close(b)


async def test_compact_command(bot: Bot, fake_llm: FakeLLM) -> None:
    c = chat()
    assert (await bot.say(c, "/compact")).text == "Nothing to compact yet."
    for text in ("one", "two", "three"):
        await bot.say(c, text)
    reply = await bot.say(c, "/compact")
    assert reply.text.startswith("Compacted.")
    await bot.say(c, "four")
    msgs = fake_llm.requests[-1]["messages"]
    assert "Summary of the earlier conversation" in msgs[1]["content"]
    assert [m["content"] for m in msgs if m["role"] == "user"] == ["four"]


# -- access and pacing ------------------------------------------------------------------------


async def test_allow_list(tmp_path: Path, fake_llm: FakeLLM) -> None:
    b = await make_bot(tmp_path, fake_llm, [], access={"allow": ["webchat:private:vip-*"]})
    try:
        refused = await b.say(chat(), "hello")
        assert refused.error == "not_allowed" and fake_llm.calls == 0
        assert (await b.say("vip-1", "hello")).error is None
        guest = chat()
        assert (
            "Added webchat:private:" + guest
            in (await b.say(ADMIN, f"/wl webchat:private:{guest}", sender=ADMIN)).text
        )
        b.processor.globals.ttl = 0
        assert (await b.say(guest, "hello")).error is None
        await b.say(ADMIN, f"/dwl webchat:private:{guest}", sender=ADMIN)
        assert (await b.say(guest, "hello")).error == "not_allowed"
    finally:
        await close(b)


async def test_rate_limit_replies_slow_down(tmp_path: Path, fake_llm: FakeLLM) -> None:
    b = await make_bot(tmp_path, fake_llm, [], access={"rate_limit": {"per_minute": 6, "burst": 2}})
    try:
        c = chat()
        assert (await b.say(c, "1")).error is None
        assert (await b.say(c, "2")).error is None
        third = await b.say(c, "3")
        assert third.error == "rate_limited" and "Slow down" in third.text
        assert (await b.say(chat(), "other")).error is None, "per session"
        assert (await b.say(c, "again", sender=ADMIN)).error is None, "admins are not limited"
    finally:
        await close(b)


async def test_rate_limit_can_queue(tmp_path: Path, fake_llm: FakeLLM) -> None:
    b = await make_bot(
        tmp_path,
        fake_llm,
        [],
        access={"rate_limit": {"per_minute": 120, "burst": 1, "mode": "queue"}},
    )
    try:
        c = chat()
        replies = await asyncio.gather(*(b.say(c, f"m{i}") for i in range(3)))
        assert [r.error for r in replies] == [None, None, None], "queued, not refused"
    finally:
        await close(b)


async def test_keyword_filter_on_input_and_output(tmp_path: Path, fake_llm: FakeLLM) -> None:
    b = await make_bot(tmp_path, fake_llm, [], access={"blocked_words": ["badword"]})
    try:
        refused = await b.say(chat(), "say BadWord please")
        assert refused.error == "blocked" and fake_llm.calls == 0
        fake_llm.script.append(Scripted(content="here is a badword for you"))
        assert (await b.say(chat(), "hello")).text == "here is a ******* for you"
    finally:
        await close(b)


async def test_bot_and_llm_switches(bot: Bot, fake_llm: FakeLLM) -> None:
    c = chat()
    assert "admins only" in (await bot.say(c, "/llm off")).text
    await bot.say(c, "/llm off", sender=ADMIN)
    muted = await bot.say(c, "hello")
    assert muted.error == "llm_off" and muted.text == "" and fake_llm.calls == 0
    assert (await bot.say(c, "/greet Al")).text == "Hello, Al!", "commands still work"
    await bot.say(c, "/llm on", sender=ADMIN)
    await bot.say(c, "/bot off", sender=ADMIN)
    assert (await bot.say(c, "/greet Al")).error == "bot_off"
    await bot.say(c, "/bot on", sender=ADMIN)
    assert (await bot.say(c, "hello")).text.startswith("echo: hello")


# -- conversation commands --------------------------------------------------------------------


async def test_conversations_ls_switch_rename_del(bot: Bot, fake_llm: FakeLLM) -> None:
    c = chat()
    await bot.say(c, "first topic")
    await bot.say(c, "/rename Cooking")
    await bot.say(c, "/new Travel")
    await bot.say(c, "where to go")
    listing = (await bot.say(c, "/ls")).text
    assert "*1. Travel (2 messages)" in listing, "newest first (stable numbers), current marked"
    assert " 2. Cooking (2 messages)" in listing
    assert "Switched" in (await bot.say(c, "/switch 2")).text
    await bot.say(c, "more cooking")
    assert fake_llm.user_turns()[-1] == ["first topic", "more cooking"]
    assert "Usage: /switch" in (await bot.say(c, "/switch 9")).text
    assert "Deleted" in (await bot.say(c, "/del 1")).text
    listing = (await bot.say(c, "/ls")).text
    assert "Travel" not in listing and "*1. Cooking (4 messages)" in listing


async def test_provider_model_and_sid(bot: Bot, fake_llm: FakeLLM) -> None:
    c = chat()
    assert "primary (current)" in (await bot.say(c, "/provider")).text
    assert "No provider 'nope'" in (await bot.say(c, "/provider nope")).text
    assert "now uses model tiny-1" in (await bot.say(c, "/model tiny-1")).text
    await bot.say(c, "hi")
    assert fake_llm.requests[-1]["model"] == "tiny-1"
    await bot.say(c, "/model reset")
    await bot.say(c, "hi")
    assert fake_llm.requests[-1]["model"] == "primary"
    sid = (await bot.say(c, "/sid")).text
    assert f"webchat:private:{c}" in sid and f"webchat:{c}" in sid


async def test_admin_list_commands(bot: Bot) -> None:
    user = chat()
    assert "admins only" in (await bot.say(user, "/op webchat:" + user)).text
    await bot.say(ADMIN, f"/op webchat:{user}", sender=ADMIN)
    assert (await bot.say(user, "/secret")).text == "the cake is a lie"
    await bot.say(ADMIN, f"/deop webchat:{user}", sender=ADMIN)
    bot.processor.globals.ttl = 0
    assert "admins only" in (await bot.say(user, "/secret")).text
    assert "stay" in (await bot.say(ADMIN, f"/deop webchat:{ADMIN}", sender=ADMIN)).text


async def test_a_failing_hook_does_not_break_the_turn(bot: Bot) -> None:
    reply = await bot.say(chat(), "hook-crash")
    assert reply.error is None and reply.text.startswith("echo: hook-crash")


async def test_long_tool_results_are_cut_to_fit_the_window(
    tmp_path: Path, fake_llm: FakeLLM
) -> None:
    import litellm

    b = await make_bot(
        tmp_path,
        fake_llm,
        ["greeter"],
        chain_kw={"context_window": 1500},
        agent={"reply_reserve_tokens": 100, "max_tool_result_chars": 6000},
    )
    try:
        fake_llm.script.append(
            Scripted(tool_calls=[{"name": "big_output", "arguments": {"size": 50_000}}])
        )
        reply = await b.say(chat(), "fetch the big thing")
        assert reply.error is None
        (tool_result,) = tool_messages(fake_llm.requests[-1])
        assert "[cut:" in tool_result and len(tool_result) < 400
        limit = min(int(1500 * 0.8), 1500 - 100)
        for r in fake_llm.requests:
            # What the model reads: the messages and the tools' schemas.
            schemas = (
                [{"role": "system", "content": json.dumps(r["tools"])}] if "tools" in r else []
            )
            read = litellm.token_counter(model="openai/primary", messages=r["messages"] + schemas)
            assert read <= limit
    finally:
        await close(b)


async def test_tool_results_are_capped_in_size(bot: Bot, fake_llm: FakeLLM) -> None:
    fake_llm.script.append(
        Scripted(tool_calls=[{"name": "big_output", "arguments": {"size": 50_000}}])
    )
    await bot.say(chat(), "fetch the big thing")
    (tool_result,) = tool_messages(fake_llm.requests[-1])
    assert len(tool_result) < 8100 and tool_result.endswith("[cut: 42000 more characters]")
