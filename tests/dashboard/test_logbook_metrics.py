"""The dashboard's log book (filters, followers) and its metric series (rates and
latency quantiles from the tree's snapshots)."""

from __future__ import annotations

import pytest

from astr_ray.logbook import LogBook, LogFilter, session_of
from astr_ray.metrics import Metrics
from dashboard.metrics import summarize


def record(actor: str, level: str, message: str) -> dict[str, object]:
    return {
        "time": 0.0,
        "level": level,
        "actor": actor,
        "logger": "x",
        "message": message,
        "session": session_of(message),
    }


def test_session_keys_are_found_in_messages() -> None:
    assert session_of("turn failed session=webchat:private:alice x") == "webchat:private:alice"
    assert session_of("no key here") is None


def test_filters_by_level_actor_and_session() -> None:
    book = LogBook(keep=100)
    book.add(
        [
            record("session-host-0", "INFO", "turn session=tg:private:1"),
            record("session-host-1", "WARNING", "slow session=tg:private:2"),
            record("supervisor", "ERROR", "died"),
            record("supervisor", "DEBUG", "noise"),
        ]
    )
    assert [r["message"] for r in book.recent(LogFilter())] == [
        "turn session=tg:private:1",
        "slow session=tg:private:2",
        "died",
    ]
    assert [r["actor"] for r in book.recent(LogFilter.parse("warning", None, None))] == [
        "session-host-1",
        "supervisor",
    ]
    assert len(book.recent(LogFilter.parse(None, "session-host", None))) == 2
    only = book.recent(LogFilter.parse(None, None, "tg:private:2"))
    assert [r["actor"] for r in only] == ["session-host-1"]
    with pytest.raises(ValueError, match="level must be one of"):
        LogFilter.parse("LOUD", None, None)


def test_the_book_keeps_the_newest_and_followers_never_block() -> None:
    book = LogBook(keep=3, follower_queue=2)
    follower = book.follow(LogFilter(actor="a"))
    book.add(record("a" if i % 2 else "b", "INFO", f"m{i}") for i in range(10))
    assert [r["message"] for r in book.recent(LogFilter(), limit=10)] == ["m7", "m8", "m9"]
    # A slow follower loses its oldest lines, not the book's.
    assert [follower.get_nowait()["message"] for _ in range(follower.qsize())] == ["m7", "m9"]
    book.unfollow(follower)
    book.add([record("a", "INFO", "after")])
    assert follower.empty()


def test_series_are_rates_and_interval_quantiles() -> None:
    host, web = Metrics(host=True), Metrics()
    web.messages.labels("webchat", "in").inc(10)
    for _ in range(10):
        host.turn_seconds.labels("ok").observe(0.02)
    first, totals = summarize({"h": host.snapshot(), "w": web.snapshot()}, {}, 5.0)
    assert first["messages_in_per_s"] == 0.0 and "turn_p50_ms" not in first, "no interval yet"

    web.messages.labels("webchat", "in").inc(25)
    web.messages.labels("webchat", "out").inc(5)
    for _ in range(99):
        host.turn_seconds.labels("ok").observe(0.2)
    host.turn_seconds.labels("ok").observe(20)
    host.active_sessions.set(7)
    second, _ = summarize({"h": host.snapshot(), "w": web.snapshot()}, totals, 5.0)
    assert second["messages_in_per_s"] == 5.0 and second["messages_out_per_s"] == 1.0
    # This interval's turns only: 99 at 0.2 s and one at 20 s (the earlier 20 ms ones
    # are not in it).
    assert 100 <= second["turn_p50_ms"] <= 250
    assert second["turn_p99_ms"] <= 250 < 20_000
    assert second["active_sessions"] == 7
