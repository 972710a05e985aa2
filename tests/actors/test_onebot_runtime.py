"""QQ through OneBot v11 in the running tree: a fake NapCat connects to the adapter
actor's reverse WebSocket; messages go through the session hosts and the fake LLM."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import ONEBOT_TOKEN, ChatClient, Runtime, eventually
from tests.peers.onebot_client import FakeNapCat

pytestmark = pytest.mark.timeout(180)

SELF_ID = 10001


def uid() -> int:
    return random.randrange(10**8, 10**9)


def ws_url(rt: Runtime) -> str:
    p = rt.cfg.platforms[0]
    return f"ws://127.0.0.1:{p.port}{p.path}"


async def adapter(rt: Runtime) -> dict[str, Any]:
    status = await rt.status()
    return next(a for a in status["actors"] if a["name"] == "adapter-qq")


@pytest.fixture
async def napcat(runtime: Runtime) -> AsyncIterator[FakeNapCat]:
    fake = FakeNapCat(self_id=SELF_ID, token=ONEBOT_TOKEN)
    await fake.connect(ws_url(runtime))
    yield fake
    await fake.close()


def text_of(params: dict[str, Any]) -> str:
    return "".join(s["data"].get("text", "") for s in params["message"] if s["type"] == "text")


async def test_a_private_message_is_answered_through_the_tree(napcat: FakeNapCat) -> None:
    user = uid()
    await napcat.private(user, "hello over qq", message_id=uid())
    (sent,) = await napcat.wait_sent(1)
    assert sent["message_type"] == "private" and int(sent["user_id"]) == user
    assert text_of(sent).startswith("echo: hello over qq (turn 1)")


async def test_a_group_answers_only_when_woken(napcat: FakeNapCat) -> None:
    group, user = uid(), uid()
    await napcat.group(group, user, "just chatting", message_id=uid())
    mid = uid()
    await napcat.group(
        group,
        user,
        [
            {"type": "at", "data": {"qq": str(SELF_ID)}},
            {"type": "text", "data": {"text": " hi bot"}},
        ],
        message_id=mid,
    )
    (sent,) = await napcat.wait_sent(1)
    assert int(sent["group_id"]) == group
    assert text_of(sent).startswith("echo: hi bot"), sent
    quoted = [s for s in sent["message"] if s["type"] == "reply"]
    assert quoted and str(quoted[0]["data"]["id"]) == str(mid)
    await asyncio.sleep(0.5)
    assert len(napcat.sent()) == 1, "the unwoken message got no answer"


async def test_the_adapter_survives_sigkill(runtime: Runtime, napcat: FakeNapCat) -> None:
    before = (await adapter(runtime))["pid"]
    os.kill(before, signal.SIGKILL)

    async def restarted() -> bool:
        info = await adapter(runtime)
        return bool(info["pid"] != before and info["state"] == "alive")

    await eventually(restarted, within=30)

    async def relinked() -> bool:
        try:
            await napcat.reconnect()
        except Exception:
            return False
        return True

    await eventually(relinked, within=30, interval=0.5)
    user = uid()
    await napcat.private(user, "are you back?", message_id=uid())
    (sent,) = await napcat.wait_sent(1, within=30)
    assert text_of(sent).startswith("echo: are you back?")
    info = (await adapter(runtime))["info"]
    assert info["connected"] is True


async def test_a_plugin_sends_to_a_qq_group(chat: ChatClient, napcat: FakeNapCat) -> None:
    group = uid()
    reply = await chat.ask(f"w{uid()}", f"/tell qq:group:{group} meeting moved to 3pm")
    assert reply["text"] == "sent"
    (sent,) = await napcat.wait_sent(1)
    assert int(sent["group_id"]) == group and text_of(sent) == "meeting moved to 3pm"


async def test_platform_health_is_in_the_api(runtime: Runtime, napcat: FakeNapCat) -> None:
    import aiohttp

    url = f"{runtime.http}/api/platforms"
    auth = {"Authorization": f"Bearer {runtime.token}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as resp:
            assert resp.status == 401

        async def qq_now() -> dict[str, Any]:
            async with http.get(url, headers=auth) as resp:
                assert resp.status == 200
                body = await resp.json()
            (qq,) = [p for p in body["platforms"] if p["id"] == "qq"]
            return qq

        async def up() -> dict[str, Any] | None:
            qq = await qq_now()
            return qq if qq["connected"] else None

        before = (await eventually(up))["reconnects"]
        for _ in range(2):  # each reconnect shows in the count
            await napcat.reconnect()

        async def counted() -> dict[str, Any] | None:
            qq = await qq_now()
            return qq if qq["connected"] and qq["reconnects"] >= before + 2 else None

        qq = await eventually(counted, within=20)
    assert qq["type"] == "onebot" and qq["mode"] == "reverse" and qq["state"] == "alive"
    assert ONEBOT_TOKEN not in json.dumps(qq)
