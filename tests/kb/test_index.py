"""Hybrid shard index and fusion (astr_ray/kb/index.py, astr_ray/kb/fusion.py)."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest

from astr_ray.errors import KnowledgeError
from astr_ray.kb.embed import MiniLMEmbedder, normalize_rows
from astr_ray.kb.fusion import Hit, candidate_depth, merge_hits, rrf
from astr_ray.kb.index import ShardIndex
from astr_ray.kb.tokens import bm25_tokens

# A small labelled set: 30 chunks, 15 queries. Seven queries are paraphrases sharing no
# word with their chunk (BM25 cannot find them); the others name a version or an
# identifier, among look-alikes that a sentence embedding blurs ("2.4.1" vs "2.1.4").
_ERR = (
    "This error is reported by the licensing service. Check the service logs, verify the "
    "network connection and retry the operation. If the problem persists, contact "
    "support and include the request id from the log."
)
CHUNKS = [
    "Refund policy: purchases may be returned within 30 days for full reimbursement.",
    "To reset a forgotten password, click Forgot password on the sign-in page.",
    "Cats sleep for up to sixteen hours a day, mostly during daylight.",
    "Photosynthesis converts sunlight, water and carbon dioxide into glucose and oxygen.",
    "The Eiffel Tower was completed in 1889 for the World's Fair in Paris.",
    "Shipping to Canada takes five to eight business days by ground courier.",
    "To cancel a subscription, open Account settings and choose End plan.",
    "Release 2.4.1 fixes a crash when importing large spreadsheets.",
    "Release 2.4.0 adds dark mode and a faster search page.",
    "Release 2.1.4 removes the legacy export format.",
    "Release 1.4.2 improves start-up time on older laptops.",
    "Release 2.2.0 introduces shared folders for teams.",
    "Release 3.0.1 patches a security hole in the sharing links.",
    "Release 2.0.4 translates the interface into Portuguese.",
    f"Error E4521: the activation token was rejected. {_ERR}",
    f"Error E4512: the upload exceeded the quota. {_ERR}",
    f"Error E5421: the activation server did not answer. {_ERR}",
    "Node QX-17 health report: the heartbeat timed out.",
    "Node QX-71 health report: the disk is full.",
    "Set the environment variable ZQ_HOME to relocate the cache directory.",
    "Set the environment variable ZQ_LOG to move the log directory.",
    "Backups run nightly at 02:00 UTC and are kept for 35 days in cold storage.",
    "Two-factor authentication adds a one-time code from an authenticator app at login.",
    "The invoice PDF can be downloaded from Billing > History in the dashboard.",
    "The flag --dry-run prints the planned changes without applying them.",
    "Our API rate limit is 600 requests per minute per key; excess calls get HTTP 429.",
    "Espresso is brewed by forcing hot water through finely ground coffee under pressure.",
    "Interest rates rose as the central bank tried to slow inflation.",
    "Bees communicate the direction of flowers with a waggle dance.",
    "The Zorblax-9 gateway forwards MQTT telemetry to the cloud every five seconds.",
]
QUERIES = [  # (query, index of the right chunk)
    ("How can I get my money back after buying something?", 0),
    ("I can't remember my login secret", 1),
    ("feline napping habits", 2),
    ("how plants make food from light", 3),
    ("when was the famous iron landmark in France built", 4),
    ("delivery time for parcels going to Toronto", 5),
    ("stop paying for my monthly plan", 6),
    ("what changed in 2.4.1", 7),
    ("release 1.4.2 notes", 10),
    ("2.1.4", 9),
    ("what is new in 2.0.4", 13),
    ("E4521", 14),
    ("QX-71", 18),
    ("ZQ_LOG", 20),
    ("Zorblax-9", 29),
]
IDS = [1000 + i for i in range(len(CHUNKS))]


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    return MiniLMEmbedder()


@pytest.fixture(scope="module")
def chunk_vectors(minilm: MiniLMEmbedder) -> np.ndarray:
    return minilm.embed_sync(CHUNKS)


@pytest.fixture(scope="module")
def query_vectors(minilm: MiniLMEmbedder) -> np.ndarray:
    return minilm.embed_sync([q for q, _ in QUERIES])


def labelled_index(vectors: np.ndarray) -> ShardIndex:
    index = ShardIndex(384, hnsw_threshold=10_000)
    index.add(IDS, vectors, CHUNKS)
    return index


# -- fusion -------------------------------------------------------------------------------


def test_rrf_orders_by_fused_score_with_stable_ties() -> None:
    fused = rrf([[1, 2, 3], [3, 4, 1]])
    assert [i for i, _ in fused] == [1, 3, 2, 4]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 63)
    assert fused[2][1] == pytest.approx(1 / 62) == fused[3][1]  # tie: 2 was seen first
    assert rrf([[7, 7, 8]]) == [(7, pytest.approx(1 / 61)), (8, pytest.approx(1 / 63))]
    assert [i for i, _ in rrf([[1, 2], [2, 1]], weights=[1.0, 3.0])] == [2, 1]
    assert [i for i, _ in rrf([[5], [6]], k=1)] == [5, 6]
    assert rrf([]) == []
    with pytest.raises(ValueError, match="weight"):
        rrf([[1]], weights=[1.0, 2.0])


def test_merge_hits_ranks_raw_scores_globally() -> None:
    shard_a = [Hit(1, 0, 1, None, 0.9, None), Hit(2, 0, 2, 1, 0.5, 7.0)]
    shard_b = [
        Hit(3, 0, 1, 1, 0.8, 3.0),
        Hit(5, 0, 2, None, 0.7, None),
        Hit(4, 0, None, 2, None, 1.0),
    ]
    merged = merge_hits([shard_a, shard_b], k=3)
    by_id = {h.chunk_id: h for h in merged}
    assert [h.chunk_id for h in merged] == [3, 2, 1]  # 3: vector #2 + text #2
    assert (by_id[2].vector_rank, by_id[2].text_rank) == (4, 1)
    assert (by_id[3].vector_score, by_id[3].text_score) == (0.8, 3.0)
    assert by_id[1].text_rank is None
    assert merged[0].score == pytest.approx(1 / 62 + 1 / 62)
    assert candidate_depth(5) == 20 and candidate_depth(10) == 40


# -- labelled search ----------------------------------------------------------------------


def test_lexical_query_finds_the_rare_word(chunk_vectors: np.ndarray) -> None:
    index = labelled_index(chunk_vectors)
    hits = index.search_text("what does error E4512 mean", 5)
    assert hits[0].chunk_id == IDS[15]
    assert hits[0].text_rank == 1 and hits[0].score == hits[0].text_score
    assert all(h.score > 0 for h in hits)
    assert index.search_text("nothing here matches xyzzy", 5) == []
    assert index.search(None, "Zorblax", 3)[0].chunk_id == IDS[29]


def test_bm25_scores_equal_rank_bm25(chunk_vectors: np.ndarray) -> None:
    from rank_bm25 import BM25Okapi

    index = labelled_index(chunk_vectors)
    reference = BM25Okapi([bm25_tokens(text) for text in CHUNKS])
    for query in ["error E4521 activation", "release notes 2.4.1 crash", "the the cache"]:
        expected = reference.get_scores(bm25_tokens(query))
        hits = index.search_text(query, 30)
        assert hits
        for hit in hits:
            assert hit.score == pytest.approx(expected[IDS.index(hit.chunk_id)], rel=1e-9)
        assert len(hits) == int((expected > 0).sum())


def test_tiny_shards_still_match_words(chunk_vectors: np.ndarray) -> None:
    # With one chunk, BM25Okapi's IDF is negative for every word.
    index = ShardIndex(384, hnsw_threshold=100)
    index.add([7], chunk_vectors[:1], ["refund policy for purchases"])
    assert [h.chunk_id for h in index.search_text("refund", 3)] == [7]
    index.add([8], chunk_vectors[1:2], ["refund of purchases by card"])
    assert [h.chunk_id for h in index.search_text("refund policy", 3)] == [7, 8]


def test_semantic_query_finds_a_paraphrase(
    minilm: MiniLMEmbedder, chunk_vectors: np.ndarray
) -> None:
    index = labelled_index(chunk_vectors)
    query = "feline napping habits"
    assert index.search_text(query, 5) == []  # not one word in common
    hits = index.search_vector(minilm.embed_sync([query])[0], 3)
    assert hits[0].chunk_id == IDS[2]
    assert hits[0].vector_rank == 1 and hits[0].score == hits[0].vector_score
    assert hits[0].score > hits[1].score


def test_hybrid_beats_either_alone(chunk_vectors: np.ndarray, query_vectors: np.ndarray) -> None:
    index = labelled_index(chunk_vectors)

    def hit_at_3(vector: bool, text: bool) -> int:
        found = 0
        for (query, right), qvec in zip(QUERIES, query_vectors, strict=True):
            hits = index.search(qvec if vector else None, query if text else None, 3)
            found += IDS[right] in [h.chunk_id for h in hits]
        return found

    vector_only, text_only, hybrid = (
        hit_at_3(True, False),
        hit_at_3(False, True),
        hit_at_3(True, True),
    )
    print(f"\nhit@3 of {len(QUERIES)}: vector {vector_only}, BM25 {text_only}, hybrid {hybrid}")
    assert hybrid >= vector_only and hybrid >= text_only
    assert hybrid > min(vector_only, text_only)
    assert hybrid > max(vector_only, text_only)  # on this set, better than both


def test_shards_merge_like_one_index(chunk_vectors: np.ndarray, query_vectors: np.ndarray) -> None:
    whole = labelled_index(chunk_vectors)
    shards = [ShardIndex(384, hnsw_threshold=10_000) for _ in range(3)]
    for i, (cid, text) in enumerate(zip(IDS, CHUNKS, strict=True)):
        shards[i % 3].add([cid], chunk_vectors[i : i + 1], [text])
    for (query, right), qvec in zip(QUERIES, query_vectors, strict=True):
        merged = merge_hits([s.candidates(qvec, None, 5) for s in shards], 5)
        assert merged == whole.search(qvec, None, 5)  # vector scores are global: exact
        hybrid = merge_hits([s.candidates(qvec, query, 3) for s in shards], 3)
        assert len(hybrid) == 3
        # BM25 statistics are per shard (approximation), the answer still holds.
        assert IDS[right] in [h.chunk_id for h in hybrid], query


# -- maintenance --------------------------------------------------------------------------


def test_add_replace_remove(chunk_vectors: np.ndarray) -> None:
    index = labelled_index(chunk_vectors)
    e4521, cats = IDS[14], IDS[2]
    assert len(index) == 30 and e4521 in index
    assert index.search_text("E4521", 3)[0].chunk_id == e4521
    # Adding an id again replaces its text and vector.
    index.add([e4521], chunk_vectors[2:3], ["Error E9999 is new."])
    assert len(index) == 30
    assert index.search_text("E4521", 3) == []
    assert index.search_text("E9999", 3)[0].chunk_id == e4521
    top = index.search_vector(chunk_vectors[2], 2)
    assert {h.chunk_id for h in top} == {e4521, cats}
    # Removal: gone from both sides, counts only what was there.
    assert index.remove([e4521, cats, 123456]) == 2
    assert index.remove([e4521]) == 0
    assert len(index) == 28 and e4521 not in index
    assert index.search_text("E9999", 3) == []
    found = {h.chunk_id for h in index.search(chunk_vectors[2], "Cats sleep E9999", 30)}
    assert not found & {e4521, cats}
    assert len(found) == 28
    assert sorted(index.ids()) == sorted(set(IDS) - {e4521, cats})
    # Removing most chunks compacts the index, results stay right.
    index.remove(IDS[:25])
    assert len(index) == 5
    assert [h.chunk_id for h in index.search_vector(chunk_vectors[27], 1)] == [IDS[27]]
    index.remove(IDS)
    assert len(index) == 0
    assert index.search(chunk_vectors[0], "refund", 5) == []


def test_bad_input(chunk_vectors: np.ndarray) -> None:
    index = ShardIndex(384, hnsw_threshold=100)
    assert index.search(chunk_vectors[0], "anything", 5) == []
    with pytest.raises(ValueError, match="duplicate"):
        index.add([1, 1], chunk_vectors[:2], ["a", "b"])
    with pytest.raises(ValueError, match="expected vectors"):
        index.add([1, 2], chunk_vectors[:1], ["a", "b"])
    index.add([1], chunk_vectors[:1], [""])  # a chunk with no BM25 tokens
    assert index.search_text("refund", 3) == []
    with pytest.raises(KnowledgeError, match="dimensions"):
        index.search_vector(np.ones(12, dtype=np.float32), 3)
    with pytest.raises(KnowledgeError, match="unreadable"):
        ShardIndex.restore(b"not a snapshot")
    with np.load(io.BytesIO(index.snapshot())) as npz:
        parts = dict(npz)
    parts["meta"] = np.frombuffer(b'{"version": 99}', dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **parts)
    with pytest.raises(KnowledgeError, match="snapshot version 99 is not 1"):
        ShardIndex.restore(buf.getvalue())


@pytest.mark.parametrize("hnsw", [False, True], ids=["exact", "hnsw"])
def test_snapshot_restore_identical(
    hnsw: bool, chunk_vectors: np.ndarray, query_vectors: np.ndarray
) -> None:
    index = ShardIndex(384, hnsw_threshold=10 if hnsw else 1000)
    index.add(IDS, chunk_vectors, CHUNKS)
    index.remove([IDS[29]])  # a dead slot travels too
    assert index.is_hnsw is hnsw
    data = index.snapshot()
    assert data[:2] == b"PK"  # an npz (zip) file, no pickle inside
    copy = ShardIndex.restore(data)
    assert copy.is_hnsw is hnsw and len(copy) == len(index) == 29
    for (query, _), qvec in zip(QUERIES, query_vectors, strict=True):
        assert copy.search(qvec, query, 5) == index.search(qvec, query, 5)
    assert copy.search_text("Zorblax", 3) == []
    # The copy keeps working on its own.
    copy.add([IDS[29]], chunk_vectors[29:30], [CHUNKS[29]])
    assert copy.search_text("Zorblax", 3)[0].chunk_id == IDS[29]
    assert len(index) == 29


# -- HNSW ---------------------------------------------------------------------------------


def embedding_like(rng: np.random.Generator, n: int, dim: int = 384) -> np.ndarray:
    """Random vectors with the low intrinsic dimension of sentence embeddings: a
    32-dimensional Gaussian projected to ``dim`` plus isotropic noise, normalized.
    (Uniform random 384-d vectors have no neighbours to speak of; see the report.)"""
    basis = np.random.default_rng(7).standard_normal((32, dim)).astype(np.float32)
    latent = rng.standard_normal((n, 32)).astype(np.float32)
    noise = rng.standard_normal((n, dim)).astype(np.float32) * 0.5 * np.sqrt(32 / dim)
    return normalize_rows(latent @ basis + noise)


def test_hnsw_recall_against_exact() -> None:
    rng = np.random.default_rng(0)
    n, queries, k = 30_000, 200, 10
    vectors = embedding_like(rng, n)
    q = embedding_like(rng, queries)
    index = ShardIndex(384, hnsw_threshold=20_000)
    start = time.perf_counter()
    index.add(range(20_000), vectors[:20_000], [""] * 20_000)
    assert not index.is_hnsw
    index.add(range(20_000, n), vectors[20_000:], [""] * (n - 20_000))  # switches once
    build = time.perf_counter() - start
    assert index.is_hnsw and len(index) == n
    exact = np.argsort(-(q @ vectors.T), axis=1)[:, :k]
    recalls, latencies = [], []
    for qi in range(queries):
        t0 = time.perf_counter()
        hits = index.search_vector(q[qi], candidate_depth(k))
        latencies.append(time.perf_counter() - t0)
        got = {h.chunk_id for h in hits[:k]}
        recalls.append(len(got & set(exact[qi].tolist())) / k)
    recall = float(np.mean(recalls))
    # Deletions are filtered, not searched around: recall holds with dead slots.
    index.remove(range(0, n, 7))
    live = np.array([i for i in range(n) if i % 7], dtype=np.int64)
    exact_live = live[np.argsort(-(q[:50] @ vectors[live].T), axis=1)[:, :k]]
    recall_dead = np.mean(
        [
            len({h.chunk_id for h in index.search_vector(q[qi], k)} & set(exact_live[qi].tolist()))
            / k
            for qi in range(50)
        ]
    )
    print(
        f"\nHNSW {n} x 384: build {build:.1f} s, recall@10 {recall:.3f} "
        f"(with 14% removed {recall_dead:.3f}), query p50 {np.percentile(latencies, 50) * 1e3:.2f}"
        f" ms p99 {np.percentile(latencies, 99) * 1e3:.2f} ms"
    )
    assert recall >= 0.95
    assert recall_dead >= 0.95
    assert not {h.chunk_id for h in index.search_vector(q[0], 50)} & set(range(0, n, 7))
