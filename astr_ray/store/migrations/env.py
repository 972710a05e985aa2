"""Alembic environment for the astr-ray store.

Two ways in:

* ``astr_ray.store.migrate.upgrade`` (what ``Store.migrate`` calls) puts a live synchronous
  connection in ``config.attributes["connection"]``; migrations run on it, inside the
  caller's transaction.
* The ``alembic`` CLI: an ini file with ``script_location``
  pointing here and ``sqlalchemy.url`` set to an async URL (``sqlite+aiosqlite:///...`` or
  ``postgresql+asyncpg://...``); an async engine is built and driven with ``asyncio.run``.

``render_as_batch`` is on so that future ``ALTER`` migrations also work on SQLite.
"""

from __future__ import annotations

import asyncio
from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import async_engine_from_config

from astr_ray.store.tables import metadata

config = context.config

# Only the CLI configures logging, and only if its ini file has logging sections.
if (
    config.config_file_name is not None
    and not config.attributes.get("connection")
    and config.file_config.has_section("loggers")
):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=metadata,
        render_as_batch=True,
        compare_type=True,
        **kwargs,
    )


def run_migrations_offline() -> None:
    """Emit SQL to stdout (``alembic upgrade --sql``)."""
    _configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def _run_on(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = async_engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_run_on)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    shared = config.attributes.get("connection")
    if shared is not None:
        _run_on(shared)
    else:
        asyncio.run(_run_async())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
