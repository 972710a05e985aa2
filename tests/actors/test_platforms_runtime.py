"""Telegram, Discord and Slack in the running tree: each account is an adapter actor
talking to a fake platform server on loopback; messages go through the session hosts
and the fake LLM, and an adapter killed with SIGKILL comes back and serves again."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from tests.conftest import (
    DISCORD_TOKEN,
    TELEGRAM_TOKEN,
    ChatClient,
    PlatformPeers,
    Runtime,
    eventually,
)
from tests.peers.slack_api import APP_TOKEN, BOT_TOKEN
from tests.peers.telegram_api import mention

pytestmark = pytest.mark.timeout(180)


def uid() -> int:
    return random.randrange(10**8, 10**9)


async def adapter(rt: Runtime, platform_id: str) -> dict[str, Any]:
    status = await rt.status()
    name = f"adapter-{platform_id}"
    found: dict[str, Any] = next(a for a in status["actors"] if a["name"] == name)
    return found


async def answered(
    sent: Callable[[], Awaitable[list[str]]], n: int = 1, within: float = 30
) -> list[str]:
    """Wait until ``sent()`` holds ``n`` texts, then make sure no more come."""

    async def enough() -> list[str] | None:
        got = await sent()
        return got if len(got) >= n else None

    await eventually(enough, within=within)
    await asyncio.sleep(0.5)
    texts = await sent()
    assert len(texts) == n, f"expected {n} answers, got {texts}"
    return texts


async def kill_and_wait(rt: Runtime, platform_id: str) -> None:
    before = (await adapter(rt, platform_id))["pid"]
    os.kill(before, signal.SIGKILL)

    async def restarted() -> bool:
        info = await adapter(rt, platform_id)
        return bool(info["pid"] != before and info["state"] == "alive")

    await eventually(restarted, within=40)


# -- Telegram -----------------------------------------------------------------------------


def tg_texts(peers: PlatformPeers, chat: int) -> Callable[[], Awaitable[list[str]]]:
    async def sent() -> list[str]:
        calls = await peers.telegram.call("sent", "sendMessage")
        return [c["text"] for c in calls if int(c["chat_id"]) == chat]

    return sent


async def test_telegram_private_and_group_through_the_tree(
    runtime: Runtime, platform_peers: PlatformPeers
) -> None:
    tg = platform_peers.telegram
    user, group = uid(), -uid()
    await tg.call("private", user, "hello over telegram")
    (text,) = await answered(tg_texts(platform_peers, user))
    assert text.startswith("echo: hello over telegram (turn 1)")

    await tg.call("group", group, user, "just chatting")
    woken = "@astr_test_bot what now?"
    await tg.call("group", group, user, woken, entities=[mention(woken, "@astr_test_bot")])
    (text,) = await answered(tg_texts(platform_peers, group))
    assert text.startswith("echo: what now?"), "answered once, without the mention"


async def test_telegram_adapter_survives_sigkill_without_losing_a_message(
    runtime: Runtime, platform_peers: PlatformPeers
) -> None:
    tg = platform_peers.telegram
    user = uid()
    await kill_and_wait(runtime, "tg")
    await tg.call("private", user, "sent while you were down")
    (text,) = await answered(tg_texts(platform_peers, user), within=60)
    assert text.startswith("echo: sent while you were down")


# -- Discord ------------------------------------------------------------------------------


def dc_texts(peers: PlatformPeers, channel: str) -> Callable[[], Awaitable[list[str]]]:
    async def sent() -> list[str]:
        posts = await peers.discord.call("posts")
        return [p.json["content"] for p in posts if p.path == f"/channels/{channel}/messages"]

    return sent


async def test_discord_dm_and_channel_through_the_tree(
    runtime: Runtime, platform_peers: PlatformPeers
) -> None:
    dc = platform_peers.discord
    user = str(uid())
    await dc.call("send_dm", user, "hello over discord")
    dm = await dc.call("dm_channel", user)
    (text,) = await answered(dc_texts(platform_peers, dm))
    assert text.startswith("echo: hello over discord (turn 1)")

    bot_id = dc.peer.bot_id
    channel = dc.peer.channel_id
    before = len(await dc_texts(platform_peers, channel)())
    await dc.call("send_guild_message", user, f"no one in particular {uid()}")
    mid = await dc.call("send_guild_message", user, f"<@{bot_id}> ping me", mentions=[bot_id])

    async def ours() -> list[str]:
        posts = await dc.call("posts")
        return [
            p.json["content"]
            for p in posts
            if str((p.json.get("message_reference") or {}).get("message_id")) == mid
        ]

    (text,) = await answered(ours)
    assert text.startswith("echo: ping me")
    assert len(await dc_texts(platform_peers, channel)()) == before + 1, "the unwoken one: silent"


async def test_discord_adapter_survives_sigkill(
    runtime: Runtime, platform_peers: PlatformPeers
) -> None:
    dc = platform_peers.discord
    identifies = dc.peer.identifies
    await kill_and_wait(runtime, "dc")

    async def relinked() -> bool:
        return dc.peer.identifies > identifies and dc.peer.linked

    await eventually(relinked, within=40)
    user = str(uid())
    await dc.call("send_dm", user, "are you back?")
    dm = await dc.call("dm_channel", user)
    (text,) = await answered(dc_texts(platform_peers, dm))
    assert text.startswith("echo: are you back?")


# -- Slack --------------------------------------------------------------------------------


def sl_texts(peers: PlatformPeers, channel: str) -> Callable[[], Awaitable[list[str]]]:
    async def sent() -> list[str]:
        calls = await peers.slack.call("sent", "chat.postMessage")
        return [c["text"] for c in calls if c["channel"] == channel]

    return sent


async def test_slack_im_and_channel_through_the_tree(
    runtime: Runtime, platform_peers: PlatformPeers
) -> None:
    sl = platform_peers.slack
    user, channel = f"U{uid()}", f"C{uid()}"
    await sl.call("im", user, "hello over slack")
    (text,) = await answered(sl_texts(platform_peers, f"D{user}"))
    assert text.startswith("echo: hello over slack (turn 1)")

    await sl.call("channel_message", channel, user, "just chatting")
    # A mention comes as a message and its app_mention twin: answered once.
    await sl.call("channel_message", channel, user, f"<@{sl.peer.bot_user}> what now?")
    (text,) = await answered(sl_texts(platform_peers, channel))
    assert text.startswith("echo: what now?")


async def test_slack_adapter_survives_sigkill_without_losing_a_message(
    runtime: Runtime, platform_peers: PlatformPeers
) -> None:
    sl = platform_peers.slack
    user = f"U{uid()}"
    await kill_and_wait(runtime, "sl")
    await sl.call("im", user, "sent while you were down")
    (text,) = await answered(sl_texts(platform_peers, f"D{user}"), within=60)
    assert text.startswith("echo: sent while you were down")


# -- all of them --------------------------------------------------------------------------


async def test_a_plugin_sends_to_a_telegram_chat(
    chat: ChatClient, platform_peers: PlatformPeers
) -> None:
    user = uid()
    reply = await chat.ask(f"w{uid()}", f"/tell tg:private:{user} the build is green")
    assert reply["text"] == "sent"
    (text,) = await answered(tg_texts(platform_peers, user))
    assert text == "the build is green"


async def test_every_account_reports_its_health_and_no_secret(runtime: Runtime) -> None:
    async with aiohttp.ClientSession() as http:

        async def all_up() -> list[dict[str, Any]] | None:
            async with http.get(
                f"{runtime.http}/api/platforms",
                headers={"Authorization": f"Bearer {runtime.token}"},
            ) as resp:
                assert resp.status == 200
                body = await resp.json()
            found: list[dict[str, Any]] = body["platforms"]
            # qq waits for a NapCat to connect to it; the others connect out.
            linked = [p["connected"] for p in found if p["id"] != "qq"]
            return found if all(linked) else None

        platforms = await eventually(all_up, within=40)
    assert {p["id"]: p["type"] for p in platforms} == {
        "qq": "onebot",
        "tg": "telegram",
        "dc": "discord",
        "sl": "slack",
    }
    assert all(p["state"] == "alive" for p in platforms)
    text = json.dumps(platforms)
    for secret in (TELEGRAM_TOKEN, DISCORD_TOKEN, BOT_TOKEN, APP_TOKEN):
        assert secret not in text
