"""Programmatic alembic upgrades: no ``alembic.ini`` is needed at run time.

The migrations live next to this module (``migrations/``). ``upgrade`` runs them on an
async engine by sharing one connection with alembic ("connection sharing with asyncio"):
the whole upgrade is one transaction on that connection.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["MIGRATIONS_DIR", "alembic_config", "current_revision", "head_revision", "upgrade"]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# Arbitrary, fixed key of the PostgreSQL advisory lock held while migrating.
_PG_LOCK_ID = 0x61737472  # "astr"


def alembic_config(url: str | None = None) -> Config:
    """An alembic ``Config`` pointing at the bundled migrations (and at ``url`` if given)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Silences alembic's legacy-separator warning; we set no multi-path options anyway.
    cfg.set_main_option("path_separator", "os")
    if url is not None:
        # ``%`` is ConfigParser's interpolation character (passwords may contain it).
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str | None:
    """The newest revision among the bundled migrations."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Upgrade the database behind ``engine`` to ``revision``, in one transaction.

    Idempotent: at ``revision`` already, nothing is executed. Safe when several processes
    migrate one database at once: they serialize (SQLite: the transaction is
    ``BEGIN IMMEDIATE``, waiting up to ``busy_timeout``; PostgreSQL: a transaction-scoped
    advisory lock), and all but the first find nothing to do.
    """
    cfg = alembic_config()

    def _upgrade(sync_conn: Connection) -> None:
        cfg.attributes["connection"] = sync_conn
        command.upgrade(cfg, revision)

    async with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            await conn.exec_driver_sql("BEGIN IMMEDIATE")
        elif engine.dialect.name == "postgresql":
            # Without it, two first-time migrations both try CREATE TABLE and one fails.
            await conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_LOCK_ID})")
        await conn.run_sync(_upgrade)


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at, or ``None`` before the first migration."""

    def _current(sync_conn: Connection) -> str | None:
        return MigrationContext.configure(sync_conn).get_current_revision()

    async with engine.connect() as conn:
        return await conn.run_sync(_current)
