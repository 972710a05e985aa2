"""Reciprocal-rank fusion, and the merge of per-shard results into one global answer.

A query fans out to every shard of a base. Each shard answers with its *candidates*:
its top ``candidate_depth(k)`` chunks by vector similarity and its top ones by BM25,
each ``Hit`` carrying the raw ``vector_score`` (inner product) and/or ``text_score``
(BM25). ``merge_hits`` then ranks all vector candidates globally by raw score, all
BM25 candidates globally by raw score, and fuses the two global rankings with RRF::

    shard 0 ─ candidates ─┐
    shard 1 ─ candidates ─┼─ merge_hits ─ global vector ranking ─┐
    shard 2 ─ candidates ─┘              global BM25 ranking ───┴─ rrf ─ top k

Inner products are comparable across shards (one embedder, normalized vectors), so
the global vector ranking is exact. BM25 scores are not quite: each shard computes IDF
and average length over its own slice. With chunks spread evenly over shards the
statistics agree closely, and the approximation is accepted (no global IDF round trip).
A single shard's ``search`` is ``merge_hits`` over that shard alone, so one shard and
many shards rank the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["RRF_K", "Hit", "candidate_depth", "merge_hits", "rrf"]

#: The usual RRF constant: a document at rank r contributes 1 / (RRF_K + r).
RRF_K = 60


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result.

    ``score`` is the fused RRF score for hybrid search (``search``, ``merge_hits``) and
    the raw score for single-mode search (``search_vector``: inner product in [-1, 1];
    ``search_text``: BM25, > 0). Ranks are 1-based positions in the vector and BM25
    rankings (global ones after ``merge_hits``), ``None`` where the chunk was not among
    that ranking's candidates. ``vector_score`` and ``text_score`` are the raw scores
    behind those ranks; they are what lets results of several shards be merged.
    """

    chunk_id: int
    score: float
    vector_rank: int | None = None
    text_rank: int | None = None
    vector_score: float | None = None
    text_score: float | None = None


def candidate_depth(k: int) -> int:
    """How many candidates each ranking contributes for a final top ``k``."""
    return max(k * 4, 20)


def rrf(
    rankings: Sequence[Sequence[int]], k: int = RRF_K, weights: Sequence[float] | None = None
) -> list[tuple[int, float]]:
    """Fuse rankings (ids, best first) into ``[(id, score)]``, best first.

    ``score = sum(weight_i / (k + rank_i))`` over the rankings that hold the id, with
    1-based ranks; an id repeated within one ranking counts at its first position.
    Ties keep the order of first appearance (ranking by ranking, position by position),
    so the result is deterministic.
    """
    if weights is None:
        weights = [1.0] * len(rankings)
    elif len(weights) != len(rankings):
        raise ValueError("rrf: one weight per ranking")
    scores: dict[int, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        seen: set[int] = set()
        for rank, item in enumerate(ranking, start=1):
            if item in seen:
                continue
            seen.add(item)
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
    # sorted() is stable and dicts keep insertion order: ties stay in first-seen order.
    return sorted(scores.items(), key=lambda kv: -kv[1])


def merge_hits(per_shard: Sequence[Sequence[Hit]], k: int) -> list[Hit]:
    """The global top ``k`` of the shards' candidate hits (see the module docstring).

    Every shard must have been asked with the same ``k``. A chunk reported twice keeps
    its best raw scores. Hits without raw scores are ignored.
    """
    depth = candidate_depth(k)
    vector: dict[int, float] = {}
    text: dict[int, float] = {}
    for hits in per_shard:
        for hit in hits:
            if hit.vector_score is not None:
                old = vector.get(hit.chunk_id)
                if old is None or hit.vector_score > old:
                    vector[hit.chunk_id] = hit.vector_score
            if hit.text_score is not None:
                old = text.get(hit.chunk_id)
                if old is None or hit.text_score > old:
                    text[hit.chunk_id] = hit.text_score
    by_vector = sorted(vector, key=lambda cid: -vector[cid])[:depth]
    by_text = sorted(text, key=lambda cid: -text[cid])[:depth]
    vector_rank = {cid: r for r, cid in enumerate(by_vector, start=1)}
    text_rank = {cid: r for r, cid in enumerate(by_text, start=1)}
    return [
        Hit(
            chunk_id=cid,
            score=score,
            vector_rank=vector_rank.get(cid),
            text_rank=text_rank.get(cid),
            vector_score=vector.get(cid),
            text_score=text.get(cid),
        )
        for cid, score in rrf([by_vector, by_text])[:k]
    ]
