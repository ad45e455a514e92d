"""The engine's RPC answers always fit in one NATS message (issue 9, items 13 and 15): an error
too large is cut, and a list too large shows summaries."""

from __future__ import annotations

from typing import Any, cast

import msgspec
import yaml
from omni_contract import rpc
from omni_engine.api import EngineApi
from omni_engine.definition import WorkflowDefinition, WorkflowError, parse_workflow
from omni_engine.definitions import Definitions

LIMIT = 64 * 1024


def workflow(index: int) -> WorkflowDefinition:
    steps = [
        {"name": f"s{i}", "tool": "util.echo", "provider": "p", "description": "d" * 200} for i in range(40)
    ]
    data = {"name": f"Workflow {index}", "version": "1", "trigger": {"event": "app.test.x"}, "steps": steps}
    return parse_workflow(yaml.safe_dump(data))


class StubDefinitions:
    def __init__(self, defs: list[WorkflowDefinition]) -> None:
        self.defs = defs
        self.load_errors: list[WorkflowError] = []

    async def all_current(self) -> tuple[list[WorkflowDefinition], list[WorkflowError]]:
        return self.defs, []


def api(defs: list[WorkflowDefinition] | None = None) -> EngineApi:
    stub = cast(Definitions, StubDefinitions(defs or []))
    return EngineApi(cast(Any, None), stub, cast(Any, None), max_reply_bytes=LIMIT)


def test_an_error_reply_too_large_for_one_message_is_cut_to_fit() -> None:
    problems = [rpc.FieldProblem(field=f"steps[{i}].name", message="x" * 5000) for i in range(500)]
    reply = rpc.RpcReply(error=rpc.RpcError(code="invalid_workflow", message="m" * 200_000, details=problems))

    data = api()._fit("omni.rpc.engine.workflows.register", reply)

    assert len(data) < LIMIT
    error = msgspec.json.decode(data, type=rpc.RpcReply).error
    assert error is not None
    assert error.code == "invalid_workflow"
    assert error.details[0].field == "steps[0].name"
    assert "500 problems" in error.message


async def test_a_list_too_large_for_one_message_shows_each_workflow_as_a_summary() -> None:
    defs = [workflow(i) for i in range(20)]

    listing = await api(defs).workflows_list(None)

    assert len(msgspec.json.encode(listing)) < LIMIT
    assert [w["id"] for w in listing["workflows"]] == [f"workflow-{i}" for i in range(20)]
    assert all(w["summary"] is True and w["steps"] == [] for w in listing["workflows"])
    assert "summary: true" in listing["errors"][-1]["message"]


async def test_a_list_that_fits_shows_whole_definitions() -> None:
    listing = await api([workflow(1)]).workflows_list(None)

    assert listing["workflows"][0]["name"] == "Workflow 1"
    assert len(listing["workflows"][0]["steps"]) == 40
    assert listing["errors"] == []
