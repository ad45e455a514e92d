"""/runs: pages of runs, one run, its history, and its progress as server-sent events."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from gateway_fakes import FakeEngine, GatewayFactory, read_sse
from omni_contract import subjects
from omni_contract.events import RunEventType
from omni_gateway.state import GATEWAY
from omni_testkit import wait_for

pytestmark = pytest.mark.integration

Client = TestClient[Any, Any]


async def _start(gateway: Client, name: str = "Ada") -> str:
    response = await gateway.post("/workflows/greet/execute?wait=false", json={"payload": {"name": name}})
    assert response.status == 202
    run_id: str = (await response.json())["runId"]
    return run_id


async def test_runs_are_listed_a_page_at_a_time(gateway: Client, engine: FakeEngine) -> None:
    engine.auto_complete = False
    ids = [await _start(gateway, name) for name in ("a", "b", "c")]

    first = await (await gateway.get("/runs?workflow=greet&status=running&limit=2")).json()
    second = await (await gateway.get(f"/runs?limit=2&cursor={first['nextCursor']}")).json()

    assert [run["runId"] for run in first["runs"]] == ids[:2]
    assert [run["runId"] for run in second["runs"]] == ids[2:]
    assert second["nextCursor"] is None
    assert engine.calls_to(subjects.ENGINE_RUNS_LIST)[0] == {
        "workflow": "greet",
        "status": "running",
        "limit": 2,
        "tenant": "default",
    }


@pytest.mark.parametrize(
    ("query", "field"), [("status=odd", "status"), ("limit=0", "limit"), ("limit=x", "limit")]
)
async def test_a_bad_run_query_is_400_naming_the_parameter(
    gateway: Client, engine: FakeEngine, query: str, field: str
) -> None:
    response = await gateway.get(f"/runs?{query}")

    assert response.status == 400
    assert (await response.json())["error"]["details"][0]["field"] == field


async def test_a_run_is_read_in_camel_case(gateway: Client, engine: FakeEngine) -> None:
    executed = await (
        await gateway.post("/workflows/greet/execute", json={"payload": {"name": "Ada"}})
    ).json()

    response = await gateway.get(f"/runs/{executed['runId']}")

    assert response.status == 200
    run = await response.json()
    assert run["runId"] == executed["runId"]
    assert run["status"] == "completed"
    assert run["createdAt"] == "2026-01-01T00:00:00.010000Z"
    assert run["lastSeq"] == 4
    assert run["payload"] == {"name": "Ada"}
    assert run["steps"][0]["durationMs"] == 12.5
    assert {"updatedAt", "durationMs", "usage", "context", "output", "error"} <= run.keys()


@pytest.mark.parametrize("run_id", ["unknown", "a.b", "x" * 200])
async def test_an_unknown_run_is_404(gateway: Client, engine: FakeEngine, run_id: str) -> None:
    response = await gateway.get(f"/runs/{run_id}")

    assert response.status == 404
    assert (await response.json())["error"]["code"] == "not_found"


async def test_the_history_of_a_run_is_read_after_a_seq(gateway: Client, engine: FakeEngine) -> None:
    executed = await (
        await gateway.post("/workflows/greet/execute", json={"payload": {"name": "Ada"}})
    ).json()

    history = await (await gateway.get(f"/runs/{executed['runId']}/events?after=2")).json()

    assert history["runId"] == executed["runId"]
    assert [(e["seq"], e["type"]) for e in history["events"]] == [
        (3, RunEventType.STEP_COMPLETED),
        (4, RunEventType.RUN_COMPLETED),
    ]
    assert history["events"][0]["runId"] == executed["runId"]


async def test_the_stream_replays_the_history_then_follows_and_ends_with_the_run(
    gateway: Client, engine: FakeEngine
) -> None:
    engine.auto_complete = False
    run_id = await _start(gateway)
    await engine.append(run_id, RunEventType.STEP_SCHEDULED, {"step": "compose"})

    response = await gateway.get(f"/runs/{run_id}/stream")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    # The history is on the wire before anything new happens; then the run moves on.
    first = await read_sse(response, limit=2)
    await engine.complete(run_id)
    rest = await read_sse(response)

    events = first + rest
    assert [(e["id"], e["event"]) for e in events] == [
        ("1", RunEventType.RUN_STARTED),
        ("2", RunEventType.STEP_SCHEDULED),
        ("3", RunEventType.STEP_STARTED),  # sent without a notice: read from the history
        ("4", RunEventType.STEP_COMPLETED),
        ("5", RunEventType.RUN_COMPLETED),
    ]
    last = json.loads(events[-1]["data"])
    assert last["runId"] == run_id
    assert set(last) == {"runId", "seq", "type", "at", "data"}
    assert last["data"] == {"output": {"text": "Hello, Ada"}}
    assert response.content.at_eof()


async def test_a_stream_resumes_after_last_event_id(gateway: Client, engine: FakeEngine) -> None:
    executed = await (
        await gateway.post("/workflows/greet/execute", json={"payload": {"name": "Ada"}})
    ).json()

    response = await gateway.get(f"/runs/{executed['runId']}/stream", headers={"Last-Event-ID": "3"})

    assert [e["id"] for e in await read_sse(response)] == ["4"]


async def test_a_stream_resumed_after_the_end_is_204(gateway: Client, engine: FakeEngine) -> None:
    executed = await (
        await gateway.post("/workflows/greet/execute", json={"payload": {"name": "Ada"}})
    ).json()

    response = await gateway.get(f"/runs/{executed['runId']}/stream?after=4")

    assert response.status == 204


async def test_a_quiet_stream_sends_heartbeats(make_gateway: GatewayFactory, engine: FakeEngine) -> None:
    gateway = await make_gateway(sse_heartbeat_s=0.05)
    engine.auto_complete = False
    run_id = await _start(gateway)

    response = await gateway.get(f"/runs/{run_id}/stream")
    items = await read_sse(response, limit=3)

    assert items[0]["event"] == RunEventType.RUN_STARTED
    assert items[1:] == [{"comment": "heartbeat"}, {"comment": "heartbeat"}]


async def test_the_stream_of_an_unknown_run_is_404(gateway: Client, engine: FakeEngine) -> None:
    response = await gateway.get("/runs/nope/stream")

    assert response.status == 404
    assert (await response.json())["error"]["code"] == "not_found"


async def test_a_client_leaving_a_stream_ends_its_subscription(gateway: Client, engine: FakeEngine) -> None:
    engine.auto_complete = False
    run_id = await _start(gateway)
    response = await gateway.get(f"/runs/{run_id}/stream")
    await read_sse(response, limit=1)

    response.close()
    await engine.append(run_id, RunEventType.STEP_SCHEDULED, {"step": "compose"})

    await wait_for(lambda: _app(gateway)[GATEWAY].following == 0, timeout=5)


def _app(client: Client) -> web.Application:
    app: web.Application | None = client.app
    assert app is not None
    return app
