"""``KnowledgeMixin``: knowledge bases, their documents, and the chunks with their vectors.

A base holds documents; a document is cut into chunks; each chunk is stored once per base
(its ``hash`` is unique within the base, so a text found in several documents belongs to
the first one stored) and gets its vector later, when an embedder has computed it::

    create_kb ─► add_document ─► add_chunks ─► chunks_without_vectors ─► set_vectors
                  (pending)       (parsing)      (embedding)                (ready)
    shards rebuilding their indexes:  iter_chunk_vectors   search results:  get_chunks

Deleting a base deletes its documents and chunks; deleting (or replacing) a document
deletes its chunks. Both are explicit deletes inside the transaction, with ``ON DELETE
CASCADE`` foreign keys (enforced on SQLite too: ``PRAGMA foreign_keys=ON``) as the net.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import ColumnElement, bindparam, func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from astr_ray.errors import StoreError
from astr_ray.store.base import StoreBase, check_length, clock
from astr_ray.store.records import KbChunk, KbDocument, KnowledgeBase
from astr_ray.store.tables import kb_bases, kb_chunks, kb_documents

__all__ = ["DOCUMENT_STATUSES", "KnowledgeMixin"]

# The life of a document, in order; ``failed`` may follow any of the others.
DOCUMENT_STATUSES = ("pending", "parsing", "embedding", "ready", "failed")

# Ids per ``IN (...)`` list: well under every backend's limit on bound parameters.
_PAGE = 1000

# ``add_chunks`` on PostgreSQL: ``n`` fresh ids of ``kb_chunks``' sequence.
_NEXT_CHUNK_IDS = text(
    "SELECT nextval(pg_get_serial_sequence('kb_chunks', 'id')) FROM generate_series(1, :n)"
)

_KB_COLUMNS = (
    kb_bases.c.id,
    kb_bases.c.name,
    kb_bases.c.description,
    kb_bases.c.embedder,
    kb_bases.c.dim,
    kb_bases.c.created_at,
    select(func.count())
    .select_from(kb_documents)
    .where(kb_documents.c.kb_id == kb_bases.c.id)
    .scalar_subquery(),
    select(func.count())
    .select_from(kb_chunks)
    .where(kb_chunks.c.kb_id == kb_bases.c.id)
    .scalar_subquery(),
)

_DOC_COLUMNS = (
    kb_documents.c.id,
    kb_documents.c.kb_id,
    kb_documents.c.name,
    kb_documents.c.source,
    kb_documents.c.sha256,
    kb_documents.c.size,
    kb_documents.c.status,
    kb_documents.c.error,
    kb_documents.c.chunks,
    kb_documents.c.created_at,
    kb_documents.c.updated_at,
)

_CHUNK_COLUMNS = (
    kb_chunks.c.id,
    kb_chunks.c.kb_id,
    kb_chunks.c.doc_id,
    kb_chunks.c.seq,
    kb_chunks.c.text,
    kb_chunks.c.heading,
    kb_documents.c.name,
)


class KnowledgeMixin(StoreBase):
    """``Store`` methods for knowledge bases, documents and chunks."""

    # -- bases -------------------------------------------------------------------------

    async def create_kb(
        self, name: str, description: str, embedder: str, dim: int
    ) -> KnowledgeBase:
        """Create an empty base whose vectors come from ``embedder`` and have ``dim`` floats.

        ``StoreError`` if a base of that name exists, ``name`` is empty or longer than 64
        characters, ``embedder`` longer than 128, or ``dim`` not positive.
        """
        context = {"kb": name}
        if not name:
            raise StoreError("knowledge base name is empty", **context)
        check_length("knowledge base name", name, 64, **context)
        check_length("embedder name", embedder, 128, **context)
        if dim < 1:
            raise StoreError(f"vector dimension must be positive, got {dim}", **context)
        now = clock()
        row = {
            "name": name,
            "description": description,
            "embedder": embedder,
            "dim": dim,
            "created_at": now,
            "updated_at": now,
        }
        with self._errors("create_kb", **context):
            async with self._write() as conn:
                result = await conn.execute(self._insert_ignore(kb_bases, "name"), row)
                if result.rowcount == 0:
                    raise StoreError(f"knowledge base {name!r} exists", **context)
                kb_id = await conn.scalar(select(kb_bases.c.id).where(kb_bases.c.name == name))
        assert kb_id is not None
        return KnowledgeBase(kb_id, name, description, embedder, dim, now, 0, 0)

    async def get_kb(self, name: str) -> KnowledgeBase | None:
        """The base of that name with its document and chunk counts, or ``None``."""
        stmt = select(*_KB_COLUMNS).where(kb_bases.c.name == name)
        with self._errors("get_kb", kb=name):
            async with self._engine.connect() as conn:
                row = (await conn.execute(stmt)).first()
        return None if row is None else KnowledgeBase(*row)

    async def list_kbs(self) -> list[KnowledgeBase]:
        """Every base with its counts, sorted by name (by code point, on every backend)."""
        with self._errors("list_kbs"):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(select(*_KB_COLUMNS))).all()
        return sorted((KnowledgeBase(*row) for row in rows), key=lambda kb: kb.name)

    async def delete_kb(self, name: str) -> bool:
        """Delete the base with its documents and chunks; ``True`` if it existed."""
        with self._errors("delete_kb", kb=name):
            async with self._write() as conn:
                kb_id = await conn.scalar(
                    select(kb_bases.c.id).where(kb_bases.c.name == name).with_for_update()
                )
                if kb_id is None:
                    return False
                # Chunks first, by base: one range delete instead of a cascade per document.
                await conn.execute(kb_chunks.delete().where(kb_chunks.c.kb_id == kb_id))
                await conn.execute(kb_documents.delete().where(kb_documents.c.kb_id == kb_id))
                await conn.execute(kb_bases.delete().where(kb_bases.c.id == kb_id))
                return True

    # -- documents ---------------------------------------------------------------------

    async def add_document(
        self, kb_id: int, name: str, source: str, sha256: str, size: int
    ) -> tuple[KbDocument, bool]:
        """Register the document ``name`` of base ``kb_id``; ``(document, created)``.

        * A new name: a ``pending`` document, ``created`` is ``True``.
        * The same name with the same ``sha256``: the stored document as it is (whatever
          its status, ``failed`` included), ``created`` is ``False``; nothing is written.
        * The same name with another ``sha256``: the document (same id) is reset to
          ``pending`` with the new source, hash and size, and its chunks are deleted;
          ``created`` is ``True``. The deleted chunk ids are not returned: a caller that
          must drop them from an index calls ``delete_document`` first instead.

        Safe under concurrent calls for one name (one of them creates it). ``StoreError``
        if the base does not exist, ``name`` is longer than 512 characters or ``sha256``
        than 64.
        """
        context = {"kb_id": kb_id, "document": name}
        check_length("document name", name, 512, **context)
        check_length("document sha256", sha256, 64, **context)
        now = clock()
        row = {
            "kb_id": kb_id,
            "name": name,
            "source": source,
            "sha256": sha256,
            "size": size,
            "status": "pending",
            "error": None,
            "chunks": 0,
            "created_at": now,
            "updated_at": now,
        }
        by_name = select(*_DOC_COLUMNS).where(
            kb_documents.c.kb_id == kb_id, kb_documents.c.name == name
        )
        with self._errors("add_document", **context):
            async with self._write() as conn:
                if await _lock_kb(conn, kb_id) is None:
                    raise StoreError(f"knowledge base {kb_id} does not exist", **context)
                result = await conn.execute(self._insert_ignore(kb_documents, "kb_id", "name"), row)
                created = result.rowcount > 0
                # Locked: a concurrent replace or delete of this document waits for us.
                existing = (await conn.execute(by_name.with_for_update())).one()
                if not created:
                    if existing.sha256 == sha256:
                        return KbDocument(*existing), False
                    await conn.execute(kb_chunks.delete().where(kb_chunks.c.doc_id == existing.id))
                    await conn.execute(
                        update(kb_documents)
                        .where(kb_documents.c.id == existing.id)
                        .values(
                            source=source,
                            sha256=sha256,
                            size=size,
                            status="pending",
                            error=None,
                            chunks=0,
                            updated_at=now,
                        )
                    )
                    existing = (await conn.execute(by_name)).one()
                await _touch_kb(conn, kb_id, now)
        return KbDocument(*existing), True

    async def set_document_status(
        self, doc_id: int, status: str, error: str | None = None, chunks: int | None = None
    ) -> bool:
        """Set the document's ``status`` and ``error`` (``None`` clears it), and its chunk
        count if ``chunks`` is given; ``True`` if the document exists (it may have been
        deleted while it was being ingested). ``StoreError`` for an unknown status.
        """
        context = {"doc_id": doc_id, "status": status}
        if status not in DOCUMENT_STATUSES:
            raise StoreError(f"unknown document status {status!r}", **context)
        values: dict[str, Any] = {"status": status, "error": error, "updated_at": clock()}
        if chunks is not None:
            values["chunks"] = chunks
        stmt = update(kb_documents).where(kb_documents.c.id == doc_id).values(**values)
        with self._errors("set_document_status", **context):
            async with self._write() as conn:
                return (await conn.execute(stmt)).rowcount > 0

    async def list_documents(self, kb_id: int) -> list[KbDocument]:
        """The base's documents, sorted by name (by code point, on every backend)."""
        stmt = select(*_DOC_COLUMNS).where(kb_documents.c.kb_id == kb_id)
        with self._errors("list_documents", kb_id=kb_id):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(stmt)).all()
        return sorted((KbDocument(*row) for row in rows), key=lambda doc: doc.name)

    async def get_document(self, kb_id: int, name: str) -> KbDocument | None:
        """The document ``name`` of base ``kb_id``, or ``None``."""
        stmt = select(*_DOC_COLUMNS).where(
            kb_documents.c.kb_id == kb_id, kb_documents.c.name == name
        )
        with self._errors("get_document", kb_id=kb_id, document=name):
            async with self._engine.connect() as conn:
                row = (await conn.execute(stmt)).first()
        return None if row is None else KbDocument(*row)

    async def delete_document(self, doc_id: int) -> list[int]:
        """Delete the document and its chunks; the deleted chunk ids, ascending.

        Idempotent: an unknown document returns ``[]``. The ids are exactly the chunks
        that were stored for it (a concurrent ``add_chunks`` for it either committed
        before, and its chunks are in the list, or fails because the document is gone).
        """
        with self._errors("delete_document", doc_id=doc_id):
            async with self._write() as conn:
                by_id = select(kb_documents.c.kb_id).where(kb_documents.c.id == doc_id)
                kb_id = await conn.scalar(by_id)
                if kb_id is None or await _lock_kb(conn, kb_id) is None:
                    return []
                # Waits for a running ``add_chunks`` of the document (its foreign-key check
                # holds a share lock on the row); a later one fails: the document is gone.
                if await conn.scalar(by_id.with_for_update()) is None:
                    return []
                deleted = await conn.scalars(
                    kb_chunks.delete().where(kb_chunks.c.doc_id == doc_id).returning(kb_chunks.c.id)
                )
                ids = sorted(deleted.all())
                await conn.execute(kb_documents.delete().where(kb_documents.c.id == doc_id))
                await _touch_kb(conn, kb_id, clock())
        return ids

    # -- chunks ------------------------------------------------------------------------

    async def add_chunks(
        self, kb_id: int, doc_id: int, chunks: Sequence[tuple[int, str, str | None, str]]
    ) -> list[int]:
        """Store the document's chunks ``(seq, text, heading, hash)``; the new ids, in order.

        A chunk whose ``hash`` the base already holds (from this or another document, or
        earlier in ``chunks``) is skipped and has no id in the result. The new ids ascend
        in the order of ``chunks`` and are never reused. Safe when several ingestions run
        at once: each hash is stored once (``ON CONFLICT DO NOTHING``), and on PostgreSQL
        rows go in in hash order, so that concurrent calls cannot deadlock.
        ``StoreError`` if the document does not exist or belongs to another base, or a
        hash is longer than 64 characters.
        """
        context = {"kb_id": kb_id, "doc_id": doc_id}
        rows: dict[str, dict[str, Any]] = {}
        for seq, body, heading, digest in chunks:
            check_length("chunk hash", digest, 64, **context)
            rows.setdefault(
                digest,
                {
                    "kb_id": kb_id,
                    "doc_id": doc_id,
                    "seq": seq,
                    "text": body,
                    "heading": heading,
                    "hash": digest,
                },
            )
        if not rows:
            return []
        insert = sqlite_insert(kb_chunks) if self._sqlite else pg_insert(kb_chunks)
        stmt = insert.on_conflict_do_nothing(index_elements=["kb_id", "hash"]).returning(
            kb_chunks.c.id, kb_chunks.c.hash
        )
        with self._errors("add_chunks", **context):
            async with self._write() as conn:
                owner = await conn.scalar(
                    select(kb_documents.c.kb_id).where(kb_documents.c.id == doc_id)
                )
                if owner != kb_id:
                    raise StoreError(
                        f"document {doc_id} does not exist in knowledge base {kb_id}", **context
                    )
                if self._sqlite:
                    # One writer at a time: the rows go in as given.
                    ordered = list(rows.values())
                else:
                    # Ids drawn first, in the given order; rows inserted in hash order, so
                    # ingestions with overlapping hashes wait on each other in one order.
                    drawn = await conn.scalars(_NEXT_CHUNK_IDS, {"n": len(rows)})
                    for row, chunk_id in zip(rows.values(), sorted(drawn), strict=True):
                        row["id"] = chunk_id
                    ordered = [rows[digest] for digest in sorted(rows)]
                result = await conn.execute(stmt, ordered)
                new = {digest: chunk_id for chunk_id, digest in result.all()}
        return [new[digest] for digest in rows if digest in new]

    async def chunks_without_vectors(
        self, kb_id: int, doc_id: int | None = None, limit: int = 256
    ) -> list[tuple[int, str]]:
        """Up to ``limit`` chunks ``(id, text)`` of the base (of ``doc_id`` only, if given)
        that have no vector yet, in id order."""
        stmt = select(kb_chunks.c.id, kb_chunks.c.text).where(
            kb_chunks.c.kb_id == kb_id, kb_chunks.c.vector.is_(None)
        )
        if doc_id is not None:
            stmt = stmt.where(kb_chunks.c.doc_id == doc_id)
        stmt = stmt.order_by(kb_chunks.c.id).limit(limit)
        with self._errors("chunks_without_vectors", kb_id=kb_id, doc_id=doc_id):
            async with self._engine.connect() as conn:
                return [(chunk_id, text) for chunk_id, text in await conn.execute(stmt)]

    async def set_vectors(self, items: Sequence[tuple[int, bytes]]) -> None:
        """Store the vectors ``(chunk id, float32 little-endian bytes)``, replacing any.

        Chunks that no longer exist (their document was deleted or replaced meanwhile) are
        skipped. ``StoreError``, and nothing is written, if a vector's length is not its
        base's ``dim`` floats.
        """
        vectors = dict(items)
        if not vectors:
            return
        stmt = (
            update(kb_chunks)
            .where(kb_chunks.c.id == bindparam("b_id"))
            .values(vector=bindparam("b_vector"))
        )
        with self._errors("set_vectors", chunks=len(vectors)):
            async with self._write() as conn:
                rows = []
                for ids in _pages(list(vectors)):
                    dims = select(kb_chunks.c.id, kb_bases.c.dim).join_from(
                        kb_chunks, kb_bases, kb_chunks.c.kb_id == kb_bases.c.id
                    )
                    for chunk_id, dim in await conn.execute(dims.where(kb_chunks.c.id.in_(ids))):
                        vector = vectors[chunk_id]
                        if len(vector) != 4 * dim:
                            raise StoreError(
                                f"vector of {len(vector)} bytes, expected {dim} float32",
                                chunk_id=chunk_id,
                            )
                        rows.append({"b_id": chunk_id, "b_vector": vector})
                if rows:
                    await conn.execute(stmt, rows)

    async def count_chunks(self, kb_id: int, *, with_vectors: bool | None = None) -> int:
        """How many chunks the base holds: all of them, or only those with
        (``with_vectors=True``) or without (``False``) a vector."""
        stmt = select(func.count()).select_from(kb_chunks).where(kb_chunks.c.kb_id == kb_id)
        if with_vectors is not None:
            has_vector = kb_chunks.c.vector.is_not(None)
            stmt = stmt.where(has_vector if with_vectors else ~has_vector)
        with self._errors("count_chunks", kb_id=kb_id):
            async with self._engine.connect() as conn:
                return int(await conn.scalar(stmt) or 0)

    async def iter_chunk_vectors(
        self, kb_id: int, *, shard: int, shards: int, after_id: int = 0, limit: int = 5000
    ) -> list[tuple[int, str, bytes]]:
        """One page of shard ``shard`` of ``shards``: up to ``limit`` chunks ``(id, text,
        vector)`` of the base with a vector, ``id % shards == shard`` and ``id > after_id``,
        in id order.

        Page on with the last id returned as ``after_id`` until a page comes back shorter
        than ``limit``. The shards of one ``shards`` count partition the chunks: every
        chunk with a vector is in exactly one. Each page walks an id index from
        ``after_id``: a full pass costs one scan of the base, not one per page.
        """
        if not 0 <= shard < shards:
            raise ValueError(f"shard must be in [0, {shards}), got {shard}")
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        where: list[ColumnElement[bool]] = [
            kb_chunks.c.kb_id == kb_id,
            kb_chunks.c.id > after_id,
            kb_chunks.c.vector.is_not(None),
        ]
        if shards > 1:
            where.append(kb_chunks.c.id % shards == shard)
        stmt = (
            select(kb_chunks.c.id, kb_chunks.c.text, kb_chunks.c.vector)
            .where(*where)
            .order_by(kb_chunks.c.id)
            .limit(limit)
        )
        context = {"kb_id": kb_id, "shard": shard, "shards": shards}
        with self._errors("iter_chunk_vectors", **context):
            async with self._engine.connect() as conn:
                if not self._sqlite:
                    # PostgreSQL guesses that ``id % shards = shard`` keeps 0.5% of the rows
                    # and, with fresh or no statistics (just after a bulk ingestion), sorts
                    # the whole base for every page. Without a sort, it must walk an id
                    # index and stop at ``limit``. LOCAL: undone when this read ends.
                    await conn.exec_driver_sql("SET LOCAL enable_sort = off")
                rows = await conn.execute(stmt)
                return [(i, body, bytes(vector)) for i, body, vector in rows]

    async def get_chunks(self, ids: Sequence[int]) -> list[KbChunk]:
        """The chunks of those ids with their document's name, in the order of ``ids``.

        Ids that do not exist (any more) are left out; an id given twice comes twice.
        """
        if not ids:
            return []
        stmt = select(*_CHUNK_COLUMNS).join_from(
            kb_chunks, kb_documents, kb_chunks.c.doc_id == kb_documents.c.id
        )
        found: dict[int, KbChunk] = {}
        with self._errors("get_chunks", chunks=len(ids)):
            async with self._engine.connect() as conn:
                for page in _pages(list(dict.fromkeys(ids))):
                    for row in await conn.execute(stmt.where(kb_chunks.c.id.in_(page))):
                        found[row.id] = KbChunk(*row)
        return [found[i] for i in ids if i in found]


async def _lock_kb(conn: AsyncConnection, kb_id: int) -> int | None:
    """Lock the base's row against other document changes and its deletion (PostgreSQL;
    SQLite's write transaction locks everything); its id, or ``None`` if there is none.

    Taken first by every write that changes a base's documents, so that they all lock in
    the same order (base, document, chunks) and cannot deadlock with each other.
    """
    stmt = select(kb_bases.c.id).where(kb_bases.c.id == kb_id)
    found: int | None = await conn.scalar(stmt.with_for_update(key_share=True))
    return found


async def _touch_kb(conn: AsyncConnection, kb_id: int, now: float) -> None:
    """Stamp the base's ``updated_at`` (its set of documents changed)."""
    await conn.execute(update(kb_bases).where(kb_bases.c.id == kb_id).values(updated_at=now))


def _pages(ids: list[int]) -> Iterator[list[int]]:
    for start in range(0, len(ids), _PAGE):
        yield ids[start : start + _PAGE]
