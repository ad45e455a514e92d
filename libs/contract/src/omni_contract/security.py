"""Who a caller is and what it may do: the security-service's request/reply payloads, API key
format, shipped roles, and the one decision function that every enforcing service uses.

Permissions are ``resource:action`` with an optional third part naming which instances:
``workflow:execute``, ``workflow:*``, ``tool:execute:mt.*``, ``*:*``. Each part is a glob (``*``
matches anything, ``?`` one character); a grant without an instance part covers every instance.
A principal's grants are the permissions of the roles assigned to it in its tenant; an API key
may carry scopes, which narrow (never widen) what its principal's roles grant.

``decide`` is pure and lives here so that the security-service (``check``) and the gateway (which
evaluates the grants of a cached identity on every request) reach the same decision with the same
reason: which role's grant allowed it, or which permission was missing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from datetime import datetime
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Any, Literal

import msgspec

# -- API keys -----------------------------------------------------------------------------------
API_KEY_PREFIX = "omni_"
_KEY_SHAPE = re.compile(r"^omni_([a-z0-9]{8})_([A-Za-z0-9_-]{43})$")


class ParsedKey(msgspec.Struct, frozen=True):
    prefix: str  # ``omni_<8 characters>``: shown in lists, the lookup key; never enough to use
    digest: bytes  # SHA-256 of the whole key: what is stored


def new_api_key() -> str:
    """``omni_<8 lowercase alphanumerics>_<43 url-safe base64 characters: 256 random bits>``.

    256 random bits need no slow password hash: SHA-256 of the key is stored, and guessing a
    key that hashes to a stored digest is as hard as guessing the key."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    prefix = "".join(secrets.choice(alphabet) for _ in range(8))
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    return f"{API_KEY_PREFIX}{prefix}_{secret}"


def parse_api_key(value: str) -> ParsedKey | None:
    """The key's visible prefix and digest, or None when ``value`` is not shaped like a key."""
    match = _KEY_SHAPE.match(value)
    if match is None:
        return None
    return ParsedKey(prefix=f"{API_KEY_PREFIX}{match.group(1)}", digest=key_digest(value))


def key_digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


def same_digest(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


# -- permissions --------------------------------------------------------------------------------
_PART = re.compile(r"^[A-Za-z0-9_.*?\-/]+$")


@lru_cache(maxsize=4096)
def parse_permission(value: str) -> tuple[str, str, str]:
    """``(resource, action, instance)``; raises ``ValueError`` saying what is wrong."""
    parts = value.split(":")
    if len(parts) not in (2, 3):
        raise ValueError(f"permission {value!r} is not resource:action or resource:action:instance")
    if len(parts) == 2:
        parts.append("*")
    for part in parts:
        if not _PART.match(part):
            raise ValueError(
                f"permission {value!r} has an empty part or a character outside [A-Za-z0-9_.*?-/]"
            )
    return parts[0], parts[1], parts[2]


class Grant(msgspec.Struct, frozen=True, kw_only=True):
    permission: str
    role: str  # the role that grants it (for the decision's reason)


class Decision(msgspec.Struct, kw_only=True, omit_defaults=True):
    allowed: bool
    reason: str
    permission: str  # what was asked: resource:action[:instance]
    rule: str | None = None  # the grant that allowed it: "<role>: <permission>"


def _covers(pattern: str, resource: str, action: str, instance: str) -> bool:
    p_resource, p_action, p_instance = parse_permission(pattern)
    return (
        fnmatchcase(resource, p_resource)
        and fnmatchcase(action, p_action)
        and (not instance or fnmatchcase(instance, p_instance))
    )


def decide(
    grants: list[Grant] | tuple[Grant, ...],
    resource: str,
    action: str,
    instance: str = "",
    *,
    scopes: list[str] | tuple[str, ...] = (),
) -> Decision:
    """Allowed when a grant covers ``resource:action`` (for ``instance`` when one is named) and,
    for a key with scopes, a scope covers it too. The reason names the rule or what is missing."""
    asked = f"{resource}:{action}" + (f":{instance}" if instance else "")
    for grant in grants:
        if _covers(grant.permission, resource, action, instance):
            if scopes and not any(_covers(scope, resource, action, instance) for scope in scopes):
                return Decision(
                    allowed=False,
                    permission=asked,
                    reason=f"the key's scopes ({', '.join(scopes)}) do not include {asked}",
                )
            rule = f"{grant.role}: {grant.permission}"
            return Decision(allowed=True, permission=asked, rule=rule, reason=f"role {rule}")
    return Decision(allowed=False, permission=asked, reason=f"no role grants {asked}")


# The roles every tenant has. Changing a shipped role's permissions through the API is allowed
# (per tenant); these are the defaults a new deployment starts with.
SHIPPED_ROLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "admin": ("Everything, in every tenant's own scope", ("*:*",)),
    "operator": (
        "Runs the system: workflows, runs, tools, dead letters, audit",
        (
            "workflow:*",
            "run:*",
            "tool:*",
            "event:publish",
            "deadletter:*",
            "server:read",
            "config:*",
            "agent:*",
            "audit:read",
            "key:create",
            "key:read",
            "principal:read",
            "role:read",
        ),
    ),
    "developer": (
        "Builds workflows and tools and runs them",
        (
            "workflow:*",
            "run:*",
            "tool:*",
            "event:publish",
            "deadletter:read",
            "server:read",
            "config:read",
            "agent:read",
            "key:create",
            "role:read",
        ),
    ),
    "viewer": (
        "Reads workflows, runs, tools and servers; changes nothing",
        (
            "workflow:read",
            "run:read",
            "tool:read",
            "deadletter:read",
            "server:read",
            "config:read",
            "agent:read",
        ),
    ),
    "agent": (
        "An agent: executes tools and reads the runs it works for",
        ("tool:read", "tool:execute", "run:read", "event:publish", "agent:report"),
    ),
    "service": (
        "Another system calling Omni: starts workflows and reads their runs",
        ("workflow:read", "workflow:execute", "run:read", "event:publish", "tool:read", "tool:execute"),
    ),
}

DEFAULT_TENANT = "default"
BOOTSTRAP_ADMIN = "admin"  # the principal the first admin key belongs to

PrincipalKind = Literal["user", "service", "agent"]


# -- authenticate -------------------------------------------------------------------------------
class Credentials(msgspec.Struct, kw_only=True, omit_defaults=True):
    api_key: str | None = None
    bearer: str | None = None  # a JWT from an identity provider


class AuthenticateRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    credentials: Credentials
    ip_address: str | None = None
    user_agent: str | None = None
    service: str | None = None  # who asks on the caller's behalf (the gateway)


class Identity(msgspec.Struct, kw_only=True, omit_defaults=True):
    principal: str
    kind: str
    tenant: str
    name: str = ""
    roles: list[str] = []
    grants: list[Grant] = []
    scopes: list[str] = []  # an API key's scopes; empty: all its roles grant
    via: str = "api_key"  # api_key | jwt
    key_id: str | None = None
    expires_at: datetime | None = None  # the credential's own expiry, when it has one

    def decide(self, resource: str, action: str, instance: str = "") -> Decision:
        return decide(self.grants, resource, action, instance, scopes=self.scopes)


class CheckRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    principal: str
    tenant: str | None = None  # default: the principal's own
    resource: str
    action: str
    instance: str = ""
    context: dict[str, Any] = {}


# -- administration (one endpoint: the request names the operation) -----------------------------
class AdminRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    op: str  # e.g. keys.create, keys.list, keys.revoke, roles.put, audit.verify
    actor: Identity  # on whose behalf; the service applies the tenant and checks nothing else
    params: dict[str, Any] = {}
    ip_address: str | None = None
    user_agent: str | None = None


# -- request bodies of the administrative operations (camelCase on the wire, as over HTTP) -------
class KeyCreateParams(msgspec.Struct, kw_only=True, rename="camel"):
    principal: str | None = None  # whose key; default: the caller's own
    name: str = ""
    scopes: list[str] = []  # permissions that narrow what the principal's roles grant
    expires_in: str | int | None = None  # seconds, or 90m / 12h / 30d
    expires_at: datetime | None = None


class PrincipalCreateParams(msgspec.Struct, kw_only=True, rename="camel"):
    id: str
    kind: str = "user"  # user | service | agent
    name: str = ""
    roles: list[str] = []


class RoleParams(msgspec.Struct, kw_only=True, rename="camel"):
    name: str = ""  # from the path over HTTP
    permissions: list[str]
    description: str = ""


class CheckParams(msgspec.Struct, kw_only=True, rename="camel"):
    principal: str | None = None  # default: the caller
    resource: str
    action: str
    instance: str = ""
    context: dict[str, Any] = {}


# -- audit events (every service publishes them on omni.audit.<service>) -------------------------
Outcome = Literal["success", "failure", "denied"]


class AuditEvent(msgspec.Struct, kw_only=True, omit_defaults=True):
    action: str  # e.g. run.start, run.cancel, declaration.put, access.denied
    outcome: str  # success | failure | denied
    principal: str | None = None
    principal_kind: str | None = None
    tenant: str | None = None
    resource: str | None = None  # e.g. run:<id>, workflow:<name>
    ip_address: str | None = None
    user_agent: str | None = None
    service: str | None = None
    at: datetime | None = None  # when it happened; the log's own time when absent
    details: dict[str, Any] = {}


# -- what the administrative operations answer (snake_case here; camelCase over HTTP) ------------
class ApiKeyInfo(msgspec.Struct, kw_only=True):
    id: str
    prefix: str  # the key's visible start, enough to recognise it, never to use it
    principal: str
    tenant: str
    name: str
    scopes: list[str]
    created_at: datetime
    created_by: str | None
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyInfo, kw_only=True):
    key: str  # shown this once; only its digest is kept


class ApiKeyPage(msgspec.Struct, kw_only=True):
    keys: list[ApiKeyInfo]
    next_cursor: str | None


class PrincipalInfo(msgspec.Struct, kw_only=True):
    id: str
    tenant: str
    kind: str
    name: str
    roles: list[str]
    created_at: datetime
    created_by: str | None


class PrincipalPage(msgspec.Struct, kw_only=True):
    principals: list[PrincipalInfo]
    next_cursor: str | None


class RoleInfo(msgspec.Struct, kw_only=True):
    name: str
    description: str
    permissions: list[str]
    shipped: bool
    updated_at: datetime


class RoleList(msgspec.Struct, kw_only=True):
    roles: list[RoleInfo]


class RoleWritten(RoleInfo, kw_only=True):
    created: bool


class AssignmentInfo(msgspec.Struct, kw_only=True):
    principal: str
    role: str
    changed: bool  # false: it was already so


class Removed(msgspec.Struct, kw_only=True):
    id: str
    deleted: bool


class WhoAmI(msgspec.Struct, kw_only=True):
    principal: str
    kind: str
    tenant: str
    name: str
    roles: list[str]
    permissions: list[str]
    scopes: list[str]
    via: str


class CheckResult(msgspec.Struct, kw_only=True):
    principal: str
    allowed: bool
    permission: str
    reason: str
    rule: str | None


class AuditRecordInfo(msgspec.Struct, kw_only=True):
    seq: int
    at: datetime
    action: str
    outcome: str
    principal: str | None
    principal_kind: str | None
    tenant: str | None
    resource: str | None
    ip_address: str | None
    user_agent: str | None
    service: str | None
    details: dict[str, Any]
    prev_hash: str
    hash: str


class AuditPage(msgspec.Struct, kw_only=True):
    records: list[AuditRecordInfo]
    next_cursor: str | None


class AuditVerification(msgspec.Struct, kw_only=True):
    ok: bool
    checked: int  # records whose hash was recomputed
    first_broken: int | None  # the seq where the chain breaks
    problem: str | None  # hash_mismatch | chain_break | seq_gap
    message: str
