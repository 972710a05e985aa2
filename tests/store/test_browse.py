"""The dashboard's conversation browser (``BrowseMixin``) on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from astr_ray.store import MessageHit, NewMessage, SessionSummary, Store, TurnRecord


async def _say(store: Store, conversation_id: str, session_key: str, *texts: str) -> None:
    """Append ``texts`` (alternating user / assistant) to the conversation as one turn."""
    next_seq = await store.count_messages(conversation_id)
    await store.commit_turn(
        TurnRecord(
            session_key=session_key,
            conversation_id=conversation_id,
            event_id=None,
            messages=[
                NewMessage(role="user" if i % 2 == 0 else "assistant", content=text)
                for i, text in enumerate(texts)
            ],
            reply=None,
            next_seq=next_seq,
        )
    )


async def _chat(store: Store, session_key: str, *texts: str) -> str:
    """Append ``texts`` to the session's current conversation; return its id."""
    state = await store.ensure_session(session_key)
    await _say(store, state.conversation_id, session_key, *texts)
    return state.conversation_id


async def _all_sessions(store: Store, **filters: str) -> list[SessionSummary]:
    page, total = await store.list_sessions(limit=1000, **filters)
    assert total == len(page)
    return page


# -- list_sessions ----------------------------------------------------------------------


async def test_sessions_have_counts_and_the_most_recently_active_comes_first(
    store: Store,
) -> None:
    qq, tg, web = "qq:group:1001", "tg:private:42", "webchat:private:alice"
    await _chat(store, qq, "hi", "hello", "how are you", "fine")
    await store.new_conversation(qq, title="second")
    await _chat(store, qq, "again", "yes")
    await _chat(store, tg, "ping", "pong")
    await store.ensure_session(web)  # no messages: active when it was created

    page = await _all_sessions(store)
    assert [s.key for s in page] == [web, tg, qq]
    by_key = {s.key: s for s in page}
    assert by_key[qq] == SessionSummary(
        key=qq,
        platform="qq",
        chat_type="group",
        chat_id="1001",
        conversations=2,
        messages=6,
        last_active=by_key[qq].last_active,
    )
    assert (by_key[tg].conversations, by_key[tg].messages) == (1, 2)
    assert (by_key[web].conversations, by_key[web].messages) == (1, 0)
    assert by_key[web].last_active > by_key[tg].last_active > by_key[qq].last_active

    await _chat(store, qq, "still there?", "yes")
    page = await _all_sessions(store)
    assert [s.key for s in page] == [qq, web, tg]
    assert page[0].messages == 8
    history = await store.load_history((await store.ensure_session(qq)).conversation_id)
    assert page[0].last_active == pytest.approx(history[-1].created_at)


async def test_sessions_page_through_in_a_stable_order(store: Store) -> None:
    keys = [f"qq:private:{i}" for i in range(5)]
    for key in keys:
        await _chat(store, key, f"hello from {key}")

    seen: list[str] = []
    for offset in (0, 2, 4):
        page, total = await store.list_sessions(limit=2, offset=offset)
        assert total == 5
        seen += [s.key for s in page]
    assert seen == list(reversed(keys))

    page, total = await store.list_sessions(limit=2, offset=10)
    assert (page, total) == ([], 5)
    with pytest.raises(ValueError, match="offset"):
        await store.list_sessions(offset=-1)


async def test_session_filters_take_wildcards_literally(store: Store) -> None:
    keys = [
        "webchat:private:Alice",
        "webchat:private:a_b",
        "webchat:private:axb",
        "webchat:group:100%",
        "webchat:group:1000",
        "qq:private:a_b",
        "qqx:private:1",
        "q_:private:1",
    ]
    for key in keys:
        await store.ensure_session(key)

    def found(page: list[SessionSummary]) -> set[str]:
        return {s.key for s in page}

    assert found(await _all_sessions(store, q="ALICE")) == {"webchat:private:Alice"}
    assert found(await _all_sessions(store, q="a_b")) == {"webchat:private:a_b", "qq:private:a_b"}
    assert found(await _all_sessions(store, q="100%")) == {"webchat:group:100%"}
    assert found(await _all_sessions(store, platform="qq")) == {"qq:private:a_b"}
    assert found(await _all_sessions(store, platform="q_")) == {"q_:private:1"}
    assert found(await _all_sessions(store, q="a_b", platform="webchat")) == {"webchat:private:a_b"}
    page, total = await store.list_sessions(q="nothing like this")
    assert (page, total) == ([], 0)


async def test_a_key_without_the_usual_parts_is_listed_with_empty_parts(store: Store) -> None:
    await store.ensure_session("legacy")
    [summary] = await _all_sessions(store)
    assert (summary.platform, summary.chat_type, summary.chat_id) == ("legacy", "", "")


# -- search_messages --------------------------------------------------------------------


async def test_search_is_case_insensitive_literal_and_newest_first(store: Store) -> None:
    first = await _chat(store, "qq:group:7", "Hello there", "hi! everything is 50% off")
    second = await _chat(store, "tg:private:8", "rename it to snake_case", "done: snakeXcase")
    await _chat(store, "qq:group:7", "and 500 off?", "HELLO again")

    hits = await store.search_messages("hello")
    assert [(h.session, h.conversation_id, h.seq, h.role, h.content) for h in hits] == [
        ("qq:group:7", first, 3, "assistant", "HELLO again"),
        ("qq:group:7", first, 0, "user", "Hello there"),
    ]
    assert hits[0].time > hits[1].time

    assert [h.content for h in await store.search_messages("50%")] == ["hi! everything is 50% off"]
    assert [h.content for h in await store.search_messages("_case")] == ["rename it to snake_case"]
    assert [h.conversation_id for h in await store.search_messages("snake")] == [second, second]
    assert len(await store.search_messages("o", limit=3)) == 3
    assert await store.search_messages("") == []
    assert await store.search_messages("no such words") == []


async def test_search_hit_fields_match_the_api(store: Store) -> None:
    conversation = await _chat(store, "webchat:private:bob", "needle", "haystack")
    [hit] = await store.search_messages("NEEDLE")
    assert hit == MessageHit(
        session="webchat:private:bob",
        conversation_id=conversation,
        seq=0,
        role="user",
        content="needle",
        time=hit.time,
    )


# -- conversation_messages ----------------------------------------------------------------


async def test_conversation_messages_pages_back_from_the_newest(store: Store) -> None:
    key = "qq:private:9"
    conversation = await _chat(store, key, *(f"m{i}" for i in range(6)))

    everything = await store.conversation_messages(conversation)
    assert everything is not None
    assert [(m.seq, m.role, m.content) for m in everything] == [
        (i, "user" if i % 2 == 0 else "assistant", f"m{i}") for i in range(6)
    ]
    last = await store.conversation_messages(conversation, limit=4)
    assert last is not None and [m.content for m in last] == ["m2", "m3", "m4", "m5"]
    earlier = await store.conversation_messages(conversation, limit=4, before=2)
    assert earlier is not None and [m.content for m in earlier] == ["m0", "m1"]

    empty = await store.new_conversation(key)
    assert await store.conversation_messages(empty) == []
    assert await store.conversation_messages("no-such-conversation") is None


# -- delete_conversation_by_id -----------------------------------------------------------


async def test_deleting_another_conversation_keeps_the_current_one(store: Store) -> None:
    key = "tg:group:5"
    old = await _chat(store, key, "old question", "old answer")
    current = await store.new_conversation(key)
    await _say(store, current, key, "new question", "new answer")

    assert await store.delete_conversation_by_id(old) is True

    assert (await store.ensure_session(key)).conversation_id == current
    assert [c.id for c in await store.list_conversations(key)] == [current]
    assert await store.conversation_messages(old) is None
    assert await store.search_messages("old question") == []
    [summary] = await _all_sessions(store)
    assert (summary.conversations, summary.messages) == (1, 2)


async def test_deleting_the_only_conversation_gives_the_session_a_fresh_one(
    store: Store,
) -> None:
    key = "webchat:private:carol"
    only = await _chat(store, key, "secret plans", "noted")

    assert await store.delete_conversation_by_id(only) is True

    fresh = (await store.ensure_session(key)).conversation_id
    assert fresh != only
    [info] = await store.list_conversations(key)
    assert (info.id, info.message_count, info.is_current) == (fresh, 0, True)
    assert await store.search_messages("secret plans") == []
    assert await store.delete_conversation_by_id(only) is False
    assert await store.delete_conversation_by_id("never-existed") is False
