"""``Bridge.fetch_media``: each bridge gets the bytes of an incoming voice message from
its fake platform over real sockets on 127.0.0.1 (Telegram getFile + file download,
Slack files.info + a bearer download, Discord attachment URLs, OneBot get_record), with
the cap, the allowed hosts and the errors a session host would see. No Ray."""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from astr_ray.config import DiscordConfig, OneBotConfig, SlackConfig, TelegramConfig
from astr_ray.errors import MessageFormatError, PlatformError
from astr_ray.message import Event, File, Image, Reply, Text, Voice
from astr_ray.platforms import make_bridge
from astr_ray.platforms.base import Bridge, media_component
from astr_ray.platforms.discord import DiscordBridge
from astr_ray.platforms.onebot import OneBotBridge
from astr_ray.platforms.slack import SlackBridge
from astr_ray.platforms.telegram import TelegramBridge
from tests.core.platform_kit import until
from tests.peers.discord_api import FakeDiscord
from tests.peers.onebot_client import FakeNapCat, record
from tests.peers.slack_api import APP_TOKEN, BOT_TOKEN, FakeSlack
from tests.peers.telegram_api import FakeTelegram

VOICE = b"OggS\x00\x02" + bytes(range(256)) * 40  # ~10 KB that must come back exactly
CAP = 1_000_000


class Seen:
    """An ``on_message`` that keeps the events and answers nothing."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def on_message(self, event: Event) -> Reply | None:
        self.events.append(event)
        return None

    async def voice(self) -> Voice:
        await until(lambda: self.events)
        return next(c for c in self.events[0].components if isinstance(c, Voice))


# -- the base contract ----------------------------------------------------------------------------


async def test_every_bridge_decodes_data_urls_and_refuses_the_rest() -> None:
    bridge = Bridge("acct", None)
    url = "data:audio/ogg;base64," + base64.b64encode(VOICE).decode()
    assert await bridge.fetch_media(Voice(url=url), CAP) == (VOICE, "audio/ogg")
    with pytest.raises(PlatformError, match="over the 100 byte limit") as err:
        await bridge.fetch_media(Voice(url=url), 100)
    assert err.value.context == {"platform": "acct", "media": "voice"}
    with pytest.raises(PlatformError, match="data URL is broken"):
        await bridge.fetch_media(Image(url="data:image/png;base64,!!"), CAP)
    with pytest.raises(PlatformError, match=r"\? cannot fetch this media"):
        await bridge.fetch_media(File(name="a", url="https://example.org/a"), CAP)
    with pytest.raises(PlatformError, match="max_bytes"):
        await bridge.fetch_media(Voice(url=url), 0)


def test_media_components_come_from_their_dicts() -> None:
    voice = Voice(file_id="v1", duration_s=2.0)
    assert media_component(voice.model_dump()) == voice
    assert media_component({"type": "image", "url": "https://x/y.png"}) == Image(
        url="https://x/y.png"
    )
    garbage: Any
    for garbage in (None, [], {"type": "text", "text": "hi"}, {"url": "x"}):
        with pytest.raises(MessageFormatError, match="voice, image or file"):
            media_component(garbage)
    with pytest.raises(MessageFormatError, match="invalid voice: duration_s"):
        media_component({"type": "voice", "duration_s": "long"})
    with pytest.raises(MessageFormatError, match="invalid file: name"):
        media_component({"type": "file", "url": "https://x/y"})


# -- Telegram ------------------------------------------------------------------------------------

TG_TOKEN = "918273:AAF-never-log-this-token"


@asynccontextmanager
async def telegram(
    file_path: str | None = None,
) -> AsyncIterator[tuple[TelegramBridge, FakeTelegram, Seen]]:
    """A started bridge polling a fake Bot API. Without ``file_path`` no ``file_base``
    is configured, so downloads go where the API base says; with it, ``file_base`` is
    that path on the fake."""
    fake = FakeTelegram(TG_TOKEN)
    await fake.start()
    seen = Seen()
    cfg: dict[str, Any] = {
        "type": "telegram",
        "id": "tg",
        "token": TG_TOKEN,
        "api_base": fake.api_base,
        "poll_timeout_s": 2,
        "action_timeout_s": 5,
        "reconnect_max_s": 0.5,
        "stream": False,
    }
    if file_path is not None:
        cfg["file_base"] = f"http://127.0.0.1:{fake.port}{file_path}"
    bridge = make_bridge(TelegramConfig.model_validate(cfg), seen.on_message)
    assert isinstance(bridge, TelegramBridge)
    try:
        await bridge.start()
        assert await bridge.wait_connected(5)
        yield bridge, fake, seen
    finally:
        await bridge.stop()
        await fake.stop()


async def test_telegram_fetches_a_voice_message_by_file_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with telegram() as (bridge, fake, seen):
        path = fake.add_file("voice-1", VOICE)
        await fake.private(555, voice="voice-1")
        voice = await seen.voice()
        assert voice.file_id == "voice-1" and voice.url is None
        assert await bridge.fetch_media(voice, CAP) == (VOICE, "audio/ogg")
        assert fake.called("getFile")[-1].params == {"file_id": "voice-1"}
        assert [(d.path, d.status) for d in fake.downloads] == [(path, 200)]
    assert TG_TOKEN not in caplog.text


async def test_telegram_refuses_a_declared_size_over_the_cap_without_downloading() -> None:
    async with telegram() as (bridge, fake, _):
        fake.add_file("big", VOICE)
        with pytest.raises(PlatformError, match="over the 1,000 byte limit") as err:
            await bridge.fetch_media(Voice(file_id="big"), 1000)
        assert fake.downloads == []
        assert TG_TOKEN not in str(err.value)


async def test_telegram_stops_reading_an_undeclared_body_at_the_cap() -> None:
    async with telegram() as (bridge, fake, _):
        fake.add_file("stream", endless=True)
        with pytest.raises(PlatformError, match="over the 200,000 byte limit") as err:
            await bridge.fetch_media(Voice(file_id="stream"), 200_000)
        assert TG_TOKEN not in str(err.value)
        (down,) = fake.downloads
        await until(lambda: down.hung_up)
        assert down.sent < 64 * 1024 * 1024


async def test_telegram_an_unknown_file_is_a_clear_error_without_the_token() -> None:
    async with telegram() as (bridge, fake, _):
        with pytest.raises(PlatformError, match="Invalid file_id") as err:
            await bridge.fetch_media(Voice(file_id="gone"), CAP)
        assert err.value.context["method"] == "getFile"
        assert TG_TOKEN not in str(err.value)
        with pytest.raises(PlatformError, match="telegram cannot fetch this media"):
            await bridge.fetch_media(Voice(), CAP)
        assert fake.downloads == []


async def test_telegram_an_explicit_file_base_is_used() -> None:
    async with telegram("/file/bot") as (bridge, fake, _):
        fake.add_file("v", VOICE)
        assert await bridge.fetch_media(Voice(file_id="v"), CAP) == (VOICE, "audio/ogg")
    async with telegram("/elsewhere/bot") as (bridge, fake, _):
        fake.add_file("v", VOICE)
        with pytest.raises(PlatformError, match="HTTP 404") as err:
            await bridge.fetch_media(Voice(file_id="v"), CAP)
        assert TG_TOKEN not in str(err.value)
        assert fake.downloads == []  # asked at /elsewhere, not at the fake's file route


# -- Slack ---------------------------------------------------------------------------------------


@asynccontextmanager
async def slack() -> AsyncIterator[tuple[SlackBridge, FakeSlack, Seen]]:
    fake = FakeSlack()
    base = await fake.start()
    seen = Seen()
    cfg = SlackConfig.model_validate(
        {
            "id": "slack",
            "type": "slack",
            "mode": "socket",
            "bot_token": BOT_TOKEN,
            "app_token": APP_TOKEN,
            "api_base": base,
            "stream": False,
            "action_timeout_s": 5,
            "reconnect_max_s": 0.5,
        }
    )
    bridge = make_bridge(cfg, seen.on_message)
    assert isinstance(bridge, SlackBridge)
    try:
        await bridge.start()
        assert await bridge.wait_connected(5)
        yield bridge, fake, seen
    finally:
        await bridge.stop()
        await fake.close()


async def test_slack_fetches_a_voice_clip_with_the_bot_token() -> None:
    async with slack() as (bridge, fake, seen):
        clip = fake.add_file("F1", VOICE)
        await fake.im("U1", "", files=[clip])
        voice = await seen.voice()
        assert voice == Voice(file_id="F1")
        assert await bridge.fetch_media(voice, CAP) == (VOICE, "audio/mp4")
        assert fake.sent("files.info") == [{"file": "F1"}]
        assert fake.downloads == [("F1", f"Bearer {BOT_TOKEN}")]


async def test_slack_refuses_a_size_over_the_cap_before_downloading() -> None:
    async with slack() as (bridge, fake, _):
        fake.add_file("F2", VOICE, size=50_000_000)
        with pytest.raises(PlatformError, match="over the 1,000,000 byte limit"):
            await bridge.fetch_media(Voice(file_id="F2"), CAP)
        assert fake.downloads == []


async def test_slack_never_sends_the_token_to_another_host() -> None:
    async with slack() as (bridge, fake, _):
        elsewhere = FakeSlack()
        await elsewhere.start()
        try:
            there = elsewhere.add_file("F3", VOICE)["url_private_download"]
            fake.add_file("F3", VOICE, url=there)  # same 127.0.0.1, another port
            with pytest.raises(PlatformError, match="not Slack's") as err:
                await bridge.fetch_media(Voice(file_id="F3"), CAP)
            assert BOT_TOKEN not in str(err.value)
            assert elsewhere.downloads == [] and elsewhere.calls == []
            assert fake.downloads == []
        finally:
            await elsewhere.close()


async def test_slack_an_unknown_file_is_a_clear_error() -> None:
    async with slack() as (bridge, fake, _):
        with pytest.raises(PlatformError, match=r"files\.info failed: file_not_found") as err:
            await bridge.fetch_media(Voice(file_id="F404"), CAP)
        assert BOT_TOKEN not in str(err.value)
        assert fake.downloads == []


# -- Discord -------------------------------------------------------------------------------------

DC_TOKEN = "discord-test-token.Zx9-secret"
USER = "700000000000000001"


@asynccontextmanager
async def discord() -> AsyncIterator[tuple[DiscordBridge, FakeDiscord, Seen]]:
    fake = FakeDiscord(DC_TOKEN)
    seen = Seen()
    cfg = DiscordConfig.model_validate(
        {
            "type": "discord",
            "id": "dc",
            "token": DC_TOKEN,
            "api_base": await fake.start(),
            "stream": False,
            "action_timeout_s": 5,
            "reconnect_max_s": 0.5,
        }
    )
    bridge = make_bridge(cfg, seen.on_message)
    assert isinstance(bridge, DiscordBridge)
    await bridge.start()
    try:
        assert await bridge.wait_connected(10)
        yield bridge, fake, seen
    finally:
        await bridge.stop()
        await fake.close()


async def test_discord_fetches_a_voice_message_from_its_attachment_url() -> None:
    async with discord() as (bridge, fake, seen):
        clip = fake.attachment("voice-message.ogg", "audio/ogg", voice_seconds=2.5, data=VOICE)
        await fake.send_dm(USER, "", attachments=[clip])
        voice = await seen.voice()
        assert voice.url == clip["url"] and voice.duration_s == 2.5
        assert await bridge.fetch_media(voice, CAP) == (VOICE, "audio/ogg")
        (down,) = fake.downloads
        assert down.attachment_id == clip["id"] and down.authorization is None


async def test_discord_stops_reading_past_the_cap() -> None:
    async with discord() as (bridge, fake, _):
        clip = fake.attachment("long.ogg", "audio/ogg", endless=True)
        with pytest.raises(PlatformError, match="over the 200,000 byte limit"):
            await bridge.fetch_media(Voice(url=clip["url"]), 200_000)
        (down,) = fake.downloads
        await until(lambda: down.hung_up)
        assert down.sent < 64 * 1024 * 1024
        big = fake.attachment("big.bin", None, data=VOICE)
        with pytest.raises(PlatformError, match="over the 1,000 byte limit"):
            await bridge.fetch_media(File(name="big.bin", url=big["url"], size=len(VOICE)), 1000)
        assert len(fake.downloads) == 1  # the declared size was enough


async def test_discord_refuses_hosts_that_are_not_discords() -> None:
    async with discord() as (bridge, fake, _):
        elsewhere = FakeDiscord(DC_TOKEN)
        await elsewhere.start()
        try:
            clip = elsewhere.attachment("voice.ogg", "audio/ogg", data=VOICE)
            for url in (clip["url"], "file:///etc/passwd", "http://cdn.discordapp.com/a.ogg"):
                with pytest.raises(PlatformError, match=r"not Discord's|cannot fetch"):
                    await bridge.fetch_media(Voice(url=url), CAP)
            assert elsewhere.downloads == [] and elsewhere.calls == []
            assert fake.downloads == []
        finally:
            await elsewhere.close()


async def test_discord_a_missing_attachment_is_a_clear_error() -> None:
    async with discord() as (bridge, fake, _):
        url = f"http://127.0.0.1:{fake.port}/attachments/1/2/gone.ogg"
        with pytest.raises(PlatformError, match="HTTP 404"):
            await bridge.fetch_media(Voice(url=url), CAP)
        with pytest.raises(PlatformError, match="discord cannot fetch this media"):
            await bridge.fetch_media(Voice(file_id="123"), CAP)


# -- OneBot --------------------------------------------------------------------------------------

OB_TOKEN = "onebot-test-token"
SELF = 10001


@asynccontextmanager
async def onebot() -> AsyncIterator[tuple[OneBotBridge, FakeNapCat, Seen]]:
    seen = Seen()
    cfg = OneBotConfig.model_validate(
        {"id": "qq", "port": 0, "access_token": OB_TOKEN, "action_timeout_s": 5}
    )
    bridge = OneBotBridge(cfg, seen.on_message)
    await bridge.start()
    napcat = FakeNapCat(SELF, token=OB_TOKEN)
    try:
        await napcat.connect(f"ws://127.0.0.1:{bridge.port}/onebot/v11/ws")
        assert await bridge.wait_connected(5)
        yield bridge, napcat, seen
    finally:
        await napcat.close()
        await bridge.stop()


async def test_onebot_fetches_a_voice_message_with_get_record() -> None:
    async with onebot() as (bridge, napcat, seen):
        napcat.add_file("5f2e.amr", VOICE)
        await napcat.private(20001, [record("5f2e.amr", "")])
        voice = await seen.voice()
        assert voice == Voice(file_id="5f2e.amr")
        assert await bridge.fetch_media(voice, CAP) == (VOICE, "audio/mpeg")
        assert napcat.sent("get_record") == [{"file": "5f2e.amr", "out_format": "mp3"}]


async def test_onebot_voice_prefers_get_record_and_images_use_get_image() -> None:
    async with onebot() as (bridge, napcat, _):
        napcat.add_file("v.amr", VOICE)
        napcat.add_file("pic.jpg", b"\xff\xd8\xff")
        # The URL NapCat gives a voice message is raw SILK: never what is fetched.
        silk = Voice(file_id="v.amr", url="http://127.0.0.1:1/raw.silk")
        assert await bridge.fetch_media(silk, CAP) == (VOICE, "audio/mpeg")
        image = Image(file_id="pic.jpg")
        assert await bridge.fetch_media(image, CAP) == (b"\xff\xd8\xff", "image/jpeg")
        assert napcat.sent("get_image") == [{"file": "pic.jpg"}]


async def test_onebot_decodes_inline_base64_without_asking() -> None:
    async with onebot() as (bridge, napcat, _):
        inline = "base64://" + base64.b64encode(VOICE).decode()
        assert await bridge.fetch_media(Voice(file_id=inline), CAP) == (VOICE, None)
        with pytest.raises(PlatformError, match="over the 100 byte limit"):
            await bridge.fetch_media(Voice(url=inline), 100)
        assert napcat.sent("get_record") == []


async def test_onebot_over_cap_missing_and_local_only_files_are_clear_errors() -> None:
    async with onebot() as (bridge, napcat, _):
        napcat.add_file("big.amr", VOICE)
        napcat.add_file("local.amr", None)  # only on NapCat's disk
        with pytest.raises(PlatformError, match="over the 1,000 byte limit"):
            await bridge.fetch_media(Voice(file_id="big.amr"), 1000)
        with pytest.raises(PlatformError, match="file not found") as err:
            await bridge.fetch_media(Voice(file_id="gone.amr"), CAP)
        assert err.value.context["action"] == "get_record"
        with pytest.raises(PlatformError, match="neither base64 nor an http"):
            await bridge.fetch_media(Voice(file_id="local.amr"), CAP)
        with pytest.raises(PlatformError, match="onebot cannot fetch this media"):
            await bridge.fetch_media(Voice(url="file:///tmp/x.amr"), CAP)
        assert OB_TOKEN not in str(err.value)


async def test_text_only_events_still_flow() -> None:
    # The media paths added nothing to plain messages: a text event is handed over as is.
    async with onebot() as (_, napcat, seen):
        await napcat.private(20002, "hello")
        await until(lambda: seen.events)
        assert seen.events[0].components == (Text(text="hello"),)
