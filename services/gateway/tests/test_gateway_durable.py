"""Durable workflows at the HTTP edge: cancel, rerun, definition versions, idempotent execute,
and every terminal status (not only completed and failed) ending waits and streams."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from gateway_fakes import T0, TERMINAL_STATUS, FakeEngine, read_sse
from omni_contract import rpc, subjects
from omni_contract.events import RunEventType, RunStatus, StepStatus
from omni_testkit import wait_for

pytestmark = pytest.mark.integration

Client = TestClient[Any, Any]


async def _start(gateway: Client, name: str = "Ada") -> str:
    response = await gateway.post("/workflows/greet/execute?wait=false", json={"payload": {"name": name}})
    assert response.status == 202
    run_id: str = (await response.json())["runId"]
    return run_id


def test_the_fake_engine_knows_every_terminal_event() -> None:
    assert set(TERMINAL_STATUS) == RunEventType.TERMINAL
    assert set(TERMINAL_STATUS.values()) == RunStatus.TERMINAL


# -- cancel -------------------------------------------------------------------------------------
async def test_cancel_answers_202_with_the_run_as_recorded(gateway: Client, engine: FakeEngine) -> None:
    engine.auto_complete = False
    engine.auto_cancel = False
    run_id = await _start(gateway)

    response = await gateway.post(f"/runs/{run_id}/cancel", json={"reason": "user left"})

    assert response.status == 202
    assert response.headers["Location"] == f"/runs/{run_id}"
    run = await response.json()
    assert run["runId"] == run_id
    assert run["status"] == "running"  # cancelled once the engine has stopped the work
    assert run["lastSeq"] == 2
    assert engine.calls_to(subjects.ENGINE_RUNS_CANCEL) == [
        {"run_id": run_id, "reason": "user left", "tenant": "default"}
    ]


async def test_cancel_without_a_body_sends_no_reason(gateway: Client, engine: FakeEngine) -> None:
    engine.auto_complete = False
    run_id = await _start(gateway)

    response = await gateway.post(f"/runs/{run_id}/cancel")

    assert response.status == 202
    assert engine.calls_to(subjects.ENGINE_RUNS_CANCEL) == [{"run_id": run_id, "tenant": "default"}]


async def test_a_cancelled_run_reads_as_cancelled(gateway: Client, engine: FakeEngine) -> None:
    engine.auto_complete = False
    run_id = await _start(gateway)
    stream = await gateway.get(f"/runs/{run_id}/stream")
    await read_sse(stream, limit=1)

    await gateway.post(f"/runs/{run_id}/cancel", json={"reason": "x"})
    events = await read_sse(stream)

    assert [e["event"] for e in events] == [RunEventType.RUN_CANCEL_REQUESTED, RunEventType.RUN_CANCELLED]
    assert stream.content.at_eof()
    assert (await (await gateway.get(f"/runs/{run_id}")).json())["status"] == "cancelled"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"reason": 3}, "reason must be a string, not a number"),
        ({"reason": "x" * 1001}, "longer than 1000"),
    ],
)
async def test_cancel_with_a_bad_reason_is_400_naming_it(
    gateway: Client, engine: FakeEngine, body: dict[str, Any], words: str
) -> None:
    engine.auto_complete = False
    run_id = await _start(gateway)

    response = await gateway.post(f"/runs/{run_id}/cancel", json=body)

    assert response.status == 400
    error = (await response.json())["error"]
    assert error["details"][0]["field"] == "reason"
    assert words in error["message"]
    assert engine.calls_to(subjects.ENGINE_RUNS_CANCEL) == []


async def test_cancel_with_malformed_json_is_400(gateway: Client, engine: FakeEngine) -> None:
    response = await gateway.post("/runs/r1/cancel", data=b"{", headers={"Content-Type": "application/json"})

    assert response.status == 400
    assert (await response.json())["error"]["details"][0]["field"] == "body"


@pytest.mark.parametrize("run_id", ["unknown", "a.b", "x" * 200])
async def test_cancel_of_an_unknown_run_is_404(gateway: Client, engine: FakeEngine, run_id: str) -> None:
    response = await gateway.post(f"/runs/{run_id}/cancel")

    assert response.status == 404
    assert (await response.json())["error"]["code"] == "not_found"


async def test_cancel_of_an_ended_run_answers_it_unchanged(gateway: Client, engine: FakeEngine) -> None:
    executed = await (
        await gateway.post("/workflows/greet/execute", json={"payload": {"name": "Ada"}})
    ).json()

    response = await gateway.post(f"/runs/{executed['runId']}/cancel")

    assert response.status == 202
    assert (await response.json())["status"] == "completed"


async def test_cancel_is_only_a_post(gateway: Client, engine: FakeEngine) -> None:
    response = await gateway.get("/runs/r1/cancel")

    assert response.status == 405
    assert response.headers["Allow"] == "POST"


# -- every terminal status ends waits and streams -----------------------------------------------
@pytest.mark.parametrize("event", sorted(RunEventType.TERMINAL - {RunEventType.RUN_COMPLETED}))
async def test_execute_answers_200_as_soon_as_the_run_ends_in_any_terminal_status(
    gateway: Client, engine: FakeEngine, event: str
) -> None:
    engine.auto_complete = False
    execute = asyncio.create_task(
        gateway.post("/workflows/greet/execute?timeout=30", json={"payload": {"name": "Ada"}})
    )
    await wait_for(lambda: engine.runs, timeout=5)
    [run_id] = engine.runs

    await engine.append(run_id, event, {"error": {"message": "stopped"}})
    response = await asyncio.wait_for(execute, timeout=5)

    assert response.status == 200
    body = await response.json()
    assert body["status"] == TERMINAL_STATUS[event]
    assert body["waiting"] == []


@pytest.mark.parametrize("event", sorted(RunEventType.TERMINAL - {RunEventType.RUN_COMPLETED}))
async def test_the_stream_ends_with_any_terminal_event(
    gateway: Client, engine: FakeEngine, event: str
) -> None:
    engine.auto_complete = False
    run_id = await _start(gateway)
    stream = await gateway.get(f"/runs/{run_id}/stream")
    await read_sse(stream, limit=1)

    await engine.append(run_id, event)
    events = await read_sse(stream)

    assert [e["event"] for e in events] == [event]
    assert stream.content.at_eof()
    resumed = await gateway.get(f"/runs/{run_id}/stream?after=2")
    assert resumed.status == 204


@pytest.mark.parametrize("status", [RunStatus.CANCELLED, RunStatus.TIMED_OUT, RunStatus.COMPENSATING])
async def test_runs_are_listed_by_the_new_statuses(gateway: Client, engine: FakeEngine, status: str) -> None:
    response = await gateway.get(f"/runs?status={status}")

    assert response.status == 200
    assert engine.calls_to(subjects.ENGINE_RUNS_LIST) == [{"status": status, "tenant": "default"}]


async def test_run_views_carry_what_a_run_waits_for_and_why_a_step_retries(
    gateway: Client, engine: FakeEngine
) -> None:
    engine.auto_complete = False
    execute = {"json": {"payload": {"name": "Ada"}}, "headers": {"Idempotency-Key": "k-views"}}
    started = await gateway.post("/workflows/greet/execute?wait=false", **execute)
    run_id = (await started.json())["runId"]
    summary = engine.runs[run_id].summary
    summary.steps[0].status = StepStatus.RETRYING
    summary.steps[0].reason = "rate_limited: retry in 2 s"
    summary.waiting = [
        rpc.WaitingFor(
            kind="timer",
            step="compose",
            since=T0,
            until=T0 + timedelta(seconds=2),
            detail="openrouter, attempt 2",
        )
    ]
    waiting = {
        "kind": "timer",
        "step": "compose",
        "since": "2026-01-01T00:00:00Z",
        "until": "2026-01-01T00:00:02Z",
        "detail": "openrouter, attempt 2",
    }

    run = await (await gateway.get(f"/runs/{run_id}")).json()
    listed = await (await gateway.get("/runs")).json()
    # The same key again: the execute reports the same (still waiting) run after its wait.
    executed = await gateway.post("/workflows/greet/execute?timeout=0.2", **execute)

    assert run["waiting"] == [waiting]
    assert run["steps"][0]["status"] == "retrying"
    assert run["steps"][0]["reason"] == "rate_limited: retry in 2 s"
    assert run["rerunOf"] is None
    assert run["rerunFromStep"] is None
    assert listed["runs"][0]["waiting"] == [waiting]
    assert executed.status == 202
    execution = await executed.json()
    assert execution["runId"] == run_id
    assert execution["waiting"] == [waiting]
    assert execution["steps"][0]["reason"] == "rate_limited: retry in 2 s"


# -- rerun --------------------------------------------------------------------------------------
async def test_rerun_starts_a_new_run_and_answers_like_an_async_execute(
    gateway: Client, engine: FakeEngine
) -> None:
    engine.auto_complete = False
    run_id = await _start(gateway)

    response = await gateway.post(f"/runs/{run_id}/rerun", json={"fromStep": "compose"})

    assert response.status == 202
    body = await response.json()
    assert body == {"runId": body["runId"], "status": "running"}
    assert body["runId"] != run_id
    assert response.headers["Location"] == f"/runs/{body['runId']}"
    assert engine.calls_to(subjects.ENGINE_RUNS_RERUN) == [
        {"run_id": run_id, "from_step": "compose", "tenant": "default"}
    ]
    rerun = await (await gateway.get(f"/runs/{body['runId']}")).json()
    assert rerun["rerunOf"] == run_id
    assert rerun["rerunFromStep"] == "compose"
    assert rerun["payload"] == {"name": "Ada"}


async def test_rerun_with_a_new_payload_sends_it(gateway: Client, engine: FakeEngine) -> None:
    engine.auto_complete = False
    run_id = await _start(gateway)

    response = await gateway.post(
        f"/runs/{run_id}/rerun", json={"fromStep": "compose", "payload": {"name": "Grace"}}
    )

    assert response.status == 202
    [call] = engine.calls_to(subjects.ENGINE_RUNS_RERUN)
    assert call["payload"] == {"name": "Grace"}
    rerun = await (await gateway.get(response.headers["Location"])).json()
    assert rerun["payload"] == {"name": "Grace"}


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({}, "fromStep is required"),
        ({"fromStep": None}, "fromStep is required"),
        ({"fromStep": 7}, "not a number"),
        ({"fromStep": ["compose"]}, "not an array"),
        ({"fromStep": "  "}, "not an empty string"),
        ({"from_step": "compose"}, "fromStep is required"),
    ],
)
async def test_rerun_without_a_step_name_is_422_naming_fromstep(
    gateway: Client, engine: FakeEngine, body: dict[str, Any], words: str
) -> None:
    response = await gateway.post("/runs/r1/rerun", json=body)

    assert response.status == 422
    error = (await response.json())["error"]
    assert error["code"] == "invalid_request"
    assert error["details"][0]["field"] == "fromStep"
    assert words in error["message"]
    assert engine.calls_to(subjects.ENGINE_RUNS_RERUN) == []


async def test_rerun_with_a_payload_that_is_not_an_object_is_400(gateway: Client, engine: FakeEngine) -> None:
    response = await gateway.post("/runs/r1/rerun", json={"fromStep": "compose", "payload": [1]})

    assert response.status == 400
    assert (await response.json())["error"]["details"][0]["field"] == "payload"


@pytest.mark.parametrize("run_id", ["unknown", "a.b"])
async def test_rerun_of_an_unknown_run_is_404(gateway: Client, engine: FakeEngine, run_id: str) -> None:
    response = await gateway.post(f"/runs/{run_id}/rerun", json={"fromStep": "compose"})

    assert response.status == 404
    assert (await response.json())["error"]["code"] == "not_found"


async def test_rerun_from_a_step_the_run_does_not_have_is_the_engines_422(
    gateway: Client, engine: FakeEngine
) -> None:
    engine.auto_complete = False
    run_id = await _start(gateway)

    response = await gateway.post(f"/runs/{run_id}/rerun", json={"fromStep": "nope"})

    assert response.status == 422
    error = (await response.json())["error"]
    assert error["code"] == "invalid_payload"
    assert error["details"] == [{"field": "fromStep", "message": "expected one of compose"}]


# -- versions -----------------------------------------------------------------------------------
async def test_the_versions_of_a_workflow_are_listed_newest_first(
    gateway: Client, engine: FakeEngine
) -> None:
    response = await gateway.get("/workflows/greet/versions")

    assert response.status == 200
    assert await response.json() == {
        "name": "greet",
        "versions": [
            {
                "hash": "abc123",
                "version": "1.0.0",
                "origin": "file:greet.yaml",
                "createdAt": "2026-01-01T00:00:00Z",
                "current": True,
            },
            {
                "hash": "0ld",
                "version": "0.9.0",
                "origin": "api",
                "createdAt": "2025-12-31T00:00:00Z",
                "current": False,
            },
        ],
    }
    assert engine.calls_to(subjects.ENGINE_WORKFLOWS_VERSIONS) == [{"name": "greet", "tenant": "default"}]


async def test_the_versions_of_an_unknown_workflow_are_404(gateway: Client, engine: FakeEngine) -> None:
    response = await gateway.get("/workflows/nope/versions")

    assert response.status == 404
    assert (await response.json())["error"]["message"] == "unknown workflow 'nope'"


# -- Idempotency-Key ----------------------------------------------------------------------------
async def test_the_same_idempotency_key_returns_the_same_run_without_waiting(
    gateway: Client, engine: FakeEngine
) -> None:
    engine.auto_complete = False
    request = {"json": {"payload": {"name": "Ada"}}, "headers": {"Idempotency-Key": "order-42"}}

    first = await gateway.post("/workflows/greet/execute?wait=false", **request)
    second = await gateway.post("/workflows/greet/execute?wait=false", **request)

    assert first.status == second.status == 202
    first_body, second_body = await first.json(), await second.json()
    assert second_body == first_body
    assert second.headers["Location"] == first.headers["Location"]
    assert "Idempotent-Replayed" not in first.headers
    assert second.headers["Idempotent-Replayed"] == "true"
    assert len(engine.runs) == 1
    starts = engine.calls_to(subjects.ENGINE_RUNS_START)
    assert [start["idempotency_key"] for start in starts] == ["order-42", "order-42"]


async def test_the_same_idempotency_key_returns_the_same_ended_run_when_waiting(
    gateway: Client, engine: FakeEngine
) -> None:
    request = {"json": {"payload": {"name": "Ada"}}, "headers": {"Idempotency-Key": "order-43"}}

    first = await gateway.post("/workflows/greet/execute", **request)
    second = await gateway.post("/workflows/greet/execute", **request)

    assert first.status == second.status == 200
    first_body, second_body = await first.json(), await second.json()
    assert second_body == first_body
    assert second_body["status"] == "completed"
    assert second.headers["Idempotent-Replayed"] == "true"
    assert len(engine.runs) == 1


async def test_a_replayed_key_waits_for_the_earlier_run_to_end(gateway: Client, engine: FakeEngine) -> None:
    engine.auto_complete = False
    request = {"json": {"payload": {"name": "Ada"}}, "headers": {"Idempotency-Key": "order-44"}}
    first = await gateway.post("/workflows/greet/execute?wait=false", **request)
    run_id = (await first.json())["runId"]

    second = asyncio.create_task(gateway.post("/workflows/greet/execute?timeout=30", **request))
    await wait_for(lambda: engine.calls_to(subjects.ENGINE_RUNS_GET), timeout=5)
    await engine.complete(run_id)
    response = await asyncio.wait_for(second, timeout=5)

    assert response.status == 200
    body = await response.json()
    assert body["runId"] == run_id
    assert body["status"] == "completed"


async def test_a_replayed_key_whose_run_is_still_going_answers_202(
    gateway: Client, engine: FakeEngine
) -> None:
    engine.auto_complete = False
    request = {"json": {"payload": {"name": "Ada"}}, "headers": {"Idempotency-Key": "order-45"}}
    run_id = (await (await gateway.post("/workflows/greet/execute?wait=false", **request)).json())["runId"]

    response = await gateway.post("/workflows/greet/execute?timeout=0.2", **request)

    assert response.status == 202
    assert (await response.json())["runId"] == run_id
    assert response.headers["Location"] == f"/runs/{run_id}"


async def test_the_same_idempotency_key_with_another_body_is_422(gateway: Client, engine: FakeEngine) -> None:
    headers = {"Idempotency-Key": "order-46"}
    await gateway.post("/workflows/greet/execute", json={"payload": {"name": "Ada"}}, headers=headers)

    response = await gateway.post(
        "/workflows/greet/execute", json={"payload": {"name": "Bob"}}, headers=headers
    )

    assert response.status == 422
    error = (await response.json())["error"]
    assert error["code"] == "idempotency_mismatch"
    assert error["details"][0]["field"] == "Idempotency-Key"
    assert len(engine.runs) == 1


async def test_without_an_idempotency_key_the_engine_gets_none(gateway: Client, engine: FakeEngine) -> None:
    await gateway.post("/workflows/greet/execute", json={"payload": {"name": "Ada"}})

    [start] = engine.calls_to(subjects.ENGINE_RUNS_START)
    assert "idempotency_key" not in start


@pytest.mark.parametrize("key", ["", "has space", "tab\there", "x" * 256, "caf\u00e9"])
@pytest.mark.parametrize("wait", ["true", "false"])
async def test_a_bad_idempotency_key_is_400_naming_the_header(
    gateway: Client, engine: FakeEngine, key: str, wait: str
) -> None:
    response = await gateway.post(
        f"/workflows/greet/execute?wait={wait}",
        json={"payload": {"name": "Ada"}},
        headers={"Idempotency-Key": key},
    )

    assert response.status == 400
    assert (await response.json())["error"]["details"][0]["field"] == "Idempotency-Key"
    assert engine.calls_to(subjects.ENGINE_RUNS_START) == []


async def test_the_longest_idempotency_key_is_accepted(gateway: Client, engine: FakeEngine) -> None:
    key = "~" * 255

    response = await gateway.post(
        "/workflows/greet/execute", json={"payload": {"name": "Ada"}}, headers={"Idempotency-Key": key}
    )

    assert response.status == 200
    assert engine.calls_to(subjects.ENGINE_RUNS_START)[0]["idempotency_key"] == key
