"""The OneBot v11 bridge against a fake NapCat over real sockets on 127.0.0.1, with the
real turn pipeline (in-process bot, SQLite store, fake LLM) behind it. No Ray."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from astr_ray.config import OneBotConfig
from astr_ray.errors import AstrRayError, PlatformError
from astr_ray.message import Event, File, Image, Mention, Reply, ReplyTo, Sender, Text, Voice
from astr_ray.platforms.onebot import OneBotBridge
from astr_ray.platforms.onebot_segments import (
    TEXT_LIMIT,
    escape_cq,
    media_file,
    parse_cq,
    render_reply,
)
from tests.core.test_plugins import Bot, make_bot
from tests.peers.onebot_client import FakeNapCat, at, face, image, record, reply, text
from tests.peers.openai_server import FakeLLM, Scripted

TOKEN = "onebot-test-token"
SELF = 10001

OnMessage = Callable[[Event], Awaitable[Reply | None]]


async def until(predicate: Callable[[], Any], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def onebot_cfg(**overrides: Any) -> OneBotConfig:
    data: dict[str, Any] = {
        "id": "qq",
        "port": 0,
        "access_token": TOKEN,
        "action_timeout_s": 5,
        "reconnect_max_s": 0.5,
        "wake": {"prefixes": ["bot "]},
    }
    data.update(overrides)
    return OneBotConfig.model_validate(data)


@pytest.fixture
async def bot(tmp_path: Path, fake_llm: FakeLLM) -> AsyncIterator[Bot]:
    b = await make_bot(tmp_path, fake_llm, [])
    yield b
    await b.plugins.close()
    await b.processor.chain.close()
    await b.store.close()


@dataclass
class Link:
    bridge: OneBotBridge
    napcat: FakeNapCat
    url: str
    seen: list[Event] = field(default_factory=list)  # what on_message was given
    metrics: list[str] = field(default_factory=list)

    def stat(self, key: str) -> Any:
        return self.bridge.stats()[key]


def pipeline(bot: Bot, seen: list[Event]) -> OnMessage:
    """The real turn pipeline, noting each event it is handed."""

    async def on_message(event: Event) -> Reply | None:
        seen.append(event)
        return await bot.manager.submit(event)

    return on_message


@asynccontextmanager
async def reverse_link(
    bot: Bot,
    wrap: Callable[[OnMessage], OnMessage] | None = None,
    **overrides: Any,
) -> AsyncIterator[Link]:
    """A bridge in reverse mode with the fake NapCat connected to it."""
    seen: list[Event] = []
    metrics: list[str] = []
    on_message = pipeline(bot, seen)
    bridge = OneBotBridge(
        onebot_cfg(**overrides),
        wrap(on_message) if wrap else on_message,
        metrics_hook=metrics.append,
    )
    await bridge.start()
    napcat = FakeNapCat(SELF, token=TOKEN)
    url = f"ws://127.0.0.1:{bridge.port}/onebot/v11/ws"
    try:
        await napcat.connect(url)
        assert await bridge.wait_connected(5)
        yield Link(bridge, napcat, url, seen, metrics)
    finally:
        await napcat.close()
        await bridge.stop()


@pytest.fixture
async def link(bot: Bot) -> AsyncIterator[Link]:
    async with reverse_link(bot) as lk:
        yield lk


# -- messages in, replies out ---------------------------------------------------------------


async def test_private_message_is_answered_with_send_msg(link: Link, fake_llm: FakeLLM) -> None:
    mid = await link.napcat.private(2001, "hello there")
    (params,) = await link.napcat.wait_sent(1)
    assert params == {
        "message_type": "private",
        "user_id": 2001,
        "message": [text("echo: hello there (turn 1)")],
    }
    (event,) = link.seen
    assert event.message_id == str(mid)
    assert event.session_key == "qq:private:2001"
    assert event.sender == Sender(id="2001", name="Alice")
    await link.napcat.private(2001, "and again")
    sent = await link.napcat.wait_sent(2)
    assert sent[1]["message"] == [text("echo: and again (turn 2)")]
    await until(lambda: link.stat("replies") == 2)  # counted once the action is answered
    stats = link.bridge.stats()
    assert stats["connected"] and stats["connections"] == 1 and stats["self_ids"] == ["10001"]
    assert (stats["events"], stats["replies"], stats["ignored"]) == (2, 2, 0)
    assert link.metrics.count("event") == 2 and link.metrics.count("reply") == 2


async def test_group_needs_a_mention_which_the_llm_does_not_see(
    link: Link, fake_llm: FakeLLM
) -> None:
    await link.napcat.group(3001, 2002, "just chatting among ourselves")
    await link.napcat.group(3001, 2002, [at(4242), text(" hey, you")])  # someone else
    mid = await link.napcat.group(3001, 2002, [at(SELF), text(" what is 2+2?")])
    (params,) = await link.napcat.wait_sent(1)
    assert params["message_type"] == "group" and params["group_id"] == 3001
    assert "user_id" not in params
    assert params["message"] == [reply(mid), text("echo: what is 2+2? (turn 1)")]
    assert fake_llm.user_turns() == [["what is 2+2?"]]
    (event,) = link.seen
    assert event.session_key == "qq:group:3001" and event.text == "what is 2+2?"
    assert not any(isinstance(c, Mention) for c in event.components)
    assert link.stat("ignored") == 2 and link.stat("events") == 3


async def test_reply_to_the_bot_prefix_and_commands_wake_it_in_groups(
    link: Link, fake_llm: FakeLLM
) -> None:
    nap = link.napcat
    await nap.group(3002, 2003, [at(SELF), text("first")])
    await nap.wait_sent(1)
    (bot_mid,) = nap.bot_message_ids
    await nap.group(3002, 2004, [reply(4711), text("quoting someone else")])  # not the bot
    await nap.group(3002, 2003, [reply(bot_mid), text("and then?")])
    sent = await nap.wait_sent(2)
    assert sent[1]["message"][1] == text("echo: and then? (turn 2)")
    assert ReplyTo(message_id=str(bot_mid)) in link.seen[-1].components
    await nap.group(3002, 2003, "bot tell me more")
    sent = await nap.wait_sent(3)
    assert sent[2]["message"][1] == text("echo: tell me more (turn 3)")
    await nap.group(3002, 2003, "/help")
    sent = await nap.wait_sent(4)
    assert "/help" in sent[3]["message"][1]["data"]["text"]
    assert fake_llm.calls == 3  # the command never reached the LLM
    assert link.stat("ignored") == 1


async def test_reply_wake_can_be_switched_off(bot: Bot, fake_llm: FakeLLM) -> None:
    async with reverse_link(bot, wake={"reply": False, "mention": True}) as lk:
        await lk.napcat.group(3005, 2003, [at(SELF), text("hi")])
        await lk.napcat.wait_sent(1)
        await lk.napcat.group(3005, 2003, [reply(lk.napcat.bot_message_ids[0]), text("hm")])
        await lk.napcat.group(3005, 2003, "bot prefix is not configured here")
        await lk.napcat.group(3005, 2003, [at(SELF), text("last")])
        sent = await lk.napcat.wait_sent(2)
        assert sent[1]["message"][1] == text("echo: last (turn 2)")
        assert lk.stat("ignored") == 2


async def test_media_and_face_segments_become_components(link: Link) -> None:
    nap = link.napcat
    url = "https://multimedia.nt.qq.com.cn/download?appid=1407&fileid=abc"
    await nap.private(2005, [image("abc.jpg", url), text("what is this?")])
    await nap.private(2005, [record("v.amr", "https://multimedia.example/v.amr")])
    await nap.private(2005, [face(14), text(" hi")])
    await nap.wait_sent(3)
    first, second, third = link.seen
    assert first.components == (Image(url=url, file_id="abc.jpg"), Text(text="what is this?"))
    assert second.components == (Voice(url="https://multimedia.example/v.amr", file_id="v.amr"),)
    assert third.text == "[face:14] hi"


async def test_cq_string_messages_are_parsed_and_unescaped(link: Link, fake_llm: FakeLLM) -> None:
    raw = f"[CQ:at,qq={SELF}] what about &#91;brackets&#93; &amp; [CQ:face,id=5]"
    await link.napcat.group(3003, 2006, raw, cq=True)
    await link.napcat.wait_sent(1)
    assert fake_llm.user_turns() == [["what about [brackets] & [face:5]"]]


async def test_media_in_a_reply_become_segments(bot: Bot) -> None:
    """Attachments (as sandbox tools add them) go out as image, record and file
    segments: the image with the text, the voice and the file each on its own."""

    def with_media(inner: OnMessage) -> OnMessage:
        async def on_message(event: Event) -> Reply | None:
            answer = await inner(event)
            assert answer is not None
            media = (
                Image(url="data:image/png;base64,iVBORw0KGgo="),
                Voice(url="https://cdn.example/v.mp3"),
                File(name="r.pdf", url="https://cdn.example/r.pdf"),
            )
            return answer.model_copy(update={"components": (*answer.components, *media)})

        return on_message

    async with reverse_link(bot, wrap=with_media) as lk:
        mid = await lk.napcat.group(3006, 2012, [at(SELF), text("draw me a cat")])
        first, second, third = await lk.napcat.wait_sent(3)
        assert first["message"] == [
            reply(mid),
            text("echo: draw me a cat (turn 1)"),
            {"type": "image", "data": {"file": "base64://iVBORw0KGgo="}},
        ]
        assert second["message"] == [
            {"type": "record", "data": {"file": "https://cdn.example/v.mp3"}}
        ]
        assert third["message"] == [
            {"type": "file", "data": {"file": "https://cdn.example/r.pdf", "name": "r.pdf"}}
        ]
        await until(lambda: lk.stat("replies") == 1)  # counted once the action is answered


async def test_long_replies_are_split(link: Link, fake_llm: FakeLLM) -> None:
    content = " ".join(f"word{i}" for i in range(2000))  # ~15k characters
    fake_llm.script.append(Scripted(content=content))
    await link.napcat.private(2013, "tell me everything")
    await until(lambda: link.stat("replies") == 1)
    pieces = [p["message"][0]["data"]["text"] for p in link.napcat.sent()]
    assert len(pieces) == 4 and all(len(p) <= TEXT_LIMIT for p in pieces)
    assert " ".join(pieces) == content


# -- the link ------------------------------------------------------------------------------


async def test_a_wrong_or_missing_token_is_refused_before_the_upgrade(bot: Bot) -> None:
    async with reverse_link(bot) as lk:
        for token in ("not-the-token", ""):
            intruder = FakeNapCat(20002, token=token)
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await intruder.connect(lk.url)
            assert refused.value.status == 401
            await intruder.close()
        via_query = FakeNapCat(20003, token=TOKEN)
        await via_query.connect(lk.url, in_query=True)
        await until(lambda: lk.stat("connections") == 2)
        assert lk.stat("self_ids") == ["10001", "20003"]
        await via_query.close()
        await until(lambda: lk.stat("connections") == 1)


async def test_meta_events_notices_and_requests_are_not_dispatched(
    link: Link, fake_llm: FakeLLM
) -> None:
    nap = link.napcat
    await nap.heartbeat()
    await nap.send_meta("lifecycle", sub_type="enable")
    await nap.send_event(
        {
            "post_type": "notice",
            "notice_type": "group_increase",
            "group_id": 3001,
            "user_id": 5,
            "self_id": SELF,
            "time": 1,
        }
    )
    await nap.send_event(
        {
            "post_type": "request",
            "request_type": "friend",
            "user_id": 6,
            "comment": "hi",
            "flag": "x",
            "self_id": SELF,
            "time": 1,
        }
    )
    await nap.private(2007, "still there?")
    await nap.wait_sent(1)
    stats = link.bridge.stats()
    assert (stats["heartbeats"], stats["ignored"], stats["events"]) == (1, 2, 1)
    assert fake_llm.calls == 1 and len(link.seen) == 1


async def test_a_link_silent_past_its_heartbeats_is_closed(link: Link) -> None:
    await link.napcat.heartbeat(interval_ms=100)
    await until(lambda: not link.stat("connected"), within=5)
    await link.napcat.reconnect()
    await link.bridge.push("qq:private:2017", "welcome back")
    assert link.napcat.sent()[0]["user_id"] == 2017
    assert link.stat("reconnects") == 1


def _private(**fields: Any) -> dict[str, Any]:
    event = {
        "post_type": "message",
        "message_type": "private",
        "self_id": SELF,
        "user_id": 2008,
        "message_id": 99,
        "message": [text("hi")],
        "time": 1,
    }
    event.update(fields)
    return {k: v for k, v in event.items() if v is not None}


async def test_garbage_and_malformed_events_are_skipped(link: Link, fake_llm: FakeLLM) -> None:
    nap = link.napcat
    await nap.send_raw("this is not json {")
    await nap.send_raw("[1, 2, 3]")
    await nap.send_raw('{"hello": "world"}')
    await nap.send_event(_private(message_id=None, user_id=None))
    await nap.send_event(_private(message=42))
    await nap.send_event(_private(message=[{"type": "text"}]))  # no text
    await nap.send_event(_private(user_id=True))
    await nap.send_event(_private(message_type="channel"))
    await nap.private(2008, "are you ok?")
    (params,) = await nap.wait_sent(1)
    assert params["message"] == [text("echo: are you ok? (turn 1)")]
    assert link.stat("malformed") == 8 and link.metrics.count("malformed") == 8
    assert link.stat("connections") == 1 and link.stat("reconnects") == 0
    assert nap.connects == 1 and fake_llm.calls == 1


async def test_link_dropped_mid_turn_reply_arrives_once(link: Link, fake_llm: FakeLLM) -> None:
    """The fake drops the link while the LLM is slow, reconnects and re-delivers the
    message: the reply goes out once, after the reconnect, and the repeat costs no
    second LLM call (the pipeline answers it as a duplicate, which is not resent)."""
    nap = link.napcat
    fake_llm.script.append(Scripted(delay=1.0))
    mid = await nap.private(2009, "slow question")
    await until(lambda: fake_llm.calls == 1)
    await nap.drop()
    await until(lambda: not link.stat("connected"))
    await nap.reconnect()
    await nap.private(2009, "slow question", message_id=mid)
    (params,) = await nap.wait_sent(1)
    assert params["message"] == [text("echo: slow question (turn 1)")]
    await until(lambda: link.stat("duplicates") == 1)
    assert len(nap.sent()) == 1 and fake_llm.calls == 1
    assert [e.message_id for e in link.seen] == [str(mid), str(mid)]
    await until(lambda: link.stat("replies") == 1)  # counted once the action is answered
    assert link.stat("reconnects") == 1
    # Re-delivered once more, long after its reply went out: still not resent.
    await nap.private(2009, "slow question", message_id=mid)
    await until(lambda: link.stat("duplicates") == 2)
    assert len(nap.sent()) == 1 and fake_llm.calls == 1


async def test_a_reply_whose_delivery_failed_is_resent_on_redelivery(
    link: Link, fake_llm: FakeLLM
) -> None:
    nap = link.napcat
    nap.fail = {"send_msg"}
    mid = await nap.private(2014, "are you there?")
    await until(lambda: link.stat("send_failures") == 1)
    nap.fail = set()
    await nap.private(2014, "are you there?", message_id=mid)
    await until(lambda: link.stat("replies") == 1)
    assert [p["message"] for p in nap.sent()] == [[text("echo: are you there? (turn 1)")]] * 2
    assert fake_llm.calls == 1 and link.stat("duplicates") == 1


async def test_forward_mode_reconnects_after_the_server_restarts(
    bot: Bot, fake_llm: FakeLLM
) -> None:
    nap = FakeNapCat(SELF, token=TOKEN)
    port = await nap.serve()
    seen: list[Event] = []
    cfg = onebot_cfg(mode="forward", url=f"ws://127.0.0.1:{port}/")
    bridge = OneBotBridge(cfg, pipeline(bot, seen))
    await bridge.start()
    try:
        await nap.wait_linked()
        await until(lambda: bridge.stats()["self_ids"] == ["10001"])
        assert nap.sent("get_login_info") == [{}]
        await nap.private(2010, "over a forward link")
        await nap.wait_sent(1)
        await nap.restart()
        await nap.wait_linked()
        await until(lambda: bridge.stats()["connected"])
        await nap.private(2010, "after the restart")
        sent = await nap.wait_sent(2)
        assert sent[1]["message"] == [text("echo: after the restart (turn 2)")]
        assert bridge.stats()["reconnects"] == 1 and nap.connects == 2
    finally:
        await bridge.stop()
        await nap.close()


async def test_forward_mode_keeps_trying_while_the_server_is_down(bot: Bot) -> None:
    nap = FakeNapCat(SELF, token=TOKEN)
    port = await nap.serve()
    await nap.stop_serving()
    bridge = OneBotBridge(
        onebot_cfg(mode="forward", url=f"ws://127.0.0.1:{port}/"), pipeline(bot, [])
    )
    await bridge.start()
    try:
        assert not await bridge.wait_connected(0.8)
        await nap.serve(port)
        assert await bridge.wait_connected(5)
        await bridge.push("qq:private:2015", "back")
        assert nap.sent()[0]["message"] == [text("back")]
    finally:
        await bridge.stop()
        await nap.close()


# -- pushes and actions ------------------------------------------------------------------


async def test_push_reaches_a_group_and_a_private_chat(link: Link) -> None:
    await link.bridge.push("qq:group:3004", "announcement")
    await link.bridge.push("qq:private:2011", "hello you")
    assert link.napcat.sent() == [
        {"message_type": "group", "group_id": 3004, "message": [text("announcement")]},
        {"message_type": "private", "user_id": 2011, "message": [text("hello you")]},
    ]
    with pytest.raises(PlatformError, match="not this platform"):
        await link.bridge.push("telegram:private:1", "x")
    link.napcat.fail = {"send_msg"}
    with pytest.raises(PlatformError, match="scripted failure"):
        await link.bridge.push("qq:private:2011", "x")


async def test_an_action_waits_for_the_link_to_come_back(link: Link) -> None:
    await link.napcat.drop()
    await until(lambda: not link.stat("connected"))
    pushing = asyncio.create_task(link.bridge.push("qq:private:2016", "later"))
    await asyncio.sleep(0.3)
    assert not pushing.done()
    await link.napcat.reconnect()
    await asyncio.wait_for(pushing, 5)
    assert link.napcat.sent() == [
        {"message_type": "private", "user_id": 2016, "message": [text("later")]}
    ]


async def test_actions_time_out(bot: Bot) -> None:
    async with reverse_link(bot, action_timeout_s=0.4) as lk:
        lk.napcat.silent = True
        with pytest.raises(PlatformError, match="timed out"):
            await lk.bridge.push("qq:private:1", "anyone?")
        await lk.napcat.drop()
        await until(lambda: not lk.stat("connected"))
        with pytest.raises(PlatformError, match="no connection"):
            await lk.bridge.push("qq:private:1", "anyone?")


async def test_start_once_and_stop_closes_the_links(link: Link) -> None:
    with pytest.raises(AstrRayError, match="already started"):
        await link.bridge.start()
    began = time.monotonic()
    await link.bridge.stop()
    assert time.monotonic() - began < 5  # not aiohttp's 60 s shutdown wait
    await until(lambda: not link.napcat.linked)
    assert not link.stat("connected")
    await link.bridge.stop()  # idempotent


# -- segments, pure ----------------------------------------------------------------------


def test_cq_strings_round_trip_through_escaping() -> None:
    assert parse_cq(
        "a &#91;b&#93; &amp;#91; [CQ:share,url=http://x/?a=1&amp;b=2,title=t&#44;u]"
    ) == [
        text("a [b] &#91; "),
        {"type": "share", "data": {"url": "http://x/?a=1&b=2", "title": "t,u"}},
    ]
    assert parse_cq("[CQ:shake]") == [{"type": "shake", "data": {}}]
    assert parse_cq(escape_cq("[x] & y")) == [text("[x] & y")]
    assert parse_cq("[CQ:share,title=has=equals]")[0]["data"] == {"title": "has=equals"}


def test_media_files_and_render_order() -> None:
    assert media_file("data:text/plain,hi%21", None) == "base64://aGkh"
    assert media_file(None, "abc.jpg") == "abc.jpg"
    assert render_reply([Text(text="")]) == []
    assert render_reply([ReplyTo(message_id="5"), Text(text="ok")]) == [[reply(5), text("ok")]]
