"""Settings, the plugin key-value store, personas and conversation commands of ``Store``."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import event, func, select, text
from sqlalchemy.engine import Connection

from astr_ray.errors import StoreError
from astr_ray.store import NewMessage, Persona, SessionState, Store, TurnRecord
from astr_ray.store import migrate as store_migrate
from astr_ray.store.migrate import head_revision
from astr_ray.store.store import KV_VALUE_LIMIT
from astr_ray.store.tables import messages, metadata, personas, plugin_kv, settings


def _key() -> str:
    return f"test:{uuid.uuid4().hex[:8]}"


async def _talk(store: Store, state: SessionState, next_seq: int = 0) -> None:
    """Commit one user/assistant exchange (which also bumps the conversation's updated_at)."""
    msgs = [NewMessage("user", f"q{next_seq}"), NewMessage("assistant", f"a{next_seq}")]
    turn = TurnRecord(state.session_key, state.conversation_id, None, msgs, None, next_seq)
    await store.commit_turn(turn)


@contextmanager
def _count_statements(store: Store) -> Iterator[list[str]]:
    """Collect the SQL statements the store sends while the block runs."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(store.engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(store.engine.sync_engine, "before_cursor_execute", record)


# -- schema --------------------------------------------------------------------------


async def test_migration_0002_matches_tables(store: Store) -> None:
    assert head_revision() == "0003"
    assert await store.schema_version() == "0003"

    def diff(conn: Connection) -> list[Any]:
        return compare_metadata(MigrationContext.configure(conn), metadata)

    async with store.engine.connect() as conn:
        assert await conn.run_sync(diff) == []


async def test_upgrade_from_0001_keeps_data_and_adds_tables(store: Store) -> None:
    def drop(conn: Connection) -> None:
        metadata.drop_all(conn)
        conn.execute(text("DROP TABLE IF EXISTS alembic_version"))

    async with store.engine.begin() as conn:
        await conn.run_sync(drop)
    await store_migrate.upgrade(store.engine, "0001")
    assert await store.schema_version() == "0001"
    state = await store.ensure_session(_key())
    await _talk(store, state)

    await store.migrate()

    assert await store.schema_version() == "0003"
    assert await store.count_messages(state.conversation_id) == 2
    await store.set_setting("global", "k", 1)
    assert await store.get_setting("global", "k") == 1


# -- settings ------------------------------------------------------------------------


async def test_settings_round_trip_and_replace(store: Store) -> None:
    key = _key()
    assert await store.get_settings(key) == {}
    assert await store.get_setting(key, "missing") is None
    assert await store.get_setting(key, "missing", "fallback") == "fallback"

    values: dict[str, Any] = {
        "dict": {"a": [1, 2, {"b": None}], "ü": "ñ"},
        "list": ["x", 1.5],
        "int": 42,
        "false": False,
        "zero": 0,
        "text": "",
    }
    for name, value in values.items():
        await store.set_setting(key, name, value)
    assert await store.get_settings(key) == values
    assert await store.get_setting(key, "false", "fallback") is False
    assert await store.get_setting(key, "zero", "fallback") == 0

    await store.set_setting(key, "int", {"now": "a dict"})
    assert await store.get_setting(key, "int") == {"now": "a dict"}
    async with store.engine.connect() as conn:
        rows = await conn.scalar(
            select(func.count()).select_from(settings).where(settings.c.scope == key)
        )
    assert rows == len(values)


async def test_set_setting_none_deletes_and_scopes_are_separate(store: Store) -> None:
    key = _key()
    await store.set_setting("global", "model", "gpt-g")
    await store.set_setting(key, "model", "gpt-s")
    await store.set_setting(key, "other", 1)

    await store.set_setting(key, "model", None)
    await store.set_setting(key, "never-set", None)  # deleting nothing is fine

    assert await store.get_settings(key) == {"other": 1}
    assert await store.get_setting(key, "model", "unset") == "unset"
    assert await store.get_settings("global") == {"model": "gpt-g"}


async def test_set_setting_refuses_bad_input(store: Store) -> None:
    key = _key()
    with pytest.raises(StoreError, match="JSON") as info:
        await store.set_setting(key, "obj", object())
    assert info.value.context == {"scope": key, "key": "obj"}
    with pytest.raises(StoreError, match="JSON"):
        await store.set_setting(key, "nan", float("nan"))
    with pytest.raises(StoreError, match="128"):
        await store.set_setting(key, "k" * 129, 1)
    with pytest.raises(StoreError, match="255"):
        await store.set_setting("s" * 256, "k", 1)
    assert await store.get_settings(key) == {}


# -- plugin key-value store -------------------------------------------------------------


async def test_kv_round_trip_delete_and_isolation(store: Store) -> None:
    assert await store.kv_get("weather", "city") is None
    assert await store.kv_get("weather", "city", "Paris") == "Paris"

    await store.kv_set("weather", "city", "Oslo")
    await store.kv_set("weather", "city", {"name": "Bergen", "lat": 60.39})
    await store.kv_set("reminders", "city", [1, 2])

    assert await store.kv_get("weather", "city") == {"name": "Bergen", "lat": 60.39}
    assert await store.kv_get("reminders", "city") == [1, 2]

    assert await store.kv_delete("weather", "city") is True
    assert await store.kv_delete("weather", "city") is False
    assert await store.kv_get("weather", "city", "gone") == "gone"
    assert await store.kv_get("reminders", "city") == [1, 2]


async def test_kv_none_is_a_stored_value(store: Store) -> None:
    await store.kv_set("p", "nothing", None)
    assert await store.kv_get("p", "nothing", "default") is None
    assert await store.kv_keys("p") == ["nothing"]


async def test_kv_keys_sorted_with_literal_case_sensitive_prefix(store: Store) -> None:
    for key in ["user:b", "user:a", "User:c", "user_x", "user%y", "usera", "other", "user:"]:
        await store.kv_set("p", key, 1)
    await store.kv_set("q", "user:z", 1)

    assert await store.kv_keys("p") == [
        "User:c",
        "other",
        "user%y",
        "user:",
        "user:a",
        "user:b",
        "user_x",
        "usera",
    ]
    assert await store.kv_keys("p", "user:") == ["user:", "user:a", "user:b"]
    assert await store.kv_keys("p", "user_") == ["user_x"]  # "_" is not a wildcard
    assert await store.kv_keys("p", "user%") == ["user%y"]  # nor is "%"
    assert await store.kv_keys("p", "USER") == []
    assert await store.kv_keys("p", "nope") == []
    assert await store.kv_keys("nobody") == []


async def test_kv_value_over_64_kib_is_refused(store: Store) -> None:
    assert KV_VALUE_LIMIT == 64 * 1024
    at_limit = "x" * (KV_VALUE_LIMIT - 2)  # two quotes make it exactly the limit
    await store.kv_set("p", "big", at_limit)
    assert await store.kv_get("p", "big") == at_limit

    with pytest.raises(StoreError, match="64 KiB") as info:
        await store.kv_set("p", "big", at_limit + "x")
    assert info.value.context["plugin"] == "p"
    assert info.value.context["size"] == KV_VALUE_LIMIT + 1
    with pytest.raises(StoreError, match="64 KiB"):
        await store.kv_set("p", "new", {"rows": ["é" * 1000] * 40})  # 80 KB of UTF-8

    assert await store.kv_get("p", "big") == at_limit  # the old value is untouched
    assert await store.kv_keys("p") == ["big"]


async def test_kv_refuses_bad_names_and_values(store: Store) -> None:
    with pytest.raises(StoreError, match="JSON"):
        await store.kv_set("p", "k", {1, 2})
    with pytest.raises(StoreError, match="128"):
        await store.kv_set("p" * 129, "k", 1)
    with pytest.raises(StoreError, match="255"):
        await store.kv_set("p", "k" * 256, 1)
    async with store.engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(plugin_kv)) == 0


# -- personas --------------------------------------------------------------------------


async def test_persona_round_trip_replace_and_delete(store: Store) -> None:
    pirate = Persona(
        name="pirate",
        system_prompt="Talk like a pirate.",
        begin_dialogs=[("Ahoy?", "Arr!"), ("Who are you?", "Captain.")],
        tools=["web_search", "dice"],
    )
    assert await store.get_persona("pirate") is None
    await store.upsert_persona(pirate)
    assert await store.get_persona("pirate") == pirate
    got = await store.get_persona("pirate")
    assert got is not None and isinstance(got.begin_dialogs[0], tuple)

    async def created_at() -> float:
        async with store.engine.connect() as conn:
            value = await conn.scalar(
                select(personas.c.created_at).where(personas.c.name == "pirate")
            )
        assert isinstance(value, float)
        return value

    first_created = await created_at()
    calm = Persona(name="pirate", system_prompt="Calm now.", tools=[])
    await store.upsert_persona(calm)
    assert await store.get_persona("pirate") == calm
    assert await created_at() == first_created

    assert await store.delete_persona("pirate") is True
    assert await store.delete_persona("pirate") is False
    assert await store.get_persona("pirate") is None


async def test_persona_tools_none_means_all_and_is_sql_null(store: Store) -> None:
    await store.upsert_persona(Persona("all", "prompt"))
    await store.upsert_persona(Persona("none", "prompt", tools=[]))
    all_tools = await store.get_persona("all")
    no_tools = await store.get_persona("none")
    assert all_tools is not None and all_tools.tools is None and all_tools.begin_dialogs == []
    assert no_tools is not None and no_tools.tools == []
    async with store.engine.connect() as conn:
        null_name = await conn.scalar(select(personas.c.name).where(personas.c.tools.is_(None)))
    assert null_name == "all"


async def test_list_personas_by_name_and_long_name_refused(store: Store) -> None:
    for name in ["zeta", "Beta", "alpha"]:
        await store.upsert_persona(Persona(name, f"I am {name}"))
    assert [p.name for p in await store.list_personas()] == ["Beta", "alpha", "zeta"]
    assert (await store.list_personas())[1].system_prompt == "I am alpha"
    with pytest.raises(StoreError, match="128"):
        await store.upsert_persona(Persona("n" * 129, "x"))
    assert len(await store.list_personas()) == 3


# -- conversations ---------------------------------------------------------------------


async def test_get_conversation(store: Store) -> None:
    key = _key()
    first = await store.ensure_session(key)
    await _talk(store, first)
    second = await store.new_conversation(key, title="Two", persona="pirate")

    old = await store.get_conversation(first.conversation_id)
    new = await store.get_conversation(second)
    assert old is not None and new is not None
    assert (old.id, old.message_count, old.is_current) == (first.conversation_id, 2, False)
    assert (new.title, new.persona, new.message_count, new.is_current) == (
        "Two",
        "pirate",
        0,
        True,
    )
    assert new == (await store.list_conversations(key))[0]
    assert await store.get_conversation(str(uuid.uuid4())) is None


async def test_switch_conversation(store: Store) -> None:
    key = _key()
    first = await store.ensure_session(key)
    second = await store.new_conversation(key)

    await store.switch_conversation(key, first.conversation_id)
    await store.switch_conversation(key, first.conversation_id)  # idempotent

    assert await store.ensure_session(key) == first
    assert [c.is_current for c in await store.list_conversations(key)] == [False, True]
    assert (await store.activate_many([key], 10))[key].conversation_id == first.conversation_id
    assert (await store.get_conversation(second)) is not None


async def test_conversation_commands_check_the_owner(store: Store) -> None:
    mine = await store.ensure_session(_key())
    other = await store.ensure_session(_key())
    await _talk(store, other)
    ghost = str(uuid.uuid4())
    theirs = other.conversation_id

    for call in (
        store.switch_conversation(mine.session_key, theirs),
        store.rename_conversation(mine.session_key, theirs, "stolen"),
        store.delete_conversation(mine.session_key, theirs),
    ):
        with pytest.raises(StoreError, match="another session") as info:
            await call
        assert info.value.context["session_key"] == mine.session_key
    for call in (
        store.switch_conversation(mine.session_key, ghost),
        store.rename_conversation(mine.session_key, ghost, "x"),
        store.delete_conversation(mine.session_key, ghost),
    ):
        with pytest.raises(StoreError, match="unknown conversation") as info:
            await call
        assert info.value.context["conversation_id"] == ghost

    assert await store.ensure_session(mine.session_key) == mine
    info_theirs = await store.get_conversation(theirs)
    assert info_theirs is not None
    assert (info_theirs.title, info_theirs.message_count) == (None, 2)
    assert await store.ensure_session(other.session_key) == other


async def test_rename_conversation(store: Store) -> None:
    state = await store.ensure_session(_key())
    before = await store.get_conversation(state.conversation_id)
    await store.rename_conversation(state.session_key, state.conversation_id, "t" * 255)
    after = await store.get_conversation(state.conversation_id)
    assert before is not None and after is not None
    assert after.title == "t" * 255
    assert after.updated_at == before.updated_at

    with pytest.raises(StoreError, match="255"):
        await store.rename_conversation(state.session_key, state.conversation_id, "t" * 256)
    await store.rename_conversation(state.session_key, state.conversation_id, "Trip plans")
    renamed = await store.get_conversation(state.conversation_id)
    assert renamed is not None and renamed.title == "Trip plans"


async def test_delete_other_conversation_keeps_current(store: Store) -> None:
    key = _key()
    old = await store.ensure_session(key)
    await _talk(store, old)
    current = await store.new_conversation(key)

    assert await store.delete_conversation(key, old.conversation_id) == current

    assert [c.id for c in await store.list_conversations(key)] == [current]
    assert await store.get_conversation(old.conversation_id) is None
    async with store.engine.connect() as conn:
        left = await conn.scalar(
            select(func.count())
            .select_from(messages)
            .where(messages.c.conversation_id == old.conversation_id)
        )
    assert left == 0
    with pytest.raises(StoreError, match="unknown conversation"):
        await store.delete_conversation(key, old.conversation_id)


async def test_delete_current_moves_to_most_recently_updated(store: Store) -> None:
    key = _key()
    first = await store.ensure_session(key)
    second = await store.new_conversation(key)
    third = await store.new_conversation(key)
    # The oldest conversation is the most recently updated one once it gets a message.
    await _talk(store, first)

    assert await store.delete_conversation(key, third) == first.conversation_id

    assert await store.ensure_session(key) == first
    convs = {c.id: c for c in await store.list_conversations(key)}
    assert set(convs) == {first.conversation_id, second}
    assert convs[first.conversation_id].is_current
    assert (await store.activate_many([key], 10))[key].conversation_id == first.conversation_id

    # Now a message makes ``second`` the most recently updated: it wins over ``first``.
    await _talk(store, SessionState(key, second))
    assert await store.delete_conversation(key, first.conversation_id) == second
    assert [c.id for c in await store.list_conversations(key)] == [second]


async def test_delete_last_conversation_starts_a_new_one(store: Store) -> None:
    key = _key()
    only = await store.ensure_session(key)
    await _talk(store, only)
    await store.set_conversation_persona(only.conversation_id, "pirate")

    fresh = await store.delete_conversation(key, only.conversation_id)

    assert fresh != only.conversation_id
    assert await store.ensure_session(key) == SessionState(key, fresh)
    [conv] = await store.list_conversations(key)
    assert (conv.id, conv.is_current, conv.message_count) == (fresh, True, 0)
    assert (conv.title, conv.persona) == (None, None)


async def test_concurrent_deletes_of_the_current_conversation(store: Store, store_url: str) -> None:
    key = _key()
    first = await store.ensure_session(key)
    second = await store.new_conversation(key)
    async with await Store.open(store_url) as other:
        results = await asyncio.gather(
            store.delete_conversation(key, second),
            other.delete_conversation(key, second),
            return_exceptions=True,
        )
    assert sorted(type(r).__name__ for r in results) == ["StoreError", "str"]
    assert first.conversation_id in results
    assert await store.ensure_session(key) == first
    assert [c.id for c in await store.list_conversations(key)] == [first.conversation_id]


async def test_set_conversation_persona(store: Store) -> None:
    state = await store.ensure_session(_key())
    await store.set_conversation_persona(state.conversation_id, "pirate")
    conv = await store.get_conversation(state.conversation_id)
    assert conv is not None and conv.persona == "pirate"

    await store.set_conversation_persona(state.conversation_id, None)
    conv = await store.get_conversation(state.conversation_id)
    assert conv is not None and conv.persona is None

    with pytest.raises(StoreError, match="unknown conversation"):
        await store.set_conversation_persona(str(uuid.uuid4()), "pirate")
    with pytest.raises(StoreError, match="128"):
        await store.set_conversation_persona(state.conversation_id, "p" * 129)


# -- activate_many ---------------------------------------------------------------------


async def test_activate_many_carries_persona_and_session_settings(store: Store) -> None:
    known, plain, fresh = _key(), _key(), _key()
    state = await store.ensure_session(known)
    await _talk(store, state)
    await store.set_conversation_persona(state.conversation_id, "pirate")
    await store.set_setting(known, "model", "gpt-x")
    await store.set_setting(known, "tts", {"voice": "alloy"})
    await store.ensure_session(plain)
    await store.set_setting(fresh, "lang", "fr")  # set before the session ever existed
    await store.set_setting("global", "model", "global-model")

    acts = await store.activate_many([known, plain, fresh], history_limit=10)

    assert acts[known].persona == "pirate"
    assert acts[known].settings == {"model": "gpt-x", "tts": {"voice": "alloy"}}
    assert [m.content for m in acts[known].history] == ["q0", "a0"]
    assert (acts[plain].persona, acts[plain].settings) == (None, {})
    assert (acts[fresh].persona, acts[fresh].settings) == (None, {"lang": "fr"})

    # The persona follows the current conversation.
    other = await store.new_conversation(known, persona="poet")
    again = await store.activate_many([known], history_limit=10)
    assert (again[known].conversation_id, again[known].persona) == (other, "poet")
    assert again[known].history == []


async def test_activate_many_query_count_does_not_grow_with_sessions(store: Store) -> None:
    async def queries(n: int) -> int:
        keys = [_key() for _ in range(n)]
        for k in keys:
            state = await store.ensure_session(k)
            await _talk(store, state)
            await store.set_setting(k, "model", k)
        with _count_statements(store) as seen:
            acts = await store.activate_many([*keys, _key()], history_limit=5)
        assert all(acts[k].settings == {"model": k} for k in keys)
        return len(seen)

    assert await queries(2) == await queries(12)
