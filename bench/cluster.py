"""Cluster mode on one machine: throughput over 1, 2 and 3 simulated nodes, and the
recovery after a node is lost, with lost / duplicate reply counts.

The nodes are ``ray.cluster_utils.Cluster`` nodes on this machine. They share its
cores, so more nodes add processes, not compute: the throughput figures show the cost
of spreading, not a speed-up. Recovery is what matters: the time until every session
answers again after an ungraceful node loss (target <= 15 s), with none lost or doubled.
Ray's node health checks are set as in cluster.yaml (a node is declared dead ~2 s
after it stops answering; Ray's default is ~30 s).

    python -m bench.cluster [--quick]

Needs the PostgreSQL server on 127.0.0.1:5432 (cluster mode keeps state there).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench.webchat_throughput import (
    FakeLLMProcess,
    Tree,
    chat_body,
    closed_loop,
    pct,
    report,
)

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

PG_ADMIN = os.environ.get("ASTR_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
HEALTH = {
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 1000,
    "health_check_failure_threshold": 4,
    "health_check_initial_delay_ms": 0,
}
NODE = {"num_cpus": 0, "resources": {"session_hosts": 2}, "object_store_memory": 80 * 1024 * 1024}


async def fresh_database() -> str:
    name = f"astr_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + "/" + name


def cluster_tree(fake: FakeLLMProcess, tmp: Path, url: str) -> Tree:
    return Tree(
        fake,
        1,
        "native",
        tmp,
        url,
        # history_turns high: the fake LLM's "(turn N)" then counts every turn, so a
        # lost or doubled turn shows as a gap or a repeat.
        sessions={"hosts_per_node": 2, "history_turns": 100_000},
        runtime_opts={"placement": "resources", "supervise_interval_s": 0.5},
    )


async def throughput(args: argparse.Namespace, cluster: Any, tmp: Path) -> None:
    import ray

    sessions, messages = (50, 8) if args.quick else (50, 20)
    print(
        f"\n== throughput over nodes: 0 ms model, {sessions} sessions x {messages} msgs, "
        "PostgreSQL store =="
    )
    fake = FakeLLMProcess(0.0)
    nodes: list[Any] = []
    try:
        for n in (1, 2, 3):
            while len(nodes) < n:
                nodes.append(cluster.add_node(**NODE))
            tree = cluster_tree(fake, tmp / f"n{n}", await fresh_database())
            try:
                await closed_loop(tree.url, 10, 3, tree.headers, chat_body)
                wall, lat, _ = await closed_loop(
                    tree.url, sessions, messages, tree.headers, chat_body
                )
                hosts = len(tree.hosts())
                report(f"{n} node(s), {hosts} hosts", wall, lat, 0.0)
            finally:
                tree.stop()
            ray.get([], timeout=1)
    finally:
        for node in nodes:
            cluster.remove_node(node)
        fake.stop()


async def recovery(args: argparse.Namespace, cluster: Any, tmp: Path) -> None:
    import ray

    n_sessions = 50
    print(
        f"\n== recovery: {n_sessions} sessions chatting (100 ms model), one of 3 session "
        "nodes killed =="
    )
    fake = FakeLLMProcess(0.1)
    nodes = [cluster.add_node(**NODE) for _ in range(3)]
    tree = cluster_tree(fake, tmp / "recovery", await fresh_database())
    stop_at = time.monotonic() + (12 if args.quick else 25)
    kill_at = time.monotonic() + 4
    replies: dict[str, list[tuple[float, str]]] = {}
    errors: list[str] = []
    try:
        async with aiohttp.ClientSession(
            headers=tree.headers, timeout=aiohttp.ClientTimeout(total=120)
        ) as http:

            async def user(i: int) -> None:
                sid = f"r{i}-{uuid.uuid4().hex[:6]}"
                got = replies.setdefault(sid, [])
                j = 0
                while time.monotonic() < stop_at:
                    async with http.post(tree.url, json=chat_body(sid, j)) as resp:
                        data = await resp.json()
                    if resp.status != 200 or data.get("error"):
                        errors.append(f"{sid}#{j}: {resp.status} {data}")
                    got.append((time.monotonic(), data.get("text", "")))
                    j += 1

            async def kill() -> float:
                await asyncio.sleep(max(0.0, kill_at - time.monotonic()))
                status = ray.get(tree.sup.status.remote(), timeout=30)
                victim = nodes[0]
                pids = [a["pid"] for a in status["actors"] if a.get("node_id") == victim.node_id]
                at = time.monotonic()
                cluster.remove_node(victim, allow_graceful=False)
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                nodes.remove(victim)
                return at

            results = await asyncio.gather(*(user(i) for i in range(n_sessions)), kill())
            killed_at = results[-1]
    finally:
        tree.stop()
        for node in nodes:
            cluster.remove_node(node)
        fake.stop()
    gaps, lost, doubled, total = [], 0, 0, 0
    for got in replies.values():
        total += len(got)
        turns = [int(t.rsplit("(turn ", 1)[1].rstrip(")")) for _, t in got if "(turn " in t]
        for want, turn in enumerate(turns, start=1):
            if turn != want:  # a skipped turn was lost; a repeated one was doubled
                lost += turn > want
                doubled += turn < want
                break
        after = [t for t, _ in got if t > killed_at]
        if after:
            gaps.append(after[0] - killed_at)
    print(
        f"  replies {total}, error replies {len(errors)}, sessions with a lost turn {lost}, "
        f"sessions with a doubled turn {doubled}"
    )
    print(
        f"  time until a session answers again after the node loss: p50 "
        f"{pct(gaps, 0.5):.2f} s, max {max(gaps):.2f} s (target <= 15 s)"
    )
    for e in errors[:5]:
        print("  error:", e)


async def amain(args: argparse.Namespace) -> None:
    import ray
    from ray.cluster_utils import Cluster

    tmp = Path(tempfile.mkdtemp(prefix="astr-bench-cluster-"))
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2,
            "include_dashboard": False,
            "object_store_memory": 150 * 1024 * 1024,
            "resources": {"adapters": 1, "control": 1},
            "_system_config": HEALTH,
        },
    )
    ray.init(address=cluster.address, namespace="astr-bench", log_to_driver=False)
    print(f"cores: {os.cpu_count()}  ray {ray.__version__}")
    try:
        if "throughput" in args.only:
            await throughput(args, cluster, tmp)
        if "recovery" in args.only:
            await recovery(args, cluster, tmp)
    finally:
        ray.shutdown()
        cluster.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--only", nargs="+", default=["throughput", "recovery"], choices=["throughput", "recovery"]
    )
    asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    main()
