"""Workflow definitions over the engine's RPC, against real NATS and PostgreSQL: display names and
ids (issue 9, item 6), limits checked before anything is stored and lists that no stored row can
break (item 13), immutable versions (item 14), and error replies that always fit in one NATS
message (the 502 "unreadable reply ... truncated" of item 15)."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import msgspec
import pytest
from engine_harness import Harness
from omni_contract import rpc, subjects
from omni_engine.definition import MAX_STEPS

pytestmark = pytest.mark.integration


def definition(
    name: str, *, version: str = "1", id_: str | None = None, tool: str = "util.echo", steps: int = 1
) -> str:
    lines = [f"name: {json.dumps(name)}"]
    if id_ is not None:
        lines.append(f"id: {id_}")
    lines += [f"version: '{version}'", "trigger:", "  event: app.test.defs", "steps:"]
    for i in range(steps):
        lines += [f"  - name: s{i}", f"    tool: {tool}", "    provider: p"]
    return "\n".join(lines) + "\n"


async def register(harness: Harness, source: str) -> rpc.RpcReply:
    return await harness.call(subjects.ENGINE_WORKFLOWS_REGISTER, rpc.RegisterWorkflowRequest(source=source))


async def listing(harness: Harness) -> dict[str, Any]:
    result: dict[str, Any] = await harness.result(subjects.ENGINE_WORKFLOWS_LIST, {})
    return result


async def versions(harness: Harness, id_: str) -> list[dict[str, Any]]:
    result = await harness.result(subjects.ENGINE_WORKFLOWS_VERSIONS, rpc.GetRequest(name=id_))
    found: list[dict[str, Any]] = result["versions"]
    return found


# -- names and ids (item 6) ---------------------------------------------------------------------
async def test_a_display_name_with_spaces_is_accepted_and_addressed_by_its_slug(harness: Harness) -> None:
    doc = await harness.register(definition("Bilingual Coach Workflow"))

    assert (doc["id"], doc["name"]) == ("bilingual-coach-workflow", "Bilingual Coach Workflow")
    listed = {w["id"]: w["name"] for w in (await listing(harness))["workflows"]}
    assert listed["bilingual-coach-workflow"] == "Bilingual Coach Workflow"
    got = await harness.result(subjects.ENGINE_WORKFLOWS_GET, rpc.GetRequest(name="bilingual-coach-workflow"))
    assert (got["id"], got["name"]) == ("bilingual-coach-workflow", "Bilingual Coach Workflow")
    by_name = await harness.call(
        subjects.ENGINE_WORKFLOWS_GET, rpc.GetRequest(name="Bilingual Coach Workflow")
    )
    assert by_name.error is not None
    assert by_name.error.code == "not_found"
    assert "'bilingual-coach-workflow'" in by_name.error.message
    run = await harness.finished(await harness.start("bilingual-coach-workflow", {}))
    assert (run["workflow"], run["status"]) == ("bilingual-coach-workflow", "completed")


async def test_an_explicit_id_is_the_address_whatever_the_name(harness: Harness) -> None:
    doc = await harness.register(definition("Coach (beta) — Español", id_="coach-beta"))

    assert (doc["id"], doc["name"]) == ("coach-beta", "Coach (beta) — Español")
    got = await harness.result(subjects.ENGINE_WORKFLOWS_GET, rpc.GetRequest(name="coach-beta"))
    assert got["hash"] == doc["hash"]


async def test_the_shipped_workflow_keeps_its_address(harness: Harness) -> None:
    listed = {w["id"]: w for w in (await listing(harness))["workflows"]}

    assert listed["bilingual-coach"]["name"] == "bilingual-coach"
    run_id = await harness.start(
        "bilingual-coach", {"userId": "u", "sessionId": "s", "sourceLanguage": "en", "targetLanguage": "es"}
    )
    assert (await harness.run(run_id))["workflow"] == "bilingual-coach"


async def test_two_names_with_one_slug_are_a_409_naming_the_name(harness: Harness) -> None:
    await harness.register(definition("Order Review"))

    reply = await register(harness, definition("order review!", tool="util.other"))

    assert reply.error is not None
    assert reply.error.code == "id_taken"
    assert rpc.ERROR_HTTP_STATUS[reply.error.code] == 409
    assert [d.field for d in reply.error.details] == ["name"]
    assert "'order-review'" in reply.error.message
    assert "'Order Review'" in reply.error.message
    assert len(await versions(harness, "order-review")) == 1
    current = await harness.result(subjects.ENGINE_WORKFLOWS_GET, rpc.GetRequest(name="order-review"))
    assert current["name"] == "Order Review"


async def test_an_invalid_id_is_refused_naming_the_id(harness: Harness) -> None:
    reply = await register(harness, definition("Fine name", id_="Not A Slug"))

    assert reply.error is not None
    assert reply.error.code == "invalid_workflow"
    assert [d.field for d in reply.error.details] == ["id"]


# -- immutable versions (item 14) ---------------------------------------------------------------
async def test_the_same_version_with_other_content_is_a_409_and_the_first_stays_current(
    harness: Harness,
) -> None:
    first = await harness.register(definition("immutable", version="1.0"))

    reply = await register(harness, definition("immutable", version="1.0", tool="util.other"))

    assert reply.error is not None
    assert reply.error.code == "version_exists"
    assert rpc.ERROR_HTTP_STATUS[reply.error.code] == 409
    assert [d.field for d in reply.error.details] == ["version"]
    current = await harness.result(subjects.ENGINE_WORKFLOWS_GET, rpc.GetRequest(name="immutable"))
    assert current["hash"] == first["hash"]
    assert current["steps"][0]["tool"] == "util.echo"
    assert [(v["hash"], v["current"]) for v in await versions(harness, "immutable")] == [
        (first["hash"], True)
    ]


async def test_the_same_version_with_the_same_content_is_idempotent(harness: Harness) -> None:
    first = await register(harness, definition("again"))
    second = await register(harness, definition("again"))

    docs = [json.loads(bytes(r.result)) for r in (first, second)]
    assert [d["created"] for d in docs] == [True, False]
    assert docs[0]["hash"] == docs[1]["hash"]
    assert len(await versions(harness, "again")) == 1


async def test_a_new_version_becomes_current_and_an_old_one_posted_again_changes_nothing(
    harness: Harness,
) -> None:
    v1 = await harness.register(definition("evolving", version="1"))
    v2 = await harness.register(definition("evolving", version="2", tool="util.other"))

    again = await register(harness, definition("evolving", version="1"))

    assert json.loads(bytes(again.result))["created"] is False
    current = await harness.result(subjects.ENGINE_WORKFLOWS_GET, rpc.GetRequest(name="evolving"))
    assert current["hash"] == v2["hash"]
    assert [v["hash"] for v in await versions(harness, "evolving")] == [v2["hash"], v1["hash"]]


# -- limits, and lists no stored row can break (item 13) ----------------------------------------
async def test_a_workflow_of_the_most_steps_allowed_registers_and_reads_back(harness: Harness) -> None:
    # The long-history benchmark runs 1,000 sequential steps: the limit must leave room for it.
    stored = await harness.register(definition("longest", steps=MAX_STEPS))

    got = await harness.result(subjects.ENGINE_WORKFLOWS_GET, rpc.GetRequest(name=stored["id"]))
    assert len(got["steps"]) == MAX_STEPS >= 1000


async def test_a_ten_thousand_step_workflow_is_refused_before_anything_is_stored(harness: Harness) -> None:
    # One step written once and repeated by alias: small text, 10,000 steps.
    source = (
        "name: huge\nversion: '1'\ntrigger: {event: app.test.huge}\nsteps:\n"
        "- &step {name: s, tool: util.echo, provider: p}\n" + "- *step\n" * 9_999
    )

    reply = await register(harness, source)

    assert reply.error is not None
    assert reply.error.code == "invalid_workflow"
    assert [d.field for d in reply.error.details] == ["steps"]
    assert f"more than the {MAX_STEPS}" in reply.error.details[0].message
    ids = [w["id"] for w in (await listing(harness))["workflows"]]
    assert "huge" not in ids
    assert "bilingual-coach" in ids
    missing = await harness.call(subjects.ENGINE_WORKFLOWS_VERSIONS, rpc.GetRequest(name="huge"))
    assert missing.error is not None
    assert missing.error.code == "not_found"


async def test_a_stored_definition_that_no_longer_loads_is_skipped_by_the_list(harness: Harness) -> None:
    await harness.register(definition("healthy"))
    steps = [{"name": f"s{i}", "tool": "util.echo", "provider": ["p"]} for i in range(MAX_STEPS + 1)]
    broken = {"name": "broken", "version": "1", "trigger": {"event": "app.test.defs"}, "steps": steps}
    conn = await asyncpg.connect(harness.database_url)
    try:  # what an engine without limits stored
        await conn.execute(
            "INSERT INTO engine.workflow_definitions (id, name, hash, version, origin, definition)"
            " VALUES ('broken', 'broken', 'h-broken', '1', 'api', $1::jsonb)",
            json.dumps(broken),
        )
        await conn.execute(
            "INSERT INTO engine.workflows (id, hash, trigger) VALUES ('broken', 'h-broken', 'app.test.defs')"
        )
    finally:
        await conn.close()

    listed = await listing(harness)

    assert {"healthy", "bilingual-coach"} <= {w["id"] for w in listed["workflows"]}
    assert "broken" not in {w["id"] for w in listed["workflows"]}
    assert any("'broken'" in e["message"] and "no longer loads" in e["message"] for e in listed["errors"])
    got = await harness.call(subjects.ENGINE_WORKFLOWS_GET, rpc.GetRequest(name="broken"))
    assert got.error is not None
    assert got.error.code == "conflict"
    assert "register a corrected version" in got.error.message
    # A valid version registered under its id replaces it.
    fixed = await harness.register(definition("broken", version="2"))
    assert fixed["id"] == "broken"
    assert "broken" in {w["id"] for w in (await listing(harness))["workflows"]}


# -- replies that fit (item 15) -----------------------------------------------------------------
async def test_a_definition_whose_problems_echo_a_huge_value_gets_a_readable_error(harness: Harness) -> None:
    # Before: the error repeated the 600 kB step name (message and details), more than one NATS
    # message carries; the reply could not be sent and the gateway read an empty one (502).
    source = definition("echoed").replace("name: s0", "name: " + "X" * 600_000)

    reply = await register(harness, source)

    assert reply.error is not None
    assert reply.error.code == "invalid_workflow"
    assert len(msgspec.json.encode(reply)) < 10_000
    assert reply.error.details[0].message.startswith("the definition is ")


async def test_a_definition_with_many_long_problems_gets_an_error_that_fits(harness: Harness) -> None:
    long_name = "Y" * 1200
    source = definition("many", steps=150).replace("name: s", f"name: {long_name}")

    reply = await register(harness, source)

    assert reply.error is not None
    assert reply.error.code == "invalid_workflow"
    assert len(msgspec.json.encode(reply)) < 100_000
    assert len(reply.error.details) == 51  # 50 problems and the count of the others
    assert "more problems" in reply.error.details[-1].message
