"""The engine answers its RPC requests concurrently: a run start waiting for its commit does not hold
up the requests behind it (NATS services call an endpoint's handler for one request at a time)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from engine_harness import Harness
from omni_contract import rpc, subjects
from omni_engine.store import Store

pytestmark = pytest.mark.integration

WORKFLOW = """\
name: concurrent-starts
version: '1'
trigger: {event: app.test.concurrent}
steps:
  - {name: only, tool: util.echo, provider: p}
"""


async def test_a_start_waiting_for_its_commit_does_not_hold_up_the_next_requests(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    await harness.register(WORKFLOW)
    entered = asyncio.Event()
    release = asyncio.Event()
    create_run = Store.create_run

    async def slow_for_one_run(self: Store, state: Any, *args: Any, **kwargs: Any) -> Any:
        if state.run_id == "slow-run":
            entered.set()
            await release.wait()
        return await create_run(self, state, *args, **kwargs)

    monkeypatch.setattr(Store, "create_run", slow_for_one_run)

    slow = asyncio.create_task(harness.start("concurrent-starts", {}, run_id="slow-run"))
    await asyncio.wait_for(entered.wait(), timeout=5)
    # Another start and a read, on the same endpoints, are answered while the first one waits.
    fast = await harness.start("concurrent-starts", {}, run_id="fast-run")
    listed = await harness.result(
        subjects.ENGINE_RUNS_LIST, rpc.ListRunsRequest(workflow="concurrent-starts")
    )

    assert fast == "fast-run"
    assert [r["run_id"] for r in listed["runs"]] == ["fast-run"]
    assert not slow.done()
    release.set()
    assert await asyncio.wait_for(slow, timeout=5) == "slow-run"
    assert (await harness.finished("slow-run"))["status"] == "completed"
    assert (await harness.finished("fast-run"))["status"] == "completed"


async def test_with_one_request_at_a_time_the_next_request_waits_for_the_one_in_hand(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    await harness.stop_engine()
    await harness.start_engine(rpc_concurrency=1)  # OMNI_ENGINE_RPC_CONCURRENCY=1
    await harness.register(WORKFLOW)
    entered = asyncio.Event()
    release = asyncio.Event()
    create_run = Store.create_run

    async def slow_for_one_run(self: Store, state: Any, *args: Any, **kwargs: Any) -> Any:
        if state.run_id == "slow-run":
            entered.set()
            await release.wait()
        return await create_run(self, state, *args, **kwargs)

    monkeypatch.setattr(Store, "create_run", slow_for_one_run)

    slow = asyncio.create_task(harness.start("concurrent-starts", {}, run_id="slow-run"))
    await asyncio.wait_for(entered.wait(), timeout=5)
    listing = asyncio.create_task(
        harness.result(subjects.ENGINE_RUNS_LIST, rpc.ListRunsRequest(workflow="concurrent-starts"))
    )
    await asyncio.sleep(0.5)

    assert not listing.done()  # held behind the start in hand
    release.set()
    assert await asyncio.wait_for(slow, timeout=5) == "slow-run"
    assert [r["run_id"] for r in (await asyncio.wait_for(listing, timeout=5))["runs"]] == ["slow-run"]
