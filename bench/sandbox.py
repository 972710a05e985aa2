"""Sandbox start and run latency per backend, and concurrent runs across the pool.

(a) Per backend available here (bwrap; docker when an engine and image exist; the
    unsafe subprocess backend as the no-isolation baseline, same run): ``print(1)`` in
    Python, cold (first run of a new session: workspace and, for Docker, the container)
    and warm (the same session again), p50/p99.
(b) Through SandboxExecutor actors (Ray): 48 runs of a 0.2 s CPU-light program at
    concurrency 1, 2 and 4 over 1 and 2 executors: runs/s and p50/p99.

Targets (issue 7): a warm ``print(1)`` <= 100 ms p50 in bubblewrap, <= 300 ms in Docker.

    python -m bench.sandbox
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.webchat_throughput import pct

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

RUNS = 20


async def backend_latency(kind: str, root: Path) -> tuple[list[float], list[float]]:
    from astr_ray.config import SandboxConfig
    from sandbox import Limits, Workspace, make_backend

    cfg = SandboxConfig(backend=kind)  # type: ignore[arg-type]
    backend = await asyncio.to_thread(make_backend, cfg)
    assert backend is not None
    limits = Limits.from_config(cfg)
    cold: list[float] = []
    warm: list[float] = []
    try:
        for i in range(RUNS):
            session = f"bench:private:{kind}-{i}-{uuid.uuid4().hex[:6]}"
            ws = Workspace(root, session, cfg.workspace_mb)
            for bucket in (cold, warm, warm):
                t0 = time.perf_counter()
                result = await backend.run(
                    ws.path, ["python3", "-c", "print(1)"], limits=limits, session=session
                )
                bucket.append(time.perf_counter() - t0)
                assert result.exit_code == 0 and result.stdout.strip() == "1", result
            await backend.close_session(session)
    finally:
        await backend.close()
    return cold, warm


async def pool_runs(
    executors: int, concurrency: int, root_cfg: dict[str, Any]
) -> tuple[float, list[float]]:
    import ray

    from actors.sandbox_executor import SandboxExecutor

    actors = [
        SandboxExecutor.options(max_concurrency=100).remote(f"bench-sandbox-{i}", root_cfg)  # type: ignore[attr-defined]
        for i in range(executors)
    ]
    await asyncio.gather(*(a.start.remote() for a in actors))
    code = "import time\nt = time.time()\nwhile time.time() - t < 0.2: pass\nprint('ok')"
    lat: list[float] = []
    queue = list(range(48))

    async def worker(w: int) -> None:
        while queue:
            i = queue.pop()
            a = actors[i % executors]
            t0 = time.perf_counter()
            out = await a.run.remote(f"bench:private:s{i % 8}", ["python3", "-c", code])
            assert out["exit_code"] == 0, out
            lat.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    wall = time.perf_counter() - start
    for a in actors:
        await a.stop.remote()
        ray.kill(a)
    return wall, lat


async def amain() -> None:
    from sandbox import probe

    print(f"cores: {os.cpu_count()}  python {sys.version.split()[0]}")
    tmp = Path(tempfile.mkdtemp(prefix="astr-bench-sandbox-"))
    found = await asyncio.to_thread(probe)
    print("backends:", ", ".join(f"{k}: {'ok' if v is None else v}" for k, v in found.items()))
    print(f"\n(a) print(1), {RUNS} sessions x (1 cold + 2 warm runs)")
    print(f"  {'backend':12} {'cold p50':>9} {'cold p99':>9} {'warm p50':>9} {'warm p99':>9}")
    for kind in ("subprocess", "bwrap", "docker"):
        if found.get(kind) is not None:
            print(f"  {kind:12} unavailable: {found[kind]}")
            continue
        cold, warm = await backend_latency(kind, tmp / kind)
        label = kind + (" (no isolation: baseline)" if kind == "subprocess" else "")
        print(
            f"  {label:12} {pct(cold, 0.5) * 1000:8.1f}ms {pct(cold, 0.99) * 1000:8.1f}ms"
            f" {pct(warm, 0.5) * 1000:8.1f}ms {pct(warm, 0.99) * 1000:8.1f}ms"
        )
    if found.get("bwrap") is not None:
        return
    import ray

    from astr_ray.config import parse_config

    ray.init(include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    cfg = parse_config(
        {"data_dir": str(tmp / "pool"), "sandbox": {"backend": "bwrap", "queue": 64}}
    ).to_transport()
    print("\n(b) 48 runs of a 0.2 s busy loop through SandboxExecutor actors (bwrap)")
    print(f"  {'executors':>9} {'concurrency':>11} {'runs/s':>8} {'p50':>9} {'p99':>9}")
    try:
        for executors in (1, 2):
            for concurrency in (1, 2, 4):
                wall, lat = await pool_runs(executors, concurrency, cfg)
                print(
                    f"  {executors:9d} {concurrency:11d} {len(lat) / wall:8.1f}"
                    f" {pct(lat, 0.5) * 1000:8.1f}ms {pct(lat, 0.99) * 1000:8.1f}ms"
                )
    finally:
        ray.shutdown()


def main() -> None:
    asyncio.run(amain())


if __name__ == "__main__":
    main()
