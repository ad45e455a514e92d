"""The administrative operations: API keys, principals, roles, assignments, checks, the audit log.

Each operation is one coroutine taking the actor and its typed parameters. The actor's
permissions are read afresh from the database (never trusted from the request), every operation
is confined to the actor's tenant (another tenant's object is ``not_found``), and nobody can
hand out more than they hold: a role's permissions, or a role assigned, must each be covered by
the actor's own grants. Every change and every refusal is audited; every change bumps the
revision that tells gateways to drop their cached decisions.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any

import asyncpg
import msgspec
from omni_contract.security import (
    DEFAULT_TENANT,
    ApiKeyCreated,
    ApiKeyPage,
    AssignmentInfo,
    AuditEvent,
    CheckParams,
    CheckResult,
    Decision,
    Grant,
    Identity,
    KeyCreateParams,
    PrincipalCreateParams,
    PrincipalPage,
    Removed,
    RoleList,
    RoleParams,
    RoleWritten,
    WhoAmI,
    decide,
    new_api_key,
    parse_api_key,
    parse_permission,
)
from omni_runtime.db import Conn

from omni_security import audit, store

Params = dict[str, Any]
Result = Any


class AdminError(Exception):
    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.field = field


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,127}$")
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_PAGE = 500
ADMIN_ROLE = "admin"


def _name(value: str, field: str) -> str:
    if not _NAME.match(value):
        raise AdminError(
            "bad_request",
            f"{field} must be 1-128 letters, digits and _ . @ : - (starting with a letter or digit)",
            field,
        )
    return value


def _permissions(values: list[str], field: str) -> list[str]:
    for i, value in enumerate(values):
        try:
            parse_permission(value)
        except ValueError as exc:
            raise AdminError("bad_request", str(exc), f"{field}[{i}]") from None
    return values


def duration_s(value: str | int, field: str) -> int:
    """``3600``, ``"90m"``, ``"12h"``, ``"30d"`` -> seconds."""
    if isinstance(value, int):
        seconds = value
    else:
        match = _DURATION.match(value.strip())
        if match is None:
            raise AdminError("bad_request", f"{field} must be seconds or a number with s, m, h or d", field)
        seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise AdminError("bad_request", f"{field} must be positive", field)
    return seconds


# -- parameters ---------------------------------------------------------------------------------
class Page(msgspec.Struct, kw_only=True):
    after: str | None = None
    limit: int = 100


class KeyList(Page, kw_only=True):
    principal: str | None = None


class ById(msgspec.Struct, kw_only=True):
    id: str


class ByName(msgspec.Struct, kw_only=True):
    name: str


class Assignment(msgspec.Struct, kw_only=True):
    principal: str
    role: str


class AuditQuery(msgspec.Struct, kw_only=True):
    principal: str | None = None
    action: str | None = None
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    after: int | None = None
    limit: int = 100


@dataclass
class Call:
    actor: Identity
    grants: list[Grant]  # the actor's, read now
    ip_address: str | None
    user_agent: str | None

    def decide(self, resource: str, action: str, instance: str = "") -> Decision:
        return decide(self.grants, resource, action, instance, scopes=self.actor.scopes)

    def covers(self, permission: str) -> bool:
        """Whether the actor holds ``permission`` (a pattern) whole: nobody grants more than that."""
        resource, action, instance = parse_permission(permission)
        for grant in self.grants:
            g_resource, g_action, g_instance = parse_permission(grant.permission)
            if (
                fnmatchcase(resource, g_resource)
                and fnmatchcase(action, g_action)
                and fnmatchcase(instance, g_instance)
            ):
                return True
        return False


class Admin:
    def __init__(
        self,
        pool: asyncpg.Pool,
        emit: Callable[[AuditEvent], Awaitable[None]],
        changed: Callable[[], Awaitable[None]],
    ) -> None:
        self.pool = pool
        self.emit = emit
        self.changed = changed
        self.ops: dict[str, tuple[type[msgspec.Struct], Callable[[Call, Any], Awaitable[Result]]]] = {
            "whoami": (msgspec.Struct, self.whoami),
            "keys.create": (KeyCreateParams, self.create_key),
            "keys.list": (KeyList, self.list_keys),
            "keys.get": (ById, self.get_key),
            "keys.revoke": (ById, self.revoke_key),
            "principals.create": (PrincipalCreateParams, self.create_principal),
            "principals.list": (Page, self.list_principals),
            "principals.get": (ById, self.get_principal),
            "principals.delete": (ById, self.delete_principal),
            "roles.list": (msgspec.Struct, self.list_roles),
            "roles.get": (ByName, self.get_role),
            "roles.put": (RoleParams, self.put_role),
            "roles.delete": (ByName, self.delete_role),
            "assignments.put": (Assignment, self.assign),
            "assignments.delete": (Assignment, self.unassign),
            "check": (CheckParams, self.check),
            "audit.list": (AuditQuery, self.audit_list),
            "audit.verify": (msgspec.Struct, self.audit_verify),
        }

    async def run(
        self, op: str, actor: Identity, params: Params, ip_address: str | None, user_agent: str | None
    ) -> Result:
        entry = self.ops.get(op)
        if entry is None:
            raise AdminError("bad_request", f"unknown operation {op!r}", "op")
        params_type, handler = entry
        try:
            typed = msgspec.convert(params, type=params_type, strict=False)
        except msgspec.ValidationError as exc:
            field = re.search(r"at `\$\.([^`]+)`", str(exc))
            raise AdminError("bad_request", str(exc), field.group(1) if field else None) from None
        async with self.pool.acquire() as conn:
            # Read afresh: a role changed or revoked a moment ago counts now. A token's roles are
            # in the token (the identity carries them), besides those assigned here.
            grants = await store.grants_of(
                conn, actor.principal, actor.tenant, extra_roles=actor.roles if actor.via == "jwt" else None
            )
        call = Call(actor=actor, grants=grants, ip_address=ip_address, user_agent=user_agent)
        return await handler(call, typed)

    # -- helpers --------------------------------------------------------------------------------
    async def _require(self, call: Call, resource: str, action: str, instance: str = "") -> None:
        decision = call.decide(resource, action, instance)
        if not decision.allowed:
            await self._audit(
                call, "access.denied", "denied", f"{resource}:{instance or '*'}", reason=decision.reason
            )
            raise AdminError("forbidden", f"permission {decision.permission} is required: {decision.reason}")

    async def _audit(
        self, call: Call, action: str, outcome: str, resource: str | None, **details: Any
    ) -> None:
        await self.emit(
            AuditEvent(
                action=action,
                outcome=outcome,
                principal=call.actor.principal,
                principal_kind=call.actor.kind,
                tenant=call.actor.tenant,
                resource=resource,
                ip_address=call.ip_address,
                user_agent=call.user_agent,
                at=datetime.now(UTC),
                details=details,
            )
        )

    @staticmethod
    def _limit(value: int) -> int:
        if not 1 <= value <= MAX_PAGE:
            raise AdminError("bad_request", f"limit must be between 1 and {MAX_PAGE}", "limit")
        return value

    # -- operations -----------------------------------------------------------------------------
    async def whoami(self, call: Call, _: msgspec.Struct) -> Result:
        return WhoAmI(
            principal=call.actor.principal,
            kind=call.actor.kind,
            tenant=call.actor.tenant,
            name=call.actor.name,
            roles=sorted({g.role for g in call.grants}),
            permissions=sorted({g.permission for g in call.grants}),
            scopes=call.actor.scopes,
            via=call.actor.via,
        )

    async def create_key(self, call: Call, p: KeyCreateParams) -> Result:
        owner = p.principal or call.actor.principal
        if owner == call.actor.principal:
            await self._require(call, "key", "create")
        else:
            await self._require(call, "key", "manage")
        _permissions(p.scopes, "scopes")
        if p.expires_in is not None and p.expires_at is not None:
            raise AdminError("bad_request", "give expiresIn or expiresAt, not both", "expiresAt")
        expires_at = p.expires_at
        if p.expires_in is not None:
            expires_at = datetime.now(UTC) + timedelta(seconds=duration_s(p.expires_in, "expiresIn"))
        if expires_at is not None:
            if expires_at.tzinfo is None:
                raise AdminError("bad_request", "expiresAt needs a time zone (e.g. Z)", "expiresAt")
            if expires_at <= datetime.now(UTC):
                raise AdminError("bad_request", "expiresAt is in the past", "expiresAt")
        async with self.pool.acquire() as conn:
            principal = await store.get_principal(conn, owner)
            if principal is None or principal.tenant != call.actor.tenant:
                raise AdminError("not_found", f"no principal {owner!r}", "principal")
            key = await self.issue_key(conn, principal, p.name, p.scopes, expires_at, call.actor.principal)
        row, secret = key
        await self._audit(call, "key.create", "success", f"key:{row.id}", owner=owner, prefix=row.prefix)
        await self.changed()
        return ApiKeyCreated(**msgspec.structs.asdict(row.info()), key=secret)

    @staticmethod
    async def issue_key(
        conn: Conn,
        principal: store.PrincipalRow,
        name: str,
        scopes: list[str],
        expires_at: datetime | None,
        created_by: str | None,
        secret: str | None = None,
    ) -> tuple[store.KeyRow, str]:
        secret = secret or new_api_key()
        parsed = parse_api_key(secret)
        if parsed is None:
            raise AdminError("bad_request", "the key is not shaped like an Omni API key", "key")
        row = await store.insert_key(
            conn,
            id=f"key_{secrets.token_hex(8)}",
            prefix=parsed.prefix,
            digest=parsed.digest,
            principal=principal.id,
            tenant=principal.tenant,
            name=name,
            scopes=scopes,
            expires_at=expires_at,
            created_by=created_by,
        )
        return row, secret

    async def list_keys(self, call: Call, p: KeyList) -> Result:
        principal = p.principal
        if not call.decide("key", "read").allowed:
            await self._require(call, "key", "create")  # holders of key:create see their own keys
            if principal not in (None, call.actor.principal):
                await self._require(call, "key", "read")
            principal = call.actor.principal
        async with self.pool.acquire() as conn:
            rows = await store.list_keys(
                conn, call.actor.tenant, principal=principal, after=p.after, limit=self._limit(p.limit)
            )
        return ApiKeyPage(
            keys=[r.info() for r in rows], next_cursor=rows[-1].id if len(rows) == p.limit else None
        )

    async def _own_or(self, call: Call, key: store.KeyRow | None, key_id: str, action: str) -> store.KeyRow:
        if key is None:
            raise AdminError("not_found", f"no key {key_id!r}", "id")
        if key.principal != call.actor.principal:
            await self._require(call, "key", action)
        return key

    async def get_key(self, call: Call, p: ById) -> Result:
        async with self.pool.acquire() as conn:
            key = await store.key_by_id(conn, call.actor.tenant, p.id)
        return (await self._own_or(call, key, p.id, "read")).info()

    async def revoke_key(self, call: Call, p: ById) -> Result:
        async with self.pool.acquire() as conn:
            key = await self._own_or(
                call, await store.key_by_id(conn, call.actor.tenant, p.id), p.id, "manage"
            )
            revoked = await store.revoke_key(conn, call.actor.tenant, key.id)
        assert revoked is not None
        await self._audit(call, "key.revoke", "success", f"key:{key.id}", owner=key.principal)
        await self.changed()
        return revoked.info()

    async def create_principal(self, call: Call, p: PrincipalCreateParams) -> Result:
        await self._require(call, "principal", "write")
        _name(p.id, "id")
        if p.kind not in ("user", "service", "agent"):
            raise AdminError("bad_request", "kind must be user, service or agent", "kind")
        if p.roles:
            await self._require(call, "role", "assign")
        async with self.pool.acquire() as conn, conn.transaction():
            await self._assignable(call, conn, p.roles, "roles")
            if not await store.create_principal(
                conn,
                id=p.id,
                tenant=call.actor.tenant,
                kind=p.kind,
                name=p.name,
                created_by=call.actor.principal,
            ):
                raise AdminError("conflict", f"principal {p.id!r} exists", "id")
            for role in p.roles:
                await store.assign(conn, p.id, call.actor.tenant, role)
            created = await store.get_principal(conn, p.id)
        assert created is not None
        await self._audit(call, "principal.create", "success", f"principal:{p.id}", roles=p.roles)
        await self.changed()
        return created.info()

    async def _assignable(self, call: Call, conn: Conn, roles: list[str], field: str) -> None:
        for i, name in enumerate(roles):
            role = await store.get_role(conn, call.actor.tenant, name)
            if role is None:
                raise AdminError("bad_request", f"no role {name!r}", f"{field}[{i}]")
            beyond = [perm for perm in role.permissions if not call.covers(perm)]
            if beyond:
                raise AdminError(
                    "forbidden",
                    f"role {name!r} grants {', '.join(beyond)}, which you do not hold",
                    f"{field}[{i}]",
                )

    async def list_principals(self, call: Call, p: Page) -> Result:
        await self._require(call, "principal", "read")
        async with self.pool.acquire() as conn:
            rows = await store.list_principals(
                conn, call.actor.tenant, after=p.after, limit=self._limit(p.limit)
            )
        return PrincipalPage(
            principals=[r.info() for r in rows], next_cursor=rows[-1].id if len(rows) == p.limit else None
        )

    async def _principal_in_tenant(self, call: Call, conn: Conn, principal: str) -> store.PrincipalRow:
        row = await store.get_principal(conn, principal)
        if row is None or row.tenant != call.actor.tenant:
            raise AdminError("not_found", f"no principal {principal!r}", "principal")
        return row

    async def get_principal(self, call: Call, p: ById) -> Result:
        if p.id != call.actor.principal:
            await self._require(call, "principal", "read")
        async with self.pool.acquire() as conn:
            return (await self._principal_in_tenant(call, conn, p.id)).info()

    async def delete_principal(self, call: Call, p: ById) -> Result:
        await self._require(call, "principal", "write")
        if p.id == call.actor.principal:
            raise AdminError("conflict", "a principal cannot delete itself", "id")
        async with self.pool.acquire() as conn:
            await self._principal_in_tenant(call, conn, p.id)
            await store.delete_principal(conn, call.actor.tenant, p.id)
        await self._audit(call, "principal.delete", "success", f"principal:{p.id}")
        await self.changed()
        return Removed(id=p.id, deleted=True)

    async def list_roles(self, call: Call, _: msgspec.Struct) -> Result:
        await self._require(call, "role", "read")
        async with self.pool.acquire() as conn:
            return RoleList(roles=[r.info() for r in await store.list_roles(conn, call.actor.tenant)])

    async def get_role(self, call: Call, p: ByName) -> Result:
        await self._require(call, "role", "read")
        async with self.pool.acquire() as conn:
            role = await store.get_role(conn, call.actor.tenant, p.name)
        if role is None:
            raise AdminError("not_found", f"no role {p.name!r}", "name")
        return role.info()

    @staticmethod
    def _not_admin(name: str) -> None:
        if name == ADMIN_ROLE:
            # Changing it could lock every administrator out; a narrower role is a new role.
            raise AdminError("conflict", "the admin role cannot be changed or deleted", "name")

    async def put_role(self, call: Call, p: RoleParams) -> Result:
        await self._require(call, "role", "write")
        _name(p.name, "name")
        self._not_admin(p.name)
        if not p.permissions:
            raise AdminError("bad_request", "a role needs at least one permission", "permissions")
        _permissions(p.permissions, "permissions")
        beyond = [perm for perm in p.permissions if not call.covers(perm)]
        if beyond:
            raise AdminError("forbidden", f"you do not hold {', '.join(beyond)}", "permissions")
        async with self.pool.acquire() as conn:
            created = await store.put_role(conn, call.actor.tenant, p.name, p.description, p.permissions)
            role = await store.get_role(conn, call.actor.tenant, p.name)
        assert role is not None
        await self._audit(
            call, "role.put", "success", f"role:{p.name}", permissions=p.permissions, created=created
        )
        await self.changed()
        return RoleWritten(**msgspec.structs.asdict(role.info()), created=created)

    async def delete_role(self, call: Call, p: ByName) -> Result:
        await self._require(call, "role", "write")
        self._not_admin(p.name)
        async with self.pool.acquire() as conn:
            if not await store.delete_role(conn, call.actor.tenant, p.name):
                raise AdminError("not_found", f"no role {p.name!r}", "name")
        await self._audit(call, "role.delete", "success", f"role:{p.name}")
        await self.changed()
        return Removed(id=p.name, deleted=True)

    async def assign(self, call: Call, p: Assignment) -> Result:
        await self._require(call, "role", "assign")
        async with self.pool.acquire() as conn, conn.transaction():
            await self._principal_in_tenant(call, conn, p.principal)
            await self._assignable(call, conn, [p.role], "role")
            created = await store.assign(conn, p.principal, call.actor.tenant, p.role)
        await self._audit(call, "role.assign", "success", f"principal:{p.principal}", role=p.role)
        await self.changed()
        return AssignmentInfo(principal=p.principal, role=p.role, changed=created)

    async def unassign(self, call: Call, p: Assignment) -> Result:
        await self._require(call, "role", "assign")
        if p.principal == call.actor.principal:
            raise AdminError("conflict", "a principal cannot take a role from itself", "principal")
        async with self.pool.acquire() as conn:
            await self._principal_in_tenant(call, conn, p.principal)
            if not await store.unassign(conn, p.principal, call.actor.tenant, p.role):
                raise AdminError("not_found", f"{p.principal!r} does not have role {p.role!r}", "role")
        await self._audit(call, "role.unassign", "success", f"principal:{p.principal}", role=p.role)
        await self.changed()
        return AssignmentInfo(principal=p.principal, role=p.role, changed=True)

    async def check(self, call: Call, p: CheckParams) -> Result:
        for field, value in (("resource", p.resource), ("action", p.action)):
            if not value or ":" in value:
                raise AdminError("bad_request", f"{field} must be a non-empty name without ':'", field)
        if p.principal in (None, call.actor.principal):
            decision = call.decide(p.resource, p.action, p.instance)
            who = call.actor.principal
        else:
            await self._require(call, "principal", "read")
            async with self.pool.acquire() as conn:
                target = await self._principal_in_tenant(call, conn, p.principal)
                grants = await store.grants_of(conn, target.id, target.tenant)
            decision = decide(grants, p.resource, p.action, p.instance)
            who = target.id
        return CheckResult(
            principal=who,
            allowed=decision.allowed,
            permission=decision.permission,
            reason=decision.reason,
            rule=decision.rule,
        )

    async def audit_list(self, call: Call, p: AuditQuery) -> Result:
        await self._require(call, "audit", "read")
        async with self.pool.acquire() as conn:
            page = await audit.list_records(
                conn,
                principal=p.principal,
                action=p.action,
                outcome=p.outcome,
                since=p.since,
                until=p.until,
                # The deployment's own tenant sees every record, failed authentications (which
                # have no tenant) included; any other tenant sees its own.
                tenant=None if call.actor.tenant == DEFAULT_TENANT else call.actor.tenant,
                after_seq=p.after,
                limit=self._limit(p.limit),
            )
        return msgspec.to_builtins(page)

    async def audit_verify(self, call: Call, _: msgspec.Struct) -> Result:
        await self._require(call, "audit", "read")
        async with self.pool.acquire() as conn:
            result = await audit.verify(conn)
        return msgspec.to_builtins(result)
