"""Fixtures of the engine's tests: ``harness`` (see engine_harness.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from engine_harness import Harness, open_harness
from omni_engine.store import init_connection
from omni_runtime import db


@pytest.fixture
async def harness(nats_url: str, database_url: str) -> AsyncIterator[Harness]:
    async for h in open_harness(nats_url, database_url):
        yield h


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the per-test database with the engine's schema migrated."""
    pool = await db.create_pool(database_url, "engine", min_size=1, max_size=4, init=init_connection)
    async with pool.acquire() as conn:
        await db.apply_migrations(conn, "engine", db.migration_files("omni_engine"))
    try:
        yield pool
    finally:
        await pool.close()
