"""Every error is JSON {"error": {code, message, details}}, with the field at fault named."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from gateway_fakes import FakeEngine, GatewayFactory
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from omni_contract import subjects
from omni_testkit import subscribed

pytestmark = pytest.mark.integration

Client = TestClient[Any, Any]


async def test_malformed_json_is_400_saying_where(gateway: Client, engine: FakeEngine) -> None:
    response = await gateway.post(
        "/workflows/greet/execute",
        data=b'{"payload": {"name": "Ada",}}',
        headers={"Content-Type": "application/json"},
    )

    assert response.status == 400
    error = (await response.json())["error"]
    assert error["code"] == "bad_request"
    assert error["message"].startswith("malformed JSON: ")
    assert "line 1, column 28" in error["message"]
    assert error["details"][0]["field"] == "body"


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (b"[1, 2]", "body", "not an array"),
        (b'"text"', "body", "not a string"),
        (b'{"payload": [1]}', "payload", "payload must be a JSON object, not an array"),
        (b'{"payload": {}, "context": "x"}', "context", "context must be a JSON object, not a string"),
    ],
)
async def test_a_body_of_the_wrong_shape_is_400_naming_the_field(
    gateway: Client, engine: FakeEngine, body: bytes, field: str, words: str
) -> None:
    response = await gateway.post("/workflows/greet/execute", data=body)

    assert response.status == 400
    error = (await response.json())["error"]
    assert error["details"][0]["field"] == field
    assert words in error["message"]


async def test_a_body_over_the_limit_is_413(make_gateway: GatewayFactory, engine: FakeEngine) -> None:
    gateway = await make_gateway(max_body_bytes=1024)

    response = await gateway.post("/workflows/greet/execute", json={"payload": {"name": "x" * 2000}})

    assert response.status == 413
    error = (await response.json())["error"]
    assert error["code"] == "payload_too_large"
    assert "1024 bytes" in error["message"]
    assert engine.calls_to(subjects.ENGINE_RUNS_START) == []


async def test_a_chunked_body_over_the_limit_is_413(make_gateway: GatewayFactory, engine: FakeEngine) -> None:
    gateway = await make_gateway(max_body_bytes=1024)

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"payload": {"name": "'
        for _ in range(20):
            yield b"x" * 100
        yield b'"}}'

    response = await gateway.post("/workflows/greet/execute", data=chunks())

    assert response.status == 413
    assert (await response.json())["error"]["code"] == "payload_too_large"


async def test_an_unknown_route_is_404_json(gateway: Client) -> None:
    response = await gateway.get("/nowhere")

    assert response.status == 404
    assert (await response.json())["error"]["code"] == "not_found"


async def test_a_wrong_method_is_405_json_with_allow(gateway: Client) -> None:
    response = await gateway.delete("/workflows")

    assert response.status == 405
    assert (await response.json())["error"]["code"] == "method_not_allowed"
    assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD", "POST"}


async def test_no_engine_is_503_workflow_engine_unavailable(gateway: Client) -> None:
    response = await gateway.get("/workflows")

    assert response.status == 503
    error = (await response.json())["error"]
    assert error["code"] == "engine_unavailable"
    assert error["message"].startswith("workflow engine unavailable")


async def test_an_engine_that_does_not_answer_in_time_is_503(
    make_gateway: GatewayFactory, engine: FakeEngine
) -> None:
    gateway = await make_gateway(rpc_timeout_s=0.2)
    engine.silent.add(subjects.ENGINE_WORKFLOWS_GET)

    response = await gateway.get("/workflows/greet")

    assert response.status == 503
    assert "no answer within 0.2 s" in (await response.json())["error"]["message"]


async def test_an_engine_failure_is_500_without_its_internals(gateway: Client, engine: FakeEngine) -> None:
    engine.internal_failure.add(subjects.ENGINE_RUNS_GET)

    response = await gateway.get("/runs/abc")

    assert response.status == 500
    text = await response.text()
    assert "Traceback" not in text
    assert "hunter2" not in text
    assert (await response.json())["error"]["code"] == "internal"


async def test_an_unexpected_failure_is_500_without_a_traceback(
    gateway: Client, engine: FakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from omni_gateway.engine import EngineClient

    async def broken(self: EngineClient) -> None:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(EngineClient, "list_workflows", broken)

    response = await gateway.get("/workflows")

    assert response.status == 500
    assert await response.json() == {
        "error": {"code": "internal", "message": "internal error", "details": []}
    }


async def test_an_engine_endpoint_that_raised_is_500_without_its_exception(gateway: Client, nc: NATS) -> None:
    """NATS micro answers for an endpoint that raised: an empty body, the exception in a header."""

    async def raised(msg: Msg) -> None:
        error = {
            "Nats-Service-Error": "UnicodeEncodeError('db password=hunter2')",
            "Nats-Service-Error-Code": "500",
        }
        await nc.publish(msg.reply, b"", headers=error)

    sub = await nc.subscribe(subjects.ENGINE_RUNS_GET, cb=raised)
    await subscribed(nc)
    try:
        response = await gateway.get("/runs/abc")
    finally:
        await sub.unsubscribe()

    # documented for every operation (502 "unreadable reply" before)
    assert response.status == 500, await response.text()
    text = await response.text()
    assert "hunter2" not in text
    assert (await response.json())["error"]["code"] == "internal"
