"""GET/POST /workflows and GET /workflows/{name}."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from gateway_fakes import GREET, FakeEngine
from omni_contract import subjects

pytestmark = pytest.mark.integration

Client = TestClient[Any, Any]


async def test_workflows_are_listed(gateway: Client, engine: FakeEngine) -> None:
    response = await gateway.get("/workflows")

    assert response.status == 200
    assert await response.json() == {"workflows": [GREET], "errors": []}
    assert engine.calls_to(subjects.ENGINE_WORKFLOWS_LIST) == [{}]


async def test_a_workflow_is_read_as_the_engine_wrote_it(gateway: Client, engine: FakeEngine) -> None:
    response = await gateway.get("/workflows/greet")

    assert response.status == 200
    assert await response.json() == GREET


async def test_an_unknown_workflow_is_404(gateway: Client, engine: FakeEngine) -> None:
    response = await gateway.get("/workflows/nope")

    assert response.status == 404
    assert (await response.json())["error"]["message"] == "unknown workflow 'nope'"


async def test_a_definition_is_registered_and_located(gateway: Client, engine: FakeEngine) -> None:
    source = json.dumps({"name": "echo", "steps": [{"name": "say", "tool": "text.echo"}]})

    response = await gateway.post(
        "/workflows?filename=echo.json", data=source, headers={"Content-Type": "application/json"}
    )

    assert response.status == 201
    assert response.headers["Location"] == "/workflows/echo"
    assert (await response.json())["hash"] == "h-echo"
    assert engine.calls_to(subjects.ENGINE_WORKFLOWS_REGISTER) == [
        {"source": source, "filename": "echo.json"}
    ]


async def test_an_invalid_definition_is_422_naming_file_step_and_field(
    gateway: Client, engine: FakeEngine
) -> None:
    source = json.dumps({"name": "echo", "steps": [{"name": "say"}]})

    response = await gateway.post("/workflows", data=source, headers={"Content-Type": "application/yaml"})

    assert response.status == 422
    error = (await response.json())["error"]
    assert error["code"] == "invalid_workflow"
    assert error["details"] == [
        {"field": "steps[0].tool", "message": "required", "file": "<api>", "step": "say"}
    ]


async def test_a_definition_in_an_unknown_media_type_is_415(gateway: Client, engine: FakeEngine) -> None:
    response = await gateway.post("/workflows", data=b"<xml/>", headers={"Content-Type": "application/xml"})

    assert response.status == 415
    assert engine.calls_to(subjects.ENGINE_WORKFLOWS_REGISTER) == []


async def test_an_empty_definition_is_400(gateway: Client, engine: FakeEngine) -> None:
    response = await gateway.post("/workflows", data=b"  \n", headers={"Content-Type": "application/yaml"})

    assert response.status == 400
    assert (await response.json())["error"]["details"][0]["field"] == "body"
