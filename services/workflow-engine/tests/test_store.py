"""The store against real PostgreSQL: optimistic appends, alone and batched across runs."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg
import pytest
from omni_contract.events import RunEventType as E
from omni_engine.state import NewEvent, RunState, apply
from omni_engine.store import AppendConflict, Effects, OutboxMessage, Store, init_connection
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


async def new_run(store: Store, run_id: str) -> RunState:
    now = datetime.now(UTC)
    started = NewEvent(
        type=E.RUN_STARTED,
        at=now,
        data={"workflow": "w", "hash": "h", "steps": [{"name": "a", "tool": "t.t"}]},
    )
    state = apply(None, run_id, started.type, started.data, now)
    state.last_seq = 1
    await store.create_run(state, [started], [], None)
    return state


def skipped(step: str = "a") -> NewEvent:
    return NewEvent(type=E.STEP_SKIPPED, at=datetime.now(UTC), data={"step": step, "reason": "r"})


def message(run_id: str, n: int) -> OutboxMessage:
    return OutboxMessage(
        subject=f"omni.tool.invoke.local.{run_id}", msg_id=f"{run_id}:{n}", body=b"x", durable=True
    )


async def test_appends_to_many_runs_share_a_statement_and_a_conflict_fails_only_its_own(
    pool: asyncpg.Pool,
) -> None:
    store = Store(pool, appends_in_flight=1)  # one statement out at a time: the rest queue behind it
    states = [await new_run(store, f"batch-{i}") for i in range(6)]
    stale = states[3]
    await store.append(stale, 1, [skipped()], [])  # run 3 moves on: seq 1 is stale from now on
    effects = Effects()
    effects.timer("retry:a:1", datetime.now(UTC), {"step": "a"})

    async def append(i: int, state: RunState) -> list[OutboxMessage] | str:
        outbox = [message(state.run_id, n) for n in range(i % 3)]  # 0, 1 or 2 rows each
        try:
            return await store.append(state, 1, [skipped()], outbox, effects=effects if i == 5 else None)
        except AppendConflict:
            return "conflict"

    results = await asyncio.gather(*(append(i, state) for i, state in enumerate(states)))
    assert results[3] == "conflict"
    written = [r for r in results if r != "conflict"]
    ids = [m.id for rows in written for m in rows if isinstance(rows, list)]
    assert len(ids) == len(set(ids)) == 0 + 1 + 2 + 1 + 2  # runs 0, 1, 2, 4, 5
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT id, msg_id FROM outbox ORDER BY id")
        by_id = {row["id"]: row["msg_id"] for row in rows}
        for rows_of_run in written:
            assert isinstance(rows_of_run, list)
            for m in rows_of_run:
                assert by_id[m.id] == m.msg_id  # each message got its own row's id
        seqs = {r["run_id"]: r["last_seq"] for r in await conn.fetch("SELECT run_id, last_seq FROM runs")}
        timers = await conn.fetch("SELECT run_id, name FROM timers")
    assert seqs == {f"batch-{i}": 2 for i in range(6)}
    assert [(t["run_id"], t["name"]) for t in timers] == [("batch-5", "retry:a:1")]


async def test_a_batch_that_fails_is_retried_one_by_one_so_the_others_are_written(pool: asyncpg.Pool) -> None:
    store = Store(pool, appends_in_flight=1)
    states = [await new_run(store, f"iso-{i}") for i in range(4)]
    bad = Effects()
    bad.timers.append({"name": "t", "fire_at": "not a time", "data": {}})  # fails inside the statement

    async def append(i: int, state: RunState) -> str:
        try:
            await store.append(
                state, 1, [skipped()], [message(state.run_id, 0)], effects=bad if i == 2 else None
            )
        except asyncpg.PostgresError:
            return "error"
        return "ok"

    assert await asyncio.gather(*(append(i, s) for i, s in enumerate(states))) == ["ok", "ok", "error", "ok"]
    async with pool.acquire() as conn:
        seqs = {r["run_id"]: r["last_seq"] for r in await conn.fetch("SELECT run_id, last_seq FROM runs")}
    assert seqs == {"iso-0": 2, "iso-1": 2, "iso-2": 1, "iso-3": 2}
