"""SQL over the security-service's schema: tenants, principals, API keys, roles, assignments.

Every function takes a connection (or pool) and does one thing; the callers own transactions.
A tenant comes into being with the shipped roles (``omni_contract.security.SHIPPED_ROLES``), so
a principal can be given a role in any tenant at once. Keys are stored as their SHA-256 digest
and visible prefix only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
from omni_contract.security import SHIPPED_ROLES, ApiKeyInfo, Grant, Identity, PrincipalInfo, RoleInfo
from omni_runtime.db import Conn


@dataclass(frozen=True)
class KeyRow:
    id: str
    prefix: str
    digest: bytes
    principal: str
    tenant: str
    name: str
    scopes: list[str]
    created_at: datetime
    created_by: str | None
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None

    def info(self) -> ApiKeyInfo:
        """What the API shows of a key: never its digest."""
        return ApiKeyInfo(
            id=self.id,
            prefix=self.prefix,
            principal=self.principal,
            tenant=self.tenant,
            name=self.name,
            scopes=self.scopes,
            created_at=self.created_at,
            created_by=self.created_by,
            expires_at=self.expires_at,
            last_used_at=self.last_used_at,
            revoked_at=self.revoked_at,
        )


@dataclass(frozen=True)
class PrincipalRow:
    id: str
    tenant: str
    kind: str
    name: str
    created_at: datetime
    created_by: str | None
    roles: list[str] = field(default_factory=list)

    def info(self) -> PrincipalInfo:
        return PrincipalInfo(
            id=self.id,
            tenant=self.tenant,
            kind=self.kind,
            name=self.name,
            roles=self.roles,
            created_at=self.created_at,
            created_by=self.created_by,
        )


@dataclass(frozen=True)
class RoleRow:
    tenant: str
    name: str
    description: str
    permissions: list[str]
    shipped: bool
    updated_at: datetime

    def info(self) -> RoleInfo:
        return RoleInfo(
            name=self.name,
            description=self.description,
            permissions=self.permissions,
            shipped=self.shipped,
            updated_at=self.updated_at,
        )


_KEY_COLUMNS = (
    "id, prefix, digest, principal, tenant, name, scopes, created_at, created_by, expires_at,"
    " last_used_at, revoked_at"
)


def _key(row: asyncpg.Record) -> KeyRow:
    fields: dict[str, Any] = dict(row.items())
    fields["scopes"] = list(fields["scopes"])
    return KeyRow(**fields)


# -- tenants ------------------------------------------------------------------------------------
async def ensure_tenant(conn: Conn, tenant: str) -> None:
    """The tenant and its shipped roles (those missing: a changed shipped role stays changed)."""
    await conn.execute("INSERT INTO tenants (id) VALUES ($1) ON CONFLICT DO NOTHING", tenant)
    await conn.executemany(
        "INSERT INTO roles (tenant, name, description, permissions, shipped) VALUES ($1, $2, $3, $4, true)"
        " ON CONFLICT DO NOTHING",
        [(tenant, name, description, list(perms)) for name, (description, perms) in SHIPPED_ROLES.items()],
    )


# -- principals ---------------------------------------------------------------------------------
async def create_principal(
    conn: Conn, *, id: str, tenant: str, kind: str, name: str, created_by: str | None
) -> bool:
    """False when a principal with this id exists (in any tenant: ids are global)."""
    status: str = await conn.execute(
        "INSERT INTO principals (id, tenant, kind, name, created_by) VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (id) DO NOTHING",
        id,
        tenant,
        kind,
        name,
        created_by,
    )
    return status.endswith(" 1")


async def get_principal(conn: Conn, principal: str) -> PrincipalRow | None:
    row = await conn.fetchrow(
        "SELECT p.id, p.tenant, p.kind, p.name, p.created_at, p.created_by,"
        " coalesce(array_agg(a.role ORDER BY a.role) FILTER (WHERE a.role IS NOT NULL), '{}') AS roles"
        " FROM principals p LEFT JOIN assignments a ON a.principal = p.id AND a.tenant = p.tenant"
        " WHERE p.id = $1 GROUP BY p.id",
        principal,
    )
    return None if row is None else PrincipalRow(**{**row, "roles": list(row["roles"])})


async def list_principals(conn: Conn, tenant: str, *, after: str | None, limit: int) -> list[PrincipalRow]:
    rows = await conn.fetch(
        "SELECT p.id, p.tenant, p.kind, p.name, p.created_at, p.created_by,"
        " coalesce(array_agg(a.role ORDER BY a.role) FILTER (WHERE a.role IS NOT NULL), '{}') AS roles"
        " FROM principals p LEFT JOIN assignments a ON a.principal = p.id AND a.tenant = p.tenant"
        " WHERE p.tenant = $1 AND ($2::text IS NULL OR p.id > $2)"
        " GROUP BY p.id ORDER BY p.id LIMIT $3",
        tenant,
        after,
        limit,
    )
    return [PrincipalRow(**{**row, "roles": list(row["roles"])}) for row in rows]


async def delete_principal(conn: Conn, tenant: str, principal: str) -> bool:
    status: str = await conn.execute(
        "DELETE FROM principals WHERE tenant = $1 AND id = $2", tenant, principal
    )
    return status.endswith(" 1")


# -- roles and assignments ----------------------------------------------------------------------
async def list_roles(conn: Conn, tenant: str) -> list[RoleRow]:
    rows = await conn.fetch(
        "SELECT tenant, name, description, permissions, shipped, updated_at FROM roles"
        " WHERE tenant = $1 ORDER BY name",
        tenant,
    )
    return [RoleRow(**{**row, "permissions": list(row["permissions"])}) for row in rows]


async def get_role(conn: Conn, tenant: str, name: str) -> RoleRow | None:
    row = await conn.fetchrow(
        "SELECT tenant, name, description, permissions, shipped, updated_at FROM roles"
        " WHERE tenant = $1 AND name = $2",
        tenant,
        name,
    )
    return None if row is None else RoleRow(**{**row, "permissions": list(row["permissions"])})


async def put_role(conn: Conn, tenant: str, name: str, description: str, permissions: list[str]) -> bool:
    """True when the role is new."""
    created: bool = await conn.fetchval(
        "INSERT INTO roles (tenant, name, description, permissions) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (tenant, name) DO UPDATE SET description = excluded.description,"
        " permissions = excluded.permissions, updated_at = now()"
        " RETURNING (xmax = 0)",
        tenant,
        name,
        description,
        permissions,
    )
    return created


async def delete_role(conn: Conn, tenant: str, name: str) -> bool:
    status: str = await conn.execute("DELETE FROM roles WHERE tenant = $1 AND name = $2", tenant, name)
    return status.endswith(" 1")


async def assign(conn: Conn, principal: str, tenant: str, role: str) -> bool:
    """True when the assignment is new."""
    status: str = await conn.execute(
        "INSERT INTO assignments (principal, tenant, role) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        principal,
        tenant,
        role,
    )
    return status.endswith(" 1")


async def unassign(conn: Conn, principal: str, tenant: str, role: str) -> bool:
    status: str = await conn.execute(
        "DELETE FROM assignments WHERE principal = $1 AND tenant = $2 AND role = $3", principal, tenant, role
    )
    return status.endswith(" 1")


async def grants_of(
    conn: Conn, principal: str, tenant: str, *, extra_roles: list[str] | None = None
) -> list[Grant]:
    """The permissions of the principal's roles in ``tenant`` (plus ``extra_roles``, e.g. roles a
    token names), role by role in name order, so a decision's reason is stable."""
    rows = await conn.fetch(
        "SELECT r.name, r.permissions FROM roles r WHERE r.tenant = $1 AND (r.name = ANY($3::text[])"
        " OR r.name IN (SELECT role FROM assignments WHERE principal = $2 AND tenant = $1))"
        " ORDER BY r.name",
        tenant,
        principal,
        extra_roles or [],
    )
    return [Grant(permission=p, role=row["name"]) for row in rows for p in row["permissions"]]


async def identity_of(conn: Conn, principal: PrincipalRow, **extra: object) -> Identity:
    grants = await grants_of(conn, principal.id, principal.tenant)
    return Identity(
        principal=principal.id,
        kind=principal.kind,
        tenant=principal.tenant,
        name=principal.name,
        roles=sorted({g.role for g in grants} | set(principal.roles)),
        grants=grants,
        **extra,  # type: ignore[arg-type]
    )


# -- API keys -----------------------------------------------------------------------------------
async def insert_key(
    conn: Conn,
    *,
    id: str,
    prefix: str,
    digest: bytes,
    principal: str,
    tenant: str,
    name: str,
    scopes: list[str],
    expires_at: datetime | None,
    created_by: str | None,
) -> KeyRow:
    row = await conn.fetchrow(
        f"INSERT INTO api_keys (id, prefix, digest, principal, tenant, name, scopes, expires_at, created_by)"  # noqa: S608
        f" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {_KEY_COLUMNS}",
        id,
        prefix,
        digest,
        principal,
        tenant,
        name,
        scopes,
        expires_at,
        created_by,
    )
    assert row is not None
    return _key(row)


async def key_by_prefix(conn: Conn, prefix: str) -> KeyRow | None:
    row = await conn.fetchrow(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE prefix = $1", prefix)  # noqa: S608
    return None if row is None else _key(row)


async def key_by_id(conn: Conn, tenant: str, key_id: str) -> KeyRow | None:
    row = await conn.fetchrow(
        f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE tenant = $1 AND id = $2",  # noqa: S608
        tenant,
        key_id,
    )
    return None if row is None else _key(row)


async def list_keys(
    conn: Conn, tenant: str, *, principal: str | None, after: str | None, limit: int
) -> list[KeyRow]:
    rows = await conn.fetch(
        f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE tenant = $1"  # noqa: S608
        " AND ($2::text IS NULL OR principal = $2) AND ($3::text IS NULL OR id > $3)"
        " ORDER BY id LIMIT $4",
        tenant,
        principal,
        after,
        limit,
    )
    return [_key(row) for row in rows]


async def revoke_key(conn: Conn, tenant: str, key_id: str) -> KeyRow | None:
    """The key, revoked now (or earlier: revoking twice keeps the first time)."""
    row = await conn.fetchrow(
        f"UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE tenant = $1 AND id = $2"  # noqa: S608
        f" RETURNING {_KEY_COLUMNS}",
        tenant,
        key_id,
    )
    return None if row is None else _key(row)


async def touch_key(conn: Conn, key_id: str, at: datetime) -> None:
    await conn.execute(
        "UPDATE api_keys SET last_used_at = $2 WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)",
        key_id,
        at,
    )
