"""GET/POST /workflows and GET /workflows/{id}: against the fake engine, and (display names, ids,
immutable versions, limits) against the real one."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from gateway_fakes import GREET, FakeEngine
from gateway_runners import serving_engine
from omni_contract import subjects
from omni_contract.rpc import MAX_DEFINITION_BYTES

pytestmark = pytest.mark.integration

Client = TestClient[Any, Any]


async def test_workflows_are_listed(gateway: Client, engine: FakeEngine) -> None:
    response = await gateway.get("/workflows")

    assert response.status == 200
    assert await response.json() == {"workflows": [GREET], "errors": []}
    assert engine.calls_to(subjects.ENGINE_WORKFLOWS_LIST) == [{"tenant": "default"}]


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
        {"source": source, "filename": "echo.json", "tenant": "default"}
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


async def test_a_definition_larger_than_the_limit_is_413_naming_the_body_before_the_engine_is_asked(
    gateway: Client, engine: FakeEngine
) -> None:
    source = "name: big\n# " + "x" * MAX_DEFINITION_BYTES + "\n"

    response = await gateway.post("/workflows", data=source, headers={"Content-Type": "application/yaml"})

    assert response.status == 413
    error = (await response.json())["error"]
    assert error["details"][0]["field"] == "body"
    assert str(MAX_DEFINITION_BYTES) in error["message"]
    assert engine.calls_to(subjects.ENGINE_WORKFLOWS_REGISTER) == []


# -- against the real engine (issue 9, items 6, 13, 14, 15) -------------------------------------


@pytest.fixture
async def real_engine(nats_url: str, database_url: str) -> AsyncIterator[None]:
    """The workflow engine served in this event loop, with the repository's workflows/."""
    async with serving_engine(nats_url, database_url):
        yield


def yaml_of(name: str, *, version: str = "1", tool: str = "util.echo", steps: int = 1) -> str:
    lines = [
        f"name: {json.dumps(name)}",
        f"version: '{version}'",
        "trigger: {event: app.test.defs}",
        "steps:",
    ]
    lines += [f"  - {{name: s{i}, tool: {tool}, provider: p}}" for i in range(steps)]
    return "\n".join(lines) + "\n"


async def post(gateway: Client, source: str) -> tuple[int, dict[str, Any], str | None]:
    response = await gateway.post("/workflows", data=source, headers={"Content-Type": "application/yaml"})
    return response.status, await response.json(), response.headers.get("Location")


async def test_a_display_name_with_spaces_is_registered_and_addressed_by_its_slug(
    gateway: Client, real_engine: None
) -> None:
    status, doc, location = await post(gateway, yaml_of("Bilingual Coach Workflow"))

    assert status == 201
    assert (doc["id"], doc["name"]) == ("bilingual-coach-workflow", "Bilingual Coach Workflow")
    assert "created" not in doc
    assert location == "/workflows/bilingual-coach-workflow"
    listed = {w["id"]: w["name"] for w in (await (await gateway.get("/workflows")).json())["workflows"]}
    assert listed == {
        "bilingual-coach": "bilingual-coach",
        "bilingual-coach-workflow": "Bilingual Coach Workflow",
    }
    read = await gateway.get("/workflows/bilingual-coach-workflow")
    assert read.status == 200
    assert (await read.json())["name"] == "Bilingual Coach Workflow"


async def test_a_version_is_immutable_other_content_is_409_and_the_same_content_is_200(
    gateway: Client, real_engine: None
) -> None:
    first_status, first, _ = await post(gateway, yaml_of("immutable"))

    changed_status, changed, _ = await post(gateway, yaml_of("immutable", tool="util.other"))
    again_status, again, again_location = await post(gateway, yaml_of("immutable"))

    assert (first_status, changed_status, again_status) == (201, 409, 200)
    assert changed["error"]["code"] == "version_exists"
    assert [d["field"] for d in changed["error"]["details"]] == ["version"]
    assert again == first
    assert again_location == "/workflows/immutable"
    current = await (await gateway.get("/workflows/immutable")).json()
    assert current["steps"][0]["tool"] == "util.echo"


async def test_two_names_with_one_slug_are_409_naming_the_name(gateway: Client, real_engine: None) -> None:
    await post(gateway, yaml_of("Order Review"))

    status, answer, _ = await post(gateway, yaml_of("order-review!", version="2"))

    assert status == 409
    assert answer["error"]["code"] == "id_taken"
    assert [d["field"] for d in answer["error"]["details"]] == ["name"]


async def test_an_oversized_workflow_is_422_and_leaves_the_list_and_readiness_working(
    gateway: Client, real_engine: None
) -> None:
    source = (
        "name: huge\nversion: '1'\ntrigger: {event: app.test.huge}\nsteps:\n"
        "- &step {name: s, tool: util.echo, provider: p}\n" + "- *step\n" * 9_999
    )

    status, answer, _ = await post(gateway, source)

    assert status == 422
    assert [d["field"] for d in answer["error"]["details"]] == ["steps"]
    listed = await gateway.get("/workflows")
    assert listed.status == 200
    assert [w["id"] for w in (await listed.json())["workflows"]] == ["bilingual-coach"]
    assert (await gateway.get("/readyz")).status == 200
    assert (await gateway.get("/workflows/huge")).status == 404


async def test_a_definition_whose_problems_are_many_and_long_is_a_readable_422(
    gateway: Client, real_engine: None
) -> None:
    source = yaml_of("many", steps=200).replace("name: s", "name: " + "Y" * 1200)

    status, answer, _ = await post(gateway, source)

    assert status == 422
    assert answer["error"]["code"] == "invalid_workflow"
    assert len(answer["error"]["details"]) == 51
    assert answer["error"]["details"][0]["step"].startswith("YYY")
