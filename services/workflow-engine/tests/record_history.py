"""Records the history fixtures in ``fixtures/history/<dir>/``: real runs through the engine.

Not collected with the other tests (its name does not start with ``test_``); run it when an event
type gets a new version, into a directory of its own, and commit what it writes:

    OMNI_RECORD_HISTORY=3-<what changed> pytest services/workflow-engine/tests/record_history.py

Each scenario is a run on the real engine (NATS JetStream, PostgreSQL, the scripted runner of
``engine_harness``), written as one JSON file: the workflow, the ``run_events`` rows exactly as
the engine stored them (``data`` as PostgreSQL gives it back) and the run's projection as the
engine saved it at the end. ``test_history_fixtures.py`` folds the rows of every file with the
current code and compares the result with that projection, so a change that can no longer read
rows an engine once wrote fails there. A file once committed is never rewritten.
"""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from engine_harness import Harness, failed, ok
from omni_contract import rpc, subjects
from omni_contract.events import ToolInvoke, ToolResult, Usage
from omni_testkit import wait_for

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).parent / "fixtures" / "history"
TARGET = os.environ.get("OMNI_RECORD_HISTORY", "")


def _out(invoke: ToolInvoke) -> dict[str, Any]:
    return {"text": f"out-{invoke.step}"}


def _ran(result: ToolResult) -> ToolResult:
    """``result`` as a tool-runner sends it: which runner, when the call started, how long it took."""
    result.runner = "runner-1"
    result.started_at = datetime.now(UTC)
    result.duration_ms = 1.5
    return result


async def _record(harness: Harness, name: str, workflow: str, run_id: str) -> None:
    path = FIXTURES / TARGET / f"{name}.json"
    assert not path.exists(), f"{path} exists: fixtures are never rewritten, record into a new directory"
    conn = await asyncpg.connect(harness.database_url, server_settings={"search_path": "engine"})
    try:
        versioned = await conn.fetchval(
            "SELECT true FROM information_schema.columns"
            " WHERE table_schema = 'engine' AND table_name = 'run_events' AND column_name = 'v'"
        )
        rows = await conn.fetch(
            "SELECT seq, type, " + ("v, " if versioned else "") + "data::text AS data, at::text AS at"
            " FROM run_events WHERE run_id = $1 ORDER BY seq",
            run_id,
        )
        state = await conn.fetchval("SELECT state::text FROM runs WHERE run_id = $1", run_id)
    finally:
        await conn.close()
    doc = {
        "workflow": workflow,
        "rows": [
            {
                "seq": r["seq"],
                "type": r["type"],
                **({"v": r["v"]} if versioned else {}),
                "at": r["at"],
                "data": json.loads(r["data"]),
            }
            for r in rows
        ],
        "state": json.loads(state),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", encoding="utf-8")


async def _step_status(harness: Harness, run_id: str, step: str, status: str) -> None:
    async def reached() -> bool:
        run = await harness.run(run_id)
        return any(s["name"] == step and s["status"] == status for s in run["steps"])

    await wait_for(reached, timeout=20)


@pytest.fixture(autouse=True)
def _target() -> None:
    if not TARGET:
        pytest.skip("set OMNI_RECORD_HISTORY to the fixture directory to record into")


COMPLETED = """\
name: history-completed
version: '1'
trigger:
  event: app.test.history_completed
  payload:
    key: string
    items: array
steps:
  - name: fetch
    tool: util.echo
    provider: flaky|steady
    retry: {maxAttempts: 2, initialInterval: 50, jitter: 0}
  - name: optional
    tool: util.echo
    provider: steady
    when: size(trigger.payload.items) > 5
  - name: each
    for_each: '${trigger.payload.items}'
    concurrency: 2
    tool: util.echo
    provider: steady
    input: {value: '${item}'}
  - name: slow
    tool: util.echo
    provider: silent|text-only
    config: {timeout: 200}
    retry: {maxAttempts: 1}
    input: {text: plain words}
  - name: approve
    wait: {event: app.test.history_approved, key: '${trigger.payload.key}', match: id, timeout: 20000}
    needs: fetch
  - name: risky
    tool: util.echo
    provider: steady
    on_error: continue
  - name: last
    tool: util.echo
    provider: steady
    needs: [approve, risky, each, slow]
"""


async def test_record_a_completed_run(harness: Harness) -> None:
    """Retry, fallback, a skipped step, for_each, a timeout degraded to text-only, a wait
    completed by an outside event, a failure handled by continue; started by its trigger."""
    await harness.register(COMPLETED)
    tries: dict[str, int] = {}

    async def respond(invoke: ToolInvoke) -> ToolResult | None:
        tries[invoke.step] = tries.get(invoke.step, 0) + 1
        if invoke.provider == "silent":
            return None
        if invoke.provider == "flaky":
            kind = "server" if tries[invoke.step] == 1 else "unavailable"
            return _ran(failed(invoke, kind, "try later", retryable=True, retry_after_s=0.01))
        if invoke.step == "risky":
            return _ran(failed(invoke, "bad_request", "no such voice", status=400))
        result = ok(
            invoke, Usage(input_tokens=3, output_tokens=4, total_tokens=7, cost=0.0002), **_out(invoke)
        )
        result.model = "echo-1"
        return _ran(result)

    harness.respond = respond
    js = harness.nc.jetstream()
    await js.publish(
        "app.test.history_completed",
        json.dumps({"key": "k-1", "items": ["a", "b", "c"]}).encode(),
        headers={"Nats-Msg-Id": "history-completed-1"},
    )

    async def started() -> str | None:
        page = await harness.result(
            subjects.ENGINE_RUNS_LIST, rpc.ListRunsRequest(workflow="history-completed")
        )
        return page["runs"][0]["run_id"] if page["runs"] else None

    run_id: str = await wait_for(started, timeout=20)
    await _step_status(harness, run_id, "approve", "waiting")
    await js.publish("app.test.history_approved", json.dumps({"id": "k-1", "approved": True}).encode())
    assert (await harness.finished(run_id))["status"] == "completed"
    await _record(harness, "completed", COMPLETED, run_id)

    rerun = await harness.result(
        subjects.ENGINE_RUNS_RERUN, rpc.RerunRequest(run_id=run_id, from_step="risky")
    )
    assert (await harness.finished(rerun["run_id"]))["status"] == "completed"
    await _record(harness, "rerun", COMPLETED, rerun["run_id"])


FAILED = """\
name: history-failed
version: '1'
trigger:
  event: app.test.history_failed
  payload:
    items: array
steps:
  - name: book
    tool: util.echo
    provider: p
    compensate: {tool: util.echo, provider: p, input: {undo: '${steps.book.output.text}'}}
  - name: reserve
    tool: util.echo
    provider: p
    needs: book
    compensate: {tool: util.echo, provider: p}
  - name: lines
    for_each: '${trigger.payload.items}'
    tool: util.echo
    provider: p
    needs: reserve
    input: {line: '${item}'}
    on_error: recover
  - name: recover
    tool: util.echo
    provider: p
  - name: charge
    tool: util.echo
    provider: p
    needs: recover
"""


async def test_record_a_failed_run(harness: Harness) -> None:
    """A for_each item fails, its step's handler runs, a later step fails the run; the
    completed steps are compensated, latest first, and one compensation fails."""
    await harness.register(FAILED)

    async def respond(invoke: ToolInvoke) -> ToolResult:
        if invoke.step in ("lines#1", "charge", "reserve~c"):
            return _ran(failed(invoke, "bad_request", f"{invoke.step} refused", status=422))
        return _ran(ok(invoke, **_out(invoke)))

    harness.respond = respond
    run_id = await harness.start("history-failed", {"items": ["x", "y"]})
    assert (await harness.finished(run_id))["status"] == "failed"
    await _record(harness, "failed", FAILED, run_id)


CANCELLED = """\
name: history-cancelled
version: '1'
trigger:
  event: app.test.history_cancelled
steps:
  - name: hold
    wait: {event: app.test.history_never, key: x, match: id, timeout: 60000}
"""


async def test_record_a_cancelled_run(harness: Harness) -> None:
    await harness.register(CANCELLED)
    run_id = await harness.start("history-cancelled", {})
    await _step_status(harness, run_id, "hold", "waiting")
    await harness.result(
        subjects.ENGINE_RUNS_CANCEL, rpc.CancelRunRequest(run_id=run_id, reason="not needed")
    )
    assert (await harness.finished(run_id))["status"] == "cancelled"
    await _record(harness, "cancelled", CANCELLED, run_id)


TIMED_OUT = """\
name: history-timed-out
version: '1'
trigger:
  event: app.test.history_timed_out
guards:
  budget: {maxMs: 300}
steps:
  - name: slow
    tool: util.echo
    provider: p
"""


async def test_record_a_run_past_its_deadline(harness: Harness) -> None:
    await harness.register(TIMED_OUT)

    async def respond(invoke: ToolInvoke) -> ToolResult | None:
        await asyncio.sleep(2)
        return None

    harness.respond = respond
    run_id = await harness.start("history-timed-out", {})
    assert (await harness.finished(run_id))["status"] == "timed_out"
    await _record(harness, "timed_out", TIMED_OUT, run_id)


BUDGET = """\
name: history-budget
version: '1'
trigger:
  event: app.test.history_budget
guards:
  budget: {maxTokens: 50, maxCost: 1.0}
steps:
  - name: first
    tool: util.echo
    provider: p
    config: {maxTokens: 40}
  - name: second
    tool: util.echo
    provider: p
    config: {maxTokens: 40}
    needs: first
"""


async def test_record_a_run_over_its_budget(harness: Harness) -> None:
    await harness.register(BUDGET)

    async def respond(invoke: ToolInvoke) -> ToolResult:
        usage = Usage(input_tokens=20, output_tokens=15, total_tokens=35, cost=0.01)
        return _ran(ok(invoke, usage, **_out(invoke)))

    harness.respond = respond
    run_id = await harness.start("history-budget", {})
    assert (await harness.finished(run_id))["status"] == "budget_exceeded"
    await _record(harness, "budget_exceeded", BUDGET, run_id)
