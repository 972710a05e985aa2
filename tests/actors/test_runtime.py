"""The actor tree end to end: web chat -> router -> SessionHost -> fake LLM -> reply.

Real Ray, real sockets on 127.0.0.1, a real SQLite file, SIGKILLed processes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from typing import Any

import pytest

from tests.conftest import ChatClient, eventually, new_session, webchat_event
from tests.peers.openai_server import FakeLLM, Scripted


async def test_streamed_conversation_carries_history(chat: ChatClient, fake_llm: FakeLLM) -> None:
    fake_llm.stream_delay = 0.03  # words arrive over ~0.2 s, so several chunks reach us
    s = new_session()
    turns = await chat.ws_turns(s, ["hello there my friend", "and what did I say first"])
    first, second = turns
    assert first["reply"]["text"] == "echo: hello there my friend (turn 1)"
    assert len(first["chunks"]) >= 2, "the answer should arrive in several coalesced chunks"
    assert "".join(first["chunks"]) == first["reply"]["text"]
    assert second["reply"]["text"] == "echo: and what did I say first (turn 2)"
    # The second request to the model carried the first turn.
    last_request = fake_llm.requests[-1]["messages"]
    assert [m["role"] for m in last_request] == ["system", "user", "assistant", "user"]
    assert last_request[1]["content"] == "hello there my friend"
    assert await chat.rt.stored(s) == [
        ("user", "hello there my friend"),
        ("assistant", first["reply"]["text"]),
        ("user", "and what did I say first"),
        ("assistant", second["reply"]["text"]),
    ]


async def test_sigkill_of_session_host_keeps_history_and_is_logged(chat: ChatClient) -> None:
    rt = chat.rt
    s = new_session()
    assert (await chat.ask(s, "one"))["text"] == "echo: one (turn 1)"
    assert (await chat.ask(s, "two"))["text"] == "echo: two (turn 2)"
    name, host = await rt.host_of(f"webchat:private:{s}")
    pid = (await host.ping.remote())["pid"]
    os.kill(pid, signal.SIGKILL)
    reply = await chat.ask(s, "three")
    assert reply["text"] == "echo: three (turn 3)", "history must survive the host's death"
    assert reply["error"] is None
    assert (await host.ping.remote())["pid"] != pid

    async def logged() -> bool:
        status = await rt.status()
        return any(
            e["actor"] == name and e["kind"] == "restarted" and str(pid) in e["reason"]
            for e in status["restart_log"]
        )

    await eventually(logged)
    status = await rt.status()
    entry = next(a for a in status["actors"] if a["name"] == name)
    assert entry["restarts"] >= 1 and entry["state"] == "alive"


async def test_kill_during_a_turn_loses_nothing_and_doubles_nothing(
    chat: ChatClient, fake_llm: FakeLLM
) -> None:
    """SIGKILL the host while 10 sessions wait on a slow model: every message gets
    exactly one reply and is stored exactly once."""
    rt = chat.rt
    sessions = [new_session() for _ in range(10)]
    fake_llm.latency = 1.0
    host_name, host = await rt.host_of(f"webchat:private:{sessions[0]}")
    victims = [s for s in sessions if (await rt.host_of(f"webchat:private:{s}"))[0] == host_name]
    pid = (await host.ping.remote())["pid"]
    asks = [asyncio.create_task(chat.ask(s, f"hi {s}", message_id=f"m-{s}")) for s in sessions]
    await asyncio.sleep(0.5)  # the turns are inside the model call now
    os.kill(pid, signal.SIGKILL)
    replies = await asyncio.gather(*asks)
    fake_llm.latency = 0.0
    for s, reply in zip(sessions, replies, strict=True):
        assert reply["text"] == f"echo: hi {s} (turn 1)", reply
        assert reply["duplicate"] is False
        assert await rt.stored(s) == [("user", f"hi {s}"), ("assistant", reply["text"])]
    assert victims, "at least one session lived on the killed host"


async def test_same_event_twice_yields_one_reply(chat: ChatClient, fake_llm: FakeLLM) -> None:
    s = new_session()
    mid = "evt-" + uuid.uuid4().hex
    first = await chat.ask(s, "only once", message_id=mid)
    calls = fake_llm.calls
    again = await chat.ask(s, "only once", message_id=mid)
    assert again["text"] == first["text"] and again["duplicate"] is True
    # Concurrent redeliveries too.
    both = await asyncio.gather(*(chat.ask(s, "only once", message_id=mid) for _ in range(3)))
    assert all(r["duplicate"] and r["text"] == first["text"] for r in both)
    assert fake_llm.calls == calls, "a redelivered event must not reach the model again"
    assert await chat.rt.stored(s) == [("user", "only once"), ("assistant", first["text"])]


async def test_idle_sessions_are_passivated_and_come_back(chat: ChatClient) -> None:
    rt = chat.rt
    s = new_session()
    key = f"webchat:private:{s}"
    assert (await chat.ask(s, "remember me"))["text"] == "echo: remember me (turn 1)"
    _, host = await rt.host_of(key)
    assert await host.is_active.remote(key)

    async def passivated() -> bool:
        return not await host.is_active.remote(key)

    await eventually(passivated, within=rt.cfg.sessions.idle_timeout_s + 10)
    before = (await host.ping.remote())["passivations"]
    assert before >= 1
    assert (await chat.ask(s, "back again"))["text"] == "echo: back again (turn 2)"
    assert await host.is_active.remote(key)


async def test_twenty_sessions_in_parallel_keep_their_own_order(chat: ChatClient) -> None:
    sessions = [new_session() for _ in range(20)]

    async def converse(s: str) -> list[str]:
        return [(await chat.ask(s, f"{s} says {i}"))["text"] for i in range(5)]

    results = await asyncio.gather(*(converse(s) for s in sessions))
    for s, texts in zip(sessions, results, strict=True):
        assert texts == [f"echo: {s} says {i} (turn {i + 1})" for i in range(5)]


async def test_messages_to_one_session_are_answered_in_order(chat: ChatClient) -> None:
    s = new_session()
    replies = await asyncio.gather(
        *(chat.ask(s, f"n{i}", message_id=f"{s}-{i:02d}") for i in range(8))
    )
    turns = sorted(int(r["text"].split("(turn ")[1].rstrip(")")) for r in replies)
    assert turns == list(range(1, 9)), "one turn at a time: each sees all earlier turns"


async def test_rate_limited_then_succeeds(
    chat: ChatClient, fake_llm: FakeLLM, fake_fallback: FakeLLM
) -> None:
    fake_llm.script.append(Scripted(429, {"Retry-After": "0.3"}))
    s = new_session()
    started = time.monotonic()
    reply = await chat.ask(s, "patience")
    assert reply["text"] == "echo: patience (turn 1)" and reply["error"] is None
    assert fake_llm.calls == 2 and fake_fallback.calls == 0
    assert time.monotonic() - started >= 0.3, "Retry-After must be honoured"


async def test_primary_down_fallback_answers(
    chat: ChatClient, fake_llm: FakeLLM, fake_fallback: FakeLLM
) -> None:
    fake_llm.mode = "down"
    s = new_session()
    reply = await chat.ask(s, "anyone there")
    assert reply["text"] == "echo: anyone there (turn 1)" and reply["error"] is None
    assert fake_fallback.calls == 1
    assert fake_llm.calls == 3, "primary is tried 1 + max_retries times first"


async def test_all_providers_down_clear_message_nothing_stored_twice(
    chat: ChatClient, fake_llm: FakeLLM, fake_fallback: FakeLLM
) -> None:
    s = new_session()
    assert (await chat.ask(s, "first"))["error"] is None
    fake_llm.mode = fake_fallback.mode = "down"
    mid = "down-" + uuid.uuid4().hex
    failed = await chat.ask(s, "are you there", message_id=mid)
    assert failed["error"] == "provider_unavailable"
    assert "can't reach the language model" in failed["text"]
    assert len(await chat.rt.stored(s)) == 2, "a failed turn stores nothing"
    fake_llm.mode = fake_fallback.mode = "ok"
    await asyncio.sleep(0.6)  # the breaker's cool-down
    ok = await chat.ask(s, "are you there", message_id=mid)
    assert ok["text"] == "echo: are you there (turn 2)" and ok["duplicate"] is False
    assert [c for _, c in await chat.rt.stored(s)].count("are you there") == 1


async def test_commands(chat: ChatClient) -> None:
    s = new_session()
    help_text = (await chat.ask(s, "/help"))["text"]
    for name in ("/help", "/new", "/reset", "/history"):
        assert name in help_text
    unknown = (await chat.ask(s, "/frobnicate now"))["text"]
    assert "Unknown command /frobnicate" in unknown and "/help" in unknown
    await chat.ask(s, "alpha")
    assert "user: alpha" in (await chat.ask(s, "/history"))["text"]
    assert "Started a new conversation" in (await chat.ask(s, "/new"))["text"]
    assert (await chat.ask(s, "beta"))["text"] == "echo: beta (turn 1)"
    assert "Cleared" in (await chat.ask(s, "/reset"))["text"]
    assert (await chat.ask(s, "gamma"))["text"] == "echo: gamma (turn 1)"
    assert "no history" not in (await chat.ask(s, "/history 1"))["text"]
    assert "Usage" in (await chat.ask(s, "/history many"))["text"]


async def test_web_chat_refuses_bad_requests(chat: ChatClient) -> None:
    status, body = await chat.post("s", "hi", token="wrong")
    assert status == 401
    async with chat.http.post(
        f"{chat.rt.http}/api/chat",
        data=b"{not json",
        headers={"Authorization": f"Bearer {chat.rt.token}"},
    ) as resp:
        assert resp.status == 400 and "JSON" in (await resp.json())["error"]
    status, body = await chat.post("bad session!", "hi")
    assert status == 400 and "session" in body["error"]
    status, body = await chat.post("s", "x" * (chat.rt.cfg.webchat.max_message_chars + 1))
    assert status == 400 and "longer" in body["error"]
    # The bot still answers everyone else.
    assert (await chat.ask(new_session(), "still here"))["error"] is None


async def test_websocket_needs_the_token_and_survives_garbage(chat: ChatClient) -> None:
    import aiohttp

    for params in ({}, {"token": "wrong"}):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await chat.http.ws_connect(chat.rt.ws, params=params)
        assert refused.value.status == 403
    async with chat.http.ws_connect(chat.rt.ws, params={"token": chat.rt.token}) as ws:
        await ws.send_str("garbage{")
        err = await ws.receive_json()
        assert err["type"] == "error"
        await ws.send_json(
            {
                "type": "message",
                "session": "ok-" + uuid.uuid4().hex[:6],
                "text": "fine",
                "message_id": "w1",
            }
        )
        while (reply := await ws.receive_json())["type"] == "chunk":
            pass
        assert reply["type"] == "reply" and reply["text"] == "echo: fine (turn 1)"


async def test_health_needs_no_token(chat: ChatClient) -> None:
    async with chat.http.get(f"{chat.rt.http}/health") as resp:
        data = await resp.json()
    assert resp.status == 200 and data["ok"] is True
    assert set(data["actors"]) >= {
        "shard-directory",
        "session-host-0",
        "session-host-1",
        "adapter-webchat",
        "provider-pool-primary",
    }


async def test_sigkill_of_web_chat_adapter_serves_again(chat: ChatClient) -> None:
    import aiohttp
    import ray

    from actors.common import WEBCHAT

    rt = chat.rt
    adapter = ray.get_actor(WEBCHAT, namespace=rt.namespace)
    pid = (await adapter.ping.remote())["pid"]
    os.kill(pid, signal.SIGKILL)
    s = new_session()

    async def answers() -> bool:
        try:
            return (await chat.ask(s, "hello again"))["error"] is None
        except (OSError, AssertionError, TimeoutError, aiohttp.ClientError):
            return False  # the port is down while the adapter restarts

    await eventually(answers, within=30, interval=0.5)


@pytest.mark.parametrize("kind", ["provider-pool-primary", "shard-directory"])
async def test_sigkill_of_other_actors_keeps_serving(chat: ChatClient, kind: str) -> None:
    import ray

    rt = chat.rt
    actor = ray.get_actor(kind, namespace=rt.namespace)
    pid = (await actor.ping.remote())["pid"]
    os.kill(pid, signal.SIGKILL)
    s = new_session()
    assert (await chat.ask(s, "still fine"))["text"] == "echo: still fine (turn 1)"

    async def restarted() -> bool:
        try:
            return bool((await actor.ping.remote())["pid"] != pid)
        except ray.exceptions.RayActorError:
            return False

    await eventually(restarted)


async def test_actor_dead_for_good_is_recreated_by_the_supervisor(chat: ChatClient) -> None:
    """Ray gives up on an actor killed with no_restart; the Supervisor makes a new one."""
    import ray

    rt = chat.rt
    s = new_session()
    assert (await chat.ask(s, "before"))["text"] == "echo: before (turn 1)"
    name, host = await rt.host_of(f"webchat:private:{s}")
    ray.kill(host, no_restart=True)
    reply = await chat.ask(s, "after")  # routed again once the new host is up
    assert reply["text"] == "echo: after (turn 2)", reply

    async def logged() -> bool:
        log = (await rt.status())["restart_log"]
        kinds = {e["kind"] for e in log if e["actor"] == name}
        return {"died", "recreated"} <= kinds

    await eventually(logged)


async def test_supervisor_killed_reattaches_to_the_running_tree(chat: ChatClient) -> None:
    import ray

    rt = chat.rt
    before = {a["name"]: a["pid"] for a in (await rt.status())["actors"]}
    sup_pid = (await rt.supervisor.ping.remote())["pid"]
    os.kill(sup_pid, signal.SIGKILL)
    s = new_session()
    assert (await chat.ask(s, "during"))["error"] is None, "the tree serves without it"

    async def back() -> dict[str, Any] | None:
        try:
            return await rt.supervisor.status.remote()
        except ray.exceptions.RayActorError:
            return None

    status = await eventually(back)
    after = {a["name"]: a["pid"] for a in status["actors"]}
    assert after == before, "children were re-attached, not restarted"
    assert all(a["state"] == "alive" for a in status["actors"])
    assert any(
        e["actor"] == "supervisor" and e["kind"] == "restarted" for e in status["restart_log"]
    )


async def test_full_mailbox_answers_busy_and_loses_nothing_else(
    chat: ChatClient, fake_llm: FakeLLM
) -> None:
    rt = chat.rt
    fake_llm.latency = 0.2
    s = new_session()
    n = rt.cfg.sessions.mailbox_size + 8
    replies = await asyncio.gather(*(chat.ask(s, f"m{i}", message_id=f"{s}-{i}") for i in range(n)))
    busy = [r for r in replies if r["error"] == "busy"]
    done = [r for r in replies if r["error"] is None]
    assert busy and len(busy) + len(done) == n
    assert "still working" in busy[0]["text"]
    stored = [c for role, c in await rt.stored(s) if role == "user"]
    assert len(stored) == len(done), "every accepted message is answered and stored once"
    # A refused message can be sent again later and is answered.
    fake_llm.latency = 0.0
    again = await chat.ask(s, "retry", message_id=busy[0]["message_id"])
    assert again["error"] is None and again["duplicate"] is False


async def test_fast_reply_is_not_held_by_a_slow_one_in_the_same_batch(
    chat: ChatClient, fake_llm: FakeLLM
) -> None:
    """One batch with a slow LLM turn and an instant command: the command's reply comes
    back in the first answer, the LLM turn is parked and collected afterwards."""
    rt = chat.rt
    slow = new_session()
    name, host = await rt.host_of(f"webchat:private:{slow}")
    fast = new_session()
    while (await rt.host_of(f"webchat:private:{fast}"))[0] != name:
        fast = new_session()

    fake_llm.latency = 2.0
    epoch = (await host.ping.remote())["epoch"]
    first = await host.handle_batch.remote(
        epoch,
        [webchat_event(slow, "take your time").to_dict(), webchat_event(fast, "/help").to_dict()],
        10.0,
    )
    assert [idx for idx, _ in first["done"]] == [1], "only the command is done"
    assert "Commands:" in first["done"][0][1]["components"][0]["text"]
    assert first["more"] is not None
    rest = await host.collect.remote(first["more"], 10.0)
    assert [idx for idx, _ in rest["done"]] == [0] and rest["more"] is None
    assert rest["done"][0][1]["components"][0]["text"] == "echo: take your time (turn 1)"
    lost = await host.collect.remote("no-such-token", 10.0)
    assert lost["lost"] is True


async def test_metrics_endpoint_and_rays_metrics_show_the_traffic(chat: ChatClient) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    rt = chat.rt
    for i in range(3):
        await chat.ask(new_session(), f"count me {i}")
    async with chat.http.get(f"{rt.http}/metrics") as resp:
        assert resp.status == 401, "metrics need the token"
    async with chat.http.get(
        f"{rt.http}/metrics", headers={"Authorization": f"Bearer {rt.token}"}
    ) as resp:
        assert resp.status == 200
        text = await resp.text()
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]

    def total(name: str, **labels: str) -> float:
        return sum(
            s.value
            for s in samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    assert total("astr_ray_messages_total", platform="webchat", direction="in") >= 3
    assert total("astr_ray_messages_total", direction="out") >= 3
    assert total("astr_ray_turn_seconds_count", outcome="ok") >= 3
    assert total("astr_ray_llm_seconds_count", provider="primary") >= 3
    assert total("astr_ray_llm_tokens_total", provider="primary", kind="completion") > 0
    hosts = {s.labels["actor"] for s in samples if s.name == "astr_ray_active_sessions"}
    assert hosts == {"session-host-0", "session-host-1"}
    assert "sk-test-primary" not in text

    # The same figures reach Ray's own metrics export (Ray's dashboard), ~10 s later.
    import aiohttp

    async def in_ray() -> bool:
        try:
            async with chat.http.get(f"http://127.0.0.1:{rt.ray_metrics_port}/metrics") as r:
                body = await r.text()
        except aiohttp.ClientError:
            return False
        return "ray_astr_ray_turn_seconds_count" in body and "session-host-" in body

    await eventually(in_ray, within=60, interval=2)
