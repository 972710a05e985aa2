"""The example plugin (``examples/plugins/notes``) through the real loader and the turn
pipeline, as its users see it: an in-process bot on SQLite and the fake LLM (the bot of
``test_plugins.py``, with the example copied into its plugins folder)."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from astr_ray.config import parse_config
from astr_ray.store import Store
from tests.core.test_plugins import ADMIN, Bot, make_bot
from tests.peers.openai_server import FakeLLM, Scripted

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plugins" / "notes"
TIP = "To keep it: /note add <text>)"


async def notes_bot(tmp: Path, fake: FakeLLM, settings: dict[str, Any] | None = None) -> Bot:
    """A bot whose plugins folder holds a copy of the example, loaded by the real loader."""
    shutil.copytree(
        EXAMPLE, tmp / "plugins" / "notes", ignore=shutil.ignore_patterns("__pycache__")
    )
    overrides: dict[str, Any] = {}
    if settings is not None:
        overrides["plugins"] = {"settings": {"notes": settings}}
    return await make_bot(tmp, fake, [], **overrides)


async def close(b: Bot) -> None:
    await b.plugins.close()
    await b.processor.chain.close()
    await b.store.close()


@pytest.fixture
async def bot(tmp_path: Path, fake_llm: FakeLLM) -> AsyncIterator[Bot]:
    b = await notes_bot(tmp_path, fake_llm)
    yield b
    await close(b)


def chat() -> str:
    return "n-" + uuid.uuid4().hex[:8]


def key(chat_id: str, sender: str | None = None) -> str:
    return f"notes:webchat:private:{chat_id}:{sender or chat_id}"


async def text(b: Bot, chat_id: str, message: str, sender: str | None = None) -> str:
    reply = await b.say(chat_id, message, sender)
    assert reply.error is None, (message, reply)
    return str(reply.text)


# -- loading --------------------------------------------------------------------------------


async def test_the_example_loads_cleanly_and_runs_its_loaded_hook(bot: Bot) -> None:
    assert list(bot.plugins.handles) == ["notes"]
    assert not bot.plugins.failures and not bot.plugins.conflicts
    listing = await text(bot, chat(), "/plugin ls", sender=ADMIN)
    assert listing == "notes 1.0.0 [on]"
    assert await bot.store.kv_get("notes", "meta:schema") == 1, "the loaded hook ran"


async def test_the_loaded_hook_upgrades_notes_of_an_older_version(
    tmp_path: Path, fake_llm: FakeLLM
) -> None:
    c = chat()
    cfg = parse_config({"data_dir": str(tmp_path)})
    store = await Store.open(cfg.store_url)
    await store.migrate()
    await store.kv_set("notes", key(c), ["buy milk", "call mom"])  # format 0: bare strings
    await store.close()
    b = await notes_bot(tmp_path, fake_llm)
    try:
        assert await text(b, c, "/note ls") == "📝 1. buy milk\n📝 2. call mom"
        stored = await b.store.kv_get("notes", key(c))
        assert stored == [{"text": "buy milk", "saved": 0.0}, {"text": "call mom", "saved": 0.0}]
        assert await b.plugins.reload("notes") == ["notes"]  # runs the hook again: a no-op
        assert await b.store.kv_get("notes", key(c)) == stored
    finally:
        await close(b)


async def test_a_bad_setting_keeps_the_plugin_out_with_the_reason(
    tmp_path: Path, fake_llm: FakeLLM
) -> None:
    b = await notes_bot(tmp_path, fake_llm, {"max_notes": "many"})
    try:
        listing = await text(b, chat(), "/plugin ls", sender=ADMIN)
        assert listing.startswith("notes 1.0.0 [error]") and "max_notes" in listing
        assert "Unknown command /note" in await text(b, chat(), "/note ls")
    finally:
        await close(b)


# -- the commands ---------------------------------------------------------------------------


async def test_add_list_and_delete(bot: Bot) -> None:
    c = chat()
    assert await text(bot, c, "/note ls") == "You have no notes yet. Add one with /note add <text>."
    assert await text(bot, c, "/note add buy milk") == "Saved note #1."
    assert await text(bot, c, "/note add call mom tonight") == "Saved note #2."
    assert await text(bot, c, "/note ls") == "📝 1. buy milk\n📝 2. call mom tonight"
    assert await text(bot, c, "/note list") == "📝 1. buy milk\n📝 2. call mom tonight"
    assert await text(bot, c, "/note del 1") == "Deleted note 1: buy milk"
    assert await text(bot, c, "/note ls") == "📝 1. call mom tonight"
    assert await text(bot, c, "/note rm 1") == "Deleted note 1: call mom tonight"
    assert await text(bot, c, "/note del 1") == "There is no note 1: you have none. See /note ls."
    assert await bot.store.kv_get("notes", key(c)) == []


async def test_notes_belong_to_one_user_in_one_chat(bot: Bot) -> None:
    a, b = chat(), chat()
    await text(bot, a, "/note add a's note")
    await text(bot, b, "/note add b's note")
    await text(bot, a, "/note add from a guest", sender="guest")
    assert await text(bot, a, "/note ls") == "📝 1. a's note"
    assert await text(bot, b, "/note ls") == "📝 1. b's note"
    assert await text(bot, a, "/note ls", sender="guest") == "📝 1. from a guest"
    assert (await text(bot, b, "/note ls", sender="guest")).startswith("You have no")


async def test_wrong_arguments_get_the_usage(bot: Bot) -> None:
    c = chat()
    await text(bot, c, "/note add one")
    assert await text(bot, c, "/note add") == "missing <text>. Usage: /note add <text...>"
    assert (
        await text(bot, c, "/note del two")
        == "<n> must be a whole number, not 'two'. Usage: /note del <n:int>"
    )
    assert "too many arguments: '2'" in await text(bot, c, "/note del 1 2")
    assert await text(bot, c, "/note del 5") == "There is no note 5: you have 1. See /note ls."
    for unknown in ("/note", "/note frobnicate"):
        usage = await text(bot, c, unknown)
        assert usage.startswith("/note: your personal notes\nSub-commands:"), usage
        assert "/note add <text...>  save a note" in usage
        assert "/note del <n:int>  delete note n of /note ls" in usage
    assert await text(bot, c, "/note ls") == "📝 1. one", "nothing changed"


async def test_the_limits_come_from_the_config(tmp_path: Path, fake_llm: FakeLLM) -> None:
    b = await notes_bot(tmp_path, fake_llm, {"max_notes": 2, "max_length": 10, "prefix": "* "})
    try:
        c = chat()
        assert (
            await text(b, c, "/note add far too long a note")
            == "That note is 19 characters long; the limit is 10."
        )
        assert await text(b, c, "/note add one") == "Saved note #1."
        assert await text(b, c, "/note add two") == "Saved note #2."
        assert await text(b, c, "/note add three") == (
            "You already have 2 notes, the most you can keep. Delete one first with /note del <n>."
        )
        assert "You already have 2 notes" in await text(b, c, "note: three")
        assert await text(b, c, "/note ls") == "* 1. one\n* 2. two"
        assert await text(b, chat(), "/note add other") == "Saved note #1.", "per user"
    finally:
        await close(b)


async def test_stats_is_for_admins_only(bot: Bot) -> None:
    a, b = chat(), chat()
    for t in ("one", "two"):
        await text(bot, a, f"/note add {t}")
    await text(bot, b, "/note add three")
    assert "for admins only" in await text(bot, a, "/note stats")
    assert await text(bot, chat(), "/note stats", sender=ADMIN) == "3 notes from 2 users."


async def test_help_lists_the_commands_with_their_usage(bot: Bot) -> None:
    shown = await text(bot, chat(), "/help")
    for usage, help_ in [
        ("/note add <text...>", "save a note"),
        ("/note clear", "delete all your notes (asks first)"),
        ("/note del <n:int>", "delete note n of /note ls"),
        ("/note ls", "list your notes"),
        ("/note summarize", "a short summary of your notes, by the LLM"),
    ]:
        (line,) = [ln for ln in shown.splitlines() if ln.strip().startswith(usage + " ")]
        assert line.strip().endswith(help_), line
    assert "/note stats" not in shown, "admin commands are listed for admins only"
    admin = await text(bot, chat(), "/help", sender=ADMIN)
    assert "how many notes the bot keeps (admin)" in admin


# -- the dialog ------------------------------------------------------------------------------


async def test_clear_asks_first_and_yes_deletes(bot: Bot) -> None:
    c = chat()
    await text(bot, c, "/note add one")
    await text(bot, c, "/note add two")
    assert await text(bot, c, "/note clear") == "Delete all 2 of your notes? Answer yes or no."
    assert await text(bot, c, "YES") == "Deleted 2 notes."
    assert await bot.store.kv_get("notes", key(c)) is None
    assert await text(bot, c, "/note clear") == "You have no notes to delete.", "nothing to ask"


async def test_clear_keeps_the_notes_unless_the_answer_is_yes(bot: Bot, fake_llm: FakeLLM) -> None:
    c = chat()
    await text(bot, c, "/note add one")
    assert await text(bot, c, "/note clear") == "Delete all 1 of your notes? Answer yes or no."
    # Someone else in the chat is not the one being asked: their message goes on as usual.
    assert (await text(bot, c, "yes", sender="guest")).startswith("echo: yes")
    assert await text(bot, c, "no way") == "Kept your 1 notes."
    assert await text(bot, c, "/note ls") == "📝 1. one"
    assert fake_llm.calls == 1


# -- the regex handler, the tool, the hook --------------------------------------------------


async def test_note_colon_saves_without_the_llm(bot: Bot, fake_llm: FakeLLM) -> None:
    c = chat()
    assert await text(bot, c, "note: call mom") == "Saved note #1."
    assert await text(bot, c, 'Note:  say "hi" to C:\\Bob') == "Saved note #2."
    assert await text(bot, c, "/note ls") == '📝 1. call mom\n📝 2. say "hi" to C:\\Bob'
    assert fake_llm.calls == 0
    # A bare "note:" is not for the plugin (its handler returns None): the LLM answers.
    assert (await text(bot, c, "note:")).startswith("echo: note:")
    assert (await text(bot, c, "a note: not at the start")).startswith("echo: a note:")
    assert fake_llm.calls == 2


async def test_the_llm_searches_the_users_notes_with_the_tool(bot: Bot, fake_llm: FakeLLM) -> None:
    c = chat()
    await text(bot, c, "/note add buy oat milk")
    await text(bot, c, "/note add car is in row 4")
    await text(bot, c, "/note add Milk for the cat")
    await text(bot, chat(), "/note add someone else's milk")
    fake_llm.script.append(
        Scripted(tool_calls=[{"name": "search_notes", "arguments": {"query": "MILK"}}])
    )
    answer = await text(bot, c, "what milk did I want?")
    assert answer.startswith("tool results: "), answer
    hits = json.loads(answer.removeprefix("tool results: "))
    assert [(h["n"], h["text"]) for h in hits] == [(1, "buy oat milk"), (3, "Milk for the cat")]
    assert all(len(h["saved"]) == 10 for h in hits)  # YYYY-MM-DD
    (offered,) = [
        t for t in fake_llm.requests[0]["tools"] if t["function"]["name"] == "search_notes"
    ]
    schema = offered["function"]["parameters"]
    assert schema["required"] == ["query"]
    assert schema["properties"]["limit"] == {
        "type": "integer",
        "default": 5,
        "description": "how many matching notes to return at most (1 to 20)",
    }
    assert offered["function"]["description"].startswith("Search the notes the current user")


async def test_the_tool_takes_a_limit_and_says_when_nothing_matches(
    bot: Bot, fake_llm: FakeLLM
) -> None:
    c = chat()
    for i in range(3):
        await text(bot, c, f"/note add idea {i}")
    fake_llm.script.append(
        Scripted(tool_calls=[{"name": "search_notes", "arguments": {"query": "idea", "limit": 2}}])
    )
    hits = json.loads((await text(bot, c, "my ideas?")).removeprefix("tool results: "))
    assert [h["text"] for h in hits] == ["idea 0", "idea 1"]
    fake_llm.script.append(
        Scripted(tool_calls=[{"name": "search_notes", "arguments": {"query": "boat"}}])
    )
    assert await text(bot, c, "boat?") == (
        "tool results: No note of this user matches 'boat' (they have 3 notes)."
    )
    fake_llm.script.append(
        Scripted(tool_calls=[{"name": "search_notes", "arguments": {"limit": "lots"}}])
    )
    bad = await text(bot, c, "anything?")
    assert bad.startswith("tool results: error: invalid arguments:"), bad
    assert "query" in bad and "limit" in bad


async def test_asking_the_llm_to_remember_gets_a_tip(tmp_path: Path, fake_llm: FakeLLM) -> None:
    b = await notes_bot(tmp_path, fake_llm)
    try:
        c = chat()
        tipped = await text(b, c, "Please remember my locker is 42")
        assert tipped.startswith("echo: Please remember my locker is 42") and tipped.endswith(TIP)
        assert TIP not in await text(b, c, "hello there")
        assert TIP not in await text(b, c, "/note ls"), "after_llm is for LLM answers only"
    finally:
        await close(b)
    quiet = await notes_bot(tmp_path / "quiet", fake_llm, {"tips": False})
    try:
        assert TIP not in await text(quiet, chat(), "remember my locker is 42")
    finally:
        await close(quiet)


async def test_summarize_asks_the_llm_only_when_there_are_notes(
    bot: Bot, fake_llm: FakeLLM
) -> None:
    c = chat()
    assert await text(bot, c, "/note summarize") == "You have no notes to summarize."
    assert fake_llm.calls == 0
    await text(bot, c, "/note add buy milk")
    await text(bot, c, "/note add call mom")
    assert await text(bot, c, "/note sum") == "echo: - buy milk\n- call mom (turn 1)"
    (request,) = fake_llm.requests
    assert request["messages"][0]["role"] == "system"
    assert "Summarize the user's notes" in request["messages"][0]["content"]
    assert "tools" not in request, "ask_llm is one plain completion"


async def test_a_command_note_keeps_its_text_as_typed(bot: Bot) -> None:
    c = chat()
    await text(bot, c, '/note add say "hi" to C:\\Bob')
    assert await text(bot, c, "/note ls") == '📝 1. say "hi" to C:\\Bob'
