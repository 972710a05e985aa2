"""The Telegram bridge against a fake Bot API over real sockets on 127.0.0.1, with the
real turn pipeline (in-process bot, SQLite store, fake LLM) behind it. No Ray."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from telegram import Bot as TelegramBot
from telegram.request import HTTPXRequest

from astr_ray.config import TelegramConfig
from astr_ray.errors import AstrRayError, PlatformError
from astr_ray.message import Event, File, Image, Reply, ReplyTo, Sender, Text, Voice
from astr_ray.platforms import make_bridge
from astr_ray.platforms.base import OnMessage
from astr_ray.platforms.telegram import TelegramBridge
from astr_ray.platforms.telegram_calls import BotCalls
from astr_ray.platforms.telegram_replies import TEXT_LIMIT
from tests.core import platform_kit
from tests.core.platform_kit import Turns, until
from tests.core.test_plugins import Bot
from tests.peers.openai_server import FakeLLM, Scripted
from tests.peers.telegram_api import FakeTelegram, Upload, mention, text_mention

bot = platform_kit.bot  # the in-process bot fixture

TOKEN = "918273:AAF-never-log-this-token"
SECRET = "webhook-secret-value"
BOT = "@astr_test_bot"
GROUP = -1001234567


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def tg_cfg(fake: FakeTelegram, **overrides: Any) -> TelegramConfig:
    data: dict[str, Any] = {
        "type": "telegram",
        "id": "tg",
        "token": TOKEN,
        "api_base": fake.api_base,
        "file_base": fake.file_base,
        "poll_timeout_s": 2,
        "action_timeout_s": 5,
        "reconnect_max_s": 0.5,
        "stream": False,
        "wake": {"prefixes": ["bot "]},
    }
    data.update(overrides)
    return TelegramConfig.model_validate(data)


@dataclass
class Link:
    bridge: TelegramBridge
    fake: FakeTelegram
    turns: Turns

    def stat(self, key: str) -> Any:
        return self.bridge.stats()[key]


@asynccontextmanager
async def linked(
    bot: Bot, wrap: Callable[[OnMessage], OnMessage] | None = None, **overrides: Any
) -> AsyncIterator[Link]:
    """A fake Bot API and a started bridge (polling unless overridden) talking to it;
    ``wrap`` wraps the pipeline's ``on_message``."""
    fake = FakeTelegram(TOKEN)
    await fake.start()
    turns = Turns(bot)
    bridge = make_bridge(
        tg_cfg(fake, **overrides),
        wrap(turns.on_message) if wrap else turns.on_message,
        on_stream=turns.on_stream,
        metrics_hook=turns.metrics.append,
    )
    assert isinstance(bridge, TelegramBridge)
    try:
        await bridge.start()
        assert await bridge.wait_connected(5)
        yield Link(bridge, fake, turns)
    finally:
        await bridge.stop()
        await fake.stop()


@pytest.fixture
async def link(bot: Bot) -> AsyncIterator[Link]:
    async with linked(bot) as lk:
        yield lk


def quoting(message_id: int) -> dict[str, Any]:
    return {"message_id": message_id, "allow_sending_without_reply": True}


# -- messages in, replies out ---------------------------------------------------------------


async def test_private_message_is_answered_with_send_message(link: Link) -> None:
    fake = link.fake
    assert [c.method for c in fake.calls[:3]] == ["getMe", "deleteWebhook", "getUpdates"]
    first, *_ = fake.called("getUpdates")  # short: the link is up once it answers
    assert first.params == {"timeout": 0, "allowed_updates": ["message"]}
    mid = await fake.private(555, "hello there", name="Alice")
    (params,) = await fake.wait_sent(1)
    assert params == {"chat_id": 555, "text": "echo: hello there (turn 1)"}
    (event,) = link.turns.seen
    assert event.message_id == str(mid) and event.session_key == "tg:private:555"
    assert event.sender == Sender(id="555", name="Alice")
    assert event.components == (Text(text="hello there"),)
    await fake.private(555, "and again")
    sent = await fake.wait_sent(2)
    assert sent[1]["text"] == "echo: and again (turn 2)"
    await until(lambda: fake.called("getUpdates")[-1].params.get("offset") == 1002)
    assert fake.called("getUpdates")[-1].params["timeout"] == 2  # long polls from now on
    await until(lambda: link.stat("replies") == 2)
    stats = link.bridge.stats()
    assert stats["connected"] and stats["bot_user"] == BOT and stats["mode"] == "polling"
    assert (stats["events"], stats["replies"], stats["ignored"]) == (2, 2, 0)
    assert link.turns.metrics.count("event") == 2 and link.turns.metrics.count("reply") == 2


async def test_group_needs_a_mention_which_the_llm_does_not_see(
    link: Link, fake_llm: FakeLLM
) -> None:
    fake = link.fake
    await fake.group(GROUP, 11, "just chatting among ourselves")
    other = "@someone_else hey you"
    await fake.group(GROUP, 11, other, entities=[mention(other, "@someone_else")])
    text = "@Astr_Test_Bot what is 2+2?"  # handles are case-insensitive
    mid = await fake.group(GROUP, 11, text, entities=[mention(text, "@Astr_Test_Bot")])
    (params,) = await fake.wait_sent(1)
    assert params == {
        "chat_id": GROUP,
        "text": "echo: what is 2+2? (turn 1)",
        "reply_parameters": quoting(mid),
    }
    assert fake_llm.requests[-1]["messages"][-1] == {"role": "user", "content": "what is 2+2?"}
    (event,) = link.turns.seen
    assert event.session_key == f"tg:group:{GROUP}" and event.text == "what is 2+2?"
    assert link.stat("ignored") == 2 and link.stat("events") == 3
    # A mention in the middle, and a text_mention of the bot (a user id, no handle).
    text = "so 😀 @astr_test_bot, and 3+3?"
    await fake.group(GROUP, 11, text, entities=[mention(text, BOT)])
    await fake.wait_sent(2)
    assert fake_llm.user_turns()[-1][-1] == "so 😀, and 3+3?"
    text = "Astr please say hi"
    entity = text_mention(text, "Astr", fake.me["id"])
    await fake.group(GROUP, 12, text, entities=[entity])
    await fake.wait_sent(3)
    assert fake_llm.user_turns()[-1][-1] == "please say hi"


async def test_reply_to_the_bot_prefix_and_commands_wake_it_in_groups(
    link: Link, fake_llm: FakeLLM
) -> None:
    fake = link.fake
    text = f"{BOT} first"
    await fake.group(GROUP, 13, text, entities=[mention(text, BOT)])
    await fake.wait_sent(1)
    ((chat, bot_mid),) = fake.messages
    await fake.group(GROUP, 14, "quoting someone else", reply_to=4711)  # not the bot
    await fake.group(GROUP, 13, "and then?", reply_to=bot_mid)
    sent = await fake.wait_sent(2)
    assert sent[1]["text"] == "echo: and then? (turn 2)"
    assert ReplyTo(message_id=str(bot_mid)) in link.turns.seen[-1].components
    await fake.group(GROUP, 13, "bot tell me more")
    sent = await fake.wait_sent(3)
    assert sent[2]["text"] == "echo: tell me more (turn 3)"
    await fake.group(GROUP, 13, "/help@otherbot")  # another bot's command
    await fake.group(GROUP, 13, "/help@astr_test_bot")
    sent = await fake.wait_sent(4)
    assert "/help" in sent[3]["text"] and "@astr_test_bot" not in sent[3]["text"]
    assert link.turns.seen[-1].text == "/help"
    assert fake_llm.calls == 3  # the command never reached the LLM
    assert link.stat("ignored") == 2 and chat == GROUP


async def test_media_become_components_by_file_id(link: Link) -> None:
    fake = link.fake
    await fake.private(556, photo="photo-big", caption="what is this?")
    await fake.private(556, voice="voice-1")
    await fake.private(556, audio="song-1")
    await fake.private(556, document=("doc-1", "report.pdf", 12345))
    await fake.wait_sent(4)
    photo, voice, audio, doc = sorted(link.turns.seen, key=lambda e: int(e.message_id))
    # The largest size's file id; never a download URL (it would carry the token).
    assert photo.components == (Text(text="what is this?"), Image(file_id="photo-big"))
    assert voice.components == (Voice(file_id="voice-1", duration_s=3.0),)
    assert audio.components == (Voice(file_id="song-1", duration_s=180.0),)
    assert doc.components == (File(name="report.pdf", file_id="doc-1", size=12345),)
    assert not any(TOKEN in e.model_dump_json() for e in link.turns.seen)


async def test_media_in_a_reply_go_out_as_photo_voice_and_document(bot: Bot) -> None:
    """Attachments (as sandbox tools add them) follow the text: a data URL is uploaded,
    an https URL is passed on for Telegram to fetch, a file id is reused."""

    def with_media(inner: OnMessage) -> OnMessage:
        async def on_message(event: Event) -> Reply | None:
            answer = await inner(event)
            assert answer is not None
            media = (
                Image(url="data:image/png;base64,iVBORw0KGgo="),
                Voice(url="https://cdn.example/v.ogg"),
                File(name="r.pdf", file_id="BQACAgIAAxk-doc"),
            )
            return answer.model_copy(update={"components": (*answer.components, *media)})

        return on_message

    async with linked(bot, with_media) as lk:
        text = f"{BOT} draw me a cat"
        mid = await lk.fake.group(GROUP, 15, text, entities=[mention(text, BOT)])
        first, photo, voice, doc = await lk.fake.wait_sent(4)
        assert first == {
            "chat_id": GROUP,
            "text": "echo: draw me a cat (turn 1)",
            "reply_parameters": quoting(mid),
        }
        assert photo == {
            "chat_id": GROUP,
            "photo": Upload("image.png", "image/png", b"\x89PNG\r\n\x1a\n"),
        }
        assert voice == {"chat_id": GROUP, "voice": "https://cdn.example/v.ogg"}
        assert doc == {"chat_id": GROUP, "document": "BQACAgIAAxk-doc"}
        assert [c.method for c in lk.fake.calls if c.method.startswith("send")] == [
            "sendMessage",
            "sendPhoto",
            "sendVoice",
            "sendDocument",
        ]
        await until(lambda: lk.stat("replies") == 1)


async def test_long_replies_are_split_at_the_limit(link: Link, fake_llm: FakeLLM) -> None:
    content = " ".join(f"word{i}" for i in range(2000))  # 16889 characters
    fake_llm.script.append(Scripted(content=content))
    await link.fake.private(557, "tell me everything")
    await until(lambda: link.stat("replies") == 1)
    pieces = [p["text"] for p in link.fake.sent()]
    assert len(pieces) == 5 and all(len(p) <= TEXT_LIMIT for p in pieces)
    assert " ".join(pieces) == content


# -- streaming ---------------------------------------------------------------------------------


async def test_streamed_answer_is_one_message_grown_by_edits(bot: Bot, fake_llm: FakeLLM) -> None:
    content = " ".join(f"piece{i}" for i in range(30))
    fake_llm.script.append(Scripted(content=content))
    fake_llm.stream_delay = 0.04  # ~1.2 s of chunks, edits at most every 0.2 s
    async with linked(bot, stream=True, stream_interval_s=0.2) as lk:
        text = f"{BOT} stream please"
        mid = await lk.fake.group(GROUP, 16, text, entities=[mention(text, BOT)])
        await until(lambda: lk.stat("replies") == 1)
        (first,) = lk.fake.sent("sendMessage")
        assert first["reply_parameters"] == quoting(mid)
        assert first["text"].endswith(" ▌") and len(first["text"]) < len(content)
        edits = lk.fake.sent("editMessageText")
        assert len(edits) >= 2 and all(e["chat_id"] == GROUP for e in edits)
        (bot_mid,) = {e["message_id"] for e in edits}
        assert lk.fake.text_of(GROUP, bot_mid) == content
        assert edits[-1]["text"] == content
        # A turn that streams nothing (a command) is answered the normal way.
        await lk.fake.private(558, "/help")
        await lk.fake.wait_sent(2, "sendMessage")
        assert "/help" in lk.fake.sent("sendMessage")[1]["text"]
        await until(lambda: lk.stat("replies") == 2)  # counted once Telegram answered


# -- the link --------------------------------------------------------------------------------


async def test_api_down_mid_turn_then_back_nothing_lost_nothing_doubled(
    bot: Bot, fake_llm: FakeLLM
) -> None:
    """The Bot API goes away while the LLM is slow and a user writes meanwhile: the
    bridge reconnects, the reply that was ready during the outage goes out once, and
    the message sent during the outage is fetched and answered once."""
    answered: list[Reply | None] = []

    def noting(inner: OnMessage) -> OnMessage:
        async def on_message(event: Event) -> Reply | None:
            answered.append(await inner(event))
            return answered[-1]

        return on_message

    async with linked(bot, noting, action_timeout_s=10) as lk:
        fake = lk.fake
        fake_llm.script.append(Scripted(delay=1.0))
        await fake.private(559, "slow question")
        await until(lambda: fake_llm.calls == 1)
        await fake.go_down()
        await until(lambda: not lk.stat("connected"))
        await fake.private(559, "asked while you were away")
        await until(lambda: len(answered) == 1)  # ready, and nowhere to send it
        await fake.go_up()
        assert await lk.bridge.wait_connected(5)
        sent = await fake.wait_sent(2)
        assert sorted(p["text"] for p in sent) == [
            "echo: asked while you were away (turn 2)",
            "echo: slow question (turn 1)",
        ]
        await until(lambda: lk.stat("replies") == 2)
        assert lk.stat("reconnects") == 1 and lk.stat("send_failures") == 0
        assert len(fake.sent()) == 2 and fake_llm.calls == 2


async def test_a_lost_get_updates_answer_redelivers_its_updates_once(
    link: Link, fake_llm: FakeLLM
) -> None:
    fake = link.fake
    fake.lose_response("getUpdates")
    mid = await fake.private(560, "did you get this?")
    (params,) = await fake.wait_sent(1)
    assert params["text"] == "echo: did you get this? (turn 1)"
    assert [c.status for c in fake.called("getUpdates")].count(0) == 1  # the lost one
    await until(lambda: not fake.pending)  # confirmed by a later poll's offset
    assert len(fake.sent()) == 1 and fake_llm.calls == 1
    assert [e.message_id for e in link.turns.seen] == [str(mid)]
    assert link.stat("reconnects") == 1


async def test_send_failures_retried_only_when_the_send_cannot_have_run(
    link: Link, fake_llm: FakeLLM
) -> None:
    fake = link.fake
    fake.fail("sendMessage", status=502, times=2)  # answered with an error: not run
    await fake.private(561, "first")
    (params,) = await fake.wait_sent(1)
    assert params["text"] == "echo: first (turn 1)"
    assert [c.status for c in fake.called("sendMessage")] == [502, 502, 200]
    fake.lose_response("sendMessage")  # it ran; the answer got lost: never repeated
    await fake.private(561, "second")
    await until(lambda: link.stat("send_failures") == 1)
    assert [c.status for c in fake.called("sendMessage")] == [502, 502, 200, 0]
    assert link.stat("replies") == 1 and fake_llm.calls == 2


async def test_flood_control_waits_retry_after_and_delivers_once(link: Link) -> None:
    fake = link.fake
    fake.rate_limit("sendMessage", retry_after=1)
    await fake.private(562, "are you there?")
    (params,) = await fake.wait_sent(1)
    assert params["text"] == "echo: are you there? (turn 1)"
    limited, ok = fake.called("sendMessage")
    assert (limited.status, ok.status) == (429, 200)
    assert ok.at - limited.at >= 0.9  # waited what Telegram asked
    await until(lambda: link.stat("replies") == 1)
    assert link.stat("rate_limited") == 1
    assert link.turns.metrics.count("rate_limited") == 1


async def test_flood_control_past_the_action_time_out_is_a_counted_failure(
    bot: Bot,
) -> None:
    async with linked(bot, action_timeout_s=1) as lk:
        lk.fake.rate_limit("sendMessage", retry_after=5)
        await lk.fake.private(563, "hello?")
        await until(lambda: lk.stat("send_failures") == 1)
        assert lk.fake.sent() == [] and lk.stat("rate_limited") == 1


async def test_malformed_updates_are_skipped_and_the_next_served(
    link: Link, fake_llm: FakeLLM
) -> None:
    fake = link.fake
    chat = {"id": 564, "type": "private", "first_name": "Eve"}
    good = fake.message(chat, 564, "fine", name="Eve")
    await fake.queue({"message": {"chat": "nope"}})
    await fake.queue({"message": "not an object"})
    await fake.queue({"message": {**good, "date": None, "message_id": 1}})
    await fake.queue({"message": {**good, "photo": [{"file_id": "x"}]}})
    await fake.queue({"message": {**good, "text": 42}})
    await fake.queue({"update_id": "seven", "message": good})
    await fake.queue({"edited_message": good})  # not asked for: ignored
    await fake.queue({"channel_post": {**good, "chat": {"id": -1009, "type": "channel"}}})
    await fake.private(564, "are you ok?")
    (params,) = await fake.wait_sent(1)
    assert params["text"] == "echo: are you ok? (turn 1)"
    assert link.stat("malformed") == 6 and link.turns.metrics.count("malformed") == 6
    assert link.stat("ignored") == 2 and link.stat("reconnects") == 0
    assert fake_llm.calls == 1 and len(link.turns.seen) == 1


# -- webhook ----------------------------------------------------------------------------------


async def test_webhook_mode_serves_updates_and_answers_a_repost_once(
    bot: Bot, fake_llm: FakeLLM, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    port = free_port()
    url = f"http://127.0.0.1:{port}/telegram/webhook"
    overrides: dict[str, Any] = {
        "mode": "webhook",
        "port": port,
        "public_url": url,
        "secret_token": SECRET,
    }
    async with linked(bot, **overrides) as lk:
        fake = lk.fake
        assert fake.webhook is not None
        assert fake.webhook["url"] == url and fake.webhook["secret_token"] == SECRET
        assert fake.webhook["allowed_updates"] == ["message"]
        assert lk.bridge.port == port and not fake.called("getUpdates")
        mid = await fake.private(565, "over the webhook")
        (params,) = await fake.wait_sent(1)
        assert params == {"chat_id": 565, "text": "echo: over the webhook (turn 1)"}
        # Telegram did not get our 200 (say) and posts the update again.
        (update_id,) = fake.updates
        assert await fake.repost(update_id) == 200
        await until(lambda: lk.stat("duplicates") == 1)
        assert len(fake.sent()) == 1 and fake_llm.calls == 1
        assert [e.message_id for e in lk.turns.seen] == [str(mid), str(mid)]
        update = fake.updates[update_id]
        assert await fake.post_update(url, update, "wrong-secret") == 403
        assert await fake.post_update(url, update, None) == 403
        assert await fake.post_update(url, "{not json", SECRET) == 400
        assert await fake.post_update(url, {"message": "garbage"}, SECRET) == 400
        assert lk.stat("refused") == 2 and lk.stat("malformed") == 2
        assert fake.webhook_statuses == [200]
        assert lk.stat("events") == 2 and fake_llm.calls == 1
    assert "refused a webhook post" in caplog.text
    assert "setWebhook" in caplog.text and SECRET not in caplog.text


async def test_webhook_on_port_zero_exposes_the_bound_port(bot: Bot) -> None:
    overrides: dict[str, Any] = {
        "mode": "webhook",
        "port": 0,
        "public_url": "https://bot.example.org/telegram/webhook",
        "secret_token": SECRET,
    }
    async with linked(bot, **overrides) as lk:
        assert lk.bridge.port
        chat = {"id": 566, "type": "private", "first_name": "Zed"}
        update = {"update_id": 1, "message": lk.fake.message(chat, 566, "hi", name="Zed")}
        url = f"http://127.0.0.1:{lk.bridge.port}/telegram/webhook"
        assert await lk.fake.post_update(url, update, SECRET) == 200
        (params,) = await lk.fake.wait_sent(1)
        assert params["text"] == "echo: hi (turn 1)"


# -- pushes, lifecycle, secrets ------------------------------------------------------------------


async def test_push_reaches_a_group_and_a_private_chat(link: Link) -> None:
    await link.bridge.push(f"tg:group:{GROUP}", "announcement")
    await link.bridge.push("tg:private:567", "hello you")
    assert link.fake.sent() == [
        {"chat_id": GROUP, "text": "announcement"},
        {"chat_id": 567, "text": "hello you"},
    ]
    with pytest.raises(PlatformError, match="not this platform"):
        await link.bridge.push("qq:private:1", "x")
    link.fake.fail("sendMessage", status=400)
    with pytest.raises(PlatformError, match="refused"):
        await link.bridge.push("tg:private:567", "x")
    assert link.stat("send_failures") == 1


async def test_start_once_and_stop_is_clean(link: Link) -> None:
    with pytest.raises(AstrRayError, match="already started"):
        await link.bridge.start()
    began = time.monotonic()
    await link.bridge.stop()
    assert time.monotonic() - began < 5  # the long poll is cut, not waited out
    assert not link.bridge.connected()
    polls = len(link.fake.called("getUpdates"))
    await asyncio.sleep(0.3)
    assert len(link.fake.called("getUpdates")) == polls
    await link.bridge.stop()  # idempotent
    with pytest.raises(PlatformError, match="not running"):
        await link.bridge.push("tg:private:1", "x")


async def test_the_token_is_never_logged(bot: Bot, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="httpx")  # the runtime quiets it; open it up here
    async with linked(bot) as lk:
        await lk.fake.private(568, "hello")
        await lk.fake.wait_sent(1)
        lk.fake.lose_response("sendMessage")
        with pytest.raises(PlatformError) as failed:
            await lk.bridge.push("tg:private:568", "x")
        assert TOKEN not in str(failed.value)
        assert TOKEN not in repr(lk.bridge.stats()) and TOKEN not in repr(lk.turns.seen)
    fake = FakeTelegram("another:token")  # refuses ours: 401
    await fake.start()
    bridge = TelegramBridge(tg_cfg(fake), Turns(bot).on_message)
    await bridge.start()
    try:
        assert not await bridge.wait_connected(0.5)
        await until(lambda: "token was rejected" in caplog.text)
    finally:
        await bridge.stop()
        await fake.stop()
    assert "HTTP Request: POST" in caplog.text  # httpx did log the URLs, redacted
    assert "/bot<token>/getMe" in caplog.text
    assert TOKEN not in caplog.text


# -- pure helpers ---------------------------------------------------------------------------------


async def test_an_edit_to_the_same_text_is_not_an_error() -> None:
    """Telegram refuses an edit that changes nothing ("message is not modified"); for a
    stream that is success. Other refusals are errors."""
    fake = FakeTelegram(TOKEN)
    await fake.start()
    request = HTTPXRequest()
    calls = BotCalls(
        TelegramBot(TOKEN, base_url=fake.api_base, request=request, get_updates_request=request),
        platform_id="tg",
        token=TOKEN,
        timeout_s=2,
        count=lambda _: None,
    )
    try:
        sent = await calls.send_text(570, "same", None)
        await calls.edit_text(570, sent.message_id, "same")
        assert [c.status for c in fake.called("editMessageText")] == [400]
        with pytest.raises(PlatformError, match=r"(?i)message to edit not found"):
            await calls.edit_text(570, 99_999, "other")
    finally:
        await request.shutdown()
        await fake.stop()
