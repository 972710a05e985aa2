"""Cluster mode on one machine: nodes added to and removed from the test session's Ray
(a ``ray.cluster_utils.Cluster``), state in the real PostgreSQL server.

Worker nodes carry the ``session_hosts`` resource (as cluster.yaml's session nodes do);
the tree runs ``hosts_per_node: 2``, so hosts follow the nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from tests.conftest import (
    ChatClient,
    Runtime,
    eventually,
    free_port,
    new_session,
    runtime_config,
)
from tests.peers.openai_server import FakeLLM

NODE = {"num_cpus": 0, "resources": {"session_hosts": 2}, "object_store_memory": 80 * 1024 * 1024}
SPEECH_NODE = {"num_cpus": 1, "resources": {"speech": 1}, "object_store_memory": 80 * 1024 * 1024}


@pytest.fixture(scope="module")
def cluster_rt(
    ray_cluster: dict[str, Any],
    fake_llm: FakeLLM,
    fake_fallback: FakeLLM,
    pg_database: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Runtime, list[Any]]]:
    from actors import runtime as rt

    cluster = ray_cluster["cluster"]
    nodes = [cluster.add_node(**NODE) for _ in range(2)]
    speech_node = cluster.add_node(**SPEECH_NODE)
    cfg = runtime_config(
        tmp_path_factory.mktemp("cluster"),
        fake_llm,
        fake_fallback,
        store={"url": pg_database},
        sessions={"hosts_per_node": 2, "idle_timeout_s": 60, "history_turns": 1000},
        webchat={"port": free_port()},
        platforms=[{"id": "qq", "port": free_port(), "access_token": "cluster-onebot"}],
        runtime={"placement": "resources"},
        speech={"tts": {"workers": 0}, "stt": {"backend": "whisper", "workers": 1}},
    )
    sup, status = rt.start_tree(cfg, timeout=180)
    assert status["ok"], status
    try:
        yield Runtime(cfg, sup, ray_cluster["gcs_address"], ray_cluster["metrics_port"]), nodes
    finally:
        import ray

        rt.stop_tree(cfg.runtime.namespace, handle=sup)
        gone = {node.node_id for node in [*nodes, speech_node]}
        for node in [*nodes, speech_node]:
            if node in cluster.worker_nodes:
                cluster.remove_node(node)
        # Later trees must not be placed on a node Ray has not yet declared dead.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(
            n["Alive"] and n["NodeID"] in gone for n in ray.nodes()
        ):
            time.sleep(0.25)


@pytest.fixture
async def cchat(cluster_rt: tuple[Runtime, list[Any]]) -> AsyncIterator[ChatClient]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        yield ChatClient(cluster_rt[0], http)


def _hosts(status: dict[str, Any]) -> list[dict[str, Any]]:
    return [a for a in status["actors"] if a["kind"] == "session_host"]


async def test_sessions_are_spread_over_nodes(
    cchat: ChatClient, cluster_rt: tuple[Runtime, list[Any]]
) -> None:
    rt, nodes = cluster_rt
    status = await rt.status()
    hosts = _hosts(status)
    worker_ids = {n.node_id for n in nodes}
    assert len(hosts) == 4
    assert {h["node_id"] for h in hosts} == worker_ids, "two hosts on each session node"
    sessions = [new_session() for _ in range(16)]
    for s in sessions:
        assert (await cchat.ask(s, "hi"))["text"] == "echo: hi (turn 1)"
    served = {(await rt.host_of(f"webchat:private:{s}"))[0] for s in sessions}
    nodes_served = {h["node_id"] for h in _hosts(await rt.status()) if h["name"] in served}
    assert nodes_served == worker_ids, "sessions live on both nodes"


async def test_every_adapter_shares_the_node_marked_adapters(
    cluster_rt: tuple[Runtime, list[Any]],
) -> None:
    import ray

    rt, _ = cluster_rt
    marked = {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("adapters")}
    adapters = [a for a in (await rt.status())["actors"] if a["kind"] == "adapter"]
    assert {a["name"] for a in adapters} == {"adapter-webchat", "adapter-qq"}
    assert all(a["state"] == "alive" and a["node_id"] in marked for a in adapters), adapters


async def test_speech_workers_go_to_the_node_marked_speech(
    cluster_rt: tuple[Runtime, list[Any]],
) -> None:
    import ray

    rt, _ = cluster_rt
    marked = {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("speech")}
    (stt,) = [a for a in (await rt.status())["actors"] if a["kind"] == "stt"]
    assert stt["state"] == "alive" and stt["node_id"] in marked, stt


async def test_node_join_moves_shards_and_conversations_continue(
    cchat: ChatClient, cluster_rt: tuple[Runtime, list[Any]], ray_cluster: dict[str, Any]
) -> None:
    rt, nodes = cluster_rt
    sessions = [new_session() for _ in range(20)]
    for s in sessions:
        await cchat.ask(s, "before")
    epoch = (await rt.status())["epoch"]
    before = {s: (await rt.host_of(f"webchat:private:{s}"))[0] for s in sessions}
    nodes.append(ray_cluster["cluster"].add_node(**NODE))

    async def rebalanced() -> dict[str, Any] | None:
        status = await rt.status()
        return status if len(_hosts(status)) == 6 and status["epoch"] > epoch else None

    status = await eventually(rebalanced, within=60)
    assert {h["node_id"] for h in _hosts(status)} >= {nodes[-1].node_id}
    assert any(
        e["actor"] == "shard-directory" and e["kind"] == "rebalanced" for e in status["restart_log"]
    )
    after = {s: (await rt.host_of(f"webchat:private:{s}"))[0] for s in sessions}
    assert any(before[s] != after[s] for s in sessions), "some sessions moved"
    for s in sessions:
        reply = await cchat.ask(s, "after")
        assert reply["text"] == "echo: after (turn 2)", "history came along"


async def test_node_lost_while_fifty_sessions_chat(
    cchat: ChatClient,
    cluster_rt: tuple[Runtime, list[Any]],
    ray_cluster: dict[str, Any],
    fake_llm: FakeLLM,
) -> None:
    """Kill a session node (raylet and every process on it) mid-conversation: every
    message gets exactly one reply and every history is intact."""
    rt, nodes = cluster_rt
    fake_llm.latency = 0.1
    sessions = [new_session() for _ in range(50)]
    rounds = 6
    victim = nodes[0]
    killed = asyncio.Event()

    async def converse(s: str) -> list[dict[str, Any]]:
        out = []
        for i in range(rounds):
            out.append(await cchat.ask(s, f"{s} #{i}", message_id=f"{s}-{i}"))
        return out

    async def kill_node() -> None:
        await asyncio.sleep(1.0)
        status = await rt.status()
        pids = [a["pid"] for a in status["actors"] if a.get("node_id") == victim.node_id]
        assert pids, "the victim node runs hosts"
        ray_cluster["cluster"].remove_node(victim, allow_graceful=False)
        for pid in pids:  # a lost machine takes its processes with it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        nodes.remove(victim)
        killed.set()

    results, _ = await asyncio.gather(asyncio.gather(*(converse(s) for s in sessions)), kill_node())
    assert killed.is_set()
    for s, replies in zip(sessions, results, strict=True):
        assert [r["text"] for r in replies] == [
            f"echo: {s} #{i} (turn {i + 1})" for i in range(rounds)
        ], "one reply per message, in order, each seeing the whole history"
        assert all(r["error"] is None and not r["duplicate"] for r in replies)
    for s in sessions[:10]:
        stored = await rt.stored(s)
        assert len(stored) == 2 * rounds and [c for r, c in stored if r == "user"] == [
            f"{s} #{i}" for i in range(rounds)
        ]

    async def replaced() -> bool:
        status = await rt.status()
        return all(h["node_id"] != victim.node_id for h in _hosts(status)) and any(
            e["kind"] == "lost" for e in status["restart_log"]
        )

    await eventually(replaced, within=30)


async def test_rolling_restart_replaces_every_host_without_losing_a_message(
    cchat: ChatClient, cluster_rt: tuple[Runtime, list[Any]], fake_llm: FakeLLM
) -> None:
    rt, _ = cluster_rt
    before = {h["name"]: h["pid"] for h in _hosts(await rt.status())}
    sessions = [new_session() for _ in range(12)]
    fake_llm.latency = 0.05
    restart = asyncio.ensure_future(rt.supervisor.rolling_restart.remote())

    async def converse(s: str) -> list[str]:
        """Chat until the restart is over (at least 3 turns)."""
        texts: list[str] = []
        while not restart.done() or len(texts) < 3:
            i = len(texts)
            texts.append((await cchat.ask(s, f"{s} #{i}", message_id=f"{s}-{i}"))["text"])
        return texts

    texts = await asyncio.gather(*(converse(s) for s in sessions))
    status = await restart
    for s, got in zip(sessions, texts, strict=True):
        assert got == [f"echo: {s} #{i} (turn {i + 1})" for i in range(len(got))]
    assert sum(len(t) for t in texts) > 3 * len(sessions), "chatting went on during it"
    after = {h["name"]: h["pid"] for h in _hosts(status)}
    assert len(after) == len(before) and not set(after) & set(before), "all replaced"
    assert status["ok"]
    assert sum(e["kind"] == "replaced" for e in status["restart_log"]) >= len(before)

    # The retired hosts' LLM permits went back to the pool: once idle, none is in use.
    import ray

    pool = ray.get_actor("provider-pool-primary", namespace=rt.namespace)

    async def permits_back() -> bool:
        return bool((await pool.ping.remote())["in_use"] == 0)

    await eventually(permits_back, within=30)
