"""Knowledge bases: kb_bases, kb_documents, kb_chunks.

Revision ID: 0003
Revises: 0002
Create Date: 2025-01-03 00:00:00

Hand-written to match ``astr_ray/store/tables.py`` exactly (constraint and index names
included); ``tests/store/test_store.py`` checks that with alembic's ``compare_metadata``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _big_id() -> sa.types.TypeEngine[int]:
    # SQLite only autoincrements an INTEGER PRIMARY KEY (the rowid alias).
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "kb_bases",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("embedder", sa.String(128), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_kb_bases"),
        sa.UniqueConstraint("name", name="uq_kb_bases_name"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "kb_documents",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kb_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(512), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("chunks", sa.Integer(), server_default="0", nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_kb_documents"),
        sa.ForeignKeyConstraint(
            ["kb_id"],
            ["kb_bases.id"],
            name="fk_kb_documents_kb_id_kb_bases",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("kb_id", "name", name="uq_kb_documents_kb_id_name"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "kb_chunks",
        sa.Column("id", _big_id(), autoincrement=True, nullable=False),
        sa.Column("kb_id", sa.Integer(), nullable=False),
        sa.Column("doc_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("heading", sa.Text(), nullable=True),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_kb_chunks"),
        sa.ForeignKeyConstraint(
            ["kb_id"],
            ["kb_bases.id"],
            name="fk_kb_chunks_kb_id_kb_bases",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["doc_id"],
            ["kb_documents.id"],
            name="fk_kb_chunks_doc_id_kb_documents",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("kb_id", "hash", name="uq_kb_chunks_kb_id_hash"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_kb_chunks_kb_id_id", "kb_chunks", ["kb_id", "id"])
    op.create_index("ix_kb_chunks_doc_id", "kb_chunks", ["doc_id"])


def downgrade() -> None:
    op.drop_table("kb_chunks")
    op.drop_table("kb_documents")
    op.drop_table("kb_bases")
