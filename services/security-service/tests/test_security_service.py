"""The security-service against real NATS and PostgreSQL: the first admin, keys and their life,
roles and their limits, tenants, failures slowed then refused, checks with their reasons, the
revision that gateways watch, and the audit of it all."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import jwt
import nats
import pytest
from omni_contract import kv
from omni_contract.security import Identity
from omni_runtime.nats import ensure_key_value
from omni_testkit import wait_for
from service_harness import Refused, RunningSecurity, serving_security

pytestmark = pytest.mark.integration


@pytest.fixture
async def sec(nats_url: str, database_url: str) -> AsyncIterator[RunningSecurity]:
    async with serving_security(nats_url, database_url, slow_after=2, refuse_after=4) as running:
        yield running


async def _principal_with_key(
    sec: RunningSecurity, principal: str, *roles: str, **key: object
) -> tuple[str, Identity]:
    await sec.client.admin(sec.admin, "principals.create", id=principal, kind="service", roles=list(roles))
    created = await sec.client.admin(sec.admin, "keys.create", principal=principal, **key)
    return created["key"], await sec.client.authenticate(created["key"])


async def test_the_admin_key_from_the_settings_belongs_to_the_admin_of_the_default_tenant(
    sec: RunningSecurity,
) -> None:
    assert (sec.admin.principal, sec.admin.tenant, sec.admin.roles) == ("admin", "default", ["admin"])
    assert sec.admin.decide("anything", "at_all").allowed
    whoami = await sec.client.admin(sec.admin, "whoami")
    assert whoami["permissions"] == ["*:*"]


async def test_a_new_key_is_shown_once_and_stored_only_as_a_digest(
    sec: RunningSecurity, database_url: str
) -> None:
    key, identity = await _principal_with_key(sec, "wallboard", "viewer", name="tv")

    assert identity.principal == "wallboard"
    assert identity.roles == ["viewer"]
    assert identity.decide("run", "read").allowed
    assert not identity.decide("workflow", "execute").allowed
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT * FROM security.api_keys")
    finally:
        await conn.close()
    stored = repr([dict(row) for row in rows])
    assert key not in stored
    assert key.split("_")[2] not in stored  # not even the secret part
    listed = await sec.client.admin(sec.admin, "keys.list", principal="wallboard")
    assert [k["name"] for k in listed["keys"]] == ["tv"]
    assert "key" not in listed["keys"][0]
    assert listed["keys"][0]["last_used_at"] is not None


async def test_a_revoked_key_is_refused_and_the_revision_changes(sec: RunningSecurity, nats_url: str) -> None:
    key, _ = await _principal_with_key(sec, "ci", "service")
    nc = await nats.connect(nats_url)
    try:
        bucket = await ensure_key_value(nc.jetstream(), kv.SECURITY_REVISION)
        before = (await bucket.get("revision")).revision
        [listed] = (await sec.client.admin(sec.admin, "keys.list", principal="ci"))["keys"]

        revoked = await sec.client.admin(sec.admin, "keys.revoke", id=listed["id"])

        assert revoked["revoked_at"] is not None
        assert (await bucket.get("revision")).revision > before
    finally:
        await nc.drain()
    with pytest.raises(Refused) as refused:
        await sec.client.authenticate(key)
    assert refused.value.error.code == "unauthorized"
    assert "revoked" in refused.value.error.message


async def test_an_expired_key_is_refused(sec: RunningSecurity) -> None:
    at = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    key, _ = await _principal_with_key(sec, "short", "viewer", expiresAt=at)

    async def expired() -> bool:
        try:
            await sec.client.authenticate(key)
        except Refused as exc:
            return "expired" in exc.error.message
        return False

    await wait_for(expired, timeout=5)


async def test_bad_key_input_is_refused_with_the_field_named(sec: RunningSecurity) -> None:
    for params, field in (
        ({"expiresIn": "soon"}, "expiresIn"),
        ({"scopes": ["nope"]}, "scopes[0]"),
        ({"expiresAt": "2020-01-01T00:00:00Z"}, "expiresAt"),
        ({"principal": "nobody"}, "principal"),
    ):
        with pytest.raises(Refused) as refused:
            await sec.client.admin(sec.admin, "keys.create", **params)
        assert refused.value.error.details[0].field == field, params


async def test_a_key_with_scopes_allows_only_what_both_its_roles_and_its_scopes_allow(
    sec: RunningSecurity,
) -> None:
    _, identity = await _principal_with_key(
        sec, "bot", "developer", scopes=["run:read", "workflow:execute:greet"]
    )

    assert identity.decide("run", "read").allowed
    assert identity.decide("workflow", "execute", "greet").allowed
    assert not identity.decide("workflow", "execute", "other").allowed
    assert "scopes" in identity.decide("tool", "declare").reason


async def test_nobody_hands_out_more_than_they_hold(sec: RunningSecurity) -> None:
    _, operator = await _principal_with_key(sec, "op", "operator")
    await sec.client.admin(sec.admin, "principals.create", id="dev", kind="user")

    for op, params in (
        ("roles.put", {"name": "root", "permissions": ["*:*"]}),
        ("assignments.put", {"principal": "dev", "role": "admin"}),
        ("principals.create", {"id": "x", "roles": ["admin"]}),
    ):
        with pytest.raises(Refused) as refused:
            await sec.client.admin(operator, op, **params)
        assert refused.value.error.code == "forbidden", op
    # What the admin holds, the admin may give.
    written = await sec.client.admin(
        sec.admin, "roles.put", name="auditor", permissions=["audit:read", "run:read"]
    )
    assert written["created"] is True
    assert (await sec.client.admin(sec.admin, "assignments.put", principal="dev", role="auditor"))["changed"]


async def test_a_role_change_counts_at_the_next_authentication(sec: RunningSecurity) -> None:
    key, before = await _principal_with_key(sec, "reporter", "viewer")
    assert not before.decide("audit", "read").allowed

    await sec.client.admin(sec.admin, "roles.put", name="viewer", permissions=["run:read", "audit:read"])

    after = await sec.client.authenticate(key)
    assert after.decide("audit", "read").allowed
    assert not after.decide("tool", "read").allowed


async def test_check_says_which_rule_decides(sec: RunningSecurity) -> None:
    await _principal_with_key(sec, "svc", "service")

    allowed = await sec.client.admin(
        sec.admin, "check", principal="svc", resource="workflow", action="execute", instance="greet"
    )
    denied = await sec.client.admin(sec.admin, "check", principal="svc", resource="workflow", action="write")

    assert allowed == {
        "principal": "svc",
        "allowed": True,
        "permission": "workflow:execute:greet",
        "reason": "role service: workflow:execute",
        "rule": "service: workflow:execute",
    }
    assert denied["allowed"] is False
    assert denied["reason"] == "no role grants workflow:write"


async def test_another_tenants_objects_are_not_found(sec: RunningSecurity, database_url: str) -> None:
    key, _ = await _principal_with_key(sec, "own", "viewer")
    conn = await asyncpg.connect(database_url)
    try:  # a second tenant with its own admin, made directly: the API makes principals in one's own
        await conn.execute("INSERT INTO security.tenants (id) VALUES ('acme')")
        await conn.execute(
            "INSERT INTO security.roles (tenant, name, permissions) VALUES ('acme', 'admin', '{*:*}')"
        )
        await conn.execute(
            "INSERT INTO security.principals (id, tenant, kind) VALUES ('acme-admin', 'acme', 'user')"
        )
        await conn.execute("INSERT INTO security.assignments VALUES ('acme-admin', 'acme', 'admin')")
    finally:
        await conn.close()
    other = Identity(principal="acme-admin", kind="user", tenant="acme", roles=["admin"])
    [default_key] = (await sec.client.admin(sec.admin, "keys.list", principal="own"))["keys"]

    for op, params in (
        ("keys.get", {"id": default_key["id"]}),
        ("keys.revoke", {"id": default_key["id"]}),
        ("principals.get", {"id": "own"}),
    ):
        with pytest.raises(Refused) as refused:
            await sec.client.admin(other, op, **params)
        assert refused.value.error.code == "not_found", op
    assert (await sec.client.admin(other, "keys.list"))["keys"] == []
    assert (await sec.client.authenticate(key)).principal == "own"  # untouched


async def test_repeated_failures_from_one_source_are_slowed_then_refused_with_a_retry_time(
    sec: RunningSecurity,
) -> None:
    bad = "omni_zzzzzzzz_" + "A" * 43
    times: list[float] = []
    for _ in range(4):
        started = time.perf_counter()
        with pytest.raises(Refused) as refused:
            await sec.client.authenticate(bad, ip_address="198.51.100.7")
        times.append(time.perf_counter() - started)
        assert refused.value.error.code == "unauthorized"
    with pytest.raises(Refused) as limited:
        await sec.client.authenticate(sec.admin_key, ip_address="198.51.100.7")  # even a good key

    assert limited.value.error.code == "rate_limited"
    assert limited.value.error.retry_after_s is not None
    assert limited.value.error.retry_after_s >= 1
    assert times[3] >= 0.5  # the 3rd and 4th failures past slow_after=2 were delayed (0.25 s, 0.5 s)
    # Another source is not affected.
    assert (await sec.client.authenticate(sec.admin_key, ip_address="198.51.100.8")).principal == "admin"


async def test_authentications_and_changes_are_in_the_audit_log_and_the_chain_verifies(
    sec: RunningSecurity,
) -> None:
    with pytest.raises(Refused):
        await sec.client.authenticate("omni_zzzzzzzz_" + "B" * 43)
    await _principal_with_key(sec, "audited", "viewer")

    async def logged() -> list[tuple[str, str, str | None]]:
        page = await sec.client.admin(sec.admin, "audit.list", limit=50)
        return [(r["action"], r["outcome"], r["principal"]) for r in page["records"]]

    wanted = {
        ("auth.authenticate", "failure", None),
        ("principal.create", "success", "admin"),
        ("key.create", "success", "admin"),
        ("auth.authenticate", "success", "audited"),
    }

    async def all_logged() -> bool:
        return wanted <= set(await logged())

    await wait_for(all_logged, timeout=10)
    failures = await sec.client.admin(sec.admin, "audit.list", outcome="failure", action="auth.*")
    assert failures["records"]
    assert all(r["outcome"] == "failure" for r in failures["records"])
    assert failures["records"][0]["details"]["reason"] == "unknown_key"
    verified = await sec.client.admin(sec.admin, "audit.verify")
    assert verified["ok"] is True
    assert verified["checked"] >= 4


async def test_concurrent_authentications_are_answered(sec: RunningSecurity) -> None:
    identities = await asyncio.gather(*(sec.client.authenticate(sec.admin_key) for _ in range(30)))
    assert {i.principal for i in identities} == {"admin"}


async def test_a_jwt_of_the_configured_issuer_is_an_identity_with_the_tenant_and_roles_it_names(
    nats_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "a-shared-secret-of-the-identity-provider-0123456789"
    for name, value in {
        "OMNI_SECURITY_JWT_ISSUER": "https://idp.test",
        "OMNI_SECURITY_JWT_AUDIENCE": "omni",
        "OMNI_SECURITY_JWT_ALGORITHMS": "HS256",
        "OMNI_SECURITY_JWT_HS256_SECRET": secret,
    }.items():
        monkeypatch.setenv(name, value)
    claims = {
        "sub": "user-42",
        "iss": "https://idp.test",
        "aud": "omni",
        "exp": int(time.time()) + 300,
        "tenant": "acme",
        "roles": ["developer"],
    }
    async with serving_security(nats_url, database_url) as sec:
        identity = await sec.client.authenticate(bearer=jwt.encode(claims, secret, algorithm="HS256"))

        assert (identity.principal, identity.tenant, identity.roles, identity.via) == (
            "user-42",
            "acme",
            ["developer"],
            "jwt",
        )
        assert identity.decide("workflow", "execute", "any").allowed
        assert not identity.decide("audit", "read").allowed
        forged = jwt.encode(claims, "another-secret-of-the-same-length-0123456789abc", algorithm="HS256")
        with pytest.raises(Refused) as refused:
            await sec.client.authenticate(bearer=forged)
        assert refused.value.error.code == "unauthorized"
        assert forged not in refused.value.error.message


async def test_audit_events_are_still_appended_after_a_quiet_spell(sec: RunningSecurity) -> None:
    # The quiet spell is what is tested: FastStream's batch pull loop ended on the first pull that
    # found nothing (nats-py 2.16 raises the builtin TimeoutError), so later events stayed unread.
    await asyncio.sleep(2.5)
    await _principal_with_key(sec, "late", "viewer")

    async def appended() -> bool:
        page = await sec.client.admin(sec.admin, "audit.list", action="principal.create")
        return [r["resource"] for r in page["records"]] == ["principal:late"]

    await wait_for(appended, timeout=10)
