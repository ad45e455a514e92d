"""The store against real PostgreSQL: optimistic appends."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from omni_contract.events import RunEventType as E
from omni_engine.state import NewEvent, apply
from omni_engine.store import AppendConflict, Store, init_connection
from omni_runtime import db

pytestmark = pytest.mark.integration


async def test_an_append_behind_another_writer_is_a_conflict(database_url: str) -> None:
    pool = await db.create_pool(database_url, "engine", min_size=1, max_size=2, init=init_connection)
    try:
        async with pool.acquire() as conn:
            await db.apply_migrations(conn, "engine", db.migration_files("omni_engine"))
        store = Store(pool)
        now = datetime.now(UTC)
        started = NewEvent(
            type=E.RUN_STARTED,
            at=now,
            data={"workflow": "w", "hash": "h", "steps": [{"name": "a", "tool": "t.t"}]},
        )
        state = apply(None, "run-1", started.type, started.data, now)
        state.last_seq = 1
        assert await store.create_run(state, [started], [], None) == []
        skipped = NewEvent(type=E.STEP_SKIPPED, at=now, data={"step": "a", "reason": "r"})
        await store.append(state, 1, [skipped], [])  # the first writer after seq 1 wins
        with pytest.raises(AppendConflict):
            await store.append(state, 1, [skipped], [])  # a second writer that read seq 1 loses
        loaded = await store.load_run("run-1")
        assert loaded is not None
        assert loaded.last_seq == 2
    finally:
        await pool.close()
