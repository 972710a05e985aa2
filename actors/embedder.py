"""EmbedderWorker actors: the embedding pool ("embedder-<i>", ``num_cpus=1`` each).

    KnowledgeService (ingestion batches) ─┬─► embedder-0 ─► vectors
    KnowledgeClient (one query)          ─┴─► embedder-1 ─► vectors

Each worker loads the configured model once (``knowledge.embedder``: the packaged
MiniLM ONNX model by default) and embeds batches in a worker thread, so its pings stay
answered. One CPU each, really: a worker computes one batch at a time (two batches run
at once in one ONNX session would take two cores; callers keep the next batch queued
here instead, hiding the hop) and the tokenizer's own thread pool is off. N workers
use N cores, on any node. A batch that was running when its worker died is sent again
by the caller (``EmbedderPool``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import numpy as np
import ray

from actors.common import node_id, setup_logging
from actors.logship import ship_logs
from actors.pool import WorkerPool
from astr_ray.config import Config, parse_config
from astr_ray.errors import KnowledgeError
from astr_ray.kb.embed import Embedder, make_embedder
from astr_ray.lifecycle import Lifecycle

log = logging.getLogger(__name__)


def embedder_name(index: int) -> str:
    return f"embedder-{index}"


@ray.remote
class EmbedderWorker:
    def __init__(self, name: str, config: dict[str, Any]) -> None:
        setup_logging(name)
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # before tokenizers is imported
        self.name = name
        self.cfg: Config = parse_config(config)
        ship_logs(name, self.cfg.runtime.namespace)
        self._one_at_a_time = asyncio.Lock()
        self.lifecycle = Lifecycle(name, self._on_start, self._on_stop)
        self.embedder: Embedder | None = None
        self.batches = 0
        self.texts = 0
        self.busy_s = 0.0
        self.started_at = time.time()

    async def start(self) -> dict[str, Any]:
        await self.lifecycle.start()
        return await self.ping()

    async def _on_start(self) -> None:
        self.embedder = await asyncio.to_thread(make_embedder, self.cfg.knowledge)
        log.info("embedder %s up (dim %d)", self.embedder.name, self.embedder.dim)

    async def _on_stop(self) -> None:
        self.embedder = None

    async def stop(self) -> None:
        await self.lifecycle.stop()

    async def embed(self, texts: list[str]) -> np.ndarray:
        """Vectors for ``texts`` (float32, L2-normalized rows)."""
        await self.lifecycle.ensure_started()
        assert self.embedder is not None
        sync = getattr(self.embedder, "embed_sync", None)
        if sync is None:  # an embedding API: I/O, any number at once
            vectors: np.ndarray = await self.embedder.embed(texts)
        else:  # a local model: one batch at a time, off the event loop
            async with self._one_at_a_time:
                began = time.perf_counter()
                vectors = await asyncio.to_thread(sync, texts)
                self.busy_s += time.perf_counter() - began
        self.batches += 1
        self.texts += len(texts)
        return vectors

    async def ping(self) -> dict[str, Any]:
        if self.lifecycle.state.value == "new":
            await self.lifecycle.ensure_started()  # Ray restarted this process
        return {
            "pid": os.getpid(),
            "node_id": node_id(),
            "state": self.lifecycle.state.value,
            "started_at": self.started_at,
            "embedder": self.embedder.name if self.embedder else None,
            "dim": self.embedder.dim if self.embedder else None,
            "batches": self.batches,
            "texts": self.texts,
            "busy_s": round(self.busy_s, 3),
        }


class EmbedderPool(WorkerPool):
    """Round robin over the embedders; a batch whose worker died is sent again
    (``actors.pool``). Embedding is a pure function of the texts."""

    def __init__(self, namespace: str, size: int, deadline_s: float = 120.0) -> None:
        super().__init__(
            namespace,
            size,
            embedder_name,
            error=KnowledgeError,
            what="embedder",
            off_hint="knowledge.embedders is 0",
            deadline_s=deadline_s,
        )

    async def embed(self, texts: list[str]) -> np.ndarray:
        vectors: np.ndarray = await self.call("embed", texts)
        return vectors
