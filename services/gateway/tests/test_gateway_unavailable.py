"""An outage of the engine's database or of NATS is a 503 with ``Retry-After`` and the JSON error
shape (the client may try again), never a 500."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from omni_contract import rpc, subjects
from omni_contract.envelope import encode
from omni_gateway.errors import error_response
from omni_testkit import subscribed

pytestmark = pytest.mark.integration

Client = TestClient[Any, Any]


async def test_an_engine_whose_database_is_down_is_503_with_retry_after(gateway: Client, nc: NATS) -> None:
    async def database_down(msg: Msg) -> None:
        error = rpc.RpcError(code="unavailable", message="the workflow engine cannot reach its database")
        await msg.respond(encode(rpc.RpcReply(error=error)))

    sub = await nc.subscribe(subjects.ENGINE_RUNS_GET, cb=database_down)
    await subscribed(nc)
    try:
        response = await gateway.get("/runs/abc")
    finally:
        await sub.unsubscribe()

    assert response.status == 503
    assert int(response.headers["Retry-After"]) > 0
    assert response.content_type == "application/json"
    assert await response.json() == {
        "error": {
            "code": "unavailable",
            "message": "the workflow engine cannot reach its database",
            "details": [],
        }
    }


async def test_no_engine_reachable_over_nats_is_503_with_retry_after(gateway: Client) -> None:
    response = await gateway.get("/runs/abc")

    assert response.status == 503
    assert int(response.headers["Retry-After"]) > 0
    assert (await response.json())["error"]["code"] == "engine_unavailable"


def test_every_503_says_when_to_try_again_and_keeps_a_retry_after_already_chosen() -> None:
    events_down = error_response(503, "events_unavailable", "event store unavailable: nats: timeout")
    circuit_open = error_response(503, "tool_unavailable", "circuit open", headers={"Retry-After": "17"})
    not_found = error_response(404, "not_found", "unknown run 'abc'")

    assert int(events_down.headers["Retry-After"]) > 0
    assert circuit_open.headers["Retry-After"] == "17"
    assert "Retry-After" not in not_found.headers
