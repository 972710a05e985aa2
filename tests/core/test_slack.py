"""The Slack bridge against a fake Slack (Web API, Socket Mode, signed Events API
requests) over real sockets on 127.0.0.1, with the real turn pipeline (in-process bot,
SQLite store, fake LLM) behind it. No Ray."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from astr_ray.config import SlackConfig
from astr_ray.errors import AstrRayError, PlatformError
from astr_ray.message import Event, File, Image, Mention, Reply, Sender, Text, Voice
from astr_ray.platforms import make_bridge
from astr_ray.platforms.base import OnMessage
from astr_ray.platforms.slack import SlackBridge
from astr_ray.platforms.slack_events import decode_text
from astr_ray.platforms.slack_render import (
    TEXT_LIMIT,
    Post,
    Upload,
    escape,
    render_reply,
)
from tests.core import platform_kit
from tests.core.platform_kit import Turns, until
from tests.core.test_plugins import Bot
from tests.peers.openai_server import FakeLLM, Scripted
from tests.peers.slack_api import (
    APP_TOKEN,
    BOT_TOKEN,
    SIGNING_SECRET,
    EventsPoster,
    FakeSlack,
    slack_file,
)

bot = platform_kit.bot  # the in-process bot fixture


def slack_cfg(api_base: str, **overrides: Any) -> SlackConfig:
    data: dict[str, Any] = {
        "id": "slack",
        "type": "slack",
        "mode": "socket",
        "bot_token": BOT_TOKEN,
        "app_token": APP_TOKEN,
        "api_base": api_base,
        "stream": False,
        "action_timeout_s": 5,
        "reconnect_max_s": 0.5,
        "wake": {"prefixes": ["bot "]},
    }
    data.update(overrides)
    return SlackConfig.model_validate(data)


@dataclass
class Link:
    bridge: SlackBridge
    slack: FakeSlack
    turns: Turns

    def stat(self, key: str) -> Any:
        return self.bridge.stats()[key]


@asynccontextmanager
async def slack_link(
    bot: Bot, wrap: Callable[[OnMessage], OnMessage] | None = None, **overrides: Any
) -> AsyncIterator[Link]:
    """A started bridge (Socket Mode unless told otherwise) linked to a fake Slack."""
    slack = FakeSlack()
    base = await slack.start()
    turns = Turns(bot)
    on_message = wrap(turns.on_message) if wrap else turns.on_message
    bridge = make_bridge(
        slack_cfg(base, **overrides),
        on_message,
        on_stream=turns.on_stream,
        metrics_hook=turns.metrics.append,
    )
    assert isinstance(bridge, SlackBridge)
    try:
        await bridge.start()
        assert await bridge.wait_connected(5)
        yield Link(bridge, slack, turns)
    finally:
        await bridge.stop()
        await slack.close()


@pytest.fixture
async def link(bot: Bot) -> AsyncIterator[Link]:
    async with slack_link(bot) as lk:
        yield lk


# -- messages in, replies out ---------------------------------------------------------------


async def test_a_direct_message_is_answered_with_chat_post_message(
    link: Link, fake_llm: FakeLLM
) -> None:
    slack = link.slack
    ts = await slack.im("U1", "hello there")
    (post,) = await slack.wait_calls("chat.postMessage", 1)
    assert post == {"channel": "DU1", "text": "echo: hello there (turn 1)"}
    (event,) = link.turns.seen
    assert event.message_id == ts and event.time == float(ts)
    assert event.session_key == "slack:private:DU1"
    assert event.sender == Sender(id="U1")
    assert event.components == (Text(text="hello there"),)
    await until(lambda: len(slack.acks) == 1)
    await slack.im("U1", "and again")
    posts = await slack.wait_calls("chat.postMessage", 2)
    assert posts[1] == {"channel": "DU1", "text": "echo: and again (turn 2)"}
    assert slack.sent("auth.test") == [{}] and len(slack.sent("apps.connections.open")) == 1
    await until(lambda: link.stat("replies") == 2)  # counted once Slack answered
    stats = link.bridge.stats()
    assert stats["connected"] and stats["bot_user"] == "UBOT" and stats["mode"] == "socket"
    assert (stats["events"], stats["replies"], stats["ignored"]) == (2, 2, 0)
    assert stats["reconnects"] == 0 and stats["malformed"] == 0
    assert link.turns.metrics.count("event") == 2 and link.turns.metrics.count("reply") == 2


async def test_a_channel_needs_a_mention_which_is_answered_once_and_unseen_by_the_llm(
    link: Link, fake_llm: FakeLLM
) -> None:
    slack = link.slack
    await slack.channel_message("C1", "U2", "just chatting among ourselves")
    await slack.channel_message("C1", "U2", "hey <@U9> look at this")  # someone else
    ts = await slack.channel_message("C1", "U2", "<@UBOT> what is 2+2?")  # + app_mention
    await until(lambda: link.stat("ignored") == 3)  # two unwoken, and the mention's twin
    (post,) = await slack.wait_calls("chat.postMessage", 1)
    assert post == {"channel": "C1", "text": "echo: what is 2+2? (turn 1)"}  # not threaded
    assert fake_llm.requests[-1]["messages"][-1]["content"] == "what is 2+2?"
    assert fake_llm.calls == 1
    (event,) = link.turns.seen
    assert event.session_key == "slack:group:C1" and event.message_id == ts
    assert event.text == "what is 2+2?"
    assert link.stat("events") == 3 and link.stat("duplicates") == 0
    await until(lambda: len(slack.acks) == 4)
    assert len(slack.posts()) == 1


async def test_bot_threads_prefixes_and_commands_wake_it_in_channels(
    link: Link, fake_llm: FakeLLM
) -> None:
    slack = link.slack
    top = await slack.channel_message("C2", "U3", "<@UBOT> first")
    await slack.wait_calls("chat.postMessage", 1)
    (bot_ts,) = slack.bot_messages("C2")
    await slack.channel_message("C2", "U4", "a side remark", thread_ts=top)  # not the bot's
    await slack.channel_message("C2", "U3", "and then?", thread_ts=bot_ts)
    posts = await slack.wait_calls("chat.postMessage", 2)
    assert posts[1] == {"channel": "C2", "text": "echo: and then? (turn 1)", "thread_ts": bot_ts}
    assert link.turns.seen[-1].session_key == f"slack:group:C2:{bot_ts}"
    await slack.channel_message("C2", "U3", "bot ask <@U9|alice> about &lt;this&gt;")
    posts = await slack.wait_calls("chat.postMessage", 3)
    assert fake_llm.user_turns()[-1][-1] == "ask @alice about <this>"
    assert posts[2] == {"channel": "C2", "text": "echo: ask @alice about &lt;this&gt; (turn 2)"}
    await slack.channel_message("C2", "U3", "/help")
    posts = await slack.wait_calls("chat.postMessage", 4)
    assert "/help" in posts[3]["text"]
    assert fake_llm.calls == 3  # the command never reached the LLM
    assert link.stat("ignored") == 2  # the side remark, and the first mention's twin


async def test_reply_wake_can_be_switched_off(bot: Bot, fake_llm: FakeLLM) -> None:
    async with slack_link(bot, wake={"reply": False}) as lk:
        await lk.slack.channel_message("C4", "U3", "<@UBOT> hi")
        await lk.slack.wait_calls("chat.postMessage", 1)
        (bot_ts,) = lk.slack.bot_messages("C4")
        await lk.slack.channel_message("C4", "U3", "in your thread", thread_ts=bot_ts)
        await lk.slack.channel_message("C4", "U3", "<@UBOT> last", thread_ts=bot_ts)
        posts = await lk.slack.wait_calls("chat.postMessage", 2)
        assert posts[1]["text"] == "echo: last (turn 1)" and posts[1]["thread_ts"] == bot_ts
        assert lk.stat("ignored") == 3  # the thread message, and two twins


async def test_bots_our_own_messages_edits_and_joins_are_ignored(
    link: Link, fake_llm: FakeLLM
) -> None:
    slack = link.slack
    base = {"type": "message", "channel": "C5", "channel_type": "channel", "text": "x"}
    await slack.send_event({**base, "user": "U2", "bot_id": "B2", "ts": slack.new_ts()})
    await slack.send_event({**base, "user": "UBOT", "ts": slack.new_ts()})
    await slack.send_event({**base, "subtype": "bot_message", "bot_id": "B3", "ts": slack.new_ts()})
    edited = {"type": "message", "text": "<@UBOT> edited", "user": "U2", "ts": "1.1"}
    await slack.send_event({**base, "subtype": "message_changed", "message": edited})
    await slack.send_event({**base, "subtype": "message_deleted", "deleted_ts": "1.1"})
    await slack.send_event({**base, "subtype": "channel_join", "user": "U2", "ts": slack.new_ts()})
    await slack.send_event({"type": "reaction_added", "user": "U2", "reaction": "+1"})
    await slack.im("U2", "still there?")
    await slack.wait_calls("chat.postMessage", 1)
    await until(lambda: link.stat("ignored") == 7)
    assert link.stat("events") == 1 and link.stat("malformed") == 0
    assert fake_llm.calls == 1 and len(link.turns.seen) == 1


async def test_files_become_components_without_their_private_urls(link: Link) -> None:
    files = [
        slack_file("F1", "cat.png", "image/png"),
        slack_file("F2", "memo.m4a", "audio/mp4"),
        slack_file("F3", "report.pdf", "application/pdf", size=2048),
        slack_file("F4", "gone.txt", "text/plain", mode="tombstone"),
    ]
    await link.slack.im("U5", "what is this?", files=files)
    await link.slack.wait_calls("chat.postMessage", 1)
    (event,) = link.turns.seen
    assert event.components == (
        Text(text="what is this?"),
        Image(file_id="F1", mime="image/png"),
        Voice(file_id="F2"),
        File(name="report.pdf", file_id="F3", size=2048),
    )
    assert "files.slack.com" not in json.dumps(event.to_dict())


async def test_media_in_a_reply_are_uploaded_or_posted_as_blocks(bot: Bot) -> None:
    """Attachments (as tools add them) go into the same thread: data: URLs uploaded
    with files_upload_v2, an https image as an image block, an https file as a link,
    a Slack file id as an image block."""

    def with_media(inner: OnMessage) -> OnMessage:
        async def on_message(event: Event) -> Reply | None:
            answer = await inner(event)
            assert answer is not None
            media = (
                Image(url="data:image/png;base64,iVBORw0KGgo="),
                Image(url="https://cdn.example/cat.png"),
                Voice(url="data:audio/mpeg;base64,SUQz"),
                File(name="notes.txt", url="data:text/plain,hi%21"),
                File(name="r.pdf", url="https://cdn.example/r.pdf"),
                Image(file_id="F77"),
            )
            return answer.model_copy(update={"components": (*answer.components, *media)})

        return on_message

    async with slack_link(bot, wrap=with_media) as lk:
        slack = lk.slack
        parent = await slack.channel_message("C3", "U6", "who can draw?")
        await slack.channel_message("C3", "U6", "<@UBOT> draw me a cat", thread_ts=parent)
        await until(lambda: lk.stat("replies") == 1)
        image = {"type": "image", "image_url": "https://cdn.example/cat.png", "alt_text": "image"}
        by_id = {"type": "image", "slack_file": {"id": "F77"}, "alt_text": "image"}
        assert slack.posts() == [
            {"channel": "C3", "text": "echo: draw me a cat (turn 1)", "thread_ts": parent},
            {"channel": "C3", "text": "image", "thread_ts": parent, "blocks": [image]},
            {"channel": "C3", "text": "<https://cdn.example/r.pdf|r.pdf>", "thread_ts": parent},
            {"channel": "C3", "text": "image", "thread_ts": parent, "blocks": [by_id]},
        ]
        asked = slack.sent("files.getUploadURLExternal")
        assert [(a["filename"], a["length"]) for a in asked] == [
            ("image.png", "8"),
            ("voice.mp3", "3"),
            ("notes.txt", "3"),
        ]
        shared = slack.shared
        assert [(s["title"], s["channel_id"], s["thread_ts"]) for s in shared] == [
            ("image.png", "C3", parent),
            ("voice.mp3", "C3", parent),
            ("notes.txt", "C3", parent),
        ]
        uploaded = [slack.uploads[s["id"]] for s in shared]
        assert uploaded == [b"\x89PNG\r\n\x1a\n", b"ID3", b"hi!"]


async def test_long_replies_are_split(link: Link, fake_llm: FakeLLM) -> None:
    content = " ".join(f"word{i}" for i in range(2000))  # ~16k characters
    fake_llm.script.append(Scripted(content=content))
    await link.slack.im("U13", "tell me everything")
    await until(lambda: link.stat("replies") == 1)
    pieces = [p["text"] for p in link.slack.posts()]
    assert len(pieces) == 5 and all(len(p) <= TEXT_LIMIT for p in pieces)
    assert " ".join(pieces) == content
    assert {p["channel"] for p in link.slack.posts()} == {"DU13"}


async def test_streaming_posts_once_then_edits_to_the_full_answer(
    bot: Bot, fake_llm: FakeLLM
) -> None:
    async with slack_link(bot, stream=True, stream_interval_s=0.2) as lk:
        slack = lk.slack
        content = " ".join(f"w{i}" for i in range(30))
        fake_llm.stream_delay = 0.05  # 30 chunks over ~1.5 s
        fake_llm.script.append(Scripted(content=content))
        await slack.im("U7", "stream please")
        await until(lambda: lk.stat("replies") == 1)
        (post,) = slack.posts()
        (bot_ts,) = slack.bot_messages("DU7")
        assert post["text"].endswith("▌") and post["text"] != content
        updates = slack.sent("chat.update")
        assert len(updates) >= 2
        assert all((u["channel"], u["ts"]) == ("DU7", bot_ts) for u in updates)
        assert updates[-1]["text"] == content and slack.text_of("DU7", bot_ts) == content
        # A reply without chunks (a command) is posted the normal way.
        fake_llm.stream_delay = 0.0
        await slack.im("U7", "/help")
        posts = await slack.wait_calls("chat.postMessage", 2)
        assert "/help" in posts[1]["text"]
        await until(lambda: lk.stat("replies") == 2)  # counted once Slack answered


# -- the link --------------------------------------------------------------------------------


async def test_link_dropped_mid_conversation_nothing_lost_or_doubled(
    link: Link, fake_llm: FakeLLM
) -> None:
    slack = link.slack
    fake_llm.script.append(Scripted(delay=1.0))
    first = await slack.im("U8", "slow question")
    await until(lambda: fake_llm.calls == 1)
    await slack.drop()  # while the LLM is thinking
    await until(lambda: link.stat("reconnects") == 1)
    (post,) = await slack.wait_calls("chat.postMessage", 1)
    assert post["text"] == "echo: slow question (turn 1)"
    # The acknowledgement is lost with the link: Slack re-sends the envelope after the
    # reconnect; the repeat is answered from the store and not posted again.
    slack.lose_acks = True
    second = await slack.im("U8", "second question")
    await until(lambda: len(link.turns.seen) == 2)
    await slack.drop()
    slack.lose_acks = False
    await until(lambda: link.stat("duplicates") == 1)
    assert slack.envelopes[-1]["retry_attempt"] == 1
    assert [e.message_id for e in link.turns.seen] == [first, second, second]
    # Slack retiring the connection: a disconnect envelope, then a fresh link.
    await slack.disconnect()
    await until(lambda: link.stat("reconnects") == 3)
    await slack.im("U8", "still there?")
    posts = await slack.wait_calls("chat.postMessage", 3)
    assert [p["text"] for p in posts] == [
        "echo: slow question (turn 1)",
        "echo: second question (turn 2)",
        "echo: still there? (turn 3)",
    ]
    assert fake_llm.calls == 3 and slack.connects == 4
    assert len(slack.sent("apps.connections.open")) == 4
    assert link.stat("replies") == 3 and link.turns.metrics.count("reconnect") == 3


async def test_a_429_is_waited_out_and_the_reply_arrives_once(link: Link) -> None:
    link.slack.rate_limit("chat.postMessage", times=1, retry_after="1")
    await link.slack.im("U9", "are you there?")
    (post,) = await link.slack.wait_calls("chat.postMessage", 1)
    assert post["text"] == "echo: are you there? (turn 1)"
    statuses = [c.status for c in link.slack.calls if c.method == "chat.postMessage"]
    assert statuses == [429, 200]
    await until(lambda: link.stat("replies") == 1)  # counted once Slack answered
    assert link.stat("rate_limited") == 1
    assert link.turns.metrics.count("rate_limited") == 1


async def test_a_rate_limit_past_the_action_timeout_fails_the_send(bot: Bot) -> None:
    async with slack_link(bot, action_timeout_s=0.5) as lk:
        lk.slack.rate_limit("chat.postMessage", times=5, retry_after="3")
        with pytest.raises(PlatformError, match="timed out"):
            await lk.bridge.push("slack:group:C6", "anyone?")
        assert lk.stat("rate_limited") == 1 and lk.stat("send_failures") == 1


async def test_a_failed_reply_is_logged_counted_and_resent_on_redelivery(
    link: Link, fake_llm: FakeLLM, caplog: pytest.LogCaptureFixture
) -> None:
    slack = link.slack
    slack.failures["chat.postMessage"] = "channel_not_found"
    ts = await slack.im("U10", "are you there?")
    await until(lambda: link.stat("send_failures") == 1)
    assert "not delivered" in caplog.text and "channel_not_found" in caplog.text
    del slack.failures["chat.postMessage"]
    again = slack.message("DU10", "U10", "are you there?", channel_type="im", ts=ts)
    await slack.send_event(again)  # Slack delivers it once more
    (post,) = await slack.wait_calls("chat.postMessage", 1)
    assert post["text"] == "echo: are you there? (turn 1)"
    assert fake_llm.calls == 1 and link.stat("duplicates") == 1
    await slack.send_event(again)  # long after its reply went out: not resent
    await until(lambda: link.stat("duplicates") == 2)
    assert len(slack.posts()) == 1 and link.stat("replies") == 1


async def test_malformed_payloads_are_logged_and_skipped(link: Link, fake_llm: FakeLLM) -> None:
    slack = link.slack

    def im(**fields: Any) -> dict[str, Any]:
        return {**slack.message("DU11", "U11", "x", channel_type="im"), **fields}

    await slack.send_raw("this is not json {")
    await slack.send_raw("[1, 2, 3]")
    await slack.send_envelope({"envelope_id": "bad-1", "type": "events_api", "payload": "no"})
    await slack.send_envelope(
        {"envelope_id": "bad-2", "type": "events_api", "payload": {"type": "event_callback"}}
    )
    await slack.send_event({"type": "message", "channel": "DU11", "channel_type": "im"})
    await slack.send_event(im(text=42))
    await slack.send_event(im(files=[{"name": "no id"}]))
    await slack.send_event(im(channel_type="telepathy"))
    await slack.send_event(im(ts="yesterday"))
    await slack.im("U11", "are you ok?")
    (post,) = await slack.wait_calls("chat.postMessage", 1)
    assert post["text"] == "echo: are you ok? (turn 1)"
    assert link.stat("malformed") == 9 and link.turns.metrics.count("malformed") == 9
    assert link.stat("connected") and link.stat("reconnects") == 0 and slack.connects == 1
    assert fake_llm.calls == 1
    await until(lambda: slack.acked("bad-1") and slack.acked("bad-2"))  # not re-sent forever


async def test_events_api_signed_requests_retries_and_refusals(
    bot: Bot, fake_llm: FakeLLM, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with slack_link(
        bot, mode="events", app_token=None, signing_secret=SIGNING_SECRET, port=0
    ) as lk:
        assert lk.bridge.port and lk.stat("connected") and lk.stat("mode") == "events"
        poster = EventsPoster(f"http://127.0.0.1:{lk.bridge.port}/slack/events")
        status, body = await poster.post({"type": "url_verification", "challenge": "ch-1"})
        assert (status, json.loads(body)) == (200, {"challenge": "ch-1"})
        fake_llm.script.append(Scripted(delay=1.0))
        event = lk.slack.message("DU12", "U12", "over http", channel_type="im")
        payload = lk.slack.callback(event)
        assert (await poster.post(payload))[0] == 200
        assert lk.stat("replies") == 0  # answered before the turn is done
        assert (await poster.post(payload, retry_num=1))[0] == 200  # Slack's retry
        (post,) = await lk.slack.wait_calls("chat.postMessage", 1)
        assert post == {"channel": "DU12", "text": "echo: over http (turn 1)"}
        await until(lambda: lk.stat("duplicates") == 1)
        assert len(lk.slack.posts()) == 1 and fake_llm.calls == 1
        stale = str(int(time.time()) - 600)
        assert (await poster.post(payload, secret="not-the-secret"))[0] == 401
        assert (await poster.post(payload, timestamp=stale))[0] == 401
        assert (await poster.post(payload, timestamp="soon", signature="v0=00"))[0] == 401
        assert lk.stat("bad_signatures") == 3
        assert (await poster.post(b"not json"))[0] == 400
        assert lk.stat("malformed") == 1 and len(lk.slack.posts()) == 1
    assert SIGNING_SECRET not in caplog.text and BOT_TOKEN not in caplog.text


# -- pushes, lifecycle, secrets ----------------------------------------------------------------


async def test_stop_is_clean_and_no_token_ever_reaches_the_logs(
    bot: Bot, fake_llm: FakeLLM, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with slack_link(bot, stream=True, stream_interval_s=0.2) as lk:
        await lk.slack.im("U30", "hello")
        await lk.slack.wait_calls("chat.postMessage", 1)
        await lk.slack.drop()
        await until(lambda: lk.stat("reconnects") == 1)
        await lk.bridge.push("slack:private:U31", "a push")
        with pytest.raises(AstrRayError, match="already started"):
            await lk.bridge.start()
        fake_llm.script.append(Scripted(delay=2.0))
        await lk.slack.im("U30", "a slow one")
        await until(lambda: fake_llm.calls == 2)
        began = time.monotonic()
        await lk.bridge.stop()  # cancels the turn in flight
        assert time.monotonic() - began < 1.5
        await until(lambda: not lk.slack.linked)
        assert not lk.stat("connected")
        await lk.bridge.stop()  # idempotent
        stats = json.dumps(lk.bridge.stats())
        with pytest.raises(PlatformError, match="not started"):
            await lk.bridge.push("slack:private:U31", "after stop")
    for secret in (BOT_TOKEN, APP_TOKEN):
        assert secret not in caplog.text and secret not in stats
    assert "chat.postMessage" in caplog.text  # the SDK's debug log was captured


async def test_push_reaches_channels_threads_and_users(link: Link) -> None:
    bridge, slack = link.bridge, link.slack
    await bridge.push("slack:group:C20", "announcement")
    await bridge.push("slack:group:C20:1700000000.000001", "in the thread")
    await bridge.push("slack:private:U21", "hello you")
    await bridge.push("slack:private:DU21", "hello again")
    assert slack.posts() == [
        {"channel": "C20", "text": "announcement"},
        {"channel": "C20", "text": "in the thread", "thread_ts": "1700000000.000001"},
        {"channel": "DU21", "text": "hello you"},
        {"channel": "DU21", "text": "hello again"},
    ]
    assert slack.sent("conversations.open") == [{"users": "U21"}]
    with pytest.raises(PlatformError, match="not this platform"):
        await bridge.push("telegram:private:1", "x")
    with pytest.raises(PlatformError, match="session key"):
        await bridge.push("nonsense", "x")
    slack.failures["chat.postMessage"] = "not_in_channel"
    with pytest.raises(PlatformError, match="not_in_channel"):
        await bridge.push("slack:group:C20", "x")
    assert link.stat("send_failures") == 1


async def test_a_wrong_token_fails_the_start_without_showing_it(
    bot: Bot, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    slack = FakeSlack()
    base = await slack.start()
    wrong = "xoxb-wrong-token-4242"
    bridge = SlackBridge(slack_cfg(base, bot_token=wrong), Turns(bot).on_message)
    try:
        with pytest.raises(PlatformError, match="invalid_auth") as refused:
            await bridge.start()
        assert wrong not in str(refused.value) and not bridge.connected()
    finally:
        await bridge.stop()
        await slack.close()
    assert wrong not in caplog.text


# -- formats, pure -------------------------------------------------------------------------


def test_slack_text_decodes_to_plain_text() -> None:
    assert decode_text("<@UBOT>  hi &lt;b&gt; &amp;amp;", "UBOT") == ("hi <b> &amp;", True)
    assert decode_text("hey <@UBOT>, you", "UBOT") == ("hey , you", True)
    assert decode_text("ask <@U2> and <@U3|carol>", "UBOT") == ("ask @U2 and @carol", False)
    assert decode_text("<!here> in <#C1|general> and <#C2>", None) == (
        "@here in #general and #C2",
        False,
    )
    assert decode_text("see <https://x.org/a?b=1&amp;c=2|the docs>", None) == (
        "see the docs (https://x.org/a?b=1&c=2)",
        False,
    )
    assert decode_text("<https://x.org> <mailto:a@b.c|a@b.c> <!subteam^S1|@devs>", None) == (
        "https://x.org a@b.c @devs",
        False,
    )


def test_replies_render_escaped_and_split() -> None:
    assert escape("a < b && c > d") == "a &lt; b &amp;&amp; c &gt; d"
    assert render_reply([Text(text="hi "), Mention(user_id="U2"), Text(text=" <3")]) == [
        Post("hi <@U2> &lt;3")
    ]
    assert render_reply([Text(text="  ")]) == []
    assert render_reply([Voice(file_id="F1"), File(name="a", url="file:///etc/passwd")]) == []
    assert render_reply([Image(url="data:image/jpeg;base64,/9j/")]) == [
        Upload("image.jpg", b"\xff\xd8\xff")
    ]
    assert render_reply([Voice(url="data:;base64,not base64!")]) == []
    assert render_reply([File(name="a.txt", url="data:text/plain,a%20b")]) == [
        Upload("a.txt", b"a b")
    ]
