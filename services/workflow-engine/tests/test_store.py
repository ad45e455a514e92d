"""The store against real PostgreSQL: optimistic appends, alone and batched across runs."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg
import pytest
from omni_contract.history import HistoryError, RunStarted, StepError, StepFailed, StepRef, StepSkipped
from omni_engine.state import NewEvent, RunState, apply
from omni_engine.store import AppendConflict, Effects, OutboxMessage, Store, init_connection
from omni_engine.timer_kinds import RetryDue
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
            data=RunStarted(
                workflow="w",
                hash="h",
                version="1",
                payload={},
                context={},
                steps=[StepRef(name="a", tool="t.t")],
            ),
            at=now,
        )
        state = apply(None, "run-1", started.data, now)
        state.last_seq = 1
        assert await store.create_run(state, [started], [], None) == []
        skipped = NewEvent(data=StepSkipped(step="a", reason="r"), at=now)
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
        data=RunStarted(
            workflow="w", hash="h", version="1", payload={}, context={}, steps=[StepRef(name="a", tool="t.t")]
        ),
        at=now,
    )
    state = apply(None, run_id, started.data, now)
    state.last_seq = 1
    await store.create_run(state, [started], [], None)
    return state


def skipped(step: str = "a") -> NewEvent:
    return NewEvent(data=StepSkipped(step=step, reason="r"), at=datetime.now(UTC))


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
    effects.timer("retry:a:1", datetime.now(UTC), RetryDue(step="a", attempt=1))

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


async def test_rows_keep_their_version_and_older_ones_are_upcast_when_read(pool: asyncpg.Pool) -> None:
    store = Store(pool)
    state = await new_run(store, "versions")
    failed = StepFailed(
        step="a", attempt=1, error=StepError(kind="server", message="down"), handling="continue"
    )
    await store.append(state, 1, [NewEvent(data=failed, at=datetime.now(UTC))], [], snapshot=False)
    # What an engine from before migration 007 sends during a rolling upgrade: no "v" (so v1),
    # and a failure in the first engine's shape.
    v1 = '[{"type": "step.failed", "at": "2026-01-01T00:00:00Z", "data": {"step": "a", "attempt": 2,'
    v1 += ' "provider": "p", "duration_ms": 3.5, "error": {"kind": "auth", "message": "no"}}}]'
    await pool.fetchval(
        "SELECT append_run($1, $2, $3::text::jsonb, NULL, 'running', now(),"
        " '{}', '{}', '{}', '{}', '{}', NULL)",
        "versions",
        2,
        v1,
    )
    rows = await pool.fetch("SELECT type, v FROM run_events WHERE run_id = 'versions' ORDER BY seq")
    assert [(r["type"], r["v"]) for r in rows] == [("run.started", 1), ("step.failed", 2), ("step.failed", 1)]

    events = await store.run_events("versions")
    assert [e.data for e in events[1:]] == [
        failed,
        StepFailed(step="a", attempt=2, error=StepError(kind="auth", message="no"), handling="fail"),
    ]
    loaded = await store.load_run("versions")  # the snapshot of seq 1, with seq 2 and 3 folded on
    assert loaded is not None
    step = loaded.step("a")
    assert step is not None
    assert (step.handling, step.attempt, loaded.last_seq) == ("fail", 0, 3)


async def test_a_row_this_code_cannot_read_is_named_by_run_seq_and_type(pool: asyncpg.Pool) -> None:
    store = Store(pool)
    await new_run(store, "unknown")
    await pool.execute(
        "INSERT INTO run_events (run_id, seq, type, v, data, at)"
        " VALUES ('unknown', 2, 'step.paused', 1, '{}', now())"
    )
    with pytest.raises(HistoryError, match=r"run 'unknown', event 2 \(step\.paused v1\): unknown event type"):
        await store.run_events("unknown")
