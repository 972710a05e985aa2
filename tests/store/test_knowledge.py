"""Knowledge bases, documents, chunks and vectors in ``Store``, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import struct
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, select, text
from sqlalchemy.engine import Connection

from astr_ray.errors import StoreError
from astr_ray.store import Store
from astr_ray.store import migrate as store_migrate
from astr_ray.store.migrate import head_revision
from astr_ray.store.tables import kb_bases, kb_chunks, kb_documents, metadata

DIM = 4


def _hash(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()


def _chunks(*bodies: str, heading: str | None = None) -> list[tuple[int, str, str | None, str]]:
    return [(seq, body, heading, _hash(body)) for seq, body in enumerate(bodies)]


def _vector(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


async def _rows(store: Store, table: Any) -> int:
    async with store.engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(table)) or 0)


# -- schema --------------------------------------------------------------------------


async def test_migration_0003_matches_tables(store: Store) -> None:
    assert head_revision() == "0003"
    assert await store.schema_version() == "0003"

    def diff(conn: Connection) -> list[Any]:
        return compare_metadata(MigrationContext.configure(conn), metadata)

    async with store.engine.connect() as conn:
        assert await conn.run_sync(diff) == []


async def test_upgrade_from_0002_adds_tables(store: Store) -> None:
    def drop(conn: Connection) -> None:
        metadata.drop_all(conn)
        conn.execute(text("DROP TABLE IF EXISTS alembic_version"))

    async with store.engine.begin() as conn:
        await conn.run_sync(drop)
    await store_migrate.upgrade(store.engine, "0002")
    await store.set_setting("global", "k", 1)

    await store.migrate()

    assert await store.schema_version() == "0003"
    assert await store.get_setting("global", "k") == 1
    kb = await store.create_kb("docs", "", "minilm", DIM)
    assert (await store.get_kb("docs")) == kb


# -- bases ---------------------------------------------------------------------------


async def test_create_get_list_delete_kb_with_counts(store: Store) -> None:
    kb = await store.create_kb("manual", "the user manual", "minilm", 384)
    assert (kb.name, kb.description, kb.embedder, kb.dim) == (
        "manual",
        "the user manual",
        "minilm",
        384,
    )
    assert (kb.documents, kb.chunks) == (0, 0)
    assert await store.get_kb("manual") == kb
    assert await store.get_kb("missing") is None

    other = await store.create_kb("faq", "", "static", 64)
    doc, _ = await store.add_document(kb.id, "a.md", "/docs/a.md", _hash("a"), 10)
    await store.add_chunks(kb.id, doc.id, _chunks("one", "two", "three"))
    await store.add_document(kb.id, "b.md", "/docs/b.md", _hash("b"), 10)

    listed = await store.list_kbs()
    assert [(k.name, k.documents, k.chunks) for k in listed] == [
        ("faq", 0, 0),
        ("manual", 2, 3),
    ]
    assert listed[0] == other

    assert await store.delete_kb("manual") is True
    assert await store.delete_kb("manual") is False
    assert await store.get_kb("manual") is None
    assert [k.name for k in await store.list_kbs()] == ["faq"]


async def test_duplicate_kb_name_refused(store: Store) -> None:
    await store.create_kb("docs", "first", "minilm", DIM)
    with pytest.raises(StoreError, match="knowledge base 'docs' exists"):
        await store.create_kb("docs", "second", "static", 64)
    kb = await store.get_kb("docs")
    assert kb is not None and kb.description == "first"


async def test_invalid_names_and_values_refused(store: Store) -> None:
    with pytest.raises(StoreError, match="longer than 64"):
        await store.create_kb("k" * 65, "", "minilm", DIM)
    with pytest.raises(StoreError, match="longer than 128"):
        await store.create_kb("docs", "", "e" * 129, DIM)
    with pytest.raises(StoreError, match="empty"):
        await store.create_kb("", "", "minilm", DIM)
    with pytest.raises(StoreError, match="positive"):
        await store.create_kb("docs", "", "minilm", 0)
    assert await store.list_kbs() == []

    kb = await store.create_kb("k" * 64, "", "minilm", DIM)
    with pytest.raises(StoreError, match="longer than 512"):
        await store.add_document(kb.id, "n" * 513, "src", _hash("x"), 1)
    with pytest.raises(StoreError, match="longer than 64"):
        await store.add_document(kb.id, "a.txt", "src", "h" * 65, 1)
    doc, _ = await store.add_document(kb.id, "n" * 512, "src", _hash("x"), 1)
    with pytest.raises(StoreError, match="longer than 64"):
        await store.add_chunks(kb.id, doc.id, [(0, "text", None, "h" * 65)])
    with pytest.raises(StoreError, match="unknown document status"):
        await store.set_document_status(doc.id, "done")
    assert await store.list_documents(kb.id) == [doc]


# -- documents -----------------------------------------------------------------------


async def test_add_document_created_unchanged_and_replaced(store: Store) -> None:
    kb = await store.create_kb("docs", "", "minilm", DIM)
    doc, created = await store.add_document(kb.id, "guide.md", "/v1/guide.md", _hash("v1"), 100)
    assert created
    assert (doc.kb_id, doc.name, doc.source, doc.sha256, doc.size) == (
        kb.id,
        "guide.md",
        "/v1/guide.md",
        _hash("v1"),
        100,
    )
    assert (doc.status, doc.error, doc.chunks) == ("pending", None, 0)
    assert doc.created_at == doc.updated_at
    await store.add_chunks(kb.id, doc.id, _chunks("old one", "old two"))
    assert await store.set_document_status(doc.id, "ready", chunks=2)

    again, created = await store.add_document(kb.id, "guide.md", "/elsewhere", _hash("v1"), 100)
    assert not created
    assert (again.id, again.source, again.status, again.chunks) == (
        doc.id,
        "/v1/guide.md",
        "ready",
        2,
    )
    assert await store.count_chunks(kb.id) == 2

    new, created = await store.add_document(kb.id, "guide.md", "/v2/guide.md", _hash("v2"), 120)
    assert created
    assert (new.id, new.source, new.sha256, new.size) == (
        doc.id,
        "/v2/guide.md",
        _hash("v2"),
        120,
    )
    assert (new.status, new.error, new.chunks) == ("pending", None, 0)
    assert new.created_at == doc.created_at < new.updated_at
    assert await store.count_chunks(kb.id) == 0
    assert await store.get_document(kb.id, "guide.md") == new
    assert await store.get_document(kb.id, "missing.md") is None

    # The same name in another base is another document.
    kb2 = await store.create_kb("more", "", "minilm", DIM)
    doc2, created = await store.add_document(kb2.id, "guide.md", "/v2/guide.md", _hash("v2"), 1)
    assert created and doc2.id != doc.id
    assert [d.name for d in await store.list_documents(kb.id)] == ["guide.md"]


async def test_add_document_to_missing_kb_refused(store: Store) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        await store.add_document(12345, "a.txt", "src", _hash("a"), 1)


async def test_concurrent_add_document_creates_once(store_url: str, store: Store) -> None:
    kb = await store.create_kb("docs", "", "minilm", DIM)
    other = await Store.open(store_url)
    try:
        results = await asyncio.gather(
            *(
                s.add_document(kb.id, "same.txt", "src", _hash("same"), 1)
                for s in (store, other) * 3
            )
        )
    finally:
        await other.close()
    assert sum(created for _, created in results) == 1
    assert len({doc.id for doc, _ in results}) == 1


async def test_document_status_and_listing(store: Store) -> None:
    kb = await store.create_kb("docs", "", "minilm", DIM)
    names = ["b.txt", "a.txt", "Z.txt"]
    docs = {n: (await store.add_document(kb.id, n, n, _hash(n), 1))[0] for n in names}
    assert [d.name for d in await store.list_documents(kb.id)] == ["Z.txt", "a.txt", "b.txt"]
    assert await store.list_documents(kb.id + 1) == []

    a = docs["a.txt"]
    assert await store.set_document_status(a.id, "failed", error="no text layer")
    got = await store.get_document(kb.id, "a.txt")
    assert got is not None
    assert (got.status, got.error, got.chunks) == ("failed", "no text layer", 0)
    assert got.updated_at > a.updated_at

    assert await store.set_document_status(a.id, "ready", chunks=7)
    got = await store.get_document(kb.id, "a.txt")
    assert got is not None and (got.status, got.error, got.chunks) == ("ready", None, 7)

    assert await store.set_document_status(a.id, "embedding")
    got = await store.get_document(kb.id, "a.txt")
    assert got is not None and (got.status, got.chunks) == ("embedding", 7)

    assert not await store.set_document_status(999_999, "ready")


async def test_delete_document_returns_its_chunk_ids_only(store: Store) -> None:
    kb = await store.create_kb("docs", "", "minilm", DIM)
    a, _ = await store.add_document(kb.id, "a.txt", "a", _hash("a"), 1)
    b, _ = await store.add_document(kb.id, "b.txt", "b", _hash("b"), 1)
    a_ids = await store.add_chunks(kb.id, a.id, _chunks("a1", "a2", "a3"))
    b_ids = await store.add_chunks(kb.id, b.id, _chunks("b1", "b2"))

    assert await store.delete_document(a.id) == sorted(a_ids)
    assert await store.delete_document(a.id) == []
    assert await store.list_documents(kb.id) == [(await store.get_document(kb.id, "b.txt"))]
    assert [c.id for c in await store.get_chunks(a_ids + b_ids)] == b_ids
    assert await store.count_chunks(kb.id) == 2
    kb_now = await store.get_kb("docs")
    assert kb_now is not None and (kb_now.documents, kb_now.chunks) == (1, 2)


async def test_delete_document_racing_add_chunks_misses_no_chunk(
    store_url: str, store: Store
) -> None:
    """Whatever the interleaving, no chunk of a deleted document survives unreported."""
    kb = await store.create_kb("docs", "", "minilm", DIM)
    other = await Store.open(store_url)
    try:
        for round_ in range(5):
            doc, _ = await store.add_document(kb.id, f"d{round_}", "src", _hash("d"), 1)
            batch = _chunks(*(f"round {round_} chunk {n}" for n in range(200)))
            added, deleted = await asyncio.gather(
                other.add_chunks(kb.id, doc.id, batch),
                store.delete_document(doc.id),
                return_exceptions=True,
            )
            assert isinstance(deleted, list)
            if isinstance(added, BaseException):
                assert isinstance(added, StoreError)
            else:
                assert set(added) <= set(deleted)
            assert await store.count_chunks(kb.id) == 0
    finally:
        await other.close()


# -- chunks --------------------------------------------------------------------------


async def test_chunks_dedup_within_and_across_documents(store: Store) -> None:
    kb = await store.create_kb("docs", "", "minilm", DIM)
    a, _ = await store.add_document(kb.id, "a.md", "a", _hash("a"), 1)
    b, _ = await store.add_document(kb.id, "b.md", "b", _hash("b"), 1)

    ids = await store.add_chunks(kb.id, a.id, _chunks("intro", "body", "intro", "end", "body"))
    assert len(ids) == 3 and ids == sorted(ids) and len(set(ids)) == 3
    assert [(c.seq, c.text) for c in await store.get_chunks(ids)] == [
        (0, "intro"),
        (1, "body"),
        (3, "end"),
    ]
    # Again (a retried ingestion): nothing new.
    assert await store.add_chunks(kb.id, a.id, _chunks("intro", "body")) == []

    b_ids = await store.add_chunks(kb.id, b.id, _chunks("body", "license", "intro", "fresh"))
    assert [c.text for c in await store.get_chunks(b_ids)] == ["license", "fresh"]
    assert await store.count_chunks(kb.id) == 5
    assert await store.add_chunks(kb.id, b.id, []) == []

    # Dedup is per base: another base stores the same text again.
    kb2 = await store.create_kb("other", "", "minilm", DIM)
    c, _ = await store.add_document(kb2.id, "c.md", "c", _hash("c"), 1)
    assert len(await store.add_chunks(kb2.id, c.id, _chunks("intro", "body"))) == 2


async def test_add_chunks_race_stores_each_hash_once(store_url: str, store: Store) -> None:
    kb = await store.create_kb("docs", "", "minilm", DIM)
    docs = [
        (await store.add_document(kb.id, f"d{i}.txt", "src", _hash(str(i)), 1))[0] for i in range(6)
    ]
    bodies = [f"shared chunk {n}" for n in range(300)]
    # Overlapping halves, in different orders, from two engines (real concurrency on PG).
    batches = [bodies[(i % 3) * 100 : (i % 3) * 100 + 200][:: 1 if i % 2 else -1] for i in range(6)]
    other = await Store.open(store_url)
    try:
        results = await asyncio.gather(
            *(
                (store if i % 2 else other).add_chunks(kb.id, doc.id, _chunks(*batch))
                for i, (doc, batch) in enumerate(zip(docs, batches, strict=True))
            )
        )
    finally:
        await other.close()

    returned = [chunk_id for ids in results for chunk_id in ids]
    assert len(returned) == len(set(returned)) == len(bodies)
    assert await store.count_chunks(kb.id) == len(bodies)
    stored = await store.get_chunks(returned)
    assert sorted(c.text for c in stored) == sorted(bodies)
    for doc, ids in zip(docs, results, strict=True):
        assert {c.doc_id for c in await store.get_chunks(ids)} <= {doc.id}


async def test_add_chunks_to_a_document_of_another_base_refused(store: Store) -> None:
    kb = await store.create_kb("docs", "", "minilm", DIM)
    kb2 = await store.create_kb("other", "", "minilm", DIM)
    doc, _ = await store.add_document(kb.id, "a.txt", "a", _hash("a"), 1)
    with pytest.raises(StoreError, match="does not exist in knowledge base"):
        await store.add_chunks(kb2.id, doc.id, _chunks("x"))
    with pytest.raises(StoreError, match="does not exist in knowledge base"):
        await store.add_chunks(kb.id, 999_999, _chunks("x"))
    assert await store.count_chunks(kb2.id) == 0


async def test_get_chunks_in_given_order_with_doc_name(store: Store) -> None:
    kb = await store.create_kb("docs", "", "minilm", DIM)
    doc, _ = await store.add_document(kb.id, "guide.md", "g", _hash("g"), 1)
    ids = await store.add_chunks(
        kb.id, doc.id, [(0, "first", None, _hash("1")), (1, "second", "## Setup", _hash("2"))]
    )
    got = await store.get_chunks([ids[1], 999_999, ids[0], ids[1]])
    assert [(c.id, c.text, c.heading, c.seq) for c in got] == [
        (ids[1], "second", "## Setup", 1),
        (ids[0], "first", None, 0),
        (ids[1], "second", "## Setup", 1),
    ]
    assert {(c.kb_id, c.doc_id, c.doc_name) for c in got} == {(kb.id, doc.id, "guide.md")}
    assert await store.get_chunks([]) == []

    many = await store.add_chunks(kb.id, doc.id, _chunks(*(f"c{n}" for n in range(2500))))
    assert [c.id for c in await store.get_chunks(many[::-1])] == many[::-1]


# -- vectors -------------------------------------------------------------------------


async def test_vectors_set_and_read_back_exactly(store: Store) -> None:
    kb = await store.create_kb("docs", "", "minilm", DIM)
    a, _ = await store.add_document(kb.id, "a.txt", "a", _hash("a"), 1)
    b, _ = await store.add_document(kb.id, "b.txt", "b", _hash("b"), 1)
    a_ids = await store.add_chunks(kb.id, a.id, _chunks("a0", "a1", "a2"))
    b_ids = await store.add_chunks(kb.id, b.id, _chunks("b0", "b1"))

    assert await store.chunks_without_vectors(kb.id) == [
        (i, t) for i, t in zip(a_ids + b_ids, ["a0", "a1", "a2", "b0", "b1"], strict=True)
    ]
    assert await store.chunks_without_vectors(kb.id, b.id) == [(b_ids[0], "b0"), (b_ids[1], "b1")]
    assert await store.chunks_without_vectors(kb.id, limit=2) == [
        (a_ids[0], "a0"),
        (a_ids[1], "a1"),
    ]

    vectors = {
        a_ids[0]: _vector(0.1, -2.5, 3e-8, float("inf")),
        a_ids[2]: _vector(1.0, 0.0, -0.0, 123456.789),
        b_ids[1]: bytes(range(16)),  # any bit pattern, a NaN included, comes back as is
    }
    await store.set_vectors([*vectors.items(), (999_999, _vector(1, 2, 3, 4))])

    assert await store.count_chunks(kb.id) == 5
    assert await store.count_chunks(kb.id, with_vectors=True) == 3
    assert await store.count_chunks(kb.id, with_vectors=False) == 2
    assert await store.chunks_without_vectors(kb.id) == [(a_ids[1], "a1"), (b_ids[0], "b0")]
    page = await store.iter_chunk_vectors(kb.id, shard=0, shards=1)
    assert {i: v for i, _, v in page} == vectors
    assert [t for _, t, _ in page] == ["a0", "a2", "b1"]

    # Replacing a vector; a wrong length refuses the whole batch.
    await store.set_vectors([(a_ids[0], _vector(9, 9, 9, 9))])
    with pytest.raises(StoreError, match="expected 4 float32"):
        await store.set_vectors([(a_ids[1], _vector(1, 1, 1, 1)), (b_ids[0], _vector(1, 2))])
    assert await store.count_chunks(kb.id, with_vectors=True) == 3
    page = await store.iter_chunk_vectors(kb.id, shard=0, shards=1)
    assert page[0] == (a_ids[0], "a0", _vector(9, 9, 9, 9))
    await store.set_vectors([])


async def test_iter_chunk_vectors_partitions_and_pages(store: Store) -> None:
    kb = await store.create_kb("docs", "", "minilm", DIM)
    other = await store.create_kb("other", "", "minilm", DIM)
    doc, _ = await store.add_document(kb.id, "a.txt", "a", _hash("a"), 1)
    odoc, _ = await store.add_document(other.id, "o.txt", "o", _hash("o"), 1)
    ids = await store.add_chunks(kb.id, doc.id, _chunks(*(f"chunk {n}" for n in range(101))))
    other_ids = await store.add_chunks(other.id, odoc.id, _chunks("x", "y"))
    # Every chunk but each seventh has a vector; the other base's chunks all do.
    with_vectors = [i for n, i in enumerate(ids) if n % 7]
    await store.set_vectors([(i, _vector(i, 0, 0, 0)) for i in with_vectors + other_ids])

    for shards in (1, 3, 4):
        seen: list[list[int]] = []
        for shard in range(shards):
            ids_of_shard: list[int] = []
            after = 0
            while True:
                page = await store.iter_chunk_vectors(
                    kb.id, shard=shard, shards=shards, after_id=after, limit=6
                )
                assert len(page) <= 6
                for chunk_id, body, vector in page:
                    assert chunk_id % shards == shard
                    assert vector == _vector(chunk_id, 0, 0, 0)
                    assert body == f"chunk {ids.index(chunk_id)}"
                ids_of_shard += [chunk_id for chunk_id, _, _ in page]
                if len(page) < 6:
                    break
                after = page[-1][0]
            assert ids_of_shard == sorted(ids_of_shard)
            seen.append(ids_of_shard)
        flat = [i for part in seen for i in part]
        assert len(flat) == len(set(flat))  # no overlap
        assert sorted(flat) == with_vectors  # no gap, nothing of the other base

    with pytest.raises(ValueError, match="shard"):
        await store.iter_chunk_vectors(kb.id, shard=2, shards=2)
    with pytest.raises(ValueError, match="limit"):
        await store.iter_chunk_vectors(kb.id, shard=0, shards=2, limit=0)


async def test_delete_kb_cascades_everything(store: Store) -> None:
    kb = await store.create_kb("docs", "", "minilm", DIM)
    keep = await store.create_kb("keep", "", "minilm", DIM)
    for base in (kb, keep):
        for name in ("a.txt", "b.txt"):
            doc, _ = await store.add_document(base.id, name, name, _hash(name), 1)
            ids = await store.add_chunks(base.id, doc.id, _chunks(f"{name} 1", f"{name} 2"))
            await store.set_vectors([(i, _vector(1, 2, 3, 4)) for i in ids])

    assert await store.delete_kb("docs")
    assert await _rows(store, kb_bases) == 1
    assert await _rows(store, kb_documents) == 2
    assert await _rows(store, kb_chunks) == 4
    assert await store.list_documents(kb.id) == []
    assert await store.count_chunks(kb.id) == 0
    assert await store.count_chunks(keep.id, with_vectors=True) == 4

    # The foreign keys cascade by themselves too (SQLite runs with foreign_keys=ON).
    async with store.engine.begin() as conn:
        await conn.execute(kb_bases.delete().where(kb_bases.c.id == keep.id))
    assert await _rows(store, kb_documents) == 0
    assert await _rows(store, kb_chunks) == 0
