"""Fixtures for the store tests: real SQLite files and a real PostgreSQL server.

``store`` is parametrized over both backends. PostgreSQL gets a fresh database per test
module (created on the server at 127.0.0.1:5432, dropped afterwards) and its tables are
emptied before each test. Without a reachable server the PostgreSQL cases are skipped,
except under ``CI`` where they fail.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from astr_ray.store import Store
from astr_ray.store.tables import metadata


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
