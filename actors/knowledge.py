"""Knowledge bases on actors: the KnowledgeService ("knowledge") and the query client.

    ingestion   CLI / API ─► KnowledgeService ─ parse, chunk ─► store (dedup by hash)
                  ─ batches ─► EmbedderPool (embedder-<i>, redone if a worker dies)
                  ─ vectors ─► store, then kb-shard-<id % shards>.add
    query       KnowledgeClient (in every session host, and here):
                  embed the query (one embedder) ─► every shard's candidates, at once
                  ─► merge_hits (RRF over global vector and BM25 ranks) ─► texts from the store

Ingestion runs as jobs in this actor; ``job(id)`` reports progress. The store is the
truth: vectors are stored before a shard is told, so a shard that missed an ``add``
(restarting) finds the chunk when it rebuilds. A document left half-embedded by a
restart of this actor is finished when it starts again; one that was still being
parsed is marked failed ("add it again"), since its bytes were not kept.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
import ray

from actors.common import ACTOR_GONE, KNOWLEDGE, get_actor, node_id, setup_logging
from actors.embedder import EmbedderPool
from actors.kb_shard import shard_name
from actors.logship import ship_logs
from astr_ray.config import Config, parse_config
from astr_ray.errors import KnowledgeError, StoreError
from astr_ray.kb.chunk import chunk_hash, chunk_text
from astr_ray.kb.fusion import Hit, merge_hits
from astr_ray.kb.parse import parse_document
from astr_ray.kb.tool import Passage
from astr_ray.lifecycle import Lifecycle
from astr_ray.store import Store
from astr_ray.store.records import KnowledgeBase

log = logging.getLogger(__name__)

KEEP_JOBS = 1000  # finished jobs remembered for ``job(id)``
SHARD_DEADLINE_S = 20.0  # a restarting shard is waited for this long, then left out
KB_CACHE_S = 10.0


async def _retry(call: Any, what: str, deadline_s: float) -> Any:
    """``await call()`` again while the actor behind it is restarting, up to the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    for attempt in itertools.count(1):
        try:
            return await call()
        except ACTOR_GONE:
            if loop.time() > deadline:
                raise
            log.info("%s unavailable; trying again", what)
            await asyncio.sleep(min(1.0, 0.1 * 2 ** min(attempt, 4)))
    raise AssertionError("unreachable")  # pragma: no cover


class KnowledgeClient:
    """Hybrid search over knowledge bases by name (a ``kb.tool.Searcher``)."""

    def __init__(self, cfg: Config, store: Store, pool: EmbedderPool | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.namespace = cfg.runtime.namespace
        self.pool = pool or EmbedderPool(self.namespace, cfg.knowledge.embedders, deadline_s=10)
        self._kbs: dict[str, KnowledgeBase] = {}
        self._kbs_at = -1e9
        self._shards: dict[int, Any] = {}
        self.partial = 0  # searches answered without some shard

    async def base(self, name: str) -> KnowledgeBase:
        """The base called ``name`` (``KnowledgeError`` when there is none)."""
        now = time.monotonic()
        if name not in self._kbs or now - self._kbs_at > KB_CACHE_S:
            self._kbs = {kb.name: kb for kb in await self.store.list_kbs()}
            self._kbs_at = now
        kb = self._kbs.get(name)
        if kb is None:
            raise KnowledgeError(f"no knowledge base called {name!r}", kb=name)
        return kb

    def forget(self) -> None:
        self._kbs_at = -1e9

    def _shard(self, index: int) -> Any:
        if index not in self._shards:
            self._shards[index] = get_actor(shard_name(index), self.namespace)
        return self._shards[index]

    async def _candidates(
        self, index: int, kb_ids: list[int], vec: np.ndarray | None, query: str, k: int
    ) -> list[Hit]:
        async def call() -> list[Hit]:
            try:
                return list(await self._shard(index).candidates.remote(kb_ids, vec, query, k))
            except ACTOR_GONE:
                self._shards.pop(index, None)
                raise

        result: list[Hit] = await _retry(call, shard_name(index), SHARD_DEADLINE_S)
        return result

    async def search(self, bases: Sequence[str], query: str, k: int) -> list[Passage]:
        """The top ``k`` passages for ``query`` over ``bases``: vector and BM25 ranks
        fused. Without an embedder the search is lexical only; a shard that does not
        come back within ``SHARD_DEADLINE_S`` is left out (logged)."""
        kbs = [await self.base(name) for name in dict.fromkeys(bases)]
        if not kbs or not query.strip():
            return []
        names = {kb.id: kb.name for kb in kbs}
        vec: np.ndarray | None = None
        try:
            vec = (await self.pool.embed([query]))[0]
        except KnowledgeError as exc:
            log.warning("query not embedded (%s); searching by words only", exc)
        results = await asyncio.gather(
            *(
                self._candidates(j, list(names), vec, query, k)
                for j in range(self.cfg.knowledge.shards)
            ),
            return_exceptions=True,
        )
        per_shard: list[list[Hit]] = []
        for j, result in enumerate(results):
            if isinstance(result, BaseException):
                self.partial += 1
                log.warning("%s left out of a search: %s", shard_name(j), result)
            else:
                per_shard.append(result)
        hits = merge_hits(per_shard, k)
        chunks = {c.id: c for c in await self.store.get_chunks([h.chunk_id for h in hits])}
        return [
            Passage(
                chunk_id=h.chunk_id,
                kb=names.get(chunks[h.chunk_id].kb_id, "?"),
                document=chunks[h.chunk_id].doc_name,
                heading=chunks[h.chunk_id].heading,
                text=chunks[h.chunk_id].text,
                score=h.score,
            )
            for h in hits
            if h.chunk_id in chunks
        ]


@dataclass
class Job:
    """One document being added: ``status`` goes queued → parsing → embedding → ready
    (or unchanged / failed, with ``error``)."""

    id: str
    kb: str
    document: str
    source: str
    status: str = "queued"
    error: str | None = None
    chunks: int = 0
    embedded: int = 0
    duplicates: int = 0
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kb": self.kb,
            "document": self.document,
            "source": self.source,
            "status": self.status,
            "error": self.error,
            "chunks": self.chunks,
            "embedded": self.embedded,
            "duplicates": self.duplicates,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


@ray.remote
class KnowledgeService:
    def __init__(self, config: dict[str, Any]) -> None:
        setup_logging(KNOWLEDGE)
        self.cfg: Config = parse_config(config)
        ship_logs(KNOWLEDGE, self.cfg.runtime.namespace)
        self.kcfg = self.cfg.knowledge
        self.lifecycle = Lifecycle(KNOWLEDGE, self._on_start, self._on_stop)
        self.jobs: dict[str, Job] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._serial = itertools.count(1)
        self._dim: int | None = None
        self.started_at = time.time()

    async def start(self) -> dict[str, Any]:
        await self.lifecycle.start()
        return await self.ping()

    async def _on_start(self) -> None:
        self.store = await Store.open(self.cfg.store_url)
        await self.store.migrate()
        self.pool = EmbedderPool(self.cfg.runtime.namespace, self.kcfg.embedders)
        self.client = KnowledgeClient(self.cfg, self.store, self.pool)
        self._spawn(self._resume())

    async def _on_stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        await self.store.close()

    async def stop(self) -> None:
        await self.lifecycle.stop()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- bases --------------------------------------------------------------------------

    async def _embedder_dim(self) -> int:
        if self._dim is None:
            self._dim = int((await self.pool.embed(["dimension probe"])).shape[1])
        return self._dim

    async def create(self, name: str, description: str = "") -> dict[str, Any]:
        await self.lifecycle.ensure_started()
        dim = await self._embedder_dim()
        try:
            kb = await self.store.create_kb(name, description, self.kcfg.embedder, dim)
        except StoreError as exc:
            raise KnowledgeError(exc.message, kb=name) from None
        self.client.forget()
        return _kb_dict(kb)

    async def bases(self) -> list[dict[str, Any]]:
        await self.lifecycle.ensure_started()
        return [_kb_dict(kb) for kb in await self.store.list_kbs()]

    async def delete(self, name: str) -> bool:
        await self.lifecycle.ensure_started()
        kb = await self.store.get_kb(name)
        if kb is None:
            return False
        await self.store.delete_kb(name)
        self.client.forget()
        await self._each_shard("drop", kb.id)
        return True

    async def documents(self, name: str) -> list[dict[str, Any]]:
        await self.lifecycle.ensure_started()
        kb = await self.client.base(name)
        return [_doc_dict(d) for d in await self.store.list_documents(kb.id)]

    async def remove_document(self, name: str, document: str) -> int:
        """Delete a document and its chunks; returns how many chunks went."""
        await self.lifecycle.ensure_started()
        kb = await self.client.base(name)
        doc = await self.store.get_document(kb.id, document)
        if doc is None:
            raise KnowledgeError(f"no document {document!r} in {name!r}", kb=name)
        ids = await self.store.delete_document(doc.id)
        await self._remove_from_shards(kb.id, ids)
        return len(ids)

    async def search(self, bases: list[str], query: str, k: int) -> list[dict[str, Any]]:
        await self.lifecycle.ensure_started()
        return [p.to_dict() for p in await self.client.search(bases, query, k)]

    # -- ingestion ----------------------------------------------------------------------

    async def add(
        self,
        name: str,
        document: str,
        *,
        data: bytes | None = None,
        url: str | None = None,
        mime: str | None = None,
    ) -> dict[str, Any]:
        """Start adding a document (its bytes, or a URL to fetch); returns the job."""
        await self.lifecycle.ensure_started()
        await self.client.base(name)  # an unknown base is refused here, not in the job
        if (data is None) == (url is None):
            raise KnowledgeError("give the document's bytes or a URL, not both")
        limit = int(self.kcfg.max_document_mb * 1024 * 1024)
        if data is not None and len(data) > limit:
            raise KnowledgeError(
                f"document is {len(data) / 2**20:.1f} MB; the limit is "
                f"{self.kcfg.max_document_mb:g} MB",
                document=document,
            )
        job = Job(f"job-{next(self._serial)}-{os.getpid()}", name, document, url or document)
        self.jobs[job.id] = job
        finished = [j.id for j in self.jobs.values() if j.finished_at is not None]
        for old in finished[: max(0, len(finished) - KEEP_JOBS)]:  # the oldest go first
            del self.jobs[old]
        self._spawn(self._ingest(job, data, url, mime))
        return job.to_dict()

    async def job(self, job_id: str) -> dict[str, Any]:
        found = self.jobs.get(job_id)
        if found is None:
            raise KnowledgeError(f"no job {job_id!r} (the service may have restarted)")
        return found.to_dict()

    async def _ingest(
        self, job: Job, data: bytes | None, url: str | None, mime: str | None
    ) -> None:
        try:
            kb = await self.client.base(job.kb)
            job.status = "parsing"
            if url is not None:
                data, mime = await self._fetch(url)
            assert data is not None
            limit = int(self.kcfg.max_document_mb * 1024 * 1024)
            parsed = await asyncio.to_thread(
                parse_document, job.document, data, mime=mime, max_bytes=limit
            )
            markdown = parsed.kind in ("markdown", "html")
            chunks = await asyncio.to_thread(
                chunk_text,
                parsed.text,
                size=self.kcfg.chunk_size,
                overlap=self.kcfg.chunk_overlap,
                markdown=markdown,
            )
            sha = hashlib.sha256(data).hexdigest()
            old = await self.store.get_document(kb.id, job.document)
            if old is not None and old.sha256 != sha:
                await self._remove_from_shards(kb.id, await self.store.delete_document(old.id))
            doc, created = await self.store.add_document(
                kb.id, job.document, job.source, sha, len(data)
            )
            if not created and doc.status == "ready":
                job.status, job.chunks = "unchanged", doc.chunks
                return
            rows = [(c.seq, c.text, c.heading, chunk_hash(c.text)) for c in chunks]
            ids = await self.store.add_chunks(kb.id, doc.id, rows)
            job.chunks, job.duplicates = len(ids), len(rows) - len(ids)
            job.status = "embedding"
            await self.store.set_document_status(doc.id, "embedding", chunks=len(ids))
            await self._embed_document(kb, doc.id, job)
            await self.store.set_document_status(doc.id, "ready", chunks=len(ids))
            job.status = "ready"
            log.info(
                "%s/%s: %d chunks (%d duplicates skipped)",
                kb.name,
                job.document,
                len(ids),
                job.duplicates,
            )
        except KnowledgeError as exc:
            await self._fail(job, exc.message)
        except Exception as exc:  # a bug or a store failure: the job says so
            log.exception("adding %s to %s failed", job.document, job.kb)
            await self._fail(job, f"{type(exc).__name__}: {exc}")
        finally:
            job.finished_at = time.time()

    async def _fail(self, job: Job, why: str) -> None:
        job.status, job.error = "failed", why
        try:
            kb = await self.client.base(job.kb)
            doc = await self.store.get_document(kb.id, job.document)
            if doc is not None and doc.status != "ready":
                await self.store.set_document_status(doc.id, "failed", error=why)
        except (KnowledgeError, StoreError):
            pass

    async def _fetch(self, url: str) -> tuple[bytes, str | None]:
        if not url.startswith(("http://", "https://")):
            raise KnowledgeError("only http(s) URLs can be added", url=url)
        limit = int(self.kcfg.max_document_mb * 1024 * 1024)
        timeout = aiohttp.ClientTimeout(total=self.kcfg.fetch_timeout_s)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as http,
                http.get(url) as resp,
            ):
                if resp.status != 200:
                    raise KnowledgeError(f"fetching the URL gave HTTP {resp.status}", url=url)
                body = bytearray()
                async for piece in resp.content.iter_chunked(64 * 1024):
                    body += piece
                    if len(body) > limit:
                        raise KnowledgeError(
                            f"document is over the {self.kcfg.max_document_mb:g} MB limit",
                            url=url,
                        )
                return bytes(body), resp.headers.get("Content-Type")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise KnowledgeError(f"cannot fetch the URL: {type(exc).__name__}", url=url) from None

    async def _embed_document(self, kb: KnowledgeBase, doc_id: int, job: Job | None) -> None:
        """Embed the document's chunks that have no vector yet: batches stream to the
        pool with as many in flight as there are embedders, times two (so none waits
        for the slowest batch of a round), each batch's vectors stored before its
        shards are told."""
        batch = self.kcfg.batch_size
        in_flight = asyncio.Semaphore(max(1, self.kcfg.embedders) * 2)

        async def one(piece: list[tuple[int, str]]) -> None:
            async with in_flight:
                await self._embed_batch(kb, piece, job)

        while True:
            todo = await self.store.chunks_without_vectors(kb.id, doc_id, limit=1_000_000)
            if not todo:
                return
            pieces = [todo[i : i + batch] for i in range(0, len(todo), batch)]
            await asyncio.gather(*(one(piece) for piece in pieces))

    async def _embed_batch(
        self, kb: KnowledgeBase, rows: list[tuple[int, str]], job: Job | None
    ) -> None:
        ids = [cid for cid, _ in rows]
        texts = [text for _, text in rows]
        vectors = np.ascontiguousarray(await self.pool.embed(texts), dtype=np.float32)
        if vectors.shape != (len(rows), kb.dim):
            raise KnowledgeError(
                f"the embedder gave vectors of shape {vectors.shape}; the base expects "
                f"dimension {kb.dim} (was it created with another embedder?)",
                kb=kb.name,
            )
        await self.store.set_vectors(
            [(cid, vec.tobytes()) for cid, vec in zip(ids, vectors, strict=True)]
        )
        await self._add_to_shards(kb, ids, vectors, texts)
        if job is not None:
            job.embedded += len(ids)

    async def _add_to_shards(
        self, kb: KnowledgeBase, ids: list[int], vectors: np.ndarray, texts: list[str]
    ) -> None:
        shards = self.kcfg.shards
        calls = []
        for j in range(shards):
            picked = [i for i, cid in enumerate(ids) if cid % shards == j]
            if not picked:
                continue
            sub_ids = [ids[i] for i in picked]
            sub_vecs = vectors[picked]
            sub_texts = [texts[i] for i in picked]

            def add(j: int = j, a: Any = sub_ids, v: Any = sub_vecs, t: Any = sub_texts) -> Any:
                return get_actor(shard_name(j), self.cfg.runtime.namespace).add.remote(
                    kb.id, kb.dim, a, v, t
                )

            calls.append(_retry(add, shard_name(j), 120.0))
        await asyncio.gather(*calls)

    async def _remove_from_shards(self, kb_id: int, ids: list[int]) -> None:
        shards = self.kcfg.shards
        calls = []
        for j in range(shards):
            mine = [cid for cid in ids if cid % shards == j]
            if mine:

                def remove(j: int = j, m: list[int] = mine) -> Any:
                    return get_actor(shard_name(j), self.cfg.runtime.namespace).remove.remote(
                        kb_id, m
                    )

                calls.append(_retry(remove, shard_name(j), 60.0))
        await asyncio.gather(*calls, return_exceptions=True)

    async def _each_shard(self, method: str, *args: Any) -> None:
        async def one(j: int) -> None:
            def call() -> Any:
                actor = get_actor(shard_name(j), self.cfg.runtime.namespace)
                return getattr(actor, method).remote(*args)

            await _retry(call, shard_name(j), 60.0)

        await asyncio.gather(*(one(j) for j in range(self.kcfg.shards)), return_exceptions=True)

    async def _resume(self) -> None:
        """Finish what a restart interrupted (see the module doc)."""
        try:
            for kb in await self.store.list_kbs():
                for doc in await self.store.list_documents(kb.id):
                    if doc.status == "embedding":
                        log.info("resuming %s/%s", kb.name, doc.name)
                        await self._embed_document(kb, doc.id, None)
                        await self.store.set_document_status(doc.id, "ready", chunks=doc.chunks)
                    elif doc.status in ("pending", "parsing"):
                        await self.store.set_document_status(
                            doc.id, "failed", error="interrupted by a restart: add it again"
                        )
        except Exception:
            log.exception("resuming interrupted ingestion failed")

    async def ping(self) -> dict[str, Any]:
        if self.lifecycle.state.value == "new":
            await self.lifecycle.ensure_started()  # Ray restarted this process
        running = [j for j in self.jobs.values() if j.finished_at is None]
        return {
            "pid": os.getpid(),
            "node_id": node_id(),
            "state": self.lifecycle.state.value,
            "started_at": self.started_at,
            "jobs_running": len(running),
            "embed_retries": self.pool.retries if hasattr(self, "pool") else 0,
        }


def _kb_dict(kb: KnowledgeBase) -> dict[str, Any]:
    return {
        "name": kb.name,
        "description": kb.description,
        "embedder": kb.embedder,
        "dim": kb.dim,
        "documents": kb.documents,
        "chunks": kb.chunks,
        "created_at": kb.created_at,
    }


def _doc_dict(doc: Any) -> dict[str, Any]:
    return {
        "name": doc.name,
        "source": doc.source,
        "size": doc.size,
        "status": doc.status,
        "error": doc.error,
        "chunks": doc.chunks,
        "updated_at": doc.updated_at,
    }
