"""What every platform bridge shares: wake rules, text splitting, reconnect backoff,
streaming by edits, and the platform configs."""

from __future__ import annotations

import asyncio
import time

import pytest

from astr_ray.config import (
    DiscordConfig,
    OneBotConfig,
    SlackConfig,
    TelegramConfig,
    WakeConfig,
    parse_config,
)
from astr_ray.errors import ConfigError
from astr_ray.message import ChatType, Component, Image, Text
from astr_ray.platforms.base import Backoff, EditStream, group_woken, split_text


def test_split_text_prefers_paragraphs_then_lines_then_spaces() -> None:
    body = "a" * 90 + "\n" + "b" * 50
    assert split_text(body, 100) == ["a" * 90, "b" * 50]
    assert split_text("x" * 250, 100) == ["x" * 100, "x" * 100, "x" * 50]
    assert split_text("short", 100) == ["short"]
    assert split_text("a" * 100 + " b", 100) == ["a" * 100, "b"]  # a break right at the limit
    words = ("word " * 60).strip()
    pieces = split_text(words, 100)
    assert all(len(p) <= 100 for p in pieces)
    assert " ".join(pieces) == words


@pytest.mark.parametrize(
    ("chat", "text", "mentioned", "replied", "woken", "left"),
    [
        (ChatType.PRIVATE, "hello", False, False, True, "hello"),
        (ChatType.GROUP, "hello", False, False, False, "hello"),
        (ChatType.GROUP, "hello", True, False, True, "hello"),
        (ChatType.GROUP, "hello", False, True, True, "hello"),
        (ChatType.GROUP, "bot what time is it", False, False, True, "what time is it"),
        (ChatType.GROUP, "/help", False, False, True, "/help"),
        (ChatType.PRIVATE, "bot hi", False, False, True, "hi"),
    ],
)
def test_wake_rules(
    chat: ChatType, text: str, mentioned: bool, replied: bool, woken: bool, left: str
) -> None:
    comps: list[Component] = [Text(text=text)]
    cfg = WakeConfig(prefixes=["bot "])
    assert group_woken(chat, comps, cfg, mentioned=mentioned, replied_to_bot=replied) is woken
    assert comps == [Text(text=left)]


def test_wake_rules_can_be_switched_off() -> None:
    cfg = WakeConfig(mention=False, reply=False)
    comps: list[Component] = [Text(text="hi")]
    assert not group_woken(ChatType.GROUP, comps, cfg, mentioned=True, replied_to_bot=True)


def test_a_prefix_alone_leaves_no_empty_text() -> None:
    comps: list[Component] = [Image(url="http://x/a.png"), Text(text="bot ")]
    cfg = WakeConfig(prefixes=["bot"])
    assert group_woken(ChatType.GROUP, comps, cfg, mentioned=False, replied_to_bot=False)
    assert comps == [Image(url="http://x/a.png")]


def test_backoff_doubles_to_the_cap_and_resets_after_a_steady_link() -> None:
    b = Backoff(cap_s=2.0, first_s=0.25, steady_s=0.05)
    delays = [b.next() for _ in range(6)]
    assert 0.125 <= delays[0] <= 0.25
    assert all(1.0 <= d <= 2.0 for d in delays[4:])  # capped (jitter halves at most)
    b.connected()
    b.lost()  # a short-lived link: no reset
    assert b.next() >= 1.0
    b.connected()
    time.sleep(0.06)
    b.lost()
    assert b.next() <= 0.25


class _Chat:
    """A message list that EditStream sends to and edits."""

    def __init__(self, fail_edits: int = 0) -> None:
        self.messages: list[str] = []
        self.calls: list[tuple[str, int, str]] = []
        self.fail_edits = fail_edits

    async def send(self, text: str) -> int:
        self.messages.append(text)
        self.calls.append(("send", len(self.messages) - 1, text))
        return len(self.messages) - 1

    async def edit(self, handle: int, text: str) -> None:
        if self.fail_edits:
            self.fail_edits -= 1
            raise RuntimeError("flood wait")
        self.messages[handle] = text
        self.calls.append(("edit", handle, text))


async def test_edit_stream_sends_once_then_edits_at_most_once_per_interval() -> None:
    chat = _Chat()
    stream = EditStream(chat.send, chat.edit, limit=100, interval_s=0.2)
    for word in ("Hello", " there", ",", " friend"):
        await stream.feed(word)  # all within one interval: one send, no edit yet
    assert [c[0] for c in chat.calls] == ["send"]
    assert chat.messages == ["Hello ▌"]
    await asyncio.sleep(0.25)
    await stream.feed("!")
    assert chat.messages == ["Hello there, friend! ▌"]
    handles = await stream.finish("Hello there, friend!")
    assert handles == [0]
    assert chat.messages == ["Hello there, friend!"]
    assert [c[0] for c in chat.calls] == ["send", "edit", "edit"]


async def test_edit_stream_moves_to_a_new_message_past_the_limit() -> None:
    chat = _Chat()
    stream = EditStream(chat.send, chat.edit, limit=20, interval_s=0)
    text = "one two three four five six seven eight nine"
    for word in text.split(" "):
        await stream.feed(word + " ")
    await stream.finish(text)
    assert all(len(m) <= 20 for m in chat.messages)
    assert " ".join(chat.messages) == text
    assert len(stream.handles) == len(chat.messages) >= 3


async def test_edit_stream_survives_a_failed_edit_and_the_final_text_wins() -> None:
    chat = _Chat(fail_edits=1)
    stream = EditStream(chat.send, chat.edit, limit=100, interval_s=0)
    await stream.feed("a")
    await stream.feed("b")  # this edit fails: logged, not raised
    await stream.finish("ab (final)")
    assert chat.messages == ["ab (final)"]


async def test_an_empty_final_text_leaves_the_streamed_text_without_the_cursor() -> None:
    chat = _Chat()
    stream = EditStream(chat.send, chat.edit, limit=100, interval_s=0)
    await stream.feed("partial answer")
    assert chat.messages == ["partial answer ▌"]
    await stream.finish("")
    assert chat.messages == ["partial answer"]


async def test_edit_stream_sends_nothing_for_blank_text() -> None:
    chat = _Chat()
    stream = EditStream(chat.send, chat.edit, limit=100, interval_s=0)
    await stream.feed("   ")
    assert await stream.finish() == []
    assert chat.messages == []


def test_platform_configs_are_checked_per_type() -> None:
    cfg = parse_config(
        {
            "platforms": [
                {"id": "qq"},
                {"id": "tg", "type": "telegram", "token": "1:abc"},
                {"id": "dc", "type": "discord", "token": "t"},
                {"id": "sl", "type": "slack", "bot_token": "xoxb", "app_token": "xapp"},
            ]
        }
    )
    kinds = [type(p) for p in cfg.platforms]
    assert kinds == [OneBotConfig, TelegramConfig, DiscordConfig, SlackConfig]
    assert [p.describe().split()[0] for p in cfg.platforms] == [
        "OneBot",
        "Telegram",
        "Discord",
        "Slack",
    ]


@pytest.mark.parametrize(
    ("platform", "path", "why"),
    [
        ({"id": "tg", "type": "telegram"}, "platforms[0].token", "Field required"),
        (
            {"id": "tg", "type": "telegram", "token": "1:a", "mode": "webhook"},
            "platforms[0]",
            "public_url",
        ),
        (
            {
                "id": "tg",
                "type": "telegram",
                "token": "1:a",
                "mode": "webhook",
                "public_url": "https://bot.example/tg",
            },
            "platforms[0]",
            "secret_token",
        ),
        ({"id": "sl", "type": "slack", "bot_token": "x"}, "platforms[0]", "app_token"),
        (
            {"id": "sl", "type": "slack", "bot_token": "x", "mode": "events"},
            "platforms[0]",
            "signing_secret",
        ),
        ({"id": "x", "type": "irc"}, "platforms[0]", "onebot, telegram, discord or slack"),
        ({"id": "Bad Id", "type": "discord", "token": "t"}, "platforms[0].id", "pattern"),
    ],
)
def test_a_bad_platform_block_names_the_key(platform: dict[str, str], path: str, why: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"platforms": [platform]})
    assert err.value.path == path
    assert why in str(err.value)


def test_the_config_templates_platform_examples_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    from astr_ray.config import default_config_text

    lines = default_config_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("platforms:"))
    block = ["platforms:"]
    for line in lines[start + 1 :]:
        if not line.startswith("#"):
            break
        block.append(line[1:])
    for var in ("ONEBOT_TOKEN", "TELEGRAM_TOKEN", "DISCORD_TOKEN"):
        monkeypatch.setenv(var, "t")
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-t")
    monkeypatch.setenv("SLACK_APP_TOKEN", "xapp-t")
    cfg = parse_config(yaml.safe_load("\n".join(block)))
    assert [p.type for p in cfg.platforms] == ["onebot", "telegram", "discord", "slack"]
