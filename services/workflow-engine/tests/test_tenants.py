"""Tenants, against real NATS and PostgreSQL: a tenant sees its own runs and the workflows it may
(the shared ones from files, and its own), another tenant's are answered as ones that do not exist;
trigger events carry their tenant in the ``Omni-Tenant`` header; and what was stored before
tenants existed belongs to the default tenant."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
from engine_harness import WORKFLOWS, Harness, open_harness
from omni_contract import rpc, streams, subjects
from omni_contract.envelope import HDR_TENANT
from omni_contract.events import ToolInvoke, ToolResult
from omni_contract.history import RunStarted, StepRef
from omni_engine.definition import definition_to_dict, parse_workflow
from omni_engine.definitions import Definitions
from omni_engine.state import apply
from omni_engine.store import Store, init_connection
from omni_runtime import db
from omni_testkit import wait_for

pytestmark = pytest.mark.integration

ACME, GLOBEX = "acme", "globex"
COACH = "bilingual-coach"  # loaded from workflows/: shared
COACH_EVENT = "app.coach.session.start"
COACH_PAYLOAD = {"userId": "u", "sessionId": "s", "sourceLanguage": "en", "targetLanguage": "es"}


def flow(name: str, steps: str = "  - name: a\n    tool: util.echo\n    provider: p\n", **extra: str) -> str:
    version = extra.get("version", "1")
    event = extra.get("event", f"app.test.{name}")
    return (
        f"name: {name}\nversion: '{version}'\n"
        f"trigger:\n  event: {event}\n  payload:\n    key?: string\n    n?: any\n"
        f"steps:\n{steps}"
    )


async def register(harness: Harness, source: str, tenant: str | None) -> rpc.RpcReply:
    return await harness.call(
        subjects.ENGINE_WORKFLOWS_REGISTER, rpc.RegisterWorkflowRequest(source=source, tenant=tenant)
    )


async def registered(harness: Harness, source: str, tenant: str | None) -> dict[str, Any]:
    reply = await register(harness, source, tenant)
    assert reply.error is None, reply.error
    doc: dict[str, Any] = json.loads(bytes(reply.result))
    return doc


async def start(harness: Harness, workflow: str, tenant: str | None, **kwargs: Any) -> str:
    return await harness.start(workflow, kwargs.pop("payload", {}), tenant=tenant, **kwargs)


async def run_of(harness: Harness, run_id: str, tenant: str | None) -> dict[str, Any]:
    run: dict[str, Any] = await harness.result(
        subjects.ENGINE_RUNS_GET, rpc.GetRequest(name=run_id, tenant=tenant)
    )
    return run


async def finished(harness: Harness, run_id: str, tenant: str | None) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        run = await run_of(harness, run_id, tenant)
        return run if run["status"] in ("completed", "failed", "cancelled") else None

    result: dict[str, Any] = await wait_for(done, timeout=20)
    return result


async def listed_runs(harness: Harness, tenant: str | None, **kwargs: Any) -> rpc.RunPage:
    reply = await harness.call(subjects.ENGINE_RUNS_LIST, rpc.ListRunsRequest(tenant=tenant, **kwargs))
    assert reply.error is None, reply.error
    return msgspec.json.decode(bytes(reply.result), type=rpc.RunPage)


async def listed_workflows(harness: Harness, tenant: str | None) -> set[str]:
    reply = await harness.result(subjects.ENGINE_WORKFLOWS_LIST, rpc.ListWorkflowsRequest(tenant=tenant))
    return {w["id"] for w in reply["workflows"]}


def assert_answered_as_missing(
    foreign: rpc.RpcReply, missing: rpc.RpcReply, foreign_id: str, missing_id: str
) -> None:
    """``foreign`` (about another tenant's run or workflow) is ``missing`` (about one that does not
    exist), but for the id it names."""
    assert foreign.error is not None
    assert missing.error is not None
    assert foreign.error.code == "not_found"
    assert msgspec.to_builtins(foreign.error) == msgspec.to_builtins(
        msgspec.structs.replace(missing.error, message=missing.error.message.replace(missing_id, foreign_id))
    )


async def triggers_settled(harness: Harness) -> bool:
    spec = streams.ENGINE_TRIGGERS
    info = await harness.nc.jetstream().consumer_info(spec.stream, spec.durable)
    return info.num_pending == 0 and info.num_ack_pending == 0


async def publish_event(
    harness: Harness, subject: str, data: dict[str, Any], event_id: str, tenant: str | None
) -> None:
    body = json.dumps({"specversion": "1.0", "id": event_id, "type": subject, "source": "test", "data": data})
    headers = {HDR_TENANT: tenant} if tenant is not None else None
    await harness.nc.jetstream().publish(subject, body.encode(), headers=headers)


# -- runs --------------------------------------------------------------------------------------
async def test_another_tenants_run_is_answered_as_a_run_that_does_not_exist(harness: Harness) -> None:
    async def hang(invoke: ToolInvoke) -> ToolResult | None:
        return None  # the run stays in flight, so a cancel would have something to stop

    harness.respond = hang
    await registered(harness, flow("held"), ACME)
    run_id = await start(harness, "held", ACME)
    await wait_for(lambda: asyncio.sleep(0, bool(harness.invokes("a"))), timeout=10)

    requests: list[tuple[str, Callable[[str], Any]]] = [
        (subjects.ENGINE_RUNS_GET, lambda id_: rpc.GetRequest(name=id_, tenant=GLOBEX)),
        (subjects.ENGINE_RUNS_EVENTS, lambda id_: rpc.RunEventsRequest(run_id=id_, tenant=GLOBEX)),
        (
            subjects.ENGINE_RUNS_CANCEL,
            lambda id_: rpc.CancelRunRequest(run_id=id_, reason="x", tenant=GLOBEX),
        ),
        (subjects.ENGINE_RUNS_RERUN, lambda id_: rpc.RerunRequest(run_id=id_, from_step="a", tenant=GLOBEX)),
    ]
    for subject, request in requests:
        foreign = await harness.call(subject, request(run_id))
        missing = await harness.call(subject, request("no-such-run"))
        assert_answered_as_missing(foreign, missing, run_id, "no-such-run")

    run = await run_of(harness, run_id, ACME)
    assert (run["status"], run["tenant"]) == ("running", ACME)  # the foreign cancel changed nothing
    assert "run.cancel_requested" not in [e["type"] for e in await harness.history(run_id)]
    assert (await run_of(harness, run_id, None))["tenant"] == ACME  # no tenant: no filter
    assert (await listed_runs(harness, GLOBEX)).runs == []
    cancelled = await harness.result(
        subjects.ENGINE_RUNS_CANCEL, rpc.CancelRunRequest(run_id=run_id, reason="mine", tenant=ACME)
    )
    assert cancelled["run_id"] == run_id
    assert (await finished(harness, run_id, ACME))["status"] == "cancelled"


async def test_a_tenant_lists_its_own_runs_page_by_page_and_no_tenant_lists_all(harness: Harness) -> None:
    acme = [await start(harness, COACH, ACME, payload=COACH_PAYLOAD) for _ in range(3)]
    globex = [await start(harness, COACH, GLOBEX, payload=COACH_PAYLOAD) for _ in range(2)]

    first = await listed_runs(harness, ACME, limit=2)
    assert first.next_cursor is not None
    second = await listed_runs(harness, ACME, limit=2, cursor=first.next_cursor)
    assert second.next_cursor is None
    assert [r.run_id for r in first.runs + second.runs] == acme[::-1]  # newest first, none twice
    assert {r.tenant for r in first.runs + second.runs} == {ACME}
    assert [r.run_id for r in (await listed_runs(harness, GLOBEX)).runs] == globex[::-1]
    everyone = await listed_runs(harness, None, workflow=COACH)
    assert {r.run_id for r in everyone.runs} == set(acme + globex)
    assert (await listed_runs(harness, "default")).runs == []
    internal = await start(harness, COACH, None, payload=COACH_PAYLOAD)
    assert [(r.run_id, r.tenant) for r in (await listed_runs(harness, "default")).runs] == [
        (internal, "default")
    ]


async def test_a_shared_workflow_runs_for_every_tenant_and_each_run_is_its_starters(harness: Harness) -> None:
    for tenant in (ACME, GLOBEX):
        assert COACH in await listed_workflows(harness, tenant)
        got = await harness.result(subjects.ENGINE_WORKFLOWS_GET, rpc.GetRequest(name=COACH, tenant=tenant))
        assert got["id"] == COACH
        run_id = await start(harness, COACH, tenant, payload=COACH_PAYLOAD)
        run = await finished(harness, run_id, tenant)
        assert (run["status"], run["tenant"]) == ("completed", tenant)
        started = (await harness.history(run_id))[0]
        assert (started["type"], started["data"]["tenant"]) == ("run.started", tenant)


async def test_one_idempotency_key_in_two_tenants_starts_two_runs(harness: Harness) -> None:
    first = await start(harness, COACH, ACME, payload=COACH_PAYLOAD, idempotency_key="k-1")
    other = await start(
        harness, COACH, GLOBEX, payload={**COACH_PAYLOAD, "userId": "v"}, idempotency_key="k-1"
    )
    again = await start(harness, COACH, ACME, payload=COACH_PAYLOAD, idempotency_key="k-1")

    assert other != first
    assert again == first
    assert (await run_of(harness, other, GLOBEX))["payload"]["userId"] == "v"


async def test_a_run_id_of_another_tenants_run_does_not_give_that_run(harness: Harness) -> None:
    run_id = await start(harness, COACH, ACME, payload=COACH_PAYLOAD)

    reply = await harness.call(
        subjects.ENGINE_RUNS_START,
        rpc.StartRunRequest(workflow=COACH, payload=COACH_PAYLOAD, run_id=run_id, tenant=GLOBEX),
    )

    assert reply.error is not None
    assert (reply.error.code, reply.error.message) == ("conflict", f"run '{run_id}' could not be created")
    assert (await run_of(harness, run_id, None))["tenant"] == ACME


async def test_a_rerun_belongs_to_the_tenant_of_the_run_it_reruns(harness: Harness) -> None:
    steps = (
        "  - name: a\n    tool: util.echo\n    provider: p\n"
        "  - name: b\n    tool: util.echo\n    provider: p\n    input: {x: '${steps.a.output.text}'}\n"
    )
    await registered(harness, flow("redo", steps), ACME)
    old = await start(harness, "redo", ACME)
    await finished(harness, old, ACME)

    for asking in (ACME, None):
        reply = await harness.result(
            subjects.ENGINE_RUNS_RERUN, rpc.RerunRequest(run_id=old, from_step="b", tenant=asking)
        )
        new = await finished(harness, reply["run_id"], ACME)
        assert (new["status"], new["tenant"], new["rerun_of"]) == ("completed", ACME, old)
        assert (await harness.history(new["run_id"]))[0]["data"]["tenant"] == ACME
        hidden = await harness.call(
            subjects.ENGINE_RUNS_GET, rpc.GetRequest(name=new["run_id"], tenant=GLOBEX)
        )
        assert hidden.error is not None
        assert hidden.error.code == "not_found"


# -- workflows ---------------------------------------------------------------------------------
async def test_a_registered_workflow_is_seen_and_run_by_its_tenant_only(harness: Harness) -> None:
    await registered(harness, flow("acme-only"), ACME)

    assert {"acme-only", COACH} <= await listed_workflows(harness, ACME)
    assert "acme-only" not in await listed_workflows(harness, GLOBEX)
    assert "acme-only" not in await listed_workflows(harness, "default")
    assert "acme-only" in await listed_workflows(harness, None)
    everything = await harness.nc.request(subjects.ENGINE_WORKFLOWS_LIST, b"{}", timeout=5)
    assert "acme-only" in {w["id"] for w in json.loads(everything.data)["result"]["workflows"]}

    lookups: list[tuple[str, Callable[[str], Any]]] = [
        (subjects.ENGINE_WORKFLOWS_GET, lambda id_: rpc.GetRequest(name=id_, tenant=GLOBEX)),
        (subjects.ENGINE_WORKFLOWS_VERSIONS, lambda id_: rpc.GetRequest(name=id_, tenant=GLOBEX)),
        (subjects.ENGINE_RUNS_START, lambda id_: rpc.StartRunRequest(workflow=id_, tenant=GLOBEX)),
    ]
    for subject, request in lookups:
        foreign = await harness.call(subject, request("acme-only"))
        missing = await harness.call(subject, request("no-such-flow"))
        assert_answered_as_missing(foreign, missing, "acme-only", "no-such-flow")

    for tenant in (ACME, None):
        got = await harness.result(
            subjects.ENGINE_WORKFLOWS_GET, rpc.GetRequest(name="acme-only", tenant=tenant)
        )
        assert got["id"] == "acme-only"
        versions = await harness.result(
            subjects.ENGINE_WORKFLOWS_VERSIONS, rpc.GetRequest(name="acme-only", tenant=tenant)
        )
        assert len(versions["versions"]) == 1
    run = await finished(harness, await start(harness, "acme-only", ACME), ACME)
    assert (run["status"], run["tenant"]) == ("completed", ACME)


async def test_a_version_of_another_tenants_workflow_is_id_taken_without_naming_the_owner(
    harness: Harness,
) -> None:
    await registered(harness, flow("owned"), ACME)

    for source in (flow("owned", version="2"), flow("owned")):  # a new version, the same content
        reply = await register(harness, source, GLOBEX)
        assert reply.error is not None
        assert reply.error.code == "id_taken"
        assert rpc.ERROR_HTTP_STATUS[reply.error.code] == 409
        assert [d.field for d in reply.error.details] == ["name"]
        assert ACME not in reply.error.message
        assert ACME not in json.dumps(msgspec.to_builtins(reply.error))

    await registered(harness, flow("owned", version="2"), ACME)
    await registered(harness, flow("owned", version="3"), None)  # an internal caller may
    versions = await harness.result(
        subjects.ENGINE_WORKFLOWS_VERSIONS, rpc.GetRequest(name="owned", tenant=ACME)
    )
    assert [v["version"] for v in versions["versions"]] == ["3", "2", "1"]
    assert "owned" not in await listed_workflows(harness, GLOBEX)  # still acme's


async def test_only_the_default_tenant_registers_versions_of_a_shared_workflow(harness: Harness) -> None:
    source = (
        (WORKFLOWS / f"{COACH}.yaml").read_text(encoding="utf-8").replace("version: 1.0.0", "version: 9.0.0")
    )

    refused = await register(harness, source, GLOBEX)
    assert refused.error is not None
    assert refused.error.code == "id_taken"

    doc = await registered(harness, source, "default")
    assert doc["version"] == "9.0.0"
    for tenant in (ACME, GLOBEX):  # still shared, at its new version
        got = await harness.result(subjects.ENGINE_WORKFLOWS_GET, rpc.GetRequest(name=COACH, tenant=tenant))
        assert got["version"] == "9.0.0"


async def test_a_file_shares_a_default_tenants_workflow_and_cannot_take_another_tenants(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    definitions = Definitions(Store(pool))
    await definitions.register(flow("was-default"), "<api>", None)
    await definitions.register(flow("acme-flow"), "<api>", ACME)
    (tmp_path / "was-default.yaml").write_text(flow("was-default", version="2"), encoding="utf-8")
    (tmp_path / "acme-flow.yaml").write_text(flow("acme-flow", version="2"), encoding="utf-8")

    loaded = await definitions.load_dir(tmp_path)

    assert [d.id for d in loaded] == ["was-default"]
    assert await definitions.current("was-default", GLOBEX) is not None  # shared now, at version 2
    [error] = definitions.load_errors
    assert "'acme-flow', which is taken by a workflow this caller cannot change" in str(error)
    current = await definitions.current("acme-flow", ACME)
    assert current is not None
    assert current.version == "1"  # the file changed nothing
    assert await definitions.current("acme-flow", GLOBEX) is None


# -- trigger events ----------------------------------------------------------------------------
async def test_a_trigger_event_starts_a_run_of_the_tenant_in_its_header(harness: Harness) -> None:
    for tenant in (ACME, GLOBEX, None, ACME):  # one event id in each; acme's published twice
        await publish_event(harness, COACH_EVENT, COACH_PAYLOAD, "evt-1", tenant)

    async def three() -> list[rpc.RunSummary] | None:
        runs = (await listed_runs(harness, None, workflow=COACH)).runs
        return runs if len(runs) == 3 else None

    await wait_for(three, timeout=20)
    await wait_for(lambda: triggers_settled(harness), timeout=10)  # acme's second copy as well
    runs = (await listed_runs(harness, None, workflow=COACH)).runs
    assert sorted(str(r.tenant) for r in runs) == sorted([ACME, GLOBEX, "default"])
    for tenant in (ACME, GLOBEX, "default"):
        [mine] = (await listed_runs(harness, tenant)).runs
        started = (await harness.history(mine.run_id))[0]["data"]
        assert (started["tenant"], started["trigger"]["event_id"]) == (tenant, "evt-1")


async def test_an_event_of_a_tenant_that_cannot_see_the_workflow_is_ignored(harness: Harness) -> None:
    await registered(harness, flow("private", event="app.test.private"), ACME)

    await publish_event(harness, "app.test.private", {"n": 1}, "e-globex", GLOBEX)
    await publish_event(harness, "app.test.private", {"n": 2}, "e-default", None)
    await wait_for(lambda: triggers_settled(harness), timeout=10)
    assert (await listed_runs(harness, None, workflow="private")).runs == []
    letters = await harness.nc.jetstream().stream_info(streams.DEADLETTERS.name)
    assert letters.state.messages == 0  # ignored, as for a subject no workflow is triggered by

    await publish_event(harness, "app.test.private", {"n": 3}, "e-acme", ACME)

    async def started() -> list[rpc.RunSummary]:
        return (await listed_runs(harness, None, workflow="private")).runs

    [run] = await wait_for(started, timeout=20)
    assert (run.tenant, run.payload) == (ACME, {"n": 3})


async def test_an_event_reaches_the_waiting_steps_of_its_own_tenants_runs_only(harness: Harness) -> None:
    steps = (
        "  - name: approve\n    wait: {event: app.test.decided, key: '${trigger.payload.key}',"
        " match: id, timeout: 60000}\n"
    )
    await registered(harness, flow("approval", steps), ACME)
    run_id = await start(harness, "approval", ACME, payload={"key": "s-1"})

    async def waiting() -> bool:
        return (await run_of(harness, run_id, ACME))["steps"][0]["status"] == "waiting"

    await wait_for(waiting, timeout=10)
    await publish_event(harness, "app.test.decided", {"id": "s-1", "by": GLOBEX}, "d-1", GLOBEX)
    await publish_event(harness, "app.test.decided", {"id": "s-1", "by": "default"}, "d-2", None)
    await wait_for(lambda: triggers_settled(harness), timeout=10)
    assert await waiting()

    await publish_event(harness, "app.test.decided", {"id": "s-1", "by": ACME}, "d-3", ACME)
    run = await finished(harness, run_id, ACME)
    assert run["steps"][0]["output"] == {"id": "s-1", "by": ACME}


# -- what was stored before tenants ------------------------------------------------------------
OLD_RUN = "old-run"
OLD_STATE_SQL = (
    "SELECT create_run($1, $2, $3, NULL, NULL, $4, $5::text::jsonb, $6::text::jsonb, 'running', $4,"
    " '{}', '{}', '{}', '{}', '{}', NULL)"
)


async def create_run_as_before_tenants(conn: Any, run_id: str) -> None:
    """A run as an engine older than migration 008 wrote it: no tenant in its history or state,
    through create_run's signature of then."""
    now = datetime.now(UTC)
    started = RunStarted(
        workflow="old-flow",
        hash="h-old",
        version="1",
        payload={},
        context={},
        steps=[StepRef(name="a", tool="t.t")],
    )
    state = apply(None, run_id, started, now)
    state.last_seq = 1
    events = [{"type": started.TYPE, "v": started.VERSION, "data": started, "at": now}]
    await conn.execute(
        OLD_STATE_SQL,
        run_id,
        state.workflow,
        state.hash,
        now,
        msgspec.json.encode(events).decode(),
        msgspec.json.encode(state).decode(),
    )


async def test_runs_and_workflows_stored_before_tenants_belong_to_the_default_tenant(
    nats_url: str, database_url: str
) -> None:
    before = [(name, sql) for name, sql in db.migration_files("omni_engine") if name < "008"]
    pool = await db.create_pool(database_url, "engine", min_size=1, max_size=2, init=init_connection)
    try:
        async with pool.acquire() as conn:
            await db.apply_migrations(conn, "engine", before)
            await create_run_as_before_tenants(conn, OLD_RUN)
            for id_, origin in (("api-flow", "api"), ("file-flow", "workflows/file-flow.yaml")):
                defn = parse_workflow(flow(id_), source=origin)
                await conn.execute(
                    "INSERT INTO workflow_definitions (id, name, hash, version, origin, definition)"
                    " VALUES ($1, $1, $2, '1', $3, $4)",
                    id_,
                    defn.content_hash,
                    origin,
                    definition_to_dict(defn),
                )
                await conn.execute(
                    "INSERT INTO workflows (id, hash, trigger) VALUES ($1, $2, $3)",
                    id_,
                    defn.content_hash,
                    defn.trigger.event,
                )

        async for harness in open_harness(nats_url, database_url):  # migrates to the newest
            for tenant in ("default", None):
                run = await run_of(harness, OLD_RUN, tenant)
                assert (run["run_id"], run["tenant"]) == (OLD_RUN, "default")
            foreign = await harness.call(subjects.ENGINE_RUNS_GET, rpc.GetRequest(name=OLD_RUN, tenant=ACME))
            assert foreign.error is not None
            assert foreign.error.code == "not_found"
            assert [r.run_id for r in (await listed_runs(harness, "default")).runs] == [OLD_RUN]
            assert (await listed_runs(harness, ACME)).runs == []
            events = await harness.result(
                subjects.ENGINE_RUNS_EVENTS, rpc.RunEventsRequest(run_id=OLD_RUN, tenant="default")
            )
            assert "tenant" not in events["events"][0]["data"]  # the history is not rewritten

            assert {"api-flow", "file-flow"} <= await listed_workflows(harness, "default")
            assert "file-flow" in await listed_workflows(harness, ACME)  # from a file: shared
            assert "api-flow" not in await listed_workflows(harness, ACME)  # registered: default's

        async with pool.acquire() as conn:
            # An engine of before (a rolling upgrade) still creates runs: the default tenant's.
            await create_run_as_before_tenants(conn, "old-engine-run")
            tenant = await conn.fetchval("SELECT tenant FROM engine.runs WHERE run_id = 'old-engine-run'")
            assert tenant == "default"
    finally:
        await pool.close()
