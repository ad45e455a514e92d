"""The OpenAPI 3.1 document of the public HTTP API, built from the same structs that encode the
bodies (through the same camelCase rule), so the document cannot describe fields the API does not
send. The result depends on nothing but the code: ``proto/openapi.json`` is generated from it and
checked for drift.

This module is the document's frame: info, tags, the components that operations share (body
schemas, error responses, parameters) and the struct-to-schema machinery. The operations
themselves are described beside their handlers (``omni_gateway.apidoc``) and assembled here."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi
from omni_contract import history
from omni_contract.declared import HttpToolDeclaration, RegisteredDeclaration, StoredDeclaration
from omni_contract.rpc import RunEventsReply, RunPage, RunSummary, WorkflowVersions

from omni_gateway import (
    deadletters,
    declarations,
    events,
    operations,
    runs,
    security,
    servers,
    tools,
    workflows,
)
from omni_gateway.apidoc import SCHEMA_REF, Operation, schema_ref
from omni_gateway.convert import camel
from omni_gateway.errors import ErrorBody
from omni_gateway.servers import STATUSES as SERVER_STATUSES
from omni_gateway.servers import ServerDetail, ServerList
from omni_gateway.views import (
    CancelRequest,
    DeadLetterPage,
    DeadLetterRedriven,
    DeadLetterView,
    DeclarationList,
    EventAccepted,
    ExecuteRequest,
    Execution,
    ExecutionAccepted,
    Health,
    Readiness,
    RerunBody,
    ToolDetail,
    ToolExecuteRequest,
    ToolExecution,
    ToolList,
    ToolProviders,
    WorkflowList,
)

API_VERSION = "0.1.0"

TAGS: list[dict[str, str]] = [
    {"name": "workflows", "description": "Workflow definitions and their execution"},
    {"name": "runs", "description": "Runs, their history and live progress"},
    {"name": "tools", "description": "The tools the runners serve, and calling one directly"},
    {"name": "events", "description": "Application events that trigger workflows"},
    {"name": "deadletters", "description": "Messages Omni could not process, and their redrive"},
    {
        "name": "security",
        "description": "API keys, principals, roles, permission checks and the hash-chained audit log",
    },
    {"name": "operations", "description": "Health, readiness and this document"},
]
TAG_NAMES = tuple(tag["name"] for tag in TAGS)

# Every struct that appears in a body; the components are generated from these.
BODY_TYPES: tuple[type[msgspec.Struct], ...] = (
    ExecuteRequest,
    Execution,
    ExecutionAccepted,
    WorkflowList,
    WorkflowVersions,
    RunSummary,
    RunPage,
    RunEventsReply,
    CancelRequest,
    RerunBody,
    EventAccepted,
    DeadLetterPage,
    DeadLetterView,
    DeadLetterRedriven,
    ToolList,
    ToolProviders,
    ToolDetail,
    ToolExecuteRequest,
    ToolExecution,
    DeclarationList,
    StoredDeclaration,
    RegisteredDeclaration,
    HttpToolDeclaration,
    ServerList,
    ServerDetail,
    Health,
    Readiness,
    ErrorBody,
    *security.BODY_TYPES,
)

_PAYLOAD_FIELD: dict[str, Any] = {
    "oneOf": [
        {"type": "string", "description": "The field's type; the field name ends in ? when optional"},
        {
            "type": "object",
            "properties": {
                "type": {"type": "string"},
                "required": {"type": "boolean"},
                "description": {"type": "string"},
            },
            "required": ["type"],
        },
    ]
}

WORKFLOW_DEFINITION: dict[str, Any] = {
    "title": "WorkflowDefinition",
    "description": (
        "A workflow definition as the engine registered it: the trigger (the app.* subject and the "
        "payload fields it takes) and the steps, each a tool at one of its providers, in the order "
        "they are tried. Fields beyond these are kept as written. Answers always carry id; a "
        "definition sent may leave it out."
    ),
    "type": "object",
    "properties": {
        "id": {
            "type": "string",
            "pattern": "^[a-z0-9][a-z0-9._-]{0,127}$",
            "description": (
                "The workflow's address in URLs, runs and triggers: the id written, or else the slug of "
                "name (lower case, other characters than letters and digits turned into -)"
            ),
        },
        "name": {
            "type": "string",
            "maxLength": 200,
            "description": "The display name: free text (printable characters)",
        },
        "description": {"type": "string", "maxLength": 4000},
        "version": {
            "type": "string",
            "maxLength": 64,
            "description": "Immutable once registered: other content needs another version",
        },
        "summary": {
            "type": "boolean",
            "description": "In a list too large for one answer: steps left out (read the workflow by id)",
        },
        "hash": {"type": "string", "description": "Digest of the definition's content"},
        "trigger": {
            "type": "object",
            "properties": {
                "event": {"type": "string", "description": "The app.* subject that starts a run"},
                "payload": {"type": "object", "additionalProperties": _PAYLOAD_FIELD},
            },
        },
        "steps": {
            "type": "array",
            "maxItems": 200,
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "description": {"type": "string"},
                    "tool": {"type": "string"},
                    "provider": {"type": "array", "items": {"type": "string"}},
                    "config": {"type": "object"},
                    "input": {"type": "object"},
                    "output": {"type": "object", "additionalProperties": {"type": "string"}},
                },
                "required": ["name", "tool"],
            },
        },
        "guards": {"type": "object", "description": "Budget, security and fallback limits"},
    },
    "required": ["name", "steps"],
    "additionalProperties": True,
}


def render_openapi() -> str:
    """The document as the text of ``proto/openapi.json`` (sorted keys, like the rest of proto/)."""
    return json.dumps(build_openapi(), indent=2, sort_keys=True) + "\n"


def build_openapi() -> dict[str, Any]:
    schemas = _component_schemas()
    schemas["WorkflowDefinition"] = copy.deepcopy(WORKFLOW_DEFINITION)
    schemas["WorkflowList"]["properties"]["workflows"]["items"] = schema_ref("WorkflowDefinition")
    for server in ("ServerView", "ServerDetail"):
        schemas[server]["properties"]["status"]["enum"] = list(SERVER_STATUSES)
    schemas.update(_run_event_schemas(schemas["RunEventRecord"]))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Omni API",
            "version": API_VERSION,
            "description": (
                "Run AI workflows, follow, cancel and rerun them, list and call tools directly, "
                "publish application events and redrive dead letters. Every error "
                'is answered as {"error": {"code", "message", "details"}}.'
            ),
        },
        "tags": copy.deepcopy(TAGS),
        "paths": _paths(),
        "security": [{"bearerAuth": []}, {"apiKey": []}],
        "components": {
            "securitySchemes": SECURITY_SCHEMES,
            "schemas": dict(sorted(schemas.items())),
            "responses": _error_responses(),
            "parameters": _parameters(),
        },
    }


SECURITY_SCHEMES: dict[str, Any] = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "description": "An Omni API key (omni_...) or a JWT from the configured identity provider",
    },
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "An Omni API key"},
}


# -- paths --------------------------------------------------------------------------------------
# The modules whose handlers serve the app's routes, each describing its own in ``OPERATIONS``.
HANDLER_MODULES = (workflows, runs, deadletters, events, tools, declarations, servers, security, operations)
OPERATIONS: tuple[Operation, ...] = tuple(op for module in HANDLER_MODULES for op in module.OPERATIONS)


def _paths() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    ids: set[str] = set()
    for op in OPERATIONS:
        methods = paths.setdefault(op.path, {})
        if op.method in methods:
            raise ValueError(f"{op.method.upper()} {op.path} is described twice ({op.operation_id})")
        if op.operation_id in ids:
            raise ValueError(f"{op.method.upper()} {op.path}: operationId {op.operation_id!r} is taken")
        ids.add(op.operation_id)
        methods[op.method] = _operation(op)
    return paths


def _operation(op: Operation) -> dict[str, Any]:
    """The operation as the document shows it, with its error responses spelled out. The parts
    are copied: the operations are module constants, the document is the caller's to change."""
    if op.tag not in TAG_NAMES:
        raise ValueError(f"{op.operation_id}: no tag {op.tag!r}; the document's tags are {TAG_NAMES}")
    unknown = [name for name in op.errors if name not in ERRORS]
    if unknown:
        raise ValueError(f"{op.operation_id}: no error response {unknown[0]!r}; see ERRORS")
    rendered: dict[str, Any] = {"operationId": op.operation_id, "tags": [op.tag], "summary": op.summary}
    if op.description:
        rendered["description"] = op.description
    if op.parameters:
        rendered["parameters"] = copy.deepcopy(list(op.parameters))
    if op.request_body:
        rendered["requestBody"] = copy.deepcopy(op.request_body)
    responses = copy.deepcopy(op.responses)
    by_status: dict[str, list[str]] = {}
    # An operation the engine answers may also get its unreadable reply (502).
    implied: tuple[str, ...] = ("EngineBadReply",) if "EngineUnavailable" in op.errors else ()
    if op.access.public:
        rendered["security"] = []
    else:  # the guard's answers (omni_gateway.guard)
        implied += ("Unauthorized", "RateLimited", "SecurityUnavailable")
        if op.access.permission is not None:
            implied += ("Forbidden",)
            rendered["x-omni-permission"] = op.access.permission
    for name in dict.fromkeys((*op.errors, *implied, "InternalError")):
        if name in implied and _ERROR_STATUS[name] in responses:
            continue  # the operation's own answer of that status describes it already
        by_status.setdefault(_ERROR_STATUS[name], []).append(name)
    for status, names in by_status.items():
        if status in responses:
            raise ValueError(f"{op.operation_id}: {status} is both an answer and the error {names[0]}")
        if len(names) == 1:
            responses[status] = {"$ref": f"#/components/responses/{names[0]}"}
        else:  # one status, several causes: a response can only be one reference
            responses[status] = _error_response(
                status,
                "; or ".join(
                    text if index == 0 else text[:1].lower() + text[1:]
                    for index, text in enumerate(ERRORS[name][1] for name in names)
                ),
            )
    rendered["responses"] = dict(sorted(responses.items()))
    return rendered


def _parameters() -> dict[str, Any]:
    return {
        "WorkflowName": {
            "name": "name",
            "in": "path",
            "required": True,
            "description": "The workflow's id: its id, or the slug of its name (GET /workflows shows both)",
            "schema": {"type": "string"},
        },
        "RunId": {
            "name": "runId",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$"},
        },
        "ToolName": {
            "name": "name",
            "in": "path",
            "required": True,
            "description": "<category>.<action>, e.g. mt.translate",
            "schema": {"type": "string"},
        },
        "Provider": {"name": "provider", "in": "path", "required": True, "schema": {"type": "string"}},
        "ServerName": {
            "name": "name",
            "in": "path",
            "required": True,
            "description": "A provider, e.g. openrouter",
            "schema": {"type": "string"},
        },
        "DeadLetterId": {
            "name": "id",
            "in": "path",
            "required": True,
            "description": "The dead letter's sequence in the OMNI_DEADLETTERS stream",
            "schema": {"type": "integer", "minimum": 1},
        },
        "After": {
            "name": "after",
            "in": "query",
            "required": False,
            "description": "Only events with a greater seq",
            "schema": {"type": "integer", "minimum": 0, "default": 0},
        },
    }


# -- errors -------------------------------------------------------------------------------------
# The error responses operations name in ``errors``, with the status each is answered with.
ERRORS: dict[str, tuple[str, str]] = {
    "BadRequest": (
        "400",
        "Malformed JSON or YAML, a body that is not an object, a value Omni cannot carry (nesting "
        "deeper than 64, an integer beyond 64 bits, NUL or invalid Unicode), or a parameter of the "
        "wrong type or with control characters",
    ),
    "NotFound": ("404", "No such workflow, run, step, dead letter, tool or route"),
    "NotRedrivable": (
        "409",
        "The dead letter cannot be redriven: unreadable, or no JetStream stream takes its subject",
    ),
    "PayloadTooLarge": ("413", "The body is larger than the gateway accepts"),
    "UnsupportedMediaType": ("415", "The body's content type is not one this route reads"),
    "InvalidPayload": (
        "422",
        "The payload does not match the workflow's trigger schema, or a tool's input its input "
        "schema; details name the field",
    ),
    "InvalidWorkflow": ("422", "The definition is invalid; details name the file, step and field"),
    "WorkflowConflict": (
        "409",
        "The version is registered with other content (version_exists, naming version), or the "
        "name's slug is the id of a workflow named otherwise (id_taken, naming name)",
    ),
    "DefinitionTooLarge": ("413", "The body is larger than the gateway accepts, or than a definition may be"),
    "InvalidDeclaration": ("422", "The tool declaration is invalid; details name the field ($.request.url)"),
    "AlreadyDeclared": ("409", "A tool of that name is declared already (PUT replaces it)"),
    "DeclarationNotYours": (
        "409",
        "The tool name is another tenant's, or the declaration ships with the deployment and only "
        "its default tenant changes it",
    ),
    "InvalidRequest": ("422", "A required field is missing or unusable; details name it"),
    "IdempotencyMismatch": ("422", "The Idempotency-Key was used before with another request body"),
    "InternalError": ("500", "An unexpected failure (never with internals)"),
    "Unauthorized": (
        "401",
        "No credentials, or credentials the security-service does not accept (unknown, revoked or "
        "expired key; a token with a bad signature, issuer, audience or time)",
    ),
    "Forbidden": ("403", "The caller lacks the permission the operation needs; the details name it"),
    "RateLimited": ("429", "Too many failed authentications from this source; Retry-After says when to try"),
    "SecurityUnavailable": ("503", "The security-service did not answer, so nobody can be let in now"),
    "EngineUnavailable": (
        "503",
        "The workflow engine did not answer in time (engine_unavailable), or answered that its "
        "database cannot be reached now (unavailable)",
    ),
    "EngineBadReply": ("502", "The workflow engine's reply could not be read (bad_gateway)"),
    "EventsUnavailable": ("503", "JetStream did not store the event"),
    "SecurityConflict": (
        "409",
        "The principal exists already, a principal would delete itself or take a role from itself, "
        "or the admin role would change",
    ),
    "ToolsUnavailable": (
        "503",
        "NATS or JetStream did not answer, or refused, while the gateway read or wrote the runners' "
        "registry (tools, provider health) or the declared tools",
    ),
    "DeadLettersUnavailable": ("503", "JetStream did not answer, or the dead-letter stream is missing"),
}
_ERROR_STATUS = {name: status for name, (status, _) in ERRORS.items()}


def _error_responses() -> dict[str, Any]:
    return {
        name: _error_response(status, description) for name, (status, description) in sorted(ERRORS.items())
    }


def _error_response(status: str, description: str) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema_ref("ErrorBody")}},
    }
    if status in ("503", "429"):  # every 503 and 429 says when to try again (errors.error_response)
        response["headers"] = {
            "Retry-After": {
                "description": "Seconds to wait before trying again",
                "schema": {"type": "integer", "minimum": 1},
            }
        }
    return response


# -- schemas ------------------------------------------------------------------------------------
def _component_schemas() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(BODY_TYPES, ref_template=SCHEMA_REF)
    for struct in _structs(BODY_TYPES).values():
        schema = components[struct.cls.__name__]
        _mark_datetimes(schema, struct)
        _camelize(schema)
    return components


def _run_event_schemas(record: dict[str, Any]) -> dict[str, Any]:
    """``RunEventRecord`` as a union discriminated by ``type``: one record per history event type
    (``RunEventRecord.<type>``), whose ``data`` is that type's payload (``History.<struct>``).

    ``data`` passes through the gateway as the engine wrote it, so its schemas keep the payload's
    own (snake_case) field names; they are the schemas of ``proto/history``."""
    ref_template = "#/components/schemas/History.{name}"
    refs, defs = msgspec.json.schema_components(history.EVENT_STRUCTS, ref_template=ref_template)
    data_of: dict[str, list[dict[str, Any]]] = {}
    for cls, ref in zip(history.EVENT_STRUCTS, refs, strict=True):
        data_of.setdefault(cls.TYPE, []).append(ref)
    found: dict[str, Any] = {f"History.{name}": schema for name, schema in defs.items()}
    for struct in _structs(history.EVENT_STRUCTS).values():
        _mark_datetimes(found[f"History.{struct.cls.__name__}"], struct)
    mapping: dict[str, str] = {}
    for event_type, data in sorted(data_of.items()):
        name = f"RunEventRecord.{event_type}"
        found[name] = {
            **record,
            "title": name,
            "description": f"A {event_type} event (v{history.VERSIONS[event_type]} of its data)",
            "properties": {
                **record["properties"],
                "type": {"type": "string", "const": event_type},
                "data": data[0] if len(data) == 1 else {"oneOf": data},
            },
            "required": [*record["required"], "data"],
        }
        mapping[event_type] = SCHEMA_REF.format(name=name)
    found["RunEventRecord"] = {
        "title": "RunEventRecord",
        "description": "One event of a run's history: `data` is the payload of its `type`",
        "oneOf": [{"$ref": ref} for ref in mapping.values()],
        "discriminator": {"propertyName": "type", "mapping": mapping},
    }
    return found


def _structs(types: tuple[type[msgspec.Struct], ...]) -> dict[str, mi.StructType]:
    found: dict[str, mi.StructType] = {}

    def walk(info: mi.Type) -> None:
        if isinstance(info, mi.StructType):
            if info.cls.__name__ in found:
                return
            found[info.cls.__name__] = info
            for field in info.fields:
                walk(field.type)
        elif isinstance(info, mi.UnionType):
            for member in info.types:
                walk(member)
        elif isinstance(info, mi.ListType | mi.VarTupleType | mi.SetType | mi.FrozenSetType):
            walk(info.item_type)
        elif isinstance(info, mi.TupleType):
            for member in info.item_types:
                walk(member)
        elif isinstance(info, mi.DictType):
            walk(info.value_type)

    for info in mi.multi_type_info(types):
        walk(info)
    return found


def _mark_datetimes(schema: dict[str, Any], struct: mi.StructType) -> None:
    """The contract's datetimes are timezone-aware UTC on the wire: say so in the schema."""
    for field in struct.fields:
        members = field.type.types if isinstance(field.type, mi.UnionType) else (field.type,)
        if not any(isinstance(member, mi.DateTimeType) for member in members):
            continue
        prop = schema["properties"][field.encode_name]
        for alternative in prop.get("anyOf", [prop]):
            if alternative.get("type") == "string":
                alternative["format"] = "date-time"


def _camelize(schema: dict[str, Any]) -> None:
    if "properties" in schema:
        schema["properties"] = {camel(name): value for name, value in schema["properties"].items()}
    if "required" in schema:
        schema["required"] = [camel(name) for name in schema["required"]]


def main(argv: list[str] | None = None) -> int:
    """``write PATH`` regenerates the file; ``check PATH`` fails when it differs from the code."""
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 2 or args[0] not in {"write", "check"}:
        sys.stderr.write("usage: python -m omni_gateway.openapi write|check PATH\n")
        return 2
    path = Path(args[1])
    text = render_openapi()
    if args[0] == "write":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return 0
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        sys.stderr.write(f"proto drift: {path}: differs from the code; run `make proto` and commit it\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
