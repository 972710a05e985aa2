"""The Discord bridge against a fake Discord (REST + gateway) over real sockets on
127.0.0.1, with the real turn pipeline (in-process bot, SQLite store, fake LLM) behind
it. No Ray."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from astr_ray.config import DiscordConfig
from astr_ray.errors import AstrRayError, PlatformError
from astr_ray.message import Event, File, Image, Mention, Reply, ReplyTo, Sender, Text, Voice
from astr_ray.platforms import make_bridge
from astr_ray.platforms.base import OnMessage, OnStream
from astr_ray.platforms.discord import DiscordBridge
from astr_ray.platforms.discord_events import split_mentions
from astr_ray.platforms.discord_render import TEXT_LIMIT, Outgoing, Upload, render_reply
from tests.core import platform_kit
from tests.core.platform_kit import Turns, until
from tests.core.test_plugins import Bot
from tests.peers.discord_api import FakeDiscord
from tests.peers.openai_server import FakeLLM, Scripted

bot = platform_kit.bot  # the in-process bot fixture

TOKEN = "discord-test-token.Zx9-secret"
USER = "700000000000000001"
OTHER = "700000000000000002"


def dc_cfg(api_base: str, **overrides: Any) -> DiscordConfig:
    data: dict[str, Any] = {
        "type": "discord",
        "id": "dc",
        "token": TOKEN,
        "api_base": api_base,
        "stream": False,
        "action_timeout_s": 5,
        "reconnect_max_s": 0.5,
        "wake": {"prefixes": ["bot "]},
    }
    data.update(overrides)
    return DiscordConfig.model_validate(data)


@dataclass
class Link:
    bridge: DiscordBridge
    fake: FakeDiscord
    turns: Turns

    def stat(self, key: str) -> Any:
        return self.bridge.stats()[key]

    @property
    def seen(self) -> list[Event]:
        return self.turns.seen


@asynccontextmanager
async def discord_link(
    bot: Bot,
    wrap: Callable[[OnMessage], OnMessage] | None = None,
    *,
    wrap_stream: Callable[[OnStream], OnStream] | None = None,
    **overrides: Any,
) -> AsyncIterator[Link]:
    """A fake Discord and a bridge connected to it (built as the adapter actor does)."""
    fake = FakeDiscord(TOKEN)
    turns = Turns(bot)
    bridge = make_bridge(
        dc_cfg(await fake.start(), **overrides),
        wrap(turns.on_message) if wrap else turns.on_message,
        on_stream=wrap_stream(turns.on_stream) if wrap_stream else turns.on_stream,
        metrics_hook=turns.metrics.append,
    )
    assert isinstance(bridge, DiscordBridge)
    await bridge.start()
    try:
        assert await bridge.wait_connected(10)
        yield Link(bridge, fake, turns)
    finally:
        await bridge.stop()
        await fake.close()


@pytest.fixture
async def link(bot: Bot) -> AsyncIterator[Link]:
    async with discord_link(bot) as lk:
        yield lk


def last_user_text(fake_llm: FakeLLM) -> str:
    users = [m for m in fake_llm.requests[-1]["messages"] if m["role"] == "user"]
    content = users[-1]["content"]
    return content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)


# -- messages in, replies out ---------------------------------------------------------------


async def test_a_dm_is_answered_in_its_dm_channel(link: Link, fake_llm: FakeLLM) -> None:
    fake = link.fake
    mid = await fake.send_dm(USER, "hello there")
    (post,) = await fake.wait_sent(1)
    dm = fake.dm_channel(USER)
    assert post.path == f"/channels/{dm}/messages"
    body = post.json
    assert body["content"] == "echo: hello there (turn 1)"
    assert "message_reference" not in body and post.files == []
    assert body["allowed_mentions"] == {"parse": ["users"], "replied_user": True}
    (event,) = link.seen
    assert event.message_id == mid and event.session_key == f"dc:private:{dm}"
    assert event.sender == Sender(id=USER, name="User0001")
    await fake.send_dm(USER, "and again")
    sent = await fake.wait_sent(2)
    assert sent[1].json["content"] == "echo: and again (turn 2)"
    # The gateway echoes the bot's own two messages back: ignored.
    await until(lambda: link.stat("ignored") == 2 and link.stat("replies") == 2)
    stats = link.bridge.stats()
    assert stats["connected"] and stats["bot_user"] == {"id": fake.bot_id, "name": "astr"}
    assert (stats["events"], stats["replies"], stats["error"]) == (2, 2, None)
    assert link.turns.metrics.count("reply") == 2 and link.turns.metrics.count("event") == 2


async def test_other_bots_are_not_answered(link: Link, fake_llm: FakeLLM) -> None:
    link.fake.other_bots.add(OTHER)
    await link.fake.send_guild_message(
        OTHER, f"<@{link.fake.bot_id}> ping", mentions=[link.fake.bot_id]
    )
    await link.fake.send_dm(OTHER, "hello bot")
    await until(lambda: link.stat("ignored") >= 2)
    await link.fake.send_dm(USER, "a person")
    (post,) = await link.fake.wait_sent(1)
    assert post.json["content"].startswith("echo: a person")
    assert [e.sender.id for e in link.seen] == [USER]


async def test_in_a_channel_a_mention_wakes_the_bot_and_is_not_seen_by_the_llm(
    link: Link, fake_llm: FakeLLM
) -> None:
    fake, bot_id = link.fake, link.fake.bot_id
    await fake.send_guild_message(USER, "just chatting among ourselves")
    await fake.send_guild_message(USER, f"<@{OTHER}> hey you", mentions=[OTHER])
    mid = await fake.send_guild_message(
        USER, f"<@!{bot_id}> what is 2+2, <@{OTHER}>?", mentions=[bot_id, OTHER]
    )
    (post,) = await fake.wait_sent(1)
    assert post.channel_id == fake.channel_id
    assert post.json["message_reference"] == {
        "type": 0,
        "message_id": int(mid),
        "channel_id": int(fake.channel_id),
        "fail_if_not_exists": False,
    }
    assert post.json["content"] == "echo: what is 2+2, @User0002? (turn 1)"
    assert last_user_text(fake_llm) == "what is 2+2, @User0002?"
    assert fake_llm.calls == 1
    (event,) = link.seen
    assert event.session_key == f"dc:group:{fake.channel_id}"
    assert Mention(user_id=OTHER, name="User0002") in event.components
    assert all(c.user_id != bot_id for c in event.components if isinstance(c, Mention))
    await until(lambda: link.stat("ignored") == 3)  # two unwoken and the bot's own reply


async def test_replies_to_the_bot_prefixes_commands_and_threads_wake_it(
    link: Link, fake_llm: FakeLLM
) -> None:
    fake, bot_id = link.fake, link.fake.bot_id
    await fake.send_guild_message(USER, f"<@{bot_id}> first", mentions=[bot_id])
    await fake.wait_sent(1)
    (bot_mid,) = [m["id"] for m in fake.bot_messages()]
    someone = await fake.send_guild_message(OTHER, "a user's message")
    await fake.send_guild_message(USER, "quoting someone else", reply_to=someone)
    await fake.send_guild_message(USER, "and then?", reply_to=bot_mid)
    sent = await fake.wait_sent(2)
    assert sent[1].json["content"] == "echo: and then? (turn 2)"
    assert ReplyTo(message_id=bot_mid) in link.seen[-1].components
    await fake.send_guild_message(USER, "bot tell me more")
    sent = await fake.wait_sent(3)
    assert sent[2].json["content"] == "echo: tell me more (turn 3)"
    await fake.send_guild_message(USER, "/help")
    sent = await fake.wait_sent(4)
    assert "/help" in sent[3].json["content"]
    assert fake_llm.calls == 3  # the command never reached the LLM
    # A thread is a session of its own.
    await fake.send_thread_message(USER, f"<@{bot_id}> in a thread", mentions=[bot_id])
    sent = await fake.wait_sent(5)
    assert sent[4].channel_id == fake.thread_id
    assert sent[4].json["content"] == "echo: in a thread (turn 1)"
    assert link.seen[-1].session_key == f"dc:group:{fake.thread_id}"
    await until(lambda: link.stat("ignored") == 2 + 5)  # two unwoken, five own echoes


async def test_reply_wake_can_be_switched_off(bot: Bot, fake_llm: FakeLLM) -> None:
    async with discord_link(bot, wake={"reply": False, "mention": True}) as lk:
        bot_id = lk.fake.bot_id
        await lk.fake.send_guild_message(USER, f"<@{bot_id}> hi", mentions=[bot_id])
        await lk.fake.wait_sent(1)
        await lk.fake.send_guild_message(USER, "hm", reply_to=lk.fake.bot_messages()[0]["id"])
        await lk.fake.send_guild_message(USER, f"<@{bot_id}> last", mentions=[bot_id])
        sent = await lk.fake.wait_sent(2)
        assert sent[1].json["content"] == "echo: last (turn 2)"
        assert fake_llm.calls == 2


async def test_attachments_become_components(link: Link, fake_llm: FakeLLM) -> None:
    fake = link.fake
    photo = fake.attachment("cat.png", "image/png", size=2048)
    voice = fake.attachment("voice-message.ogg", "audio/ogg", voice_seconds=3.5)
    pdf = fake.attachment("report.pdf", "application/pdf", size=4096)
    await fake.send_dm(USER, "what is this?", attachments=[photo])
    await fake.send_dm(USER, "", attachments=[voice])
    await fake.send_dm(USER, "read this", attachments=[pdf])
    await fake.wait_sent(3)
    first, second, third = link.seen
    assert first.components == (
        Text(text="what is this?"),
        Image(url=photo["url"], file_id=photo["id"], mime="image/png"),
    )
    assert second.components == (Voice(url=voice["url"], file_id=voice["id"], duration_s=3.5),)
    assert third.components == (
        Text(text="read this"),
        File(name="report.pdf", url=pdf["url"], file_id=pdf["id"], size=4096),
    )


async def test_media_in_a_reply_are_uploaded_or_linked(bot: Bot) -> None:
    """An image as a data: URL is uploaded with the text; http(s) media go as links."""
    png = b"\x89PNG\r\n\x1a\n-fake-image"

    def with_media(inner: OnMessage) -> OnMessage:
        async def on_message(event: Event) -> Reply | None:
            answer = await inner(event)
            assert answer is not None
            media = (
                Image(url="data:image/png;base64," + base64.b64encode(png).decode()),
                Voice(url="https://cdn.example/v.mp3"),
                File(name="r.pdf", url="https://cdn.example/r.pdf"),
            )
            return answer.model_copy(update={"components": (*answer.components, *media)})

        return on_message

    async with discord_link(bot, wrap=with_media) as lk:
        bot_id = lk.fake.bot_id
        mid = await lk.fake.send_guild_message(USER, f"<@{bot_id}> draw a cat", mentions=[bot_id])
        first, second = await lk.fake.wait_sent(2)
        assert first.json["content"] == "echo: draw a cat (turn 1)"
        assert first.json["message_reference"]["message_id"] == int(mid)
        assert first.json["attachments"] == [{"id": 0, "filename": "image.png"}]
        assert first.files == [("files[0]", "image.png", png)]
        assert second.files == [] and "message_reference" not in second.json
        assert (
            second.json["content"] == "https://cdn.example/v.mp3\nr.pdf: https://cdn.example/r.pdf"
        )
        await until(lambda: lk.stat("replies") == 1)


async def test_long_replies_are_split_at_2000_characters(link: Link, fake_llm: FakeLLM) -> None:
    content = " ".join(f"word{i}" for i in range(700))  # ~5.5k characters
    fake_llm.script.append(Scripted(content=content))
    bot_id = link.fake.bot_id
    await link.fake.send_guild_message(USER, f"<@{bot_id}> tell me everything", mentions=[bot_id])
    await until(lambda: link.stat("replies") == 1)
    posts = link.fake.posts()
    pieces = [p.json["content"] for p in posts]
    assert len(pieces) == 3 and all(len(p) <= TEXT_LIMIT for p in pieces)
    assert " ".join(pieces) == content
    assert ["message_reference" in p.json for p in posts] == [True, False, False]


async def test_streaming_sends_once_then_edits(bot: Bot, fake_llm: FakeLLM) -> None:
    answer = " ".join(f"token{i}" for i in range(25))
    fake_llm.script.append(Scripted(content=answer))
    fake_llm.stream_delay = 0.04  # ~1 s in all: several edit intervals
    async with discord_link(bot, stream=True, stream_interval_s=0.2) as lk:
        await lk.fake.send_dm(USER, "stream please")
        await until(lambda: lk.stat("replies") == 1)
        (post,) = lk.fake.posts()
        edits = lk.fake.edits()
        assert len(edits) >= 2
        (message,) = lk.fake.bot_messages()
        assert post.path.endswith("/messages") and edits[-1].path.endswith(message["id"])
        assert message["content"] == answer  # the final text, without the cursor
        assert edits[0].json["content"].endswith(" ▌")
        assert fake_llm.requests[-1]["stream"] is True


async def test_a_streamed_reply_quotes_the_message_and_its_media_follow(
    bot: Bot, fake_llm: FakeLLM
) -> None:
    fake_llm.stream_delay = 0.02
    png = b"\x89PNG-streamed"

    def with_image(inner: OnStream) -> OnStream:
        async def on_stream(event: Event) -> AsyncIterator[dict[str, Any]]:
            async for item in inner(event):
                if "reply" in item:
                    image = Image(url="data:image/png;base64," + base64.b64encode(png).decode())
                    reply = item["reply"]
                    item = {
                        "reply": reply.model_copy(update={"components": (*reply.components, image)})
                    }
                yield item

        return on_stream

    async with discord_link(bot, wrap_stream=with_image, stream=True, stream_interval_s=0.2) as lk:
        bot_id = lk.fake.bot_id
        mid = await lk.fake.send_guild_message(USER, f"<@{bot_id}> a picture", mentions=[bot_id])
        await until(lambda: lk.stat("replies") == 1)
        text, media = lk.fake.posts()
        assert text.json["message_reference"]["message_id"] == int(mid)
        assert "message_reference" not in media.json and media.json["content"] is None
        assert media.files == [("files[0]", "image.png", png)]
        shown = lk.fake.bot_messages()[0]  # the streamed one, edits applied
        assert shown["content"] == "echo: a picture (turn 1)" and shown["attachments"] == []


async def test_a_dropped_gateway_resumes_and_nothing_is_lost_or_doubled(
    link: Link, fake_llm: FakeLLM
) -> None:
    """The gateway drops while the LLM is slow; a message sent meanwhile is replayed on
    RESUME. Each message is answered once; a later redelivery is not answered again."""
    fake = link.fake
    fake_llm.script.append(Scripted(delay=1.0))
    slow = await fake.send_dm(USER, "slow question")
    await until(lambda: fake_llm.calls == 1)
    fake.hold = True  # the gateway accepts the reconnect but waits before its HELLO
    await fake.drop(4000)
    await until(lambda: not link.stat("connected"))
    await fake.send_dm(USER, "sent while you were away")
    fake.hold = False
    await until(lambda: link.stat("replies") == 2)
    assert sorted(p.json["content"] for p in fake.posts()) == [
        "echo: sent while you were away (turn 2)",
        "echo: slow question (turn 1)",
    ]
    assert (fake.identifies, fake.resumes, link.stat("reconnects")) == (1, 1, 1)
    assert fake.gateway_urls[-1].startswith("/gateway/resume?v=10&encoding=json")
    assert link.turns.metrics.count("reconnect") == 1
    await fake.send_dm(USER, "slow question", message_id=slow)  # delivered again
    await until(lambda: link.stat("duplicates") == 1)
    assert len(fake.posts()) == 2 and fake_llm.calls == 2
    assert [e.text for e in link.seen].count("slow question") == 2


async def test_a_429_is_waited_out_and_the_reply_arrives_once(
    link: Link, fake_llm: FakeLLM
) -> None:
    link.fake.rate_limit_next(1, retry_after=0.3)
    await link.fake.send_dm(USER, "are you busy?")
    (post,) = await link.fake.wait_sent(1)
    assert post.json["content"] == "echo: are you busy? (turn 1)"
    limited, retried = [c for c in link.fake.calls if c.method == "POST"]
    assert (limited.status, retried.status) == (429, 200)
    assert retried.at - limited.at >= 0.3  # the Retry-After was waited out
    assert link.stat("rate_limited") == 1 and link.turns.metrics.count("rate_limited") == 1
    assert link.stat("send_failures") == 0


async def test_a_failed_delivery_is_resent_when_the_message_comes_again(
    link: Link, fake_llm: FakeLLM
) -> None:
    link.fake.fail_next(1)
    mid = await link.fake.send_dm(USER, "are you there?")
    await until(lambda: link.stat("send_failures") == 1)
    assert link.fake.posts() == []
    await link.fake.send_dm(USER, "are you there?", message_id=mid)
    (post,) = await link.fake.wait_sent(1)
    assert post.json["content"] == "echo: are you there? (turn 1)"
    await until(lambda: link.stat("replies") == 1)
    assert fake_llm.calls == 1 and link.stat("duplicates") == 1


async def test_malformed_dispatches_are_skipped_and_the_next_message_served(
    link: Link, fake_llm: FakeLLM
) -> None:
    fake = link.fake
    await fake.dispatch("MESSAGE_CREATE", {"id": "5", "channel_id": fake.channel_id})
    good = fake.message_payload(USER, "hi", fake.dm_channel(USER))
    await fake.dispatch("MESSAGE_CREATE", {k: v for k, v in good.items() if k != "author"})
    await fake.send_dm(USER, "are you ok?")
    (post,) = await fake.wait_sent(1)
    assert post.json["content"] == "echo: are you ok? (turn 1)"
    assert link.stat("malformed") == 2 and link.turns.metrics.count("malformed") == 2
    assert (fake.identifies, fake.resumes, link.stat("reconnects")) == (1, 0, 0)
    # A frame that is not JSON breaks discord.py's gateway loop: a new session follows.
    await fake.send_raw("this is not json {")
    await until(lambda: fake.identifies == 2 and link.stat("connected"))
    await fake.send_dm(USER, "still there?")
    sent = await fake.wait_sent(2)
    assert sent[1].json["content"] == "echo: still there? (turn 2)"
    assert link.stat("malformed") == 3 and link.stat("reconnects") == 1


# -- pushes, tokens, the lifecycle ------------------------------------------------------------


async def test_push_reaches_a_dm_and_a_channel(link: Link) -> None:
    fake = link.fake
    dm = fake.dm_channel(USER)
    await link.bridge.push(f"dc:private:{dm}", "hello you")
    await link.bridge.push(f"dc:group:{fake.channel_id}", "announcement")
    assert [(p.channel_id, p.json["content"]) for p in fake.posts()] == [
        (dm, "hello you"),
        (fake.channel_id, "announcement"),
    ]
    with pytest.raises(PlatformError, match="not this platform"):
        await link.bridge.push("telegram:private:1", "x")
    with pytest.raises(PlatformError, match="cannot send there"):
        await link.bridge.push("dc:group:not-a-snowflake", "x")
    fake.fail_next(1)
    with pytest.raises(PlatformError, match="Missing Permissions"):
        await link.bridge.push(f"dc:private:{dm}", "x")
    assert link.stat("send_failures") == 1  # the refused one; nothing went to a bad id


async def test_a_wrong_token_is_refused_and_never_logged(
    bot: Bot, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake = FakeDiscord("the-real-token")
    turns = Turns(bot)
    bridge = DiscordBridge(dc_cfg(await fake.start()), turns.on_message)
    await bridge.start()
    try:
        assert not await bridge.wait_connected(1.0)
        await until(lambda: bridge.stats()["error"] is not None)
        assert "LoginFailure" in bridge.stats()["error"]
        assert [c.status for c in fake.calls] == [401]
        assert fake.identifies == 0
    finally:
        await bridge.stop()
        await fake.close()
    assert TOKEN not in caplog.text and "the-real-token" not in caplog.text


async def test_start_once_stop_is_clean_and_the_token_stays_secret(
    bot: Bot, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with discord_link(bot) as lk:
        await lk.fake.send_dm(USER, "hello")
        await lk.fake.wait_sent(1)
        with pytest.raises(AstrRayError, match="already started"):
            await lk.bridge.start()
        assert TOKEN not in repr(lk.bridge.stats()) and TOKEN not in repr(lk.seen)
        began = time.monotonic()
        await lk.bridge.stop()
        assert time.monotonic() - began < 5
        await until(lambda: not lk.fake.linked)
        assert not lk.stat("connected")
        await lk.bridge.stop()  # idempotent
    assert "logged in as astr" in caplog.text  # the capture did see the bridge's logs
    assert TOKEN not in caplog.text


# -- pure parts ---------------------------------------------------------------------------


def test_mentions_are_split_from_the_text() -> None:
    text, others, mentioned = split_mentions("<@1> hi <@!2> and <@1>", 1, {2: "Bea"})
    assert (text, mentioned) == ("hi @Bea and", True)
    assert others == [Mention(user_id="2", name="Bea")]
    assert split_mentions("<@3> who?", 1, {}) == ("<@3> who?", [Mention(user_id="3")], False)
    code = "<@1> fix:\n```\n    x  = 1\n```"
    assert split_mentions(code, 1, {})[0] == "fix:\n```\n    x  = 1\n```"


def test_render_groups_uploads_and_links() -> None:
    blob = "data:text/plain,hi%21"
    assert render_reply([Text(text="  ")]) == []
    many = [File(name=f"f{i}.txt", url=blob) for i in range(12)]
    out = render_reply([Text(text="files:"), *many, Image(file_id="only-an-id")])
    assert [len(o.uploads) for o in out] == [10, 2]
    assert out[0].content == "files:" and out[1].content == ""
    assert out[1].uploads[-1] == Upload("f11.txt", b"hi!")
    assert render_reply([Text(text="x"), Image(url="https://i/y.png")], text=False) == [
        Outgoing("https://i/y.png")
    ]
    assert render_reply([Text(text="hey "), Mention(user_id="42")]) == [Outgoing("hey <@42>")]
