"""The OpenAPI 3.1 document of the public HTTP API, built from the same structs that encode the
bodies (through the same camelCase rule), so the document cannot describe fields the API does not
send. The result depends on nothing but the code: ``proto/openapi.json`` is generated from it and
checked for drift."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi
from omni_contract import history
from omni_contract.declared import HttpToolDeclaration, RegisteredDeclaration, StoredDeclaration
from omni_contract.events import RunStatus
from omni_contract.rpc import RunEventsReply, RunPage, RunSummary, WorkflowVersions

from omni_gateway.convert import camel
from omni_gateway.errors import ErrorBody
from omni_gateway.events import EVENT_SUBJECT_PATTERN, MAX_SUBJECT
from omni_gateway.servers import STATUSES as SERVER_STATUSES
from omni_gateway.servers import ServerDetail, ServerList
from omni_gateway.settings import MAX_EXECUTE_WAIT_S
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
from omni_gateway.workflows import IDEMPOTENCY_KEY, MAX_IDEMPOTENCY_KEY, REPLAYED_HEADER

API_VERSION = "0.1.0"
_REF = "#/components/schemas/{name}"

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
    schemas["WorkflowDefinition"] = WORKFLOW_DEFINITION
    schemas["WorkflowList"]["properties"]["workflows"]["items"] = _ref("WorkflowDefinition")
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
        "tags": [
            {"name": "workflows", "description": "Workflow definitions and their execution"},
            {"name": "runs", "description": "Runs, their history and live progress"},
            {"name": "tools", "description": "The tools the runners serve, and calling one directly"},
            {"name": "events", "description": "Application events that trigger workflows"},
            {"name": "deadletters", "description": "Messages Omni could not process, and their redrive"},
            {"name": "operations", "description": "Health, readiness, metrics and this document"},
        ],
        "paths": _paths(),
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "responses": _error_responses(),
            "parameters": _parameters(),
        },
    }


# -- paths --------------------------------------------------------------------------------------
def _paths() -> dict[str, Any]:
    return {
        "/workflows": {
            "get": _op(
                "listWorkflows",
                "workflows",
                "List the current version of every workflow definition (id and name of each)",
                {"200": _json("The definitions", "WorkflowList")},
                errors=("EngineUnavailable",),
            ),
            "post": _op(
                "registerWorkflow",
                "workflows",
                "Register a new version of a workflow definition",
                {
                    "200": {
                        **_json(
                            "This id, version and content were registered before: nothing changed",
                            "WorkflowDefinition",
                        ),
                        "headers": {"Location": _location("The definition's URL")},
                    },
                    "201": {
                        **_json("A new version, now the one new runs start with", "WorkflowDefinition"),
                        "headers": {"Location": _location("The definition's URL")},
                    },
                },
                errors=(
                    "BadRequest",
                    "WorkflowConflict",
                    "DefinitionTooLarge",
                    "UnsupportedMediaType",
                    "InvalidWorkflow",
                    "EngineUnavailable",
                ),
                description=(
                    "The body is the definition as YAML or JSON text. Its name is free text; its id "
                    "(written, or the slug of the name) is its address. An invalid definition is "
                    "answered with 422 and one detail per problem (at most 50, then a count), naming "
                    "the file, the step and the field; limits (200 steps, 256 KiB of text and of "
                    "stored JSON, nesting 32 deep) are problems like any other, found before anything "
                    "is stored. A version is immutable: the same id and version with other content "
                    "is a 409 version_exists naming version."
                ),
                request_body={
                    "required": True,
                    "content": {
                        "application/yaml": {"schema": {"type": "string"}},
                        "application/json": {"schema": _ref("WorkflowDefinition")},
                        "text/plain": {"schema": {"type": "string"}},
                    },
                },
                parameters=[
                    {
                        "name": "filename",
                        "in": "query",
                        "required": False,
                        "description": "The name problems are reported against",
                        "schema": {"type": "string"},
                    }
                ],
            ),
        },
        "/workflows/{name}": {
            "get": _op(
                "getWorkflow",
                "workflows",
                "Read the current version of one workflow definition, by its id",
                {"200": _json("The definition", "WorkflowDefinition")},
                errors=("NotFound", "EngineUnavailable"),
                parameters=[_param_ref("WorkflowName")],
            ),
        },
        "/workflows/{name}/execute": {
            "post": _op(
                "executeWorkflow",
                "workflows",
                "Start a run of a workflow and wait for it to end",
                {
                    "200": {
                        **_json("The run ended (" + ", ".join(sorted(RunStatus.TERMINAL)) + ")", "Execution"),
                        "headers": {REPLAYED_HEADER: _replayed()},
                    },
                    "202": {
                        "description": (
                            "The run is still going: with wait=false, the run id and status; after a "
                            "wait that ran out, the run so far. Follow it at Location."
                        ),
                        "headers": {"Location": _location("The run's URL"), REPLAYED_HEADER: _replayed()},
                        "content": {
                            "application/json": {
                                "schema": {"oneOf": [_ref("ExecutionAccepted"), _ref("Execution")]}
                            }
                        },
                    },
                },
                errors=(
                    "BadRequest",
                    "NotFound",
                    "PayloadTooLarge",
                    "InvalidPayload",
                    "IdempotencyMismatch",
                    "EngineUnavailable",
                ),
                description=(
                    "The payload is checked against the workflow's trigger schema (422 names the field, "
                    "e.g. payload.targetLanguage). The call waits for the run to end for at most "
                    "`timeout` seconds. With an Idempotency-Key, a repeated request gets the run the "
                    "first one started (whatever its state), and the same key with another body is "
                    "refused with 422."
                ),
                request_body={
                    "required": False,
                    "content": {"application/json": {"schema": _ref("ExecuteRequest")}},
                },
                parameters=[
                    _param_ref("WorkflowName"),
                    {
                        "name": "wait",
                        "in": "query",
                        "required": False,
                        "description": "false: answer 202 as soon as the run has started",
                        "schema": {"type": "boolean", "default": True},
                    },
                    {
                        "name": "timeout",
                        "in": "query",
                        "required": False,
                        "description": "Seconds to wait for the run to end (default: the gateway's setting)",
                        "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_EXECUTE_WAIT_S},
                    },
                    {
                        "name": IDEMPOTENCY_KEY,
                        "in": "header",
                        "required": False,
                        "description": (
                            "Start at most one run per key: the same key again answers with that run"
                        ),
                        "schema": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": MAX_IDEMPOTENCY_KEY,
                            "pattern": "^[!-~]+$",
                        },
                    },
                ],
            ),
        },
        "/workflows/{name}/versions": {
            "get": _op(
                "getWorkflowVersions",
                "workflows",
                "List the versions of a workflow definition the engine has registered",
                {
                    "200": _json(
                        "The versions, newest first; current marks the one new runs use", "WorkflowVersions"
                    )
                },
                errors=("NotFound", "EngineUnavailable"),
                parameters=[_param_ref("WorkflowName")],
            ),
        },
        "/runs": {
            "get": _op(
                "listRuns",
                "runs",
                "List runs, newest first, a page at a time",
                {"200": _json("One page of runs; nextCursor fetches the next", "RunPage")},
                errors=("BadRequest", "EngineUnavailable"),
                parameters=[
                    {"name": "workflow", "in": "query", "required": False, "schema": {"type": "string"}},
                    {
                        "name": "status",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": list(RunStatus.ALL)},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "required": False,
                        "description": "nextCursor of the previous page",
                        "schema": {"type": "string"},
                    },
                ],
            ),
        },
        "/runs/{runId}": {
            "get": _op(
                "getRun",
                "runs",
                "Read one run with its steps",
                {"200": _json("The run", "RunSummary")},
                errors=("NotFound", "EngineUnavailable"),
                parameters=[_param_ref("RunId")],
            ),
        },
        "/runs/{runId}/events": {
            "get": _op(
                "getRunEvents",
                "runs",
                "Read a run's history of events",
                {"200": _json("The events after `after`, in order", "RunEventsReply")},
                errors=("BadRequest", "NotFound", "EngineUnavailable"),
                parameters=[_param_ref("RunId"), _param_ref("After")],
            ),
        },
        "/runs/{runId}/stream": {
            "get": _op(
                "streamRun",
                "runs",
                "Follow a run's progress as server-sent events",
                {
                    "200": {
                        "description": (
                            "text/event-stream: the history after `after` (or Last-Event-ID), then live "
                            "progress; `event` is the event type, `id` its seq, `data` a RunEventRecord. "
                            "The stream ends after the run's last event; comments keep it alive."
                        ),
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    "204": {"description": "The run ended at or before the event the client resumes from"},
                },
                errors=("BadRequest", "NotFound", "EngineUnavailable"),
                parameters=[
                    _param_ref("RunId"),
                    _param_ref("After"),
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "description": "The seq of the last event received, when reconnecting",
                        "schema": {"type": "integer", "minimum": 0},
                    },
                ],
            ),
        },
        "/runs/{runId}/cancel": {
            "post": _op(
                "cancelRun",
                "runs",
                "Cancel a run",
                {
                    "202": {
                        **_json(
                            "The cancellation is recorded; the run is shown as it is now. It becomes "
                            "cancelled once the work in flight has stopped and compensation has run. "
                            "A run that has already ended is answered unchanged.",
                            "RunSummary",
                        ),
                        "headers": {"Location": _location("The run's URL")},
                    }
                },
                errors=("BadRequest", "NotFound", "PayloadTooLarge", "EngineUnavailable"),
                request_body={
                    "required": False,
                    "content": {"application/json": {"schema": _ref("CancelRequest")}},
                },
                parameters=[_param_ref("RunId")],
            ),
        },
        "/runs/{runId}/rerun": {
            "post": _op(
                "rerunRun",
                "runs",
                "Run a workflow again from one of its steps",
                {
                    "202": {
                        **_json("The new run has started; follow it at Location", "ExecutionAccepted"),
                        "headers": {"Location": _location("The new run's URL")},
                    }
                },
                errors=(
                    "BadRequest",
                    "NotFound",
                    "PayloadTooLarge",
                    "InvalidRequest",
                    "InvalidPayload",
                    "EngineUnavailable",
                ),
                description=(
                    "A new run of the same workflow version reuses the outputs of the steps written "
                    "before fromStep that completed in the old run, and runs fromStep and the rest "
                    "again, with the old run's payload unless one is given. The new run names the old "
                    "one in rerunOf. A fromStep the workflow does not have is 422 invalid_payload."
                ),
                request_body={
                    "required": True,
                    "content": {"application/json": {"schema": _ref("RerunBody")}},
                },
                parameters=[_param_ref("RunId")],
            ),
        },
        "/deadletters": {
            "get": _op(
                "listDeadLetters",
                "deadletters",
                "List dead letters, newest first, a page at a time",
                {"200": _json("One page; nextCursor fetches the next (older) one", "DeadLetterPage")},
                errors=("BadRequest", "DeadLettersUnavailable"),
                parameters=[
                    {
                        "name": "kind",
                        "in": "query",
                        "required": False,
                        "description": "Only dead letters of this kind (e.g. trigger.rejected)",
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "required": False,
                        "description": "nextCursor of the previous page",
                        "schema": {"type": "string"},
                    },
                ],
            ),
        },
        "/deadletters/{id}": {
            "get": _op(
                "getDeadLetter",
                "deadletters",
                "Read one dead letter",
                {"200": _json("The dead letter", "DeadLetterView")},
                errors=("NotFound", "DeadLettersUnavailable"),
                parameters=[_param_ref("DeadLetterId")],
            ),
        },
        "/deadletters/{id}/redrive": {
            "post": _op(
                "redriveDeadLetter",
                "deadletters",
                "Deliver a dead letter's original message again, and remove the dead letter",
                {"202": _json("The original message is stored again in JetStream", "DeadLetterRedriven")},
                errors=("NotFound", "NotRedrivable", "DeadLettersUnavailable"),
                description=(
                    "The original body is published to the original subject with the Nats-Msg-Id "
                    "redrive:<id>, so a retried redrive is stored once; then the dead letter is deleted "
                    "and a second redrive of it is 404. What consumes the subject receives the "
                    "message as if for the first time."
                ),
                parameters=[_param_ref("DeadLetterId")],
            ),
        },
        "/tools": {
            "get": _op(
                "listTools",
                "tools",
                "List the registered tools, one entry per tool and provider",
                {"200": _json("The tools, merged over the runner replicas that registered them", "ToolList")},
                errors=("BadRequest", "ToolsUnavailable"),
                description=(
                    "Read from the runners' registry (the omni_tools KV bucket). A tool is available "
                    "while any live replica says so; otherwise reasons say why not. Unknown query "
                    "parameters are refused with 400."
                ),
                parameters=[
                    _filter("name", "Only this tool (<category>.<action>)"),
                    _filter("provider", "Only tools at this provider"),
                    _filter("category", "Only tools of this category (e.g. stt)"),
                    _filter("capability", "Only tools with a capability of this name"),
                ],
            ),
        },
        "/tools/declarations": {
            "get": _op(
                "listDeclaredTools",
                "tools",
                "List the tools declared by configuration (HTTP calls served by tool-runner-integrations)",
                {"200": _json("The declarations, with where each came from", "DeclarationList")},
                errors=("ToolsUnavailable",),
            ),
            "post": _op(
                "declareTool",
                "tools",
                "Declare a new tool backed by one HTTP call",
                {"201": _json("The declaration as stored, with warnings", "RegisteredDeclaration")},
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
                request_body={
                    "required": True,
                    "content": {
                        "application/json": {"schema": _ref("HttpToolDeclaration")},
                        "application/yaml": {"schema": _ref("HttpToolDeclaration")},
                    },
                },
            ),
        },
        "/tools/declarations/{name}": {
            "get": _op(
                "getDeclaredTool",
                "tools",
                "Read one declared tool",
                {"200": _json("The declaration", "StoredDeclaration")},
                errors=("NotFound", "ToolsUnavailable"),
                parameters=[_param_ref("ToolName")],
            ),
            "put": _op(
                "putDeclaredTool",
                "tools",
                "Declare a tool, or replace its declaration",
                {
                    "200": _json("The declaration replaced the previous one", "RegisteredDeclaration"),
                    "201": _json("The tool is newly declared", "RegisteredDeclaration"),
                },
                errors=("BadRequest", "PayloadTooLarge", "InvalidDeclaration", "ToolsUnavailable"),
                request_body={
                    "required": True,
                    "content": {
                        "application/json": {"schema": _ref("HttpToolDeclaration")},
                        "application/yaml": {"schema": _ref("HttpToolDeclaration")},
                    },
                },
                parameters=[_param_ref("ToolName")],
            ),
            "delete": _op(
                "deleteDeclaredTool",
                "tools",
                "Withdraw a declared tool",
                {"204": {"description": "Withdrawn; the runners stop serving it"}},
                errors=("NotFound", "ToolsUnavailable"),
                parameters=[_param_ref("ToolName")],
            ),
        },
        "/tools/{name}": {
            "get": _op(
                "getTool",
                "tools",
                "Read one tool with each provider that serves it",
                {"200": _json("The tool at each provider", "ToolProviders")},
                errors=("NotFound", "ToolsUnavailable"),
                parameters=[_param_ref("ToolName")],
            ),
        },
        "/servers": {
            "get": _op(
                "listServers",
                "tools",
                "Every provider Omni knows, and any other with a live runner, with its health",
                {
                    "200": _json(
                        "Each provider: healthy, degraded, open (circuit), down (no live runner can call "
                        "it) or unconfigured (missingVariable names its unset key)",
                        "ServerList",
                    )
                },
                errors=("BadRequest", "ToolsUnavailable"),
            ),
        },
        "/servers/{name}": {
            "get": _op(
                "getServer",
                "tools",
                "One provider's health, with each runner replica's view",
                {"200": _json("The provider (a known one without runners too, with why)", "ServerDetail")},
                errors=("NotFound", "ToolsUnavailable"),
                parameters=[_param_ref("ServerName")],
            ),
        },
        "/tools/{name}/{provider}": {
            "get": _op(
                "getToolProvider",
                "tools",
                "Read one tool at one provider, with its input and output schemas",
                {"200": _json("The tool at the provider, and the replicas serving it", "ToolDetail")},
                errors=("NotFound", "ToolsUnavailable"),
                parameters=[_param_ref("ToolName"), _param_ref("Provider")],
            ),
        },
        "/tools/{category}/{action}/{provider}": {
            "post": _op(
                "executeTool",
                "tools",
                "Call one tool at one provider, outside any workflow, and wait for its result",
                {
                    "200": _json("The tool answered", "ToolExecution"),
                    "502": _json("The provider failed (error.kind says how)", "ToolExecution"),
                    "503": {
                        "description": (
                            "No runner replica is live and available for the tool at the provider "
                            "(a ToolExecution with error.code tool_unavailable, saying why); or NATS "
                            "could not be used (tools_unavailable)"
                        ),
                        "content": {
                            "application/json": {
                                "schema": {"oneOf": [_ref("ToolExecution"), _ref("ErrorBody")]}
                            }
                        },
                    },
                    "504": _json(
                        "No result within the tool's timeout and the gateway's margin, or the provider "
                        "timed out",
                        "ToolExecution",
                    ),
                },
                errors=("BadRequest", "NotFound", "PayloadTooLarge", "InvalidPayload"),
                description=(
                    "A tool no live runner of the provider serves, or a provider Omni does not know, is "
                    "404; a provider Omni knows whose runners are all gone is 503 tool_unavailable. "
                    "input is checked against the tool's registered input schema (422 names the field, "
                    "e.g. input.targetLanguage). With an Idempotency-Key, a repeated request with the "
                    "same input is answered with the first call's result instead of calling the "
                    "provider again."
                ),
                request_body={
                    "required": True,
                    "content": {"application/json": {"schema": _ref("ToolExecuteRequest")}},
                },
                parameters=[
                    {"name": "category", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"name": "action", "in": "path", "required": True, "schema": {"type": "string"}},
                    _param_ref("Provider"),
                    {
                        "name": IDEMPOTENCY_KEY,
                        "in": "header",
                        "required": False,
                        "description": "Call the tool at most once per key and input",
                        "schema": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": MAX_IDEMPOTENCY_KEY,
                            "pattern": "^[!-~]+$",
                        },
                    },
                ],
            ),
        },
        "/events/{subject}": {
            "post": _op(
                "publishEvent",
                "events",
                "Publish an application event",
                {"202": _json("The event is stored in JetStream", "EventAccepted")},
                errors=("BadRequest", "PayloadTooLarge", "EventsUnavailable"),
                description=(
                    "The body is the event's JSON payload. It is stored wrapped in a CloudEvents "
                    "envelope whose type is the subject; a repeated id (ce-id or Idempotency-Key) "
                    "within the de-duplication window is stored once."
                ),
                request_body={
                    "required": False,
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                parameters=[
                    {
                        "name": "subject",
                        "in": "path",
                        "required": True,
                        "description": (
                            "A concrete subject under app.: dot-separated tokens without wildcards, "
                            "whitespace or control characters"
                        ),
                        "schema": {
                            "type": "string",
                            "pattern": EVENT_SUBJECT_PATTERN,
                            "maxLength": MAX_SUBJECT,
                        },
                    },
                    {
                        "name": "ce-id",
                        "in": "header",
                        "required": False,
                        "description": "The event id (also its de-duplication id)",
                        "schema": {"type": "string", "maxLength": 200},
                    },
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "description": "Used as the event id when ce-id is absent",
                        "schema": {"type": "string", "maxLength": 200},
                    },
                ],
            ),
        },
        "/healthz": {
            "get": _op("healthz", "operations", "The process is alive", {"200": _json("Alive", "Health")}),
        },
        "/readyz": {
            "get": _op(
                "readyz",
                "operations",
                "The gateway can serve: NATS is connected and the engine answers",
                {
                    "200": _json("Ready", "Readiness"),
                    "503": _json("Not ready, with the reasons", "Readiness"),
                },
            ),
        },
        "/metrics": {
            "get": _op(
                "metrics",
                "operations",
                "Prometheus metrics",
                {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            ),
        },
        "/openapi.json": {
            "get": _op(
                "openapi",
                "operations",
                "This document",
                {
                    "200": {
                        "description": "OpenAPI 3.1",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            ),
        },
    }


def _op(
    operation_id: str,
    tag: str,
    summary: str,
    responses: dict[str, Any],
    *,
    errors: tuple[str, ...] = (),
    description: str | None = None,
    request_body: dict[str, Any] | None = None,
    parameters: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": operation_id, "tags": [tag], "summary": summary}
    if description:
        op["description"] = description
    if parameters:
        op["parameters"] = parameters
    if request_body:
        op["requestBody"] = request_body
    all_responses = dict(responses)
    by_status: dict[str, list[str]] = {}
    for name in (*errors, "InternalError"):
        by_status.setdefault(_ERROR_STATUS[name], []).append(name)
    for status, names in by_status.items():
        if len(names) == 1:
            all_responses[status] = {"$ref": f"#/components/responses/{names[0]}"}
        else:  # one status, several causes: a response can only be one reference
            all_responses[status] = {
                "description": "; or ".join(
                    text if index == 0 else text[:1].lower() + text[1:]
                    for index, text in enumerate(_ERRORS[name][1] for name in names)
                ),
                "content": {"application/json": {"schema": _ref("ErrorBody")}},
            }
    op["responses"] = dict(sorted(all_responses.items()))
    return op


def _json(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(name=name)}


def _param_ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/parameters/{name}"}


def _replayed() -> dict[str, Any]:
    return {
        "description": "true when the Idempotency-Key named a run an earlier request started",
        "schema": {"type": "string", "enum": ["true"]},
    }


def _filter(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "string", "maxLength": 128},
    }


def _location(description: str) -> dict[str, Any]:
    return {"description": description, "schema": {"type": "string"}}


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
_ERRORS: dict[str, tuple[str, str]] = {
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
    "InvalidRequest": ("422", "A required field is missing or unusable; details name it"),
    "IdempotencyMismatch": ("422", "The Idempotency-Key was used before with another request body"),
    "InternalError": ("500", "An unexpected failure (never with internals)"),
    "EngineUnavailable": ("503", "The workflow engine did not answer in time"),
    "EventsUnavailable": ("503", "JetStream did not store the event"),
    "ToolsUnavailable": ("503", "NATS did not answer while reading the tool registry"),
    "DeadLettersUnavailable": ("503", "JetStream did not answer, or the dead-letter stream is missing"),
}
_ERROR_STATUS = {name: status for name, (status, _) in _ERRORS.items()}


def _error_responses() -> dict[str, Any]:
    return {
        name: {"description": description, "content": {"application/json": {"schema": _ref("ErrorBody")}}}
        for name, (_, description) in sorted(_ERRORS.items())
    }


# -- schemas ------------------------------------------------------------------------------------
def _component_schemas() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(BODY_TYPES, ref_template=_REF)
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
        mapping[event_type] = _REF.format(name=name)
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
