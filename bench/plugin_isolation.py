"""Session B's reply latency while session A's plugin takes 5 s, on the same host.

AstrBot runs plugins on the one event loop of the whole bot, so a plugin that blocks
stalls every platform. Here B chats in a closed loop (0 ms fake LLM) on the same
SessionHost as A while A's plugin command runs for 5 s, in four ways:

    await5   an async handler awaiting 5 s                    (in the host)
    thread5  a plain function sleeping 5 s (runs in a thread)  (in the host)
    istall5  an isolated plugin blocking its own event loop    (own process)
    stall5   an in-host async handler blocking the host's loop (the AstrBot failure;
             shown for contrast: this is what `isolated: true` is for)

Prints B's p50/p99 with no blocker (the baseline, same run) and with each blocker.
Target: B's p99 within 20 ms of the baseline for await5, thread5 and istall5.

    python -m bench.plugin_isolation
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

from bench.webchat_throughput import FakeLLMProcess, Tree, pct, start_ray

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

HERE = Path(__file__).resolve().parent
WINDOW_S = 5.0


async def b_latencies(http: aiohttp.ClientSession, url: str, seconds: float) -> list[float]:
    """B's closed loop for ``seconds``: one message at a time, latency of each."""
    sid = f"b-{uuid.uuid4().hex[:6]}"
    out: list[float] = []
    end = time.perf_counter() + seconds
    j = 0
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        async with http.post(url, json={"session": sid, "text": f"hi {j}"}) as resp:
            data = await resp.json()
            assert resp.status == 200 and not data.get("error"), data
        out.append(time.perf_counter() - t0)
        j += 1
    return out


async def run(tree: Tree) -> None:
    url = tree.url
    async with aiohttp.ClientSession(headers=tree.headers) as http:
        # Wait for the isolated plugin's worker, then warm up both sessions' paths.
        for _ in range(120):
            async with http.post(url, json={"session": "probe", "text": "/istall5x"}) as resp:
                text = (await resp.json())["text"]
            if "Unknown command /istall5x" in text:
                break
        await b_latencies(http, url, 2.0)
        rows: list[tuple[str, list[float]]] = [
            ("none (baseline)", await b_latencies(http, url, WINDOW_S))
        ]
        for command in ("await5", "thread5", "istall5", "stall5"):
            a = asyncio.create_task(
                http.post(url, json={"session": f"a-{uuid.uuid4().hex[:6]}", "text": f"/{command}"})
            )
            await asyncio.sleep(0.2)  # A's command is running
            lat = await b_latencies(http, url, WINDOW_S - 0.7)
            resp = await a
            a_reply = await resp.json()
            assert a_reply["text"] == "done", a_reply
            rows.append((command, lat))
            await asyncio.sleep(0.5)
    base99 = pct(rows[0][1], 0.99) * 1000
    print(
        f"{'blocker in session A':24} {'B msgs':>7} {'p50 ms':>8} {'p99 ms':>8} {'p99 - base':>11}"
    )
    for name, lat in rows:
        p50, p99 = pct(lat, 0.5) * 1000, pct(lat, 0.99) * 1000
        print(f"{name:24} {len(lat):7d} {p50:8.1f} {p99:8.1f} {p99 - base99:+10.1f}")


async def amain() -> None:
    import ray

    tmp = Path(tempfile.mkdtemp(prefix="astr-bench-plugins-"))
    shutil.copytree(HERE / "plugins", tmp / "plugins")
    start_ray()
    print("one session host: A and B share it; fake LLM at 0 ms in its own process")
    fake = FakeLLMProcess(0.0)
    tree = Tree(fake, 1, "native", tmp, extra={"plugins": {"handler_timeout_s": 30}})
    try:
        await run(tree)
    finally:
        tree.stop()
        fake.stop()
        ray.shutdown()


def main() -> None:
    asyncio.run(amain())


if __name__ == "__main__":
    main()
