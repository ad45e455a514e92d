"""The security-service behind real gateways (two replicas, as a deployment runs them): a revoked
key is refused by both within a second, a role change applies at once, and the /security routes
answer as documented."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from aiohttp.test_utils import TestClient, TestServer
from nats.aio.client import Client as NATS
from omni_contract import streams
from omni_gateway.app import build_app
from omni_gateway.settings import GatewaySettings
from omni_runtime.nats import ensure_streams
from omni_testkit import wait_for
from prometheus_client import CollectorRegistry
from service_harness import RunningSecurity, serving_security

pytestmark = pytest.mark.integration

Client = TestClient[Any, Any]


@pytest.fixture
async def sec(nats_url: str, database_url: str) -> AsyncIterator[RunningSecurity]:
    async with serving_security(nats_url, database_url) as running:
        yield running


@pytest.fixture
async def gateways(nats_url: str, sec: RunningSecurity) -> AsyncIterator[list[Client]]:
    connections: list[NATS] = []
    clients: list[Client] = []
    try:
        for _ in range(2):
            conn = await nats.connect(nats_url)
            connections.append(conn)
            await ensure_streams(conn.jetstream(), streams.ALL_STREAMS)
            # A long cache: only the revision watch can make a replica notice a revocation in time.
            settings = GatewaySettings(nats_url=nats_url, auth_cache_s=300.0, rpc_timeout_s=5.0)
            client: Client = TestClient(TestServer(build_app(conn, settings, CollectorRegistry())))
            await client.start_server()
            clients.append(client)
        yield clients
    finally:
        for client in clients:
            await client.close()
        for conn in connections:
            await conn.drain()


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _key_for(admin: Client, admin_key: str, principal: str, role: str) -> dict[str, Any]:
    created = await admin.post(
        "/security/principals",
        json={"id": principal, "kind": "service", "roles": [role]},
        headers=_auth(admin_key),
    )
    assert created.status == 201, await created.text()
    key = await admin.post("/security/keys", json={"principal": principal}, headers=_auth(admin_key))
    assert key.status == 201, await key.text()
    body: dict[str, Any] = await key.json()
    return body


async def test_a_revoked_key_is_refused_by_every_gateway_replica_within_a_second(
    gateways: list[Client], sec: RunningSecurity
) -> None:
    one = gateways[0]
    key = await _key_for(one, sec.admin_key, "dashboard", "viewer")
    for gateway in gateways:  # both have the identity cached now
        assert (await gateway.get("/security/whoami", headers=_auth(key["key"]))).status == 200

    revoked = await one.delete(f"/security/keys/{key['id']}", headers=_auth(sec.admin_key))
    assert revoked.status == 200, await revoked.text()
    started = time.monotonic()

    async def refused_by_both() -> bool:
        statuses = [(await g.get("/security/whoami", headers=_auth(key["key"]))).status for g in gateways]
        return statuses == [401, 401]

    await wait_for(refused_by_both, timeout=1.0, message="the revoked key refused by both replicas")
    assert time.monotonic() - started < 1.0


async def test_a_role_given_through_one_replica_lets_the_principal_in_at_the_other(
    gateways: list[Client], sec: RunningSecurity
) -> None:
    one, two = gateways
    key = await _key_for(one, sec.admin_key, "deployer", "viewer")
    denied = await two.post("/workflows", data="name: x", headers=_auth(key["key"]))
    assert denied.status == 403

    given = await one.put("/security/principals/deployer/roles/developer", headers=_auth(sec.admin_key))
    assert given.status == 200, await given.text()

    async def let_in() -> bool:
        response = await two.get("/security/whoami", headers=_auth(key["key"]))
        return "developer" in (await response.json())["roles"]

    await wait_for(let_in, timeout=1.0)


async def test_the_security_routes_answer_in_the_public_shape(
    gateways: list[Client], sec: RunningSecurity
) -> None:
    gateway = gateways[0]
    admin = _auth(sec.admin_key)

    me = await (await gateway.get("/security/whoami", headers=admin)).json()
    assert me == {
        "principal": "admin",
        "kind": "user",
        "tenant": "default",
        "name": "Administrator",
        "roles": ["admin"],
        "permissions": ["*:*"],
        "scopes": [],
        "via": "api_key",
    }
    roles = await (await gateway.get("/security/roles", headers=admin)).json()
    assert {r["name"] for r in roles["roles"]} == {
        "admin",
        "operator",
        "developer",
        "viewer",
        "agent",
        "service",
    }
    role = await gateway.put("/security/roles/auditor", json={"permissions": ["audit:read"]}, headers=admin)
    assert (role.status, (await role.json())["created"]) == (200, True)
    bad = await gateway.put("/security/roles/auditor", json={"permissions": ["audit"]}, headers=admin)
    assert bad.status == 400
    assert (await bad.json())["error"]["details"][0]["field"] == "permissions[0]"
    check = await gateway.post("/security/check", json={"resource": "audit", "action": "read"}, headers=admin)
    assert (await check.json())["rule"] == "admin: *:*"
    missing = await gateway.get("/security/keys/key_nope", headers=admin)
    assert missing.status == 404
    keys = await (await gateway.get("/security/keys?limit=10", headers=admin)).json()
    assert [k["principal"] for k in keys["keys"]] == ["admin"]
    assert "key" not in keys["keys"][0]
    assert keys["nextCursor"] is None

    async def audited() -> bool:
        page = await (await gateway.get("/security/audit?action=role.*", headers=admin)).json()
        return [r["action"] for r in page["records"]] == ["role.put"]

    await wait_for(audited, timeout=10)
    verified = await (await gateway.get("/security/audit/verify", headers=admin)).json()
    assert verified["ok"] is True


async def test_a_viewer_is_refused_the_security_routes_it_lacks_the_permission_for(
    gateways: list[Client], sec: RunningSecurity
) -> None:
    gateway = gateways[0]
    key = await _key_for(gateway, sec.admin_key, "reader", "viewer")

    for method, path in (("GET", "/security/audit"), ("GET", "/security/roles"), ("POST", "/security/keys")):
        response = await gateway.request(method, path, headers=_auth(key["key"]), json={})
        assert response.status == 403, path
    own = await gateway.get("/security/principals/reader", headers=_auth(key["key"]))
    assert own.status == 200
    other = await gateway.get("/security/principals/admin", headers=_auth(key["key"]))
    assert other.status == 403
