"""KnowledgeShard actors ("kb-shard-<j>"): FAISS + BM25 over a slice of every base.

    chunk id % knowledge.shards == j  ─►  this shard, one ShardIndex per knowledge base

Start (also after a restart, on any node): each base's index is restored from this
node's snapshot (``<data_dir>/kb/shard-<j>/kb-<id>.npz``) when there is one, then
reconciled with the store, which holds the truth: chunks the snapshot lacks are added,
chunks the store no longer has are dropped. Without a snapshot (a new node) the index
is rebuilt from the store. Searches wait until that is done. A snapshot is written a
few seconds after the last change, atomically (write, then rename).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray

from actors.common import node_id, setup_logging
from actors.logship import ship_logs
from astr_ray.config import Config, parse_config
from astr_ray.errors import KnowledgeError
from astr_ray.kb.fusion import Hit
from astr_ray.kb.index import ShardIndex
from astr_ray.lifecycle import Lifecycle
from astr_ray.store import Store

log = logging.getLogger(__name__)

SNAPSHOT_DELAY_S = 3.0
PAGE = 5000


def shard_name(index: int) -> str:
    return f"kb-shard-{index}"


@ray.remote
class KnowledgeShard:
    def __init__(self, index: int, config: dict[str, Any]) -> None:
        self.name = shard_name(index)
        setup_logging(self.name)
        self.index = index
        self.cfg: Config = parse_config(config)
        ship_logs(self.name, self.cfg.runtime.namespace)
        self.shards = self.cfg.knowledge.shards
        self.lifecycle = Lifecycle(self.name, self._on_start, self._on_stop)
        self.indexes: dict[int, ShardIndex] = {}
        self.dirty: set[int] = set()
        self.searches = 0
        self.rebuilt: dict[int, str] = {}  # kb id -> "snapshot" | "store"
        self.started_at = time.time()
        self._snapshots: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def folder(self) -> Path:
        return self.cfg.data_dir / "kb" / f"shard-{self.index}"

    async def start(self) -> dict[str, Any]:
        await self.lifecycle.start()
        return await self.ping()

    async def _on_start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.store = await Store.open(self.cfg.store_url)
        await self.store.migrate()  # a no-op once the Supervisor has migrated
        began = time.perf_counter()
        for kb in await self.store.list_kbs():
            await self._load(kb.id, kb.dim)
        log.info(
            "%s up: %d bases, %d chunks, in %.2f s",
            self.name,
            len(self.indexes),
            sum(len(i) for i in self.indexes.values()),
            time.perf_counter() - began,
        )
        self._snapshots = asyncio.create_task(self._snapshot_forever())

    async def _on_stop(self) -> None:
        if self._snapshots is not None:
            self._snapshots.cancel()
        await self._write_snapshots()
        await self.store.close()

    async def stop(self) -> None:
        await self.lifecycle.stop()

    # -- building ---------------------------------------------------------------------

    def _snapshot_path(self, kb_id: int) -> Path:
        return self.folder / f"kb-{kb_id}.npz"

    def _new_index(self, dim: int) -> ShardIndex:
        return ShardIndex(dim, hnsw_threshold=self.cfg.knowledge.hnsw_threshold)

    async def _load(self, kb_id: int, dim: int) -> ShardIndex:
        """This shard's index of one base: the snapshot, reconciled with the store."""
        index: ShardIndex | None = None
        path = self._snapshot_path(kb_id)
        if path.exists():
            try:
                data = await asyncio.to_thread(path.read_bytes)
                index = await asyncio.to_thread(ShardIndex.restore, data)
                if index.dim != dim:
                    index = None
                else:  # the config may have changed since the snapshot
                    index.hnsw_threshold = self.cfg.knowledge.hnsw_threshold
            except (OSError, KnowledgeError) as exc:
                log.warning(
                    "%s: snapshot of base %d unusable (%s); rebuilding", self.name, kb_id, exc
                )
                index = None
        self.rebuilt[kb_id] = "snapshot" if index is not None else "store"
        if index is None:
            index = self._new_index(dim)
        in_store: set[int] = set()
        after = 0
        while True:
            page = await self.store.iter_chunk_vectors(
                kb_id, shard=self.index, shards=self.shards, after_id=after, limit=PAGE
            )
            missing = [(cid, text, vec) for cid, text, vec in page if cid not in index]
            in_store.update(cid for cid, _, _ in page)
            if missing:
                vectors = np.frombuffer(b"".join(v for _, _, v in missing), dtype=np.float32)
                await asyncio.to_thread(
                    index.add,
                    [cid for cid, _, _ in missing],
                    vectors.reshape(len(missing), dim),
                    [text for _, text, _ in missing],
                )
                self.dirty.add(kb_id)
            if len(page) < PAGE:
                break
            after = page[-1][0]
        stale = [cid for cid in index.ids() if cid not in in_store]
        if stale:
            index.remove(stale)
            self.dirty.add(kb_id)
        self.indexes[kb_id] = index
        return index

    # -- changes ----------------------------------------------------------------------

    async def add(
        self, kb_id: int, dim: int, ids: list[int], vectors: np.ndarray, texts: list[str]
    ) -> int:
        """Add (or replace) chunks of one base; returns the base's size here."""
        await self.lifecycle.ensure_started()
        async with self._lock:
            index = self.indexes.get(kb_id)
            if index is None:
                index = self.indexes[kb_id] = self._new_index(dim)
            await asyncio.to_thread(index.add, ids, vectors, texts)
            self.dirty.add(kb_id)
            return len(index)

    async def remove(self, kb_id: int, ids: list[int]) -> int:
        await self.lifecycle.ensure_started()
        async with self._lock:
            index = self.indexes.get(kb_id)
            if index is None:
                return 0
            removed = await asyncio.to_thread(index.remove, ids)
            self.dirty.add(kb_id)
            return removed

    async def drop(self, kb_id: int) -> None:
        """Forget a deleted base (and its snapshot)."""
        await self.lifecycle.ensure_started()
        async with self._lock:
            self.indexes.pop(kb_id, None)
            self.dirty.discard(kb_id)
            self._snapshot_path(kb_id).unlink(missing_ok=True)

    # -- search -----------------------------------------------------------------------

    async def candidates(
        self, kb_ids: list[int], query_vec: np.ndarray | None, query_text: str | None, k: int
    ) -> list[Hit]:
        """This shard's candidates for a global top ``k`` (``merge_hits``)."""
        await self.lifecycle.ensure_started()
        hits: list[Hit] = []
        async with self._lock:  # an index is not thread-safe (BM25 rebuilds lazily)
            for kb_id in kb_ids:
                index = self.indexes.get(kb_id)
                if index is None or not len(index):
                    continue
                hits += await asyncio.to_thread(index.candidates, query_vec, query_text, k)
        self.searches += 1
        return hits

    # -- snapshots ----------------------------------------------------------------------

    async def _snapshot_forever(self) -> None:
        while True:
            await asyncio.sleep(SNAPSHOT_DELAY_S)
            try:
                await self._write_snapshots()
            except Exception:
                log.exception("%s: writing a snapshot failed", self.name)

    async def _write_snapshots(self) -> None:
        for kb_id in list(self.dirty):
            async with self._lock:
                index = self.indexes.get(kb_id)
                self.dirty.discard(kb_id)
                if index is None:
                    continue
                data = await asyncio.to_thread(index.snapshot)
            path = self._snapshot_path(kb_id)
            tmp = path.with_suffix(".tmp")
            await asyncio.to_thread(tmp.write_bytes, data)
            os.replace(tmp, path)

    async def ping(self) -> dict[str, Any]:
        if self.lifecycle.state.value == "new":
            await self.lifecycle.ensure_started()  # Ray restarted this process
        return {
            "pid": os.getpid(),
            "node_id": node_id(),
            "state": self.lifecycle.state.value,
            "started_at": self.started_at,
            "bases": {str(k): len(i) for k, i in self.indexes.items()},
            "hnsw": sorted(str(k) for k, i in self.indexes.items() if i.is_hnsw),
            "rebuilt": {str(k): v for k, v in self.rebuilt.items()},
            "searches": self.searches,
        }
