"""Settings, plugin key-value store and personas.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02 00:00:00

Hand-written to match ``astr_ray/store/tables.py`` exactly (constraint names included);
``tests/store/test_store.py`` checks that with alembic's ``compare_metadata``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "settings",
        sa.Column("scope", sa.String(255), nullable=False),
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("value", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("scope", "key", name="pk_settings"),
    )
    op.create_table(
        "plugin_kv",
        sa.Column("plugin", sa.String(128), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("value", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("plugin", "key", name="pk_plugin_kv"),
    )
    op.create_table(
        "personas",
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("system_prompt", sa.Text(), nullable=False),
        sa.Column("begin_dialogs", sa.JSON(), nullable=False),
        sa.Column("tools", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_personas"),
    )


def downgrade() -> None:
    op.drop_table("personas")
    op.drop_table("plugin_kv")
    op.drop_table("settings")
