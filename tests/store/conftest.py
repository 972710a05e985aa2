"""Fixtures for the store tests: real SQLite files and a real PostgreSQL server.

``store`` is parametrized over both backends. PostgreSQL gets a fresh database per test
module (created on the server at 127.0.0.1:5432, dropped afterwards) and its tables are
emptied before each test. Without a reachable server the PostgreSQL cases are skipped,
except under ``CI`` where they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from astr_ray.store import Store
from astr_ray.store.tables import metadata

PG_ADMIN_DSN = os.environ.get("ASTR_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="module")
async def pg_database() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database for this module, as an asyncpg SQLAlchemy URL."""
    try:
        admin = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        reason = f"PostgreSQL unreachable at {PG_ADMIN_DSN}: {exc!r}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    name = f"astr_store_{uuid.uuid4().hex[:12]}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        yield f"{base}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The URL of the backend under test (the database may already hold a schema)."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('store') / 'astr.db'}"
    url: str = request.getfixturevalue("pg_database")
    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    """A migrated store with empty tables; closed after the test."""
    s = await Store.open(store_url)
    try:
        await s.migrate()
        if s.engine.dialect.name == "postgresql":
            names = ", ".join(t.name for t in metadata.sorted_tables)
            async with s.engine.begin() as conn:
                await conn.exec_driver_sql(f"TRUNCATE {names} RESTART IDENTITY")
        yield s
    finally:
        await s.close()
