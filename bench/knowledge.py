"""Knowledge bases: embedding throughput, query latency and recall, ingestion time.

(a) Embedding (the packaged MiniLM int8 ONNX model): sentences/s through 1 and 2
    EmbedderWorker actors (num_cpus=1 each, batches of 64, two batches in flight per
    worker) against the same model in this one process (the baseline, same run).
    Target (issue 5): 2 actors >= 1.8x one on this 2-core machine.
(b) Query latency p50/p99 and recall@10 at 100,000 chunks over 1, 2 and 4
    KnowledgeShard actors, each rebuilding its index from the store (HNSW beyond
    ``hnsw_threshold``). Vectors are synthetic (384-dim, clustered like text
    embeddings; query = a chunk's vector plus noise) and texts are synthetic sentences,
    so that 100k chunks need no hour of embedding; the query's own embedding is left
    out here (it is one embedder call, see (a)). Latency is the whole hybrid path of
    ``KnowledgeClient.search``: every shard's candidates, the RRF merge, the chunk
    texts from the store. Recall@10 compares the shards' merged vector ranking with
    exact search (numpy) over all vectors. Targets: p99 <= 50 ms, recall@10 >= 0.95.
(c) Ingestion of a 10,000-chunk document through the KnowledgeService (parse, chunk,
    dedup, store, embed with 2 workers, index in 2 shards): seconds and chunks/s.

    python -m bench.knowledge [--only embed,query,ingest] [--chunks 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.webchat_throughput import pct, start_ray

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

NAMESPACE = "astr-bench"
WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
    "uniform",
    "victor",
    "whiskey",
    "xray",
    "yankee",
    "zulu",
    "amber",
    "basalt",
    "cobalt",
    "dune",
    "ember",
    "fjord",
    "granite",
    "harbor",
    "iris",
    "jade",
    "kelp",
    "lagoon",
    "meadow",
    "nectar",
    "onyx",
    "prairie",
    "quartz",
    "reef",
    "saffron",
    "tundra",
    "umber",
    "valley",
    "willow",
    "xenon",
    "yarrow",
    "zephyr",
]


def config(tmp: Path, **knowledge: Any) -> dict[str, Any]:
    from astr_ray.config import parse_config

    return parse_config(
        {
            "data_dir": str(tmp),
            "runtime": {"namespace": NAMESPACE},
            "knowledge": {"embedder": "minilm", **knowledge},
        }
    ).to_transport()


def sentences(n: int, seed: int = 7) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        words = rng.choice(WORDS, size=int(rng.integers(8, 24)))
        out.append(f"Item {i}: " + " ".join(words) + ".")
    return out


# -- (a) embedding ------------------------------------------------------------------------


async def embed_bench(tmp: Path, texts: list[str]) -> None:
    import ray

    from actors.embedder import EmbedderPool, EmbedderWorker, embedder_name
    from astr_ray.kb.embed import MiniLMEmbedder

    print(f"\n(a) embedding {len(texts)} sentences (MiniLM int8 ONNX), batches of 64")
    await asyncio.sleep(5)  # let Ray's start-up work settle before the baseline
    local = MiniLMEmbedder()
    local.embed_sync(texts[:64])  # warm
    began = time.perf_counter()
    for i in range(0, len(texts), 64):
        local.embed_sync(texts[i : i + 64])
    base = len(texts) / (time.perf_counter() - began)
    print(f"  {'in this process (baseline)':28} {base:8.0f} sentences/s  1.00x")
    cfg = config(tmp)
    for workers in (1, 2):
        actors = [
            EmbedderWorker.options(  # type: ignore[attr-defined]
                name=embedder_name(i), namespace=NAMESPACE, num_cpus=1, max_concurrency=4
            ).remote(embedder_name(i), cfg)
            for i in range(workers)
        ]
        await asyncio.gather(*(a.start.remote() for a in actors))
        pool = EmbedderPool(NAMESPACE, workers)
        await pool.embed(texts[:64])
        sem = asyncio.Semaphore(workers * 2)

        async def one(batch: list[str], sem: asyncio.Semaphore = sem, pool: Any = pool) -> None:
            async with sem:
                await pool.embed(batch)

        began = time.perf_counter()
        await asyncio.gather(*(one(texts[i : i + 64]) for i in range(0, len(texts), 64)))
        rate = len(texts) / (time.perf_counter() - began)
        print(f"  {f'{workers} embedder actor(s)':28} {rate:8.0f} sentences/s  {rate / base:.2f}x")
        for a in actors:
            ray.kill(a)
        await asyncio.sleep(1)


# -- (b) queries --------------------------------------------------------------------------


def synthetic_vectors(n: int, dim: int, seed: int = 11) -> np.ndarray:
    """Unit vectors shaped like text embeddings: 1,000 topics in a 32-dimensional latent
    space, projected to ``dim`` dimensions, plus a little noise. (Uniform random vectors
    in 384 dimensions have no neighbourhood structure at all: no approximate index
    reaches a useful recall on them, and no embedding model produces them.)"""
    rng = np.random.default_rng(seed)
    latent = 32
    centers = rng.normal(size=(1000, latent))
    points = centers[rng.integers(0, 1000, size=n)] + 0.5 * rng.normal(size=(n, latent))
    vecs = points @ rng.normal(size=(latent, dim)) + 0.3 * rng.normal(size=(n, dim))
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return vecs.astype(np.float32)


async def fill_store(url: str, n: int, vectors: np.ndarray, texts: list[str]) -> int:
    from astr_ray.kb.chunk import chunk_hash
    from astr_ray.store import Store

    store = await Store.open(url)
    await store.migrate()
    kb = await store.create_kb("bench", "", "synthetic", vectors.shape[1])
    doc, _ = await store.add_document(kb.id, "synthetic.txt", "bench", "0" * 64, 0)
    step = 5000
    for i in range(0, n, step):
        rows = [(j, texts[j], None, chunk_hash(texts[j])) for j in range(i, min(n, i + step))]
        ids = await store.add_chunks(kb.id, doc.id, rows)
        await store.set_vectors([(cid, vectors[i + k].tobytes()) for k, cid in enumerate(ids)])
    await store.set_document_status(doc.id, "ready", chunks=n)
    await store.close()
    return kb.id


class _FixedVector:
    """An ``EmbedderPool`` stand-in that hands out the next precomputed query vector."""

    def __init__(self) -> None:
        self.next: np.ndarray | None = None

    async def embed(self, texts: list[str]) -> np.ndarray:
        assert self.next is not None
        return self.next[None, :]


async def query_bench(tmp: Path, n: int, queries: int) -> None:
    import ray

    from actors.kb_shard import SNAPSHOT_DELAY_S, KnowledgeShard, shard_name
    from actors.knowledge import KnowledgeClient
    from astr_ray.config import parse_config
    from astr_ray.kb.fusion import merge_hits
    from astr_ray.store import Store

    dim = 384
    print(f"\n(b) {n} chunks, {dim}-dim synthetic vectors, {queries} queries per setup")
    vectors = synthetic_vectors(n, dim)
    texts = sentences(n)
    url = f"sqlite+aiosqlite:///{tmp / 'kb.db'}"
    began = time.perf_counter()
    kb_id = await fill_store(url, n, vectors, texts)
    print(f"  store filled in {time.perf_counter() - began:.1f} s")
    rng = np.random.default_rng(5)
    picks = rng.integers(0, n, size=queries)
    qvecs = vectors[picks] + 0.03 * rng.normal(size=(queries, dim)).astype(np.float32)
    qvecs /= np.linalg.norm(qvecs, axis=1, keepdims=True)
    exact = np.argsort(-(qvecs @ vectors.T), axis=1)[:, :10] + 1  # chunk ids start at 1
    print(
        f"  {'shards':>6} {'index':>6} {'rebuild s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'recall@10':>9}"
    )
    for shards in (1, 2, 4):
        data = tmp / f"shards-{shards}"
        transport = parse_config(
            {
                "data_dir": str(data),
                "store": {"url": url},
                "runtime": {"namespace": NAMESPACE},
                "knowledge": {"embedder": "static", "shards": shards, "embedders": 1},
            }
        ).to_transport()
        began = time.perf_counter()
        actors = [
            KnowledgeShard.options(  # type: ignore[attr-defined]
                name=shard_name(j), namespace=NAMESPACE, max_concurrency=100
            ).remote(j, transport)
            for j in range(shards)
        ]
        await asyncio.gather(*(a.start.remote() for a in actors))
        rebuild = time.perf_counter() - began
        kind = "hnsw" if (await actors[0].ping.remote())["hnsw"] else "exact"
        await asyncio.sleep(SNAPSHOT_DELAY_S + 2)  # the first snapshot, once, after a rebuild
        cfg = parse_config(transport)
        store = await Store.open(url)
        fixed = _FixedVector()
        client = KnowledgeClient(cfg, store, fixed)  # type: ignore[arg-type]
        for q in qvecs[:20]:  # warm
            fixed.next = q
            await client.search(["bench"], "alpha bravo", 10)
        lat = []
        hits = 0
        for i, q in enumerate(qvecs):
            fixed.next = q
            words = " ".join(texts[picks[i]].split()[2:5])
            began = time.perf_counter()
            await client.search(["bench"], words, 10)
            lat.append(time.perf_counter() - began)
            per_shard = await asyncio.gather(
                *(a.candidates.remote([kb_id], q, None, 10) for a in actors)
            )
            got = {h.chunk_id for h in merge_hits(per_shard, 10)}
            hits += len(got & set(exact[i].tolist()))
        recall = hits / (10 * queries)
        print(
            f"  {shards:>6} {kind:>6} {rebuild:>9.1f} {pct(lat, 0.5) * 1000:>8.1f} "
            f"{pct(lat, 0.99) * 1000:>8.1f} {recall:>9.3f}"
        )
        await store.close()
        for a in actors:
            ray.kill(a)
        await asyncio.sleep(1)


# -- (c) ingestion ------------------------------------------------------------------------


async def ingest_bench(tmp: Path, chunks: int) -> None:
    import ray

    from actors.embedder import EmbedderWorker, embedder_name
    from actors.kb_shard import KnowledgeShard, shard_name
    from actors.knowledge import KnowledgeService

    print(f"\n(c) ingesting one document of ~{chunks} chunks (2 embedders, 2 shards)")
    transport = config(
        tmp / "ingest", embedders=2, shards=2, chunk_size=300, chunk_overlap=0, max_document_mb=50
    )
    embedders = [
        EmbedderWorker.options(  # type: ignore[attr-defined]
            name=embedder_name(i), namespace=NAMESPACE, num_cpus=1, max_concurrency=4
        ).remote(embedder_name(i), transport)
        for i in range(2)
    ]
    shards = [
        KnowledgeShard.options(  # type: ignore[attr-defined]
            name=shard_name(j), namespace=NAMESPACE, max_concurrency=100
        ).remote(j, transport)
        for j in range(2)
    ]
    service = KnowledgeService.options(  # type: ignore[attr-defined]
        name="knowledge", namespace=NAMESPACE, max_concurrency=100
    ).remote(transport)
    await asyncio.gather(*(a.start.remote() for a in [*embedders, *shards, service]))
    await service.create.remote("ingest", "")
    # Paragraphs of ~250 characters, so one chunk each at chunk_size 300.
    body = "\n\n".join(
        f"{s} {s.lower()} and {i} more" for i, s in enumerate(sentences(chunks, seed=3))
    )
    began = time.perf_counter()
    job = await service.add.remote("ingest", "big.txt", data=body.encode())
    while job["status"] not in ("ready", "failed"):
        await asyncio.sleep(0.2)
        job = await service.job.remote(job["id"])
    took = time.perf_counter() - began
    print(
        f"  {job['status']}: {job['chunks']} chunks in {took:.1f} s "
        f"({job['chunks'] / took:.0f} chunks/s, {len(body) / 2**20:.1f} MiB of text)"
    )
    for a in [*embedders, *shards, service]:
        ray.kill(a)


async def amain(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="astr-bench-kb-"))
    start_ray()
    if "embed" in args.only:
        await embed_bench(tmp, sentences(4096, seed=1))
    if "query" in args.only:
        await query_bench(tmp, args.chunks, args.queries)
    if "ingest" in args.only:
        await ingest_bench(tmp, args.ingest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="embed,query,ingest")
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--ingest", type=int, default=10_000)
    args = parser.parse_args()
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
