"""``astr_ray.store.Store`` against real SQLite files and a real PostgreSQL server."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select, text
from sqlalchemy.engine import Connection

from astr_ray.errors import DuplicateEventError, StoreError
from astr_ray.store import NewMessage, SessionState, Store, TurnRecord
from astr_ray.store.migrate import head_revision
from astr_ray.store.tables import messages, metadata, sessions

REPO_ROOT = Path(__file__).resolve().parents[2]


def _key() -> str:
    return f"test:{uuid.uuid4().hex[:8]}"


def _turn(
    state: SessionState,
    next_seq: int,
    event_id: str | None = None,
    *texts: str,
) -> TurnRecord:
    """A user/assistant turn (or the given texts, alternating roles) for ``state``."""
    bodies = texts or (f"question {next_seq}", f"answer {next_seq + 1}")
    msgs = [
        NewMessage(role="user" if i % 2 == 0 else "assistant", content=body)
        for i, body in enumerate(bodies)
    ]
    reply = {"text": bodies[-1], "event": event_id} if event_id is not None else None
    return TurnRecord(
        session_key=state.session_key,
        conversation_id=state.conversation_id,
        event_id=event_id,
        messages=msgs,
        reply=reply,
        next_seq=next_seq,
    )


async def _drop_everything(store: Store) -> None:
    def drop(conn: Connection) -> None:
        metadata.drop_all(conn)
        conn.execute(text("DROP TABLE IF EXISTS alembic_version"))

    async with store.engine.begin() as conn:
        await conn.run_sync(drop)


# -- schema --------------------------------------------------------------------------


async def test_migrate_twice_is_noop_and_matches_tables(store: Store) -> None:
    await _drop_everything(store)
    assert await store.schema_version() is None

    await store.migrate()
    await store.migrate()

    assert await store.schema_version() == head_revision() == "0003"

    def diff(conn: Connection) -> list[Any]:
        return compare_metadata(MigrationContext.configure(conn), metadata)

    async with store.engine.connect() as conn:
        assert await conn.run_sync(diff) == []


async def test_processes_migrate_and_ensure_session_at_once(store_url: str, store: Store) -> None:
    """Three processes open one fresh database at once: one schema, one conversation."""
    await _drop_everything(store)
    key = _key()
    code = (
        "import asyncio, sys\n"
        "from astr_ray.store import Store\n"
        "async def main():\n"
        "    s = await Store.open(sys.argv[1])\n"
        "    await s.migrate()\n"
        "    print((await s.ensure_session(sys.argv[2])).conversation_id)\n"
        "    await s.close()\n"
        "asyncio.run(main())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            code,
            store_url,
            key,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(3)
    ]
    outputs = [await p.communicate() for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err.decode()
    ids = {out.decode().strip() for out, _ in outputs}
    assert len(ids) == 1
    assert await store.schema_version() == head_revision()
    assert [c.id for c in await store.list_conversations(key)] == list(ids)


async def test_open_plain_path_creates_directory_and_sets_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "astr.db"
    async with await Store.open(str(path)) as s:
        await s.migrate()
        async with s.engine.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
            assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
            assert (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar() == 10000
            assert (await conn.exec_driver_sql("PRAGMA synchronous")).scalar() == 1  # NORMAL
    assert path.exists()


async def test_unsupported_url_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="unsupported"):
        await Store.open("mysql+aiomysql://u@h/db")


# -- sessions and conversations -------------------------------------------------------


async def test_ensure_session_creates_one_conversation_and_is_idempotent(store: Store) -> None:
    key = _key()
    first = await store.ensure_session(key)
    again = await store.ensure_session(key)

    assert first == again
    assert first.session_key == key
    [conv] = await store.list_conversations(key)
    assert conv.id == first.conversation_id
    assert conv.is_current and conv.message_count == 0
    assert conv.title is None and conv.persona is None


async def test_concurrent_ensure_session_ends_with_one_conversation(
    store: Store, store_url: str
) -> None:
    key = _key()
    async with await Store.open(store_url) as other:
        states = await asyncio.gather(
            *(s.ensure_session(key) for _ in range(10) for s in (store, other))
        )
    assert len({s.conversation_id for s in states}) == 1
    assert len(await store.list_conversations(key)) == 1
    async with store.engine.connect() as conn:
        rows = (await conn.execute(select(sessions).where(sessions.c.session_key == key))).all()
    assert len(rows) == 1
    assert rows[0].current_conversation_id == states[0].conversation_id


async def test_new_conversation_switches_current_and_lists_counts(store: Store) -> None:
    key = _key()
    first = await store.ensure_session(key)
    await store.commit_turn(_turn(first, 0, "e1"))

    second_id = await store.new_conversation(key, title="Second", persona="pirate")

    assert (await store.ensure_session(key)).conversation_id == second_id
    convs = await store.list_conversations(key)
    assert [c.id for c in convs] == [second_id, first.conversation_id]  # newest first
    assert [c.is_current for c in convs] == [True, False]
    assert [c.message_count for c in convs] == [0, 2]
    assert (convs[0].title, convs[0].persona) == ("Second", "pirate")
    assert await store.list_conversations(_key()) == []


async def test_new_conversation_creates_missing_session(store: Store) -> None:
    key = _key()
    cid = await store.new_conversation(key)
    assert await store.ensure_session(key) == SessionState(key, cid)


async def test_clear_conversation_empties_it(store: Store) -> None:
    state = await store.ensure_session(_key())
    await store.commit_turn(_turn(state, 0, "e1"))
    await store.commit_turn(_turn(state, 2, "e2"))

    assert await store.clear_conversation(state.conversation_id) == 4
    assert await store.load_history(state.conversation_id) == []
    assert await store.count_messages(state.conversation_id) == 0
    assert await store.clear_conversation(state.conversation_id) == 0
    # Numbering restarts; the conversation is still the current one.
    await store.commit_turn(_turn(state, 0, "e3"))
    assert [m.seq for m in await store.load_history(state.conversation_id)] == [0, 1]
    assert (await store.ensure_session(state.session_key)) == state


# -- turns ----------------------------------------------------------------------------


async def test_commit_turn_appends_and_history_is_ordered(store: Store) -> None:
    state = await store.ensure_session(_key())
    await store.commit_turn(_turn(state, 0, "e1", "hi", "hello"))
    await store.commit_turn(_turn(state, 2, None, "how are you", "fine"))
    extra = {"tool_calls": [{"name": "search", "args": {"q": "x"}}]}
    await store.commit_turn(
        TurnRecord(
            session_key=state.session_key,
            conversation_id=state.conversation_id,
            event_id="e3",
            messages=[NewMessage("tool", "result", extra=extra)],
            reply={"text": "done"},
            next_seq=4,
        )
    )

    history = await store.load_history(state.conversation_id)
    assert [(m.seq, m.role, m.content) for m in history] == [
        (0, "user", "hi"),
        (1, "assistant", "hello"),
        (2, "user", "how are you"),
        (3, "assistant", "fine"),
        (4, "tool", "result"),
    ]
    assert [m.event_id for m in history] == ["e1", "e1", None, None, "e3"]
    assert history[0].extra is None
    assert history[4].extra == extra
    assert history[0].created_at <= history[2].created_at <= history[4].created_at

    last_two = await store.load_history(state.conversation_id, limit=2)
    assert [m.seq for m in last_two] == [3, 4]
    assert await store.load_history(state.conversation_id, limit=0) == []
    assert len(await store.load_history(state.conversation_id, limit=50)) == 5
    assert await store.count_messages(state.conversation_id) == 5

    async with store.engine.connect() as conn:
        null_extra = await conn.scalar(
            select(messages.c.id).where(messages.c.seq == 0, messages.c.extra.is_(None))
        )
    assert null_extra is not None  # None is stored as SQL NULL, not JSON 'null'


async def test_duplicate_event_raises_and_writes_nothing(store: Store) -> None:
    state = await store.ensure_session(_key())
    await store.commit_turn(_turn(state, 0, "e1", "hi", "hello"))

    with pytest.raises(DuplicateEventError) as info:
        await store.commit_turn(_turn(state, 2, "e1", "hi again", "hello again"))

    assert info.value.context["session_key"] == state.session_key
    assert info.value.context["event_id"] == "e1"
    assert [m.content for m in await store.load_history(state.conversation_id)] == ["hi", "hello"]
    assert await store.get_processed(state.session_key, "e1") == {"text": "hello", "event": "e1"}


async def test_same_event_id_in_two_sessions_is_not_a_duplicate(store: Store) -> None:
    a = await store.ensure_session(_key())
    b = await store.ensure_session(_key())
    await store.commit_turn(_turn(a, 0, "e1"))
    await store.commit_turn(_turn(b, 0, "e1"))
    assert await store.count_messages(b.conversation_id) == 2


async def test_stale_next_seq_raises_and_writes_nothing(store: Store) -> None:
    state = await store.ensure_session(_key())
    await store.commit_turn(_turn(state, 0, "e1"))

    with pytest.raises(StoreError, match="stale") as info:
        await store.commit_turn(_turn(state, 1, "e2", "a", "b", "c"))

    assert not isinstance(info.value, DuplicateEventError)
    assert await store.count_messages(state.conversation_id) == 2
    assert await store.get_processed(state.session_key, "e2") is None
    # The event was not recorded, so the retry with the right seq goes through.
    await store.commit_turn(_turn(state, 2, "e2"))
    assert await store.count_messages(state.conversation_id) == 4


async def test_unknown_conversation_raises_and_writes_nothing(store: Store) -> None:
    ghost = SessionState(_key(), str(uuid.uuid4()))
    with pytest.raises(StoreError, match="unknown conversation"):
        await store.commit_turn(_turn(ghost, 0, "e1"))
    assert await store.get_processed(ghost.session_key, "e1") is None


async def test_event_without_reply_is_rejected(store: Store) -> None:
    state = await store.ensure_session(_key())
    turn = TurnRecord(state.session_key, state.conversation_id, "e1", [], None, 0)
    with pytest.raises(ValueError, match="no reply"):
        await store.commit_turn(turn)


async def test_commit_turns_in_one_batch(store: Store) -> None:
    a = await store.ensure_session(_key())
    b = await store.ensure_session(_key())
    turns = [_turn(a, 0, "a1"), _turn(b, 0, "b1"), _turn(a, 2, "a2"), _turn(b, 2, None)]

    assert await store.commit_turns(turns) == [None, None, None, None]
    assert [m.seq for m in await store.load_history(a.conversation_id)] == [0, 1, 2, 3]
    assert await store.count_messages(b.conversation_id) == 4
    assert set(await store.recent_processed(a.session_key)) == {"a1", "a2"}
    assert await store.commit_turns([]) == []


async def test_commit_turns_with_one_duplicate_commits_the_others(store: Store) -> None:
    a = await store.ensure_session(_key())
    b = await store.ensure_session(_key())
    await store.commit_turn(_turn(a, 0, "a1"))

    ghost = SessionState(a.session_key, str(uuid.uuid4()))
    turns = [
        _turn(a, 2, "a2"),
        _turn(a, 4, "a1"),  # already committed
        _turn(b, 0, "b1"),
        _turn(b, 0, "b2"),  # stale seq: b1 took 0 and 1
        _turn(ghost, 0, "g1"),  # unknown conversation
        _turn(b, 2, "b1"),  # duplicate within the batch
        TurnRecord(b.session_key, b.conversation_id, "b9", [], None, 2),  # no reply
        _turn(b, 2, "b3"),
    ]
    results = await store.commit_turns(turns)

    assert results[0] is None
    assert isinstance(results[1], DuplicateEventError)
    assert results[2] is None
    assert type(results[3]) is StoreError and "stale" in str(results[3])
    assert type(results[4]) is StoreError and "unknown conversation" in str(results[4])
    assert isinstance(results[5], DuplicateEventError)
    assert isinstance(results[6], ValueError)
    assert results[7] is None
    assert [m.event_id for m in await store.load_history(a.conversation_id)] == ["a1"] * 2 + [
        "a2"
    ] * 2
    assert [m.event_id for m in await store.load_history(b.conversation_id)] == ["b1"] * 2 + [
        "b3"
    ] * 2
    assert await store.get_processed(a.session_key, "g1") is None


async def test_recent_processed_returns_replies(store: Store) -> None:
    state = await store.ensure_session(_key())
    for i in range(5):
        await store.commit_turn(_turn(state, 2 * i, f"e{i}"))
    await store.commit_turn(_turn(state, 10, None))
    other = await store.ensure_session(_key())
    await store.commit_turn(_turn(other, 0, "x"))

    recent = await store.recent_processed(state.session_key)
    assert list(recent) == [f"e{i}" for i in range(5)]  # oldest first
    assert recent["e3"] == {"text": "answer 7", "event": "e3"}
    assert list(await store.recent_processed(state.session_key, limit=2)) == ["e3", "e4"]
    assert await store.recent_processed(_key()) == {}
    assert await store.get_processed(state.session_key, "x") is None
    assert await store.get_processed(other.session_key, "x") == {"text": "answer 1", "event": "x"}


async def test_two_hundred_turns_do_not_rewrite_older_rows(store: Store) -> None:
    state = await store.ensure_session(_key())

    async def rows() -> list[tuple[Any, ...]]:
        stmt = (
            select(messages.c.id, messages.c.seq, messages.c.content, messages.c.created_at)
            .where(messages.c.conversation_id == state.conversation_id)
            .order_by(messages.c.seq)
        )
        async with store.engine.connect() as conn:
            return [tuple(r) for r in (await conn.execute(stmt)).all()]

    for i in range(100):
        await store.commit_turn(_turn(state, 2 * i, f"e{i}"))
    before = await rows()
    batch = [_turn(state, 2 * i, f"e{i}") for i in range(100, 200)]
    for start in range(0, 100, 25):
        assert await store.commit_turns(batch[start : start + 25]) == [None] * 25

    after = await rows()
    assert len(before) == 200 and len(after) == 400
    assert after[:200] == before
    assert [r[1] for r in after] == list(range(400))
    ids = [r[0] for r in after]
    assert ids == sorted(ids) and len(set(ids)) == 400
    assert [m.seq for m in await store.load_history(state.conversation_id, limit=3)] == [
        397,
        398,
        399,
    ]


# -- actor events ---------------------------------------------------------------------


async def test_actor_events_are_listed_newest_first(store: Store) -> None:
    await store.record_actor_event("host-0", "started", "boot", pid=101)
    await store.record_actor_event("host-1", "started", "boot", pid=102)
    await store.record_actor_event("host-0", "died", "OOM killed", pid=101)
    await store.record_actor_event("host-0", "recreated", "supervisor restart")

    events = await store.list_actor_events()
    assert [(e.actor, e.kind) for e in events] == [
        ("host-0", "recreated"),
        ("host-0", "died"),
        ("host-1", "started"),
        ("host-0", "started"),
    ]
    assert events[0].pid is None and events[1].pid == 101
    assert events[1].reason == "OOM killed"
    assert [e.kind for e in await store.list_actor_events(actor="host-0", limit=2)] == [
        "recreated",
        "died",
    ]
    assert await store.list_actor_events(actor="nobody") == []


async def test_activate_many_mixes_new_and_known_sessions(store: Store) -> None:
    known = await store.ensure_session("tg:private:known")
    for i in range(4):  # 8 messages, 4 events
        await store.commit_turn(_turn(known, 2 * i, f"e{i}"))
    other = await store.ensure_session("tg:private:other")
    await store.commit_turn(_turn(other, 0, "o0"))
    keys = ["tg:private:known", "tg:private:new1", "tg:private:other", "tg:private:new2"]
    acts = await store.activate_many(keys, history_limit=3, recent_limit=2)
    assert list(acts) == keys
    k = acts["tg:private:known"]
    assert k.conversation_id == known.conversation_id
    assert [m.seq for m in k.history] == [5, 6, 7], "the last 3, ascending"
    assert list(k.recent) == ["e2", "e3"], "the 2 most recent, oldest first"
    assert [m.seq for m in acts["tg:private:other"].history] == [0, 1]
    for new in ("tg:private:new1", "tg:private:new2"):
        assert acts[new].history == [] and acts[new].recent == {}
        assert (await store.ensure_session(new)).conversation_id == acts[new].conversation_id
    again = await store.activate_many(keys, history_limit=3)
    assert {k: a.conversation_id for k, a in again.items()} == {
        k: a.conversation_id for k, a in acts.items()
    }


async def test_concurrent_activate_many_creates_one_conversation_each(
    store_url: str, store: Store
) -> None:
    other = await Store.open(store_url)
    try:
        keys = [f"qq:group:{i}" for i in range(30)]
        a, b, c = await asyncio.gather(
            store.activate_many(keys, 10),
            other.activate_many(keys[::-1], 10),
            store.activate_many(keys[5:15], 10),
        )
    finally:
        await other.close()
    for key in keys:
        assert a[key].conversation_id == b[key].conversation_id
        assert len(await store.list_conversations(key)) == 1
    assert all(c[k].conversation_id == a[k].conversation_id for k in keys[5:15])
