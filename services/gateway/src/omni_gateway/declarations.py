"""``/tools/declarations``: tools declared by configuration, registered, read and withdrawn over HTTP.

A declaration (``omni_contract.declared``) describes one HTTP call; the ``integrations`` tool-runner
serves it as ``(name, integrations)`` moments after it is stored. The gateway checks a declaration
completely before storing it (its fields, templates, URL, credential, and that its schemas are JSON
Schemas), so a mistake is a 422 naming the field instead of a tool that fails at its first call.
Declarations are kept in the JetStream KV bucket ``omni_declared_tools``.

Routes: ``GET /tools/declarations``, ``GET|PUT|DELETE /tools/declarations/{name}`` (PUT creates or
replaces: 201 or 200), ``POST /tools/declarations`` (creates; 409 when the name is taken). A
declaration is sent as JSON, or as YAML with a YAML content type (``application/yaml``).

A registration answers with the declaration as stored and ``warnings``: what still works but should
change. Templates written ``{{ path }}`` instead of ``${path}`` are such a thing (deprecated, and
refused from ``LEGACY_TEMPLATES_REFUSED_FROM`` on): each field that has them is named, with its
value rewritten, and the registration is logged with them.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # ships no type information
import msgspec
import nats.js.errors
import yaml
from aiohttp import web
from nats.js.kv import KeyValue
from omni_contract.declared import (
    DECLARED_TOOLS_BUCKET,
    ORIGIN_API,
    TOOL_NAME,
    DeclarationError,
    HttpToolDeclaration,
    RegisteredDeclaration,
    StoredDeclaration,
    declared_key,
    decode_declaration,
    deprecations,
)
from omni_contract.kv import DECLARED_TOOLS
from omni_contract.security import DEFAULT_TENANT
from omni_runtime import nats as omni_nats

from omni_gateway.apidoc import Operation, json_answer, needs, param_ref, schema_ref
from omni_gateway.bodies import MAX_DEPTH, json_type, read_json_object, read_text
from omni_gateway.errors import ApiError, ErrorDetail
from omni_gateway.guard import identity_of
from omni_gateway.state import GATEWAY
from omni_gateway.tools import jetstream_errors, read_entries
from omni_gateway.views import DeclarationList

log = logging.getLogger(__name__)


async def _bucket(request: web.Request) -> KeyValue:
    js = request.app[GATEWAY].js
    with jetstream_errors("open the declared tools bucket"):
        try:
            return await js.key_value(DECLARED_TOOLS_BUCKET)
        except nats.js.errors.BucketNotFoundError:
            # The first declaration before any integrations runner started: make the bucket it uses.
            return await omni_nats.ensure_key_value(js, DECLARED_TOOLS)


async def _stored(kv: KeyValue, name: str) -> StoredDeclaration | None:
    if not is_tool_name(name):
        return None  # no declaration can have it (nor can the bucket hold it as a key)
    with jetstream_errors("read a declared tool"):
        try:
            entry = await kv.get(declared_key(name))
        except nats.js.errors.KeyNotFoundError:
            return None
    if not entry.value:
        return None
    return msgspec.json.decode(entry.value, type=StoredDeclaration)


def _declaration_of(body: dict[str, Any], name: str | None) -> HttpToolDeclaration:
    if name is not None:
        if "name" in body and body["name"] != name:
            raise ApiError(
                422,
                "invalid_declaration",
                f"the body names {body['name']!r} but the URL names {name!r}",
                [ErrorDetail(field="$.name", message=f"must be {name!r}, as in the URL")],
            )
        body = {**body, "name": name}
    try:
        declaration = decode_declaration(body)
    except DeclarationError as exc:
        details = [ErrorDetail(field=p.field, message=p.message) for p in exc.problems]
        raise ApiError(422, "invalid_declaration", f"invalid tool declaration: {exc}", details) from None
    if not is_tool_name(declaration.name):  # the contract's check lets a trailing line break through
        message = "must be <category>.<action> in lower case (letters, digits, _ and -)"
        raise ApiError(
            422,
            "invalid_declaration",
            f"invalid tool declaration: $.name: {message}",
            [ErrorDetail(field="$.name", message=message)],
        )
    for field, schema in (
        ("$.inputSchema", declaration.input_schema),
        ("$.outputSchema", declaration.output_schema),
    ):
        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.exceptions.SchemaError as exc:
            where = field + "".join(f".{part}" for part in exc.absolute_path)
            raise ApiError(
                422,
                "invalid_declaration",
                f"{field} is not a JSON Schema: {exc.message}",
                [ErrorDetail(field=where, message=exc.message)],
            ) from None
    return declaration


def _visible(stored: StoredDeclaration, tenant: str) -> bool:
    """A tenant sees its own declarations and the shipped ones (tenant None)."""
    return stored.tenant is None or stored.tenant == tenant


def _writable(stored: StoredDeclaration, tenant: str) -> bool:
    """A tenant changes its own; the shipped ones belong to the deployment's default tenant."""
    return stored.tenant == tenant or (stored.tenant is None and tenant == DEFAULT_TENANT)


async def _own(request: web.Request, kv: KeyValue, name: str) -> StoredDeclaration | None:
    """The declaration of ``name`` as the caller's tenant may see it (None: not there for it)."""
    stored = await _stored(kv, name)
    return stored if stored is not None and _visible(stored, identity_of(request).tenant) else None


def _taken(name: str) -> ApiError:
    # Said the same way whether another tenant holds the name or a shipped declaration does.
    return ApiError(409, "conflict", f"the tool name {name!r} is taken; declare the tool under another name")


async def _save(kv: KeyValue, declaration: HttpToolDeclaration, tenant: str | None) -> StoredDeclaration:
    stored = StoredDeclaration(
        declaration=declaration, origin=ORIGIN_API, updated_at=datetime.now(UTC), tenant=tenant
    )
    with jetstream_errors("store a declared tool"):
        await kv.put(declared_key(declaration.name), msgspec.json.encode(stored))
    return stored


def _view(stored: StoredDeclaration, status: int = 200) -> web.Response:
    # Declarations are camelCase already, on the wire and in files; send them as they are stored.
    return web.Response(status=status, body=msgspec.json.encode(stored), content_type="application/json")


def _registered(stored: StoredDeclaration, status: int) -> web.Response:
    """The answer to a registration: the declaration as stored, with its warnings (logged too)."""
    warnings = deprecations(stored.declaration)
    if warnings:
        log.warning(
            "declared tool %s registered with warnings: %s",
            stored.declaration.name,
            "; ".join(f"{warning.field}: {warning.message}" for warning in warnings),
        )
    registered = RegisteredDeclaration(
        declaration=stored.declaration,
        origin=stored.origin,
        updated_at=stored.updated_at,
        tenant=stored.tenant,
        warnings=warnings,
    )
    return _view(registered, status)


LIST_DECLARATIONS = Operation(
    method="get",
    path="/tools/declarations",
    access=needs("tool:read"),
    operation_id="listDeclaredTools",
    tag="tools",
    summary="List the tools declared by configuration (HTTP calls served by tool-runner-integrations)",
    responses={"200": json_answer("The declarations, with where each came from", "DeclarationList")},
    errors=("ToolsUnavailable",),
)


async def list_declarations(request: web.Request) -> web.Response:
    kv = await _bucket(request)
    with jetstream_errors("read the declared tools"):
        found = await read_entries(kv, ">", StoredDeclaration, DECLARED_TOOLS_BUCKET)
    tenant = identity_of(request).tenant
    found = [stored for stored in found if _visible(stored, tenant)]
    found.sort(key=lambda stored: stored.declaration.name)
    return web.Response(
        body=msgspec.json.encode(DeclarationList(declarations=found)), content_type="application/json"
    )


GET_DECLARATION = Operation(
    method="get",
    path="/tools/declarations/{name}",
    access=needs("tool:read:{name}"),
    operation_id="getDeclaredTool",
    tag="tools",
    summary="Read one declared tool",
    responses={"200": json_answer("The declaration", "StoredDeclaration")},
    errors=("NotFound", "ToolsUnavailable"),
    parameters=(param_ref("ToolName"),),
)


async def get_declaration(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    stored = await _own(request, await _bucket(request), name)
    if stored is None:
        raise ApiError(404, "not_found", f"no declared tool {name!r}")
    return _view(stored)


def is_tool_name(name: str) -> bool:
    """Whether ``name`` is a declarable tool name (and so a valid key of the bucket)."""
    return TOOL_NAME.fullmatch(name) is not None


_YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"})


async def _body(request: web.Request) -> dict[str, Any]:
    """The declaration as a JSON object, or as YAML (the form of the files in ``integrations/``)."""
    limit = request.app[GATEWAY].settings.max_body_bytes
    if request.content_type not in _YAML_TYPES:
        return await read_json_object(request, limit, root="$")
    # Non-printable characters, and values Omni cannot carry, are refused there.
    text = await read_text(request, limit, root="$")
    try:
        value = msgspec.yaml.decode(text)
    except (msgspec.DecodeError, yaml.YAMLError, ValueError) as exc:
        # ValueError: an integer too long for Python to read.
        raise ApiError.bad_request("body", f"malformed YAML: {exc}") from None
    except RecursionError:
        raise ApiError.bad_request("body", f"body is nested deeper than {MAX_DEPTH} levels") from None
    if not isinstance(value, dict):
        raise ApiError.bad_request("body", f"body must be a YAML mapping, not {json_type(value)}")
    return value


# A declaration's body: JSON, or YAML (the form of the files in integrations/).
_DECLARATION_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": schema_ref("HttpToolDeclaration")},
        "application/yaml": {"schema": schema_ref("HttpToolDeclaration")},
    },
}
PUT_DECLARATION = Operation(
    method="put",
    path="/tools/declarations/{name}",
    access=needs("tool:declare:{name}"),
    operation_id="putDeclaredTool",
    tag="tools",
    summary="Declare a tool, or replace its declaration",
    responses={
        "200": json_answer("The declaration replaced the previous one", "RegisteredDeclaration"),
        "201": json_answer("The tool is newly declared", "RegisteredDeclaration"),
    },
    errors=("BadRequest", "PayloadTooLarge", "InvalidDeclaration", "DeclarationNotYours", "ToolsUnavailable"),
    request_body=_DECLARATION_BODY,
    parameters=(param_ref("ToolName"),),
)


async def put_declaration(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    body = await _body(request)
    declaration = _declaration_of(body, name)
    kv = await _bucket(request)
    tenant = identity_of(request).tenant
    existing = await _stored(kv, name)
    if existing is not None and not _writable(existing, tenant):
        raise _taken(name)
    # A shipped declaration replaced by the default tenant stays everyone's.
    owner = existing.tenant if existing is not None else tenant
    return _registered(await _save(kv, declaration, owner), status=200 if existing else 201)


CREATE_DECLARATION = Operation(
    method="post",
    path="/tools/declarations",
    access=needs("tool:declare"),
    operation_id="declareTool",
    tag="tools",
    summary="Declare a new tool backed by one HTTP call",
    responses={"201": json_answer("The declaration as stored, with warnings", "RegisteredDeclaration")},
    errors=(
        "BadRequest",
        "PayloadTooLarge",
        "InvalidDeclaration",
        "AlreadyDeclared",
        "ToolsUnavailable",
    ),
    description=(
        "The integrations runner serves it as (name, integrations) moments later. The "
        "request's method, URL, query, headers and body are templates over the call "
        "(${input.owner}); the credential is named by auth.env, an environment variable "
        "of the runner, and never travels in the declaration. The answer's warnings name "
        "what still works but should change, such as templates in the deprecated "
        "{{ input.owner }} form, with the field rewritten."
    ),
    request_body=_DECLARATION_BODY,
)


async def create_declaration(request: web.Request) -> web.Response:
    body = await _body(request)
    declaration = _declaration_of(body, None)
    kv = await _bucket(request)
    tenant = identity_of(request).tenant
    stored = StoredDeclaration(
        declaration=declaration, origin=ORIGIN_API, updated_at=datetime.now(UTC), tenant=tenant
    )
    with jetstream_errors("store a declared tool"):
        try:
            await kv.create(declared_key(declaration.name), msgspec.json.encode(stored))
        except nats.js.errors.KeyWrongLastSequenceError:
            existing = await _stored(kv, declaration.name)
            if existing is not None and not _visible(existing, tenant):
                raise _taken(declaration.name) from None
            raise ApiError(
                409,
                "conflict",
                f"a tool {declaration.name!r} is already declared; "
                f"PUT /tools/declarations/{declaration.name} replaces it",
            ) from None
    return _registered(stored, status=201)


DELETE_DECLARATION = Operation(
    method="delete",
    path="/tools/declarations/{name}",
    access=needs("tool:declare:{name}"),
    operation_id="deleteDeclaredTool",
    tag="tools",
    summary="Withdraw a declared tool",
    responses={"204": {"description": "Withdrawn; the runners stop serving it"}},
    errors=("NotFound", "DeclarationNotYours", "ToolsUnavailable"),
    parameters=(param_ref("ToolName"),),
)


async def delete_declaration(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    kv = await _bucket(request)
    stored = await _own(request, kv, name)
    if stored is None:
        raise ApiError(404, "not_found", f"no declared tool {name!r}")
    if not _writable(stored, identity_of(request).tenant):
        raise ApiError(
            409, "conflict", f"{name!r} ships with the deployment; only its default tenant can withdraw it"
        )
    with jetstream_errors("delete a declared tool"):
        await kv.delete(declared_key(name))
    return web.Response(status=204)


OPERATIONS = (LIST_DECLARATIONS, CREATE_DECLARATION, GET_DECLARATION, PUT_DECLARATION, DELETE_DECLARATION)
