"""The guard in front of every route: credentials, the permission matrix of the shipped roles,
the identity cache and its invalidation, and the audit events of denials and changes. The
security-service is the fake of ``gateway_fakes`` here; the real one is tested with the gateway
in the security-service's tests and end to end."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import msgspec
import nats
import pytest
from aiohttp.test_utils import TestClient
from gateway_fakes import ADMIN_KEY, ROLE_KEYS, VIEWER_KEY, FakeEngine, FakeSecurity, GatewayFactory
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue
from omni_contract import kv, streams, subjects
from omni_contract.declared import StoredDeclaration, decode_declaration
from omni_contract.envelope import HDR_TENANT
from omni_contract.security import DEFAULT_TENANT, SHIPPED_ROLES, AuditEvent, Grant, Identity, new_api_key
from omni_contract.tools import ToolRegistration, ToolSpec, registry_key
from omni_gateway.app import build_app
from omni_gateway.openapi import OPERATIONS
from omni_gateway.settings import GatewaySettings
from omni_runtime.nats import ensure_key_value
from omni_testkit import wait_for
from prometheus_client import CollectorRegistry

pytestmark = pytest.mark.integration

Client = TestClient[Any, Any]

ALL = frozenset(SHIPPED_ROLES)
A, O, D, V, G, S = "admin", "operator", "developer", "viewer", "agent", "service"  # noqa: E741

# Who may call what: every route of the app, and the shipped roles that may call it. "public":
# anyone, without credentials. A route missing here fails the first test below.
MATRIX: dict[tuple[str, str], frozenset[str] | str] = {
    ("GET", "/workflows"): frozenset({A, O, D, V, S}),
    ("POST", "/workflows"): frozenset({A, O, D}),
    ("GET", "/workflows/{name}"): frozenset({A, O, D, V, S}),
    ("POST", "/workflows/{name}/execute"): frozenset({A, O, D, S}),
    ("GET", "/workflows/{name}/versions"): frozenset({A, O, D, V, S}),
    ("GET", "/runs"): ALL,
    ("GET", "/runs/{runId}"): ALL,
    ("GET", "/runs/{runId}/events"): ALL,
    ("GET", "/runs/{runId}/stream"): ALL,
    ("POST", "/runs/{runId}/cancel"): frozenset({A, O, D}),
    ("POST", "/runs/{runId}/rerun"): frozenset({A, O, D}),
    ("GET", "/deadletters"): frozenset({A, O, D, V}),
    ("GET", "/deadletters/{id}"): frozenset({A, O, D, V}),
    ("POST", "/deadletters/{id}/redrive"): frozenset({A, O}),
    ("POST", "/events/{subject}"): frozenset({A, O, D, G, S}),
    ("GET", "/tools"): ALL,
    ("GET", "/tools/declarations"): ALL,
    ("POST", "/tools/declarations"): frozenset({A, O, D}),
    ("GET", "/tools/declarations/{name}"): ALL,
    ("PUT", "/tools/declarations/{name}"): frozenset({A, O, D}),
    ("DELETE", "/tools/declarations/{name}"): frozenset({A, O, D}),
    ("GET", "/tools/{name}"): ALL,
    ("GET", "/tools/{name}/{provider}"): ALL,
    ("POST", "/tools/{category}/{action}/{provider}"): frozenset({A, O, D, G, S}),
    ("GET", "/servers"): frozenset({A, O, D, V}),
    ("GET", "/servers/{name}"): frozenset({A, O, D, V}),
    ("GET", "/healthz"): "public",
    ("GET", "/readyz"): "public",
    ("GET", "/openapi.json"): ALL,
    ("GET", "/security/whoami"): ALL,
    ("POST", "/security/keys"): frozenset({A, O, D}),
    ("GET", "/security/keys"): frozenset({A, O, D}),
    ("GET", "/security/keys/{id}"): frozenset({A, O, D}),
    ("DELETE", "/security/keys/{id}"): frozenset({A, O, D}),
    ("POST", "/security/principals"): frozenset({A}),
    ("GET", "/security/principals"): frozenset({A, O}),
    ("GET", "/security/principals/{id}"): ALL,
    ("DELETE", "/security/principals/{id}"): frozenset({A}),
    ("PUT", "/security/principals/{id}/roles/{role}"): frozenset({A}),
    ("DELETE", "/security/principals/{id}/roles/{role}"): frozenset({A}),
    ("GET", "/security/roles"): frozenset({A, O, D}),
    ("GET", "/security/roles/{name}"): frozenset({A, O, D}),
    ("PUT", "/security/roles/{name}"): frozenset({A}),
    ("DELETE", "/security/roles/{name}"): frozenset({A}),
    ("POST", "/security/check"): ALL,
    ("GET", "/security/audit"): frozenset({A, O}),
    ("GET", "/security/audit/verify"): frozenset({A, O}),
}

SAMPLE = {
    "name": "greet",
    "runId": "run-1",
    "id": "1",
    "subject": "app.greet.requested",
    "provider": "mock",
    "category": "text",
    "action": "generate",
    "role": "viewer",
}


def _served() -> set[tuple[str, str]]:
    app = build_app(NATS(), GatewaySettings(), CollectorRegistry())
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }


def test_every_route_is_in_the_matrix_and_declares_its_access() -> None:
    assert set(MATRIX) == _served()
    declared = {(op.method.upper(), op.path): op.access for op in OPERATIONS}
    for route, who in MATRIX.items():
        assert declared[route].public == (who == "public"), route


@pytest.mark.parametrize("role", sorted(SHIPPED_ROLES))
async def test_each_shipped_role_is_let_through_exactly_the_routes_of_the_matrix(
    role: str, make_gateway: GatewayFactory, engine: FakeEngine
) -> None:
    gateway = await make_gateway(key=ROLE_KEYS[role], rpc_timeout_s=0.3, execute_wait_s=0.3)
    wrong: list[str] = []
    for (method, path), who in sorted(MATRIX.items()):
        url = path.format_map(SAMPLE)
        response = await gateway.request(method, url, json={} if method in ("POST", "PUT") else None)
        body = await response.read()
        response.close()
        allowed = who == "public" or role in who
        if (response.status == 403) == allowed or response.status == 401:
            wrong.append(f"{method} {path}: {response.status} {body[:200]!r}")
    assert not wrong, "\n".join(wrong)


async def test_without_credentials_only_health_and_readiness_answer(
    make_gateway: GatewayFactory, engine: FakeEngine
) -> None:
    gateway = await make_gateway(key=None)
    for (method, path), who in sorted(MATRIX.items()):
        response = await gateway.request(method, path.format_map(SAMPLE))
        if who == "public":
            assert response.status in (200, 503), path
            continue
        assert response.status == 401, f"{method} {path}"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        error = (await response.json())["error"]
        assert error["code"] == "unauthorized"
        assert "Authorization: Bearer" in error["message"]


async def test_an_unknown_key_is_401_and_a_malformed_header_says_what_is_expected(
    make_gateway: GatewayFactory, engine: FakeEngine
) -> None:
    gateway = await make_gateway(key="omni_aaaaaaaa_" + "x" * 43)
    response = await gateway.get("/workflows")
    assert response.status == 401
    assert (await response.json())["error"]["message"] == "the API key is not valid"

    response = await gateway.get("/workflows", headers={"Authorization": "Basic dXNlcjpwdw=="})
    assert response.status == 401
    assert "Bearer" in (await response.json())["error"]["message"]


async def test_a_denial_names_the_missing_permission(
    make_gateway: GatewayFactory, engine: FakeEngine
) -> None:
    gateway = await make_gateway(key=VIEWER_KEY)

    response = await gateway.post("/workflows/greet/execute", json={"payload": {"name": "Ada"}})

    assert response.status == 403
    error = (await response.json())["error"]
    assert error["code"] == "forbidden"
    assert error["details"] == [{"field": "permission", "message": "workflow:execute:greet"}]
    assert engine.runs == {}


async def test_the_x_api_key_header_is_accepted_too(make_gateway: GatewayFactory, engine: FakeEngine) -> None:
    gateway = await make_gateway(key=None)

    response = await gateway.get("/workflows", headers={"X-API-Key": ADMIN_KEY})

    assert response.status == 200


async def test_an_identity_is_reused_until_the_security_revision_changes(
    make_gateway: GatewayFactory, engine: FakeEngine, security: FakeSecurity, nc: NATS
) -> None:
    gateway = await make_gateway()
    for _ in range(3):
        assert (await gateway.get("/workflows")).status == 200
    assert len(security.requests) == 1

    bucket = await ensure_key_value(nc.jetstream(), kv.SECURITY_REVISION)
    await bucket.put("revision", b"changed")

    async def asked_again() -> bool:
        assert (await gateway.get("/workflows")).status == 200
        return len(security.requests) == 2

    await wait_for(asked_again, timeout=5)


async def test_a_key_removed_at_the_security_service_is_refused_after_the_revision_changes(
    make_gateway: GatewayFactory, engine: FakeEngine, security: FakeSecurity, nc: NATS
) -> None:
    gateway = await make_gateway(key=VIEWER_KEY)
    assert (await gateway.get("/workflows")).status == 200

    del security.identities[VIEWER_KEY]  # revoked
    bucket = await ensure_key_value(nc.jetstream(), kv.SECURITY_REVISION)
    await bucket.put("revision", b"revoked")

    async def refused() -> bool:
        return (await gateway.get("/workflows")).status == 401

    await wait_for(refused, timeout=1)


async def test_denials_and_changes_are_audited_with_who_and_what(
    make_gateway: GatewayFactory, engine: FakeEngine, nats_url: str
) -> None:
    viewer = await make_gateway(key=VIEWER_KEY)
    admin = await make_gateway()
    assert (await viewer.post("/runs/run-1/cancel", json={})).status == 403
    assert (await admin.post("/workflows/greet/execute", json={"payload": {"name": "Ada"}})).status == 200
    assert (await admin.get("/workflows")).status == 200  # a read: not audited

    conn = await nats.connect(nats_url)
    try:
        sub = await conn.jetstream().pull_subscribe(subjects.audit("gateway"), stream=streams.AUDIT.name)
        messages = await sub.fetch(10, timeout=2)
        events = [msgspec.json.decode(m.data, type=AuditEvent) for m in messages]
    finally:
        await conn.drain()
    assert [(e.principal, e.action, e.outcome) for e in events] == [
        ("viewer", "access.denied", "denied"),
        ("admin", "executeWorkflow", "success"),
    ]
    assert events[0].details["permission"] == "run:cancel"
    assert events[1].resource == "POST /workflows/greet/execute"
    assert all(e.ip_address and e.service == "gateway" for e in events)


async def test_concurrent_first_requests_each_get_an_answer(
    make_gateway: GatewayFactory, engine: FakeEngine
) -> None:
    gateway = await make_gateway()
    statuses = await asyncio.gather(*(gateway.get("/workflows") for _ in range(20)))
    assert {s.status for s in statuses} == {200}


# -- tenants and list filters --------------------------------------------------------------------
def _acme(security: FakeSecurity, *permissions: str, principal: str = "acme-dev") -> str:
    """A key of tenant acme with these permissions."""
    key = new_api_key()
    security.identities[key] = Identity(
        principal=principal,
        kind="user",
        tenant="acme",
        roles=["custom"],
        grants=[Grant(permission=p, role="custom") for p in permissions],
    )
    return key


DECLARED = {
    "request": {"method": "GET", "url": "https://status.test/api"},
    "output": {"state": "${response.status}"},
}


async def test_a_tenant_sees_and_changes_only_its_own_declared_tools_and_the_shipped_ones(
    make_gateway: GatewayFactory, engine: FakeEngine, security: FakeSecurity, nc: NATS
) -> None:
    admin = await make_gateway()
    acme = await make_gateway(key=_acme(security, "tool:*"))
    bucket = await ensure_key_value(nc.jetstream(), kv.DECLARED_TOOLS)
    shipped = StoredDeclaration(
        declaration=decode_declaration({"name": "status.shipped", **DECLARED}), origin="file:status.yaml"
    )
    await bucket.put("status.shipped", msgspec.json.encode(shipped))

    assert (await acme.put("/tools/declarations/status.acme", json=DECLARED)).status == 201
    assert (await admin.put("/tools/declarations/status.mine", json=DECLARED)).status == 201

    async def names(client: Client) -> list[str]:
        body = await (await client.get("/tools/declarations")).json()
        return [d["declaration"]["name"] for d in body["declarations"]]

    assert await names(acme) == ["status.acme", "status.shipped"]
    assert await names(admin) == ["status.mine", "status.shipped"]
    assert (await admin.get("/tools/declarations/status.acme")).status == 404
    assert (await admin.delete("/tools/declarations/status.acme")).status == 404
    taken = await admin.put("/tools/declarations/status.acme", json=DECLARED)
    assert taken.status == 409
    assert "acme" not in (await taken.text()).replace("status.acme", "")  # the owner is not named
    assert (await acme.put("/tools/declarations/status.shipped", json=DECLARED)).status == 409
    assert (await acme.delete("/tools/declarations/status.shipped")).status == 409
    replaced = await admin.put("/tools/declarations/status.shipped", json=DECLARED)
    assert replaced.status == 200
    assert (await replaced.json())["tenant"] is None  # still everyone's
    created = await (await acme.get("/tools/declarations/status.acme")).json()
    assert created["tenant"] == "acme"


async def test_tools_the_caller_may_not_execute_are_not_listed(
    make_gateway: GatewayFactory, engine: FakeEngine, security: FakeSecurity, nc: NATS
) -> None:
    registry = await ensure_key_value(nc.jetstream(), kv.TOOL_REGISTRY)
    for name in ("mt.translate", "tts.speak"):
        entry = ToolRegistration(
            spec=ToolSpec(name=name, provider="mock", category=name.split(".")[0]),
            runner="mock-1",
            status="available",
            started_at=datetime.now(UTC),
            heartbeat_at=datetime.now(UTC),
        )
        await bucket_put(registry, registry_key("mock", name, "mock-1"), entry)
    translator = await make_gateway(key=_acme(security, "tool:read", "tool:execute:mt.*"))
    viewer = await make_gateway(key=VIEWER_KEY)

    listed = await (await translator.get("/tools")).json()
    assert [t["name"] for t in listed["tools"]] == ["mt.translate"]
    assert (await (await viewer.get("/tools")).json())["tools"] == []  # viewers execute nothing
    refused = await translator.post("/tools/tts/speak/mock", json={"input": {}})
    assert refused.status == 403


async def bucket_put(bucket: KeyValue, key: str, value: msgspec.Struct) -> None:
    await bucket.put(key, msgspec.json.encode(value))


async def test_runs_of_workflows_the_caller_may_not_read_are_neither_listed_nor_readable(
    make_gateway: GatewayFactory, engine: FakeEngine, security: FakeSecurity
) -> None:
    admin = await make_gateway()
    started = await admin.post("/workflows/greet/execute", json={"payload": {"name": "Ada"}})
    run_id = (await started.json())["runId"]
    only_other = await make_gateway(key=_acme(security, "run:read:other-*"))
    greet_reader = await make_gateway(key=_acme(security, "run:read:greet", principal="reader"))

    assert (await (await only_other.get("/runs")).json())["runs"] == []
    assert (await only_other.get(f"/runs/{run_id}")).status == 404
    assert [r["runId"] for r in (await (await greet_reader.get("/runs")).json())["runs"]] == [run_id]
    assert (await greet_reader.get(f"/runs/{run_id}")).status == 200


async def test_an_event_carries_its_publishers_tenant_whatever_header_the_client_sends(
    make_gateway: GatewayFactory, engine: FakeEngine, security: FakeSecurity, nc: NATS
) -> None:
    acme = await make_gateway(key=_acme(security, "event:publish"))

    response = await acme.post(
        "/events/app.greet.requested", json={"name": "Ada"}, headers={HDR_TENANT: DEFAULT_TENANT}
    )

    assert response.status == 202, await response.text()
    sub = await nc.jetstream().pull_subscribe("app.greet.requested", stream=streams.APP_EVENTS.name)
    [message] = await sub.fetch(1, timeout=2)
    assert message.headers is not None
    assert message.headers[HDR_TENANT] == "acme"


async def test_insecure_no_auth_lets_every_request_in_as_an_admin_for_measuring_only(
    make_gateway: GatewayFactory, engine: FakeEngine, security: FakeSecurity
) -> None:
    gateway = await make_gateway(key=None, insecure_no_auth=True)

    response = await gateway.get("/workflows")

    assert response.status == 200
    assert security.requests == []  # nobody was asked
