"""Knowledge bases, the library part (no Ray): documents in, ranked chunks out.

::

    bytes ─ parse_document ─▶ ParsedDoc ─ chunk_text ─▶ [Chunk] ─ chunk_hash (dedup)
                                                           │
                                          Embedder.embed ◀─┘  (embedder actors)
                                                │ vectors
                                                ▼
    query ──▶ ShardIndex.candidates (one per shard: FAISS + BM25) ─▶ merge_hits (RRF)

``parse`` turns txt/md/html/pdf into text (HTML headings as Markdown ``#`` lines);
``chunk`` cuts text into overlapping, heading-aware chunks; ``tokens`` makes BM25 tokens
(English words, CJK unigrams and bigrams); ``embed`` holds the embedders (MiniLM ONNX,
static, litellm); ``index`` the per-shard hybrid index with snapshots; ``fusion`` the
reciprocal-rank fusion and the cross-shard merge. Heavy libraries (faiss, rank-bm25,
onnxruntime, pypdf, bs4, litellm) load on first use.
"""

from __future__ import annotations

from astr_ray.kb.chunk import Chunk, chunk_hash, chunk_text
from astr_ray.kb.embed import (
    Embedder,
    LiteLLMEmbedder,
    MiniLMEmbedder,
    StaticEmbedder,
    make_embedder,
)
from astr_ray.kb.fusion import Hit, candidate_depth, merge_hits, rrf
from astr_ray.kb.index import ShardIndex
from astr_ray.kb.parse import SUPPORTED, ParsedDoc, parse_document
from astr_ray.kb.tokens import bm25_tokens

__all__ = [
    "SUPPORTED",
    "Chunk",
    "Embedder",
    "Hit",
    "LiteLLMEmbedder",
    "MiniLMEmbedder",
    "ParsedDoc",
    "ShardIndex",
    "StaticEmbedder",
    "bm25_tokens",
    "candidate_depth",
    "chunk_hash",
    "chunk_text",
    "make_embedder",
    "merge_hits",
    "parse_document",
    "rrf",
]
