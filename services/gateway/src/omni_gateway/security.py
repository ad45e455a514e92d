"""``/security``: API keys, principals, roles and their assignments, permission checks and the
audit log. Each route is one administrative operation of the security-service
(``omni.rpc.security.admin``), asked on behalf of the caller's identity. The guard checks the
route's permission first; the security-service then applies the finer rules (one's own keys
need only ``key:create``, nobody hands out more than they hold, everything stays in the caller's
tenant) and audits every change."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from aiohttp import web
from omni_contract import subjects
from omni_contract.security import (
    AdminRequest,
    ApiKeyCreated,
    ApiKeyInfo,
    ApiKeyPage,
    AssignmentInfo,
    AuditPage,
    AuditVerification,
    CheckParams,
    CheckResult,
    KeyCreateParams,
    PrincipalCreateParams,
    PrincipalInfo,
    PrincipalPage,
    Removed,
    RoleInfo,
    RoleList,
    RoleParams,
    RoleWritten,
    WhoAmI,
)

from omni_gateway.apidoc import AUTHENTICATED, Operation, json_answer, needs, page_parameters, schema_ref
from omni_gateway.bodies import query_int, read_json_object, respond
from omni_gateway.errors import ApiError
from omni_gateway.guard import GUARD, identity_of

# The structs of this module's bodies, for the OpenAPI document.
BODY_TYPES: tuple[type[msgspec.Struct], ...] = (
    WhoAmI,
    KeyCreateParams,
    ApiKeyCreated,
    ApiKeyInfo,
    ApiKeyPage,
    PrincipalCreateParams,
    PrincipalInfo,
    PrincipalPage,
    AssignmentInfo,
    RoleParams,
    RoleInfo,
    RoleList,
    RoleWritten,
    Removed,
    CheckParams,
    CheckResult,
    AuditPage,
    AuditVerification,
)

MAX_PAGE = 500
DEFAULT_PAGE = 100

_ERRORS = ("BadRequest", "NotFound", "SecurityConflict")


def _path(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


def _body(schema: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema_ref(schema)}}}


async def _admin(request: web.Request, op: str, params: dict[str, Any], result: type[Any]) -> Any:
    ask = AdminRequest(
        op=op,
        actor=identity_of(request),
        params=params,
        ip_address=request.remote,
        user_agent=request.headers.get("User-Agent"),
    )
    raw = await request.app[GUARD].client.call(subjects.SECURITY_ADMIN, ask)
    return msgspec.json.decode(raw, type=result)


def _page(request: web.Request) -> dict[str, Any]:
    params: dict[str, Any] = {"limit": query_int(request, "limit", DEFAULT_PAGE, minimum=1, maximum=MAX_PAGE)}
    cursor = request.query.get("cursor")
    if cursor:
        params["after"] = cursor
    return params


async def _body_of(request: web.Request, shape: type[msgspec.Struct]) -> dict[str, Any]:
    """The JSON body, checked against ``shape`` here so a wrong field is a 400 naming it."""
    body = await read_json_object(request, request.app[GUARD].settings.max_body_bytes)
    try:
        msgspec.convert(body, type=shape, strict=False)
    except msgspec.ValidationError as exc:
        where = str(exc).rpartition("at `$.")[2].rstrip("`") if "at `$." in str(exc) else "body"
        raise ApiError.bad_request(where, str(exc)) from None
    return body


# -- who am I -----------------------------------------------------------------------------------
WHOAMI = Operation(
    method="get",
    path="/security/whoami",
    access=AUTHENTICATED,
    operation_id="whoAmI",
    tag="security",
    summary="The caller: principal, tenant, roles and permissions",
    responses={"200": json_answer("The caller", "WhoAmI")},
)


async def whoami(request: web.Request) -> web.Response:
    return respond(await _admin(request, "whoami", {}, WhoAmI))


# -- keys ---------------------------------------------------------------------------------------
CREATE_KEY = Operation(
    method="post",
    path="/security/keys",
    access=needs("key:create"),
    operation_id="createKey",
    tag="security",
    summary="Create an API key (for another principal: key:manage); the key is shown only in this answer",
    request_body=_body("KeyCreateParams"),
    responses={"201": json_answer("The key, with its secret this once", "ApiKeyCreated")},
    errors=_ERRORS,
)


async def create_key(request: web.Request) -> web.Response:
    body = await _body_of(request, KeyCreateParams)
    return respond(await _admin(request, "keys.create", body, ApiKeyCreated), status=201)


LIST_KEYS = Operation(
    method="get",
    path="/security/keys",
    access=needs("key:create"),
    operation_id="listKeys",
    tag="security",
    summary="List API keys: the caller's own, or the tenant's with key:read",
    parameters=(
        {"name": "principal", "in": "query", "required": False, "schema": {"type": "string"}},
        *page_parameters(MAX_PAGE, DEFAULT_PAGE),
    ),
    responses={"200": json_answer("A page of keys (never their secrets)", "ApiKeyPage")},
    errors=("BadRequest",),
)


async def list_keys(request: web.Request) -> web.Response:
    params = _page(request)
    if principal := request.query.get("principal"):
        params["principal"] = principal
    return respond(await _admin(request, "keys.list", params, ApiKeyPage))


_KEY_ID = _path("id", "The key's id (key_...)")

GET_KEY = Operation(
    method="get",
    path="/security/keys/{id}",
    access=needs("key:create"),
    operation_id="getKey",
    tag="security",
    summary="Read an API key (another principal's: key:read)",
    parameters=(_KEY_ID,),
    responses={"200": json_answer("The key (never its secret)", "ApiKeyInfo")},
    errors=("NotFound",),
)


async def get_key(request: web.Request) -> web.Response:
    return respond(await _admin(request, "keys.get", {"id": request.match_info["id"]}, ApiKeyInfo))


REVOKE_KEY = Operation(
    method="delete",
    path="/security/keys/{id}",
    access=needs("key:create"),
    operation_id="revokeKey",
    tag="security",
    summary="Revoke an API key (another principal's: key:manage); every gateway refuses it within a second",
    parameters=(_KEY_ID,),
    responses={"200": json_answer("The key, revoked", "ApiKeyInfo")},
    errors=("NotFound",),
)


async def revoke_key(request: web.Request) -> web.Response:
    return respond(await _admin(request, "keys.revoke", {"id": request.match_info["id"]}, ApiKeyInfo))


# -- principals ---------------------------------------------------------------------------------
_PRINCIPAL_ID = _path("id", "The principal's id")

CREATE_PRINCIPAL = Operation(
    method="post",
    path="/security/principals",
    access=needs("principal:write"),
    operation_id="createPrincipal",
    tag="security",
    summary="Create a principal (a user, a service or an agent) in the caller's tenant",
    request_body=_body("PrincipalCreateParams"),
    responses={"201": json_answer("The principal", "PrincipalInfo")},
    errors=_ERRORS,
)


async def create_principal(request: web.Request) -> web.Response:
    body = await _body_of(request, PrincipalCreateParams)
    return respond(await _admin(request, "principals.create", body, PrincipalInfo), status=201)


LIST_PRINCIPALS = Operation(
    method="get",
    path="/security/principals",
    access=needs("principal:read"),
    operation_id="listPrincipals",
    tag="security",
    summary="List the tenant's principals with their roles",
    parameters=page_parameters(MAX_PAGE, DEFAULT_PAGE),
    responses={"200": json_answer("A page of principals", "PrincipalPage")},
    errors=("BadRequest",),
)


async def list_principals(request: web.Request) -> web.Response:
    return respond(await _admin(request, "principals.list", _page(request), PrincipalPage))


GET_PRINCIPAL = Operation(
    method="get",
    path="/security/principals/{id}",
    access=AUTHENTICATED,
    operation_id="getPrincipal",
    tag="security",
    summary="Read a principal (oneself; another: principal:read)",
    parameters=(_PRINCIPAL_ID,),
    responses={"200": json_answer("The principal", "PrincipalInfo")},
    errors=("NotFound", "Forbidden"),
)


async def get_principal(request: web.Request) -> web.Response:
    return respond(await _admin(request, "principals.get", {"id": request.match_info["id"]}, PrincipalInfo))


DELETE_PRINCIPAL = Operation(
    method="delete",
    path="/security/principals/{id}",
    access=needs("principal:write"),
    operation_id="deletePrincipal",
    tag="security",
    summary="Delete a principal with its keys and role assignments",
    parameters=(_PRINCIPAL_ID,),
    responses={"200": json_answer("Deleted", "Removed")},
    errors=("NotFound", "SecurityConflict"),
)


async def delete_principal(request: web.Request) -> web.Response:
    return respond(await _admin(request, "principals.delete", {"id": request.match_info["id"]}, Removed))


_ROLE_OF = _path("role", "A role's name")

ASSIGN_ROLE = Operation(
    method="put",
    path="/security/principals/{id}/roles/{role}",
    access=needs("role:assign"),
    operation_id="assignRole",
    tag="security",
    summary="Give a principal a role (only one whose permissions the caller holds)",
    parameters=(_PRINCIPAL_ID, _ROLE_OF),
    responses={
        "200": json_answer("The assignment; changed is false when it was already so", "AssignmentInfo")
    },
    errors=_ERRORS,
)


async def assign_role(request: web.Request) -> web.Response:
    params = {"principal": request.match_info["id"], "role": request.match_info["role"]}
    return respond(await _admin(request, "assignments.put", params, AssignmentInfo))


UNASSIGN_ROLE = Operation(
    method="delete",
    path="/security/principals/{id}/roles/{role}",
    access=needs("role:assign"),
    operation_id="unassignRole",
    tag="security",
    summary="Take a role from a principal",
    parameters=(_PRINCIPAL_ID, _ROLE_OF),
    responses={"200": json_answer("Removed", "AssignmentInfo")},
    errors=("NotFound", "SecurityConflict"),
)


async def unassign_role(request: web.Request) -> web.Response:
    params = {"principal": request.match_info["id"], "role": request.match_info["role"]}
    return respond(await _admin(request, "assignments.delete", params, AssignmentInfo))


# -- roles --------------------------------------------------------------------------------------
_ROLE_NAME = _path("name", "A role's name")

LIST_ROLES = Operation(
    method="get",
    path="/security/roles",
    access=needs("role:read"),
    operation_id="listRoles",
    tag="security",
    summary="The tenant's roles and their permissions",
    responses={"200": json_answer("Every role", "RoleList")},
)


async def list_roles(request: web.Request) -> web.Response:
    return respond(await _admin(request, "roles.list", {}, RoleList))


GET_ROLE = Operation(
    method="get",
    path="/security/roles/{name}",
    access=needs("role:read"),
    operation_id="getRole",
    tag="security",
    summary="Read a role",
    parameters=(_ROLE_NAME,),
    responses={"200": json_answer("The role", "RoleInfo")},
    errors=("NotFound",),
)


async def get_role(request: web.Request) -> web.Response:
    return respond(await _admin(request, "roles.get", {"name": request.match_info["name"]}, RoleInfo))


PUT_ROLE = Operation(
    method="put",
    path="/security/roles/{name}",
    access=needs("role:write"),
    operation_id="putRole",
    tag="security",
    summary="Create or change a role (only with permissions the caller holds); applies within a second",
    parameters=(_ROLE_NAME,),
    request_body=_body("RoleParams"),
    responses={"200": json_answer("The role; created says whether it is new", "RoleWritten")},
    errors=_ERRORS,
)


async def put_role(request: web.Request) -> web.Response:
    body = await _body_of(request, RoleParams)
    body["name"] = request.match_info["name"]
    return respond(await _admin(request, "roles.put", body, RoleWritten))


DELETE_ROLE = Operation(
    method="delete",
    path="/security/roles/{name}",
    access=needs("role:write"),
    operation_id="deleteRole",
    tag="security",
    summary="Delete a role and its assignments",
    parameters=(_ROLE_NAME,),
    responses={"200": json_answer("Deleted", "Removed")},
    errors=("NotFound", "SecurityConflict"),
)


async def delete_role(request: web.Request) -> web.Response:
    return respond(await _admin(request, "roles.delete", {"name": request.match_info["name"]}, Removed))


# -- check --------------------------------------------------------------------------------------
CHECK = Operation(
    method="post",
    path="/security/check",
    access=AUTHENTICATED,
    operation_id="checkPermission",
    tag="security",
    summary="May a principal (the caller; another: principal:read) do resource:action, and by which rule",
    request_body=_body("CheckParams"),
    responses={"200": json_answer("The decision and its reason", "CheckResult")},
    errors=("BadRequest", "NotFound", "Forbidden"),
)


async def check(request: web.Request) -> web.Response:
    body = await _body_of(request, CheckParams)
    return respond(await _admin(request, "check", body, CheckResult))


# -- audit --------------------------------------------------------------------------------------
def _time(request: web.Request, name: str) -> str | None:
    raw = request.query.get(name)
    if not raw:
        return None
    try:
        at = datetime.fromisoformat(raw)
    except ValueError:
        raise ApiError.bad_request(
            name, f"{name} must be an ISO 8601 time, e.g. 2026-01-31T12:00:00Z"
        ) from None
    if at.tzinfo is None:
        raise ApiError.bad_request(name, f"{name} needs a time zone (e.g. Z)")
    return at.isoformat()


AUDIT = Operation(
    method="get",
    path="/security/audit",
    access=needs("audit:read"),
    operation_id="listAudit",
    tag="security",
    summary="The audit log, newest first, filtered by principal, action (or prefix.*), outcome and time",
    parameters=(
        {"name": "principal", "in": "query", "required": False, "schema": {"type": "string"}},
        {"name": "action", "in": "query", "required": False, "schema": {"type": "string"}},
        {
            "name": "outcome",
            "in": "query",
            "required": False,
            "schema": {"type": "string", "enum": ["success", "failure", "denied"]},
        },
        {
            "name": "since",
            "in": "query",
            "required": False,
            "schema": {"type": "string", "format": "date-time"},
        },
        {
            "name": "until",
            "in": "query",
            "required": False,
            "schema": {"type": "string", "format": "date-time"},
        },
        *page_parameters(MAX_PAGE, DEFAULT_PAGE),
    ),
    responses={"200": json_answer("A page of records", "AuditPage")},
    errors=("BadRequest",),
)


async def list_audit(request: web.Request) -> web.Response:
    params = _page(request)
    if "after" in params:
        try:
            params["after"] = int(params["after"])
        except ValueError:
            raise ApiError.bad_request("cursor", "cursor must be the nextCursor of a previous page") from None
    for name in ("principal", "action", "outcome"):
        if value := request.query.get(name):
            params[name] = value
    if params.get("outcome") not in (None, "success", "failure", "denied"):
        raise ApiError.bad_request("outcome", "outcome must be success, failure or denied")
    for name in ("since", "until"):
        if (at := _time(request, name)) is not None:
            params[name] = at
    return respond(await _admin(request, "audit.list", params, AuditPage))


VERIFY_AUDIT = Operation(
    method="get",
    path="/security/audit/verify",
    access=needs("audit:read"),
    operation_id="verifyAudit",
    tag="security",
    summary="Recompute the audit log's hash chain; names the first broken record",
    responses={"200": json_answer("Whether the chain holds, and where it breaks", "AuditVerification")},
)


async def verify_audit(request: web.Request) -> web.Response:
    return respond(await _admin(request, "audit.verify", {}, AuditVerification))


HANDLERS = (
    (WHOAMI, whoami),
    (CREATE_KEY, create_key),
    (LIST_KEYS, list_keys),
    (GET_KEY, get_key),
    (REVOKE_KEY, revoke_key),
    (CREATE_PRINCIPAL, create_principal),
    (LIST_PRINCIPALS, list_principals),
    (GET_PRINCIPAL, get_principal),
    (DELETE_PRINCIPAL, delete_principal),
    (ASSIGN_ROLE, assign_role),
    (UNASSIGN_ROLE, unassign_role),
    (LIST_ROLES, list_roles),
    (GET_ROLE, get_role),
    (PUT_ROLE, put_role),
    (DELETE_ROLE, delete_role),
    (CHECK, check),
    (AUDIT, list_audit),
    (VERIFY_AUDIT, verify_audit),
)
OPERATIONS = tuple(op for op, _ in HANDLERS)
# The routes, from the operations themselves: a path cannot differ from its description.
ROUTES = tuple(web.route(op.method.upper(), op.path, handler) for op, handler in HANDLERS)
