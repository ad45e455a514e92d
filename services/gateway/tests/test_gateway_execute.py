"""POST /workflows/{name}/execute: start a run, wait (bounded) for its end, report it."""

from __future__ import annotations

import re
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from gateway_fakes import FakeEngine
from omni_contract import subjects

pytestmark = pytest.mark.integration

Client = TestClient[Any, Any]


async def test_execute_waits_for_the_run_and_returns_its_summary(gateway: Client, engine: FakeEngine) -> None:
    response = await gateway.post(
        "/workflows/greet/execute", json={"payload": {"name": "Ada"}, "context": {"userId": "u1"}}
    )

    assert response.status == 200
    body = await response.json()
    assert re.fullmatch(r"[0-9a-f]{32}", body["runId"])
    assert body["workflow"] == "greet"
    assert body["status"] == "completed"
    assert body["duration"] > 0
    assert body["output"] == {"text": "Hello, Ada"}
    assert body["error"] is None
    assert body["waiting"] == []
    assert body["steps"] == [
        {
            "name": "compose",
            "tool": "text.generate",
            "provider": "mock",
            "status": "completed",
            "attempt": 1,
            "reason": None,
            "durationMs": 12.5,
            "output": {"text": "Hello, Ada"},
            "error": None,
            "usage": {"inputTokens": 3, "outputTokens": 5, "totalTokens": 8, "cost": 0.0},
        }
    ]
    [start] = engine.calls_to(subjects.ENGINE_RUNS_START)
    assert start == {
        "workflow": "greet",
        "payload": {"name": "Ada"},
        "context": {"userId": "u1"},
        "run_id": body["runId"],
        "tenant": "default",
    }


async def test_execute_with_wait_false_answers_202_with_the_run_location(
    gateway: Client, engine: FakeEngine
) -> None:
    engine.auto_complete = False

    response = await gateway.post("/workflows/greet/execute?wait=false", json={"payload": {"name": "Ada"}})

    assert response.status == 202
    body = await response.json()
    assert body == {"runId": body["runId"], "status": "running"}
    assert response.headers["Location"] == f"/runs/{body['runId']}"
    assert engine.calls_to(subjects.ENGINE_RUNS_GET) == []


async def test_execute_that_outlasts_its_timeout_answers_202_with_the_run_so_far(
    gateway: Client, engine: FakeEngine
) -> None:
    engine.auto_complete = False

    response = await gateway.post("/workflows/greet/execute?timeout=0.3", json={"payload": {"name": "Ada"}})

    assert response.status == 202
    body = await response.json()
    assert body["status"] == "running"
    assert body["steps"][0]["name"] == "compose"
    assert response.headers["Location"] == f"/runs/{body['runId']}"


async def test_execute_without_a_body_sends_an_empty_payload(gateway: Client, engine: FakeEngine) -> None:
    response = await gateway.post("/workflows/greet/execute")

    assert response.status == 422
    [start] = engine.calls_to(subjects.ENGINE_RUNS_START)
    assert start.get("payload", {}) == {}
    assert start.get("context", {}) == {}


async def test_execute_of_an_unknown_workflow_is_404(gateway: Client, engine: FakeEngine) -> None:
    response = await gateway.post("/workflows/nope/execute", json={"payload": {"name": "Ada"}})

    assert response.status == 404
    assert await response.json() == {
        "error": {"code": "not_found", "message": "unknown workflow 'nope'", "details": []}
    }


async def test_execute_with_a_payload_off_the_trigger_schema_is_422_naming_the_field(
    gateway: Client, engine: FakeEngine
) -> None:
    response = await gateway.post("/workflows/greet/execute", json={"payload": {"nom": "Ada"}})

    assert response.status == 422
    error = (await response.json())["error"]
    assert error["code"] == "invalid_payload"
    assert error["details"] == [
        {"field": "payload.name", "message": "required field is missing (expected string)"}
    ]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("timeout=abc", "timeout"),
        ("timeout=301", "timeout"),
        ("timeout=0", "timeout"),
        ("wait=maybe", "wait"),
    ],
)
async def test_execute_with_a_bad_query_parameter_is_400_naming_it(
    gateway: Client, engine: FakeEngine, query: str, field: str
) -> None:
    response = await gateway.post(f"/workflows/greet/execute?{query}", json={"payload": {"name": "Ada"}})

    assert response.status == 400
    assert (await response.json())["error"]["details"][0]["field"] == field
    assert engine.calls_to(subjects.ENGINE_RUNS_START) == []
