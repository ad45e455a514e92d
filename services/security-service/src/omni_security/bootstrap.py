"""The first admin: the key named by ``OMNI_ADMIN_KEY`` belongs to principal ``admin`` of the
default tenant, with role admin. Idempotent, and safe for replicas starting together (one
transaction under an advisory lock). A key that was revoked stays revoked."""

from __future__ import annotations

import logging

import asyncpg
from omni_contract.security import BOOTSTRAP_ADMIN, DEFAULT_TENANT, parse_api_key, same_digest

from omni_security import store
from omni_security.admin import Admin

log = logging.getLogger(__name__)

_LOCK = 0x6F6D6E6973656331  # "omnisec1"


class BootstrapError(ValueError):
    pass


async def ensure_admin(pool: asyncpg.Pool, key: str) -> bool:
    """True when the key was stored now."""
    parsed = parse_api_key(key)
    if parsed is None:
        raise BootstrapError("OMNI_ADMIN_KEY is not an Omni API key (omni_<8 characters>_<43 characters>)")
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
        await store.ensure_tenant(conn, DEFAULT_TENANT)
        existing = await store.key_by_prefix(conn, parsed.prefix)
        if existing is not None:
            if not same_digest(existing.digest, parsed.digest):
                raise BootstrapError("OMNI_ADMIN_KEY's prefix belongs to another key; make a new admin key")
            if existing.revoked_at is not None:
                log.warning("the admin key from OMNI_ADMIN_KEY was revoked; it is not accepted")
            return False
        await store.create_principal(
            conn,
            id=BOOTSTRAP_ADMIN,
            tenant=DEFAULT_TENANT,
            kind="user",
            name="Administrator",
            created_by=None,
        )
        principal = await store.get_principal(conn, BOOTSTRAP_ADMIN)
        assert principal is not None
        await store.assign(conn, principal.id, principal.tenant, "admin")
        await Admin.issue_key(conn, principal, "bootstrap admin key", [], None, None, secret=key)
    log.info("admin key %s... stored for principal %r", parsed.prefix, BOOTSTRAP_ADMIN)
    return True
