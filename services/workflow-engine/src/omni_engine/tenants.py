"""Tenants as the engine sees them.

Every run belongs to exactly one tenant: the one named when it started (``RunStarted.tenant``, the
``runs.tenant`` column), the default tenant when none was named (runs started before tenants
existed, or by an internal caller). A tenant named in a request is a filter: it sees its own runs
only, and a run of another tenant is answered exactly as a run that does not exist. No tenant in a
request (``None``) is an internal caller and sees everything.

Workflows are shared (loaded from files) or owned by the tenant that registered them; a tenant sees
the shared ones and its own (the SQL of ``store.py`` applies this).

Start keys (a caller's Idempotency-Key, a trigger event's id) are kept apart per tenant, so that
two tenants using the same key start two runs and neither learns of the other's. The default
tenant's keys are written as before tenants existed, so runs started then stay deduplicated.
"""

from __future__ import annotations

from omni_contract.security import DEFAULT_TENANT

__all__ = ["DEFAULT_TENANT", "of_run", "scoped", "sees"]


def of_run(tenant: str | None) -> str:
    """The tenant a run (or an event) with ``tenant`` belongs to: the default one when none."""
    return tenant or DEFAULT_TENANT


def sees(asking: str | None, owner: str | None) -> bool:
    """Whether a request of tenant ``asking`` (None: an internal caller) may see a run of ``owner``."""
    return asking is None or of_run(owner) == asking


def scoped(kind: str, tenant: str | None, key: str) -> str:
    """The origin key of a start of ``kind`` (``key``, ``trigger``) with ``key``, for ``tenant``.

    The default tenant's is ``kind:key``, as before tenants; another tenant's is
    ``kind@<length>:<tenant>:key``: the ``@`` keeps it apart from every default key, and the length
    keeps tenants whose names contain ``:`` apart from each other.
    """
    owner = of_run(tenant)
    if owner == DEFAULT_TENANT:
        return f"{kind}:{key}"
    return f"{kind}@{len(owner)}:{owner}:{key}"
