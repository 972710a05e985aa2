"""Web chat throughput and framework overhead, against a fake LLM on loopback.

Closed loop: N sessions, each sending M messages over the web chat HTTP API and waiting
for each reply. Prints messages/s, end-to-end and overhead p50/p99 (overhead = end to
end minus the model's latency), and a baseline measured in the same run: the same
client driving the fake LLM directly, with no framework in between.

    python -m bench.webchat_throughput            # every scenario (~3 min on 2 cores)
    python -m bench.webchat_throughput --quick    # smaller runs

Targets (DESIGN.md): >= 500 msg/s with a 0 ms model (50 sessions x 20 messages);
>= 360 msg/s with a 500 ms model and 200 sessions; overhead <= 10 ms p50 / 50 ms p99 at
one session, flat up to 200 turns.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class FakeLLMProcess:
    def __init__(self, latency: float) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.peers.openai_server",
                "--port",
                str(self.port),
                "--latency",
                str(latency),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.proc.stdout is not None
        self.proc.stdout.readline()  # "fake LLM on PORT"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


async def closed_loop(
    url: str, sessions: int, messages: int, headers: dict[str, str], body: Any
) -> tuple[float, list[float], list[list[float]]]:
    """Returns (wall seconds, all latencies, latencies per session in turn order)."""
    per_session: list[list[float]] = [[] for _ in range(sessions)]
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as http:

        async def user(i: int) -> None:
            sid = f"b{i}-{uuid.uuid4().hex[:6]}"
            for j in range(messages):
                t0 = time.perf_counter()
                async with http.post(url, json=body(sid, j)) as resp:
                    data = await resp.json()
                    if resp.status != 200 or data.get("error"):
                        raise RuntimeError(f"bad reply: {resp.status} {data}")
                per_session[i].append(time.perf_counter() - t0)

        start = time.perf_counter()
        await asyncio.gather(*(user(i) for i in range(sessions)))
        wall = time.perf_counter() - start
    flat = [x for s in per_session for x in s]
    return wall, flat, per_session


def report(name: str, wall: float, lat: list[float], llm_s: float) -> dict[str, float]:
    n = len(lat)
    over = [max(0.0, x - llm_s) * 1000 for x in lat]
    row = {
        "msgs": n,
        "rate": n / wall,
        "p50": pct(lat, 0.5) * 1000,
        "p99": pct(lat, 0.99) * 1000,
        "over50": pct(over, 0.5),
        "over99": pct(over, 0.99),
    }
    print(
        f"  {name:44} {n:6d} msgs {row['rate']:8.1f} msg/s   e2e p50 {row['p50']:7.1f} ms"
        f"  p99 {row['p99']:7.1f} ms   overhead p50 {row['over50']:6.1f} ms"
        f"  p99 {row['over99']:6.1f} ms",
        flush=True,
    )
    return row


def baseline_body(sid: str, j: int) -> dict[str, Any]:
    return {"model": "fake", "messages": [{"role": "user", "content": f"{sid} {j}"}]}


def chat_body(sid: str, j: int) -> dict[str, Any]:
    return {"session": sid, "text": f"message {j} from {sid}", "message_id": f"{sid}-{j}"}


class Tree:
    """A dev-mode tree in this process's Ray, pointed at one fake LLM."""

    def __init__(
        self,
        fake: FakeLLMProcess,
        hosts: int,
        transport: str,
        data: Path,
        store_url: str = "",
        sessions: dict[str, Any] | None = None,
        runtime_opts: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        from astr_ray.config import parse_config

        self.token = uuid.uuid4().hex
        self.cfg = parse_config(
            {
                **(extra or {}),
                "data_dir": str(data),
                "providers": [
                    {
                        "id": "fake",
                        "model": "openai/fake",
                        "api_base": fake.base_url,
                        "transport": transport,
                        "max_concurrency": 1000,
                    }
                ],
                "sessions": {"hosts": hosts, **(sessions or {})},
                "sandbox": {"executors": 0},
                "store": {"url": store_url},
                "webchat": {"port": free_port(), "token": self.token},
                "runtime": {"namespace": f"bench-{uuid.uuid4().hex[:6]}", **(runtime_opts or {})},
            }
        )
        from actors import runtime

        self.sup, _ = runtime.start_tree(self.cfg)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.cfg.webchat.port}/api/chat"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def hosts(self) -> list[dict[str, Any]]:
        import ray

        status = ray.get(self.sup.status.remote(), timeout=30)
        return [a for a in status["actors"] if a["kind"] == "session_host"]

    def stop(self) -> None:
        from actors import runtime

        runtime.stop_tree(self.cfg.runtime.namespace, handle=self.sup)


async def run_throughput(args: argparse.Namespace, tmp: Path) -> None:
    scale = 0.25 if args.quick else 1.0
    print("\n== throughput (closed loop, web chat HTTP API) ==")
    for latency, sessions, messages in ((0.0, 50, 20), (0.5, 200, max(2, int(10 * scale)))):
        fake = FakeLLMProcess(latency)
        try:
            print(
                f"-- model latency {latency * 1000:.0f} ms, {sessions} sessions x "
                f"{messages} messages"
            )
            wall, lat, _ = await closed_loop(
                f"{fake.base_url}/chat/completions", sessions, messages, {}, baseline_body
            )
            report("baseline: client -> fake LLM directly", wall, lat, latency)
            for hosts in args.hosts:
                tree = Tree(fake, hosts, args.transport, tmp / f"t{latency}-{hosts}")
                try:
                    await closed_loop(tree.url, 10, 3, tree.headers, chat_body)  # warm up
                    wall, lat, _ = await closed_loop(
                        tree.url, sessions, messages, tree.headers, chat_body
                    )
                    report(
                        f"astr-ray, {hosts} host(s), {args.transport} transport", wall, lat, latency
                    )
                finally:
                    tree.stop()
        finally:
            fake.stop()


async def run_overhead(args: argparse.Namespace, tmp: Path) -> None:
    turns = 50 if args.quick else 200
    print(f"\n== overhead at one session, {turns} turns, 0 ms model ==")
    fake = FakeLLMProcess(0.0)
    tree = Tree(fake, 1, args.transport, tmp / "overhead")
    try:
        await closed_loop(tree.url, 1, 5, tree.headers, chat_body)
        _, _, per = await closed_loop(tree.url, 1, turns, tree.headers, chat_body)
        series = per[0]
        report("all turns", sum(series), series, 0.0)
        window = max(10, turns // 10)
        report(f"turns 1-{window}", sum(series[:window]), series[:window], 0.0)
        report(f"turns {turns - window + 1}-{turns}", sum(series[-window:]), series[-window:], 0.0)
    finally:
        tree.stop()
        fake.stop()


async def run_memory(args: argparse.Namespace, tmp: Path) -> None:
    import ray

    n = 500 if args.quick else 2000
    print(f"\n== memory: {n} sessions on one host (4 turns of history each) ==")
    fake = FakeLLMProcess(0.0)
    tree = Tree(fake, 1, args.transport, tmp / "memory")
    try:
        from actors.common import host_name

        host = ray.get_actor(host_name(0), namespace=tree.cfg.runtime.namespace)
        await closed_loop(tree.url, 1, 2, tree.headers, chat_body)
        base = await host.memory.remote()
        await closed_loop(tree.url, n, 2, tree.headers, chat_body)
        active = await host.memory.remote()
        await host.passivate_now.remote()
        passive = await host.memory.remote()
        # A second round of new sessions tells a leak (grows again) from a cache (flat).
        await closed_loop(tree.url, n, 2, tree.headers, chat_body)
        await host.passivate_now.remote()
        second = await host.memory.remote()
        per_active = (active["rss"] - base["rss"]) / n
        per_passive = max(0, passive["rss"] - base["rss"]) / n
        print(
            f"  host RSS: start {base['rss'] / 2**20:.1f} MiB, {active['sessions']} active "
            f"{active['rss'] / 2**20:.1f} MiB, after passivating all "
            f"{passive['rss'] / 2**20:.1f} MiB ({passive['sessions']} active)"
        )
        print(
            f"  per active session {per_active / 1024:.2f} KiB of RSS; per passivated "
            f"session {per_passive / 1024:.2f} KiB of RSS (pages the allocator keeps)"
        )
        blocks_active = (active["blocks"] - base["blocks"]) / n
        blocks_passive = (passive["blocks"] - base["blocks"]) / n
        blocks_second = (second["blocks"] - passive["blocks"]) / n
        print(
            f"  Python objects (allocated blocks) per session: active {blocks_active:.0f}, "
            f"after passivation {blocks_passive:.1f}; a second round of {n} new sessions "
            f"left {blocks_second:.1f} more each, RSS {second['rss'] / 2**20:.1f} MiB"
        )
        print(
            f"  projected: 10,000 active ~ {per_active * 10_000 / 2**20:.0f} MiB per host "
            f"on top of its {base['rss'] / 2**20:.0f} MiB base"
        )
    finally:
        tree.stop()
        fake.stop()


def start_ray() -> None:
    """A local Ray for a bench run, on loopback, and a line saying what runs it."""
    import ray

    ray.init(
        include_dashboard=False,
        log_to_driver=False,
        namespace="astr-bench",
        object_store_memory=200 * 1024 * 1024,
        _node_ip_address="127.0.0.1",
    )
    print(f"cores: {os.cpu_count()}  python {sys.version.split()[0]}  ray {ray.__version__}")


async def amain(args: argparse.Namespace) -> None:
    import ray

    tmp = Path(tempfile.mkdtemp(prefix="astr-bench-"))
    start_ray()
    try:
        if "throughput" in args.only:
            await run_throughput(args, tmp)
        if "overhead" in args.only:
            await run_overhead(args, tmp)
        if "memory" in args.only:
            await run_memory(args, tmp)
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--hosts", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--transport", choices=["native", "litellm"], default="native")
    parser.add_argument(
        "--only",
        nargs="+",
        default=["throughput", "overhead", "memory"],
        choices=["throughput", "overhead", "memory"],
    )
    asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    main()
