"""The outbox sweeper outlives failures: after the database drops its connections (a PostgreSQL
restart) or a fault of any other kind, it sweeps again and relays the rows left behind; the outage
is a warning or two, not one per tick."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import asyncpg
import nats
import pytest
from nats.aio.msg import Msg
from omni_contract import streams, subjects
from omni_contract.history import RunStarted, StepRef
from omni_engine import relay
from omni_engine.relay import OutboxRelay
from omni_engine.state import NewEvent, apply
from omni_engine.store import OutboxMessage, Store
from omni_runtime import nats as omni_nats
from omni_runtime.db import Conn
from omni_testkit import wait_for
from prometheus_client import CollectorRegistry

pytestmark = pytest.mark.integration


class FlakyStore(Store):
    """The real store, whose claims of stale rows first fail with ``failures``, one per sweep."""

    def __init__(self, pool: asyncpg.Pool, failures: list[BaseException]) -> None:
        super().__init__(pool)
        self.failures = failures
        self.claims = 0

    async def claim_stale_outbox(self, conn: Conn, older_than_s: float, limit: int) -> list[OutboxMessage]:
        self.claims += 1
        if self.failures:
            raise self.failures.pop(0)
        return await super().claim_stale_outbox(conn, older_than_s, limit)


async def leave_behind(store: Store, run_id: str) -> OutboxMessage:
    """A run whose first outbox row nobody relays (as when its writer crashed after the commit)."""
    now = datetime.now(UTC)
    started = NewEvent(
        data=RunStarted(
            workflow="w", hash="h", version="1", payload={}, context={}, steps=[StepRef(name="a", tool="t.t")]
        ),
        at=now,
    )
    state = apply(None, run_id, started.data, now)
    state.last_seq = 1
    message = OutboxMessage(
        subject=subjects.tool_invoke("local"),
        msg_id=f"{run_id}:a:1",
        body=b'{"left": "behind"}',
        durable=True,
    )
    written = await store.create_run(state, [started], [message], None)
    assert written is not None
    return written[0]


async def test_the_sweeper_goes_on_after_lost_connections_and_a_fault_and_relays_a_row_left_behind(
    pool: asyncpg.Pool, nats_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay, "SWEEP_RETRY_FIRST_S", 0.01)
    monkeypatch.setattr(relay, "SWEEP_RETRY_CAP_S", 0.05)
    caplog.set_level(logging.INFO, logger="omni_engine.relay")
    nc = await nats.connect(nats_url)
    await omni_nats.ensure_streams(nc.jetstream(), streams.ALL_STREAMS)
    relayed: list[Msg] = []

    async def on_work(msg: Msg) -> None:
        relayed.append(msg)

    await nc.subscribe(subjects.tool_invoke("local"), cb=on_work)
    # What a PostgreSQL restart throws at the sweeper, then a fault of another kind.
    store = FlakyStore(
        pool,
        [
            asyncpg.CannotConnectNowError("the database system is starting up"),
            asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
            asyncpg.CannotConnectNowError("the database system is starting up"),
            RuntimeError("a fault of the sweeper's own"),
        ],
    )
    await leave_behind(store, "run-left-behind")
    registry = CollectorRegistry()
    sweeper = OutboxRelay(nc, store, registry, stale_after_s=0.2, sweep_interval_s=0.02)
    stopping = asyncio.Event()
    task = asyncio.create_task(sweeper.sweep_forever(stopping))
    try:
        await wait_for(lambda: relayed or task.done(), timeout=30, message="the row left behind relayed")
        assert not task.done(), task.exception()
        await wait_for(lambda: store.claims >= 6, timeout=30, message="the sweeper sweeping on")
        assert not task.done()
    finally:
        stopping.set()
        await asyncio.wait_for(task, timeout=10)
        await nc.close()

    assert [m.data for m in relayed] == [b'{"left": "behind"}']
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
    assert registry.get_sample_value("omni_engine_outbox_failures_total") == 4
    records = [r for r in caplog.records if r.name == "omni_engine.relay"]
    warnings = [r for r in records if r.levelno == logging.WARNING]
    # The lost connections are one warning without a traceback; the fault is one with its traceback.
    assert [bool(r.exc_info) for r in warnings] == [False, True], [r.getMessage() for r in warnings]
    assert "database or NATS unreachable (CannotConnectNowError" in warnings[0].getMessage()
    assert "sweeping again after" in " ".join(r.getMessage() for r in records if r.levelno == logging.INFO)
