"""``/workflows``: list, read and register definitions, and execute a workflow."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from urllib.parse import quote

import msgspec
from aiohttp import web
from omni_contract.events import RunStatus
from omni_contract.rpc import (
    MAX_DEFINITION_BYTES,
    REGISTER_CREATED_KEY,
    RegisterWorkflowRequest,
    StartRunReply,
    StartRunRequest,
)
from omni_runtime.logging import run_id_var
from opentelemetry import trace

from omni_gateway.apidoc import Operation, json_answer, needs, param_ref, schema_ref, string_header
from omni_gateway.bodies import (
    json_response,
    object_field,
    query_bool,
    query_float,
    read_json_object,
    read_text,
    respond,
)
from omni_gateway.errors import ApiError, ErrorDetail
from omni_gateway.follow import FollowerClosed, RunFollower, is_terminal
from omni_gateway.guard import identity_of
from omni_gateway.settings import MAX_EXECUTE_WAIT_S
from omni_gateway.state import GATEWAY, Gateway
from omni_gateway.views import ExecutionAccepted, execution_of, is_finished

log = logging.getLogger(__name__)

# What POST /workflows accepts: JSON, or YAML under any of its customary names.
DEFINITION_CONTENT_TYPES = frozenset(
    {
        "application/json",
        "application/yaml",
        "application/x-yaml",
        "text/yaml",
        "text/x-yaml",
        "text/plain",
        "application/octet-stream",  # what aiohttp reports when the client sent no Content-Type
    }
)

IDEMPOTENCY_KEY = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY = 255
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]+")  # visible ASCII: no spaces, no control characters
# The key as the OpenAPI document describes it: what idempotency_key_of accepts.
IDEMPOTENCY_KEY_SCHEMA = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_IDEMPOTENCY_KEY,
    "pattern": "^[!-~]+$",
}
# Answered on an execute whose Idempotency-Key named an earlier run (the name Stripe uses).
REPLAYED_HEADER = "Idempotent-Replayed"


LIST_WORKFLOWS = Operation(
    method="get",
    path="/workflows",
    access=needs("workflow:read"),
    operation_id="listWorkflows",
    tag="workflows",
    summary="List the current version of every workflow definition (id and name of each)",
    responses={"200": json_answer("The definitions", "WorkflowList")},
    errors=("EngineUnavailable",),
)


async def list_workflows(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    return respond(await gateway.engine.list_workflows(tenant=identity_of(request).tenant))


GET_WORKFLOW = Operation(
    method="get",
    path="/workflows/{name}",
    access=needs("workflow:read:{name}"),
    operation_id="getWorkflow",
    tag="workflows",
    summary="Read the current version of one workflow definition, by its id",
    responses={"200": json_answer("The definition", "WorkflowDefinition")},
    errors=("NotFound", "EngineUnavailable"),
    parameters=(param_ref("WorkflowName"),),
)


async def get_workflow(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    definition = await gateway.engine.get_workflow(
        request.match_info["name"], tenant=identity_of(request).tenant
    )
    return json_response(definition)


WORKFLOW_VERSIONS = Operation(
    method="get",
    path="/workflows/{name}/versions",
    access=needs("workflow:read:{name}"),
    operation_id="getWorkflowVersions",
    tag="workflows",
    summary="List the versions of a workflow definition the engine has registered",
    responses={
        "200": json_answer(
            "The versions, newest first; current marks the one new runs use", "WorkflowVersions"
        )
    },
    errors=("NotFound", "EngineUnavailable"),
    parameters=(param_ref("WorkflowName"),),
)


async def workflow_versions(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    return respond(
        await gateway.engine.workflow_versions(request.match_info["name"], tenant=identity_of(request).tenant)
    )


REGISTER_WORKFLOW = Operation(
    method="post",
    path="/workflows",
    access=needs("workflow:write"),
    operation_id="registerWorkflow",
    tag="workflows",
    summary="Register a new version of a workflow definition",
    responses={
        "200": {
            **json_answer(
                "This id, version and content were registered before: nothing changed", "WorkflowDefinition"
            ),
            "headers": {"Location": string_header("The definition's URL")},
        },
        "201": {
            **json_answer("A new version, now the one new runs start with", "WorkflowDefinition"),
            "headers": {"Location": string_header("The definition's URL")},
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
            "application/json": {"schema": schema_ref("WorkflowDefinition")},
            "text/plain": {"schema": {"type": "string"}},
        },
    },
    parameters=(
        {
            "name": "filename",
            "in": "query",
            "required": False,
            "description": "The name problems are reported against",
            "schema": {"type": "string"},
        },
    ),
)


async def register_workflow(request: web.Request) -> web.Response:
    """201 with the definition as stored (``id``, ``name``, ..., ``hash``) for a new version; 200
    with it when the same id, version and content were registered before (nothing changes).
    The same id and version with other content is a 409 ``version_exists``."""
    gateway = request.app[GATEWAY]
    if request.content_type not in DEFINITION_CONTENT_TYPES:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"a workflow definition is sent as JSON or YAML text, not {request.content_type}",
            [ErrorDetail(field="Content-Type", message="use application/json or application/yaml")],
        )
    source = await read_text(request, gateway.settings.max_body_bytes)
    size = len(source.encode())
    if size > MAX_DEFINITION_BYTES:
        # Refused here: the engine would refuse it too, and such a request may not fit one NATS message.
        raise ApiError(
            413,
            "payload_too_large",
            f"the definition is {size} bytes; a workflow definition is at most {MAX_DEFINITION_BYTES}",
            [ErrorDetail(field="body", message=f"at most {MAX_DEFINITION_BYTES} bytes")],
        )
    if not source.strip():
        raise ApiError.bad_request("body", "body is empty; send the definition as YAML or JSON text")
    filename = request.query.get("filename")
    tenant = identity_of(request).tenant
    register = (
        RegisterWorkflowRequest(source=source, filename=filename, tenant=tenant)
        if filename
        else RegisterWorkflowRequest(source=source, tenant=tenant)
    )
    definition = await gateway.engine.register_workflow(register)
    created = definition.pop(REGISTER_CREATED_KEY, True) is not False
    address = definition.get("id", definition.get("name"))
    headers = {"Location": f"/workflows/{quote(address, safe='')}"} if isinstance(address, str) else None
    return json_response(definition, status=201 if created else 200, headers=headers)


_REPLAYED = {
    "description": "true when the Idempotency-Key named a run an earlier request started",
    "schema": {"type": "string", "enum": ["true"]},
}
EXECUTE_WORKFLOW = Operation(
    method="post",
    path="/workflows/{name}/execute",
    access=needs("workflow:execute:{name}"),
    operation_id="executeWorkflow",
    tag="workflows",
    summary="Start a run of a workflow and wait for it to end",
    responses={
        "200": {
            **json_answer("The run ended (" + ", ".join(sorted(RunStatus.TERMINAL)) + ")", "Execution"),
            "headers": {REPLAYED_HEADER: _REPLAYED},
        },
        "202": {
            "description": (
                "The run is still going: with wait=false, the run id and status; after a "
                "wait that ran out, the run so far. Follow it at Location."
            ),
            "headers": {"Location": string_header("The run's URL"), REPLAYED_HEADER: _REPLAYED},
            "content": {
                "application/json": {
                    "schema": {"oneOf": [schema_ref("ExecutionAccepted"), schema_ref("Execution")]}
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
        "content": {"application/json": {"schema": schema_ref("ExecuteRequest")}},
    },
    parameters=(
        param_ref("WorkflowName"),
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
            "description": "Start at most one run per key: the same key again answers with that run",
            "schema": IDEMPOTENCY_KEY_SCHEMA,
        },
    ),
)


async def execute_workflow(request: web.Request) -> web.Response:
    """Start a run and, unless told not to, wait (bounded) for it to end.

    The gateway picks the run id so it can subscribe to the run's progress before the engine can
    publish any: a run that ends at once is still seen ending. With an ``Idempotency-Key`` the
    engine may answer with the run an earlier request started under that key; the gateway then
    follows that run instead.
    """
    gateway = request.app[GATEWAY]
    wait = query_bool(request, "wait", default=True)
    timeout = query_float(request, "timeout", gateway.settings.execute_wait_s, maximum=MAX_EXECUTE_WAIT_S)
    idempotency_key = idempotency_key_of(request)
    body = await read_json_object(request, gateway.settings.max_body_bytes)
    start = StartRunRequest(
        workflow=request.match_info["name"],
        payload=object_field(body, "payload"),
        context=object_field(body, "context"),
        run_id=uuid.uuid4().hex,
        idempotency_key=idempotency_key,
        tenant=identity_of(request).tenant,
    )
    assert start.run_id is not None
    _name_run(start.run_id)
    async with gateway.follow(start.run_id) as follower:
        started = await gateway.engine.start_run(start)
        if started.run_id == start.run_id:
            return await _answer(gateway, follower, started, wait=wait, wait_s=timeout)
    if idempotency_key is None:
        log.warning("engine started run %s instead of %s", started.run_id, start.run_id)
    else:
        log.info("Idempotency-Key %r names the earlier run %s", idempotency_key, started.run_id)
    _name_run(started.run_id)
    async with gateway.follow(started.run_id) as follower:
        # Subscribed only now: the run may have moved on (or ended) since the engine answered.
        if wait:
            current = await gateway.engine.get_run(started.run_id)
            started = msgspec.structs.replace(started, status=current.status)
        response = await _answer(gateway, follower, started, wait=wait, wait_s=timeout)
    if idempotency_key is not None:
        response.headers[REPLAYED_HEADER] = "true"
    return response


def idempotency_key_of(request: web.Request) -> str | None:
    key = request.headers.get(IDEMPOTENCY_KEY)
    if key is None:
        return None
    if not 0 < len(key) <= MAX_IDEMPOTENCY_KEY or not _IDEMPOTENCY_KEY.fullmatch(key):
        raise ApiError.bad_request(
            IDEMPOTENCY_KEY,
            f"{IDEMPOTENCY_KEY} must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters (no spaces)",
        )
    return key


def _name_run(run_id: str) -> None:
    trace.get_current_span().set_attribute("omni.run_id", run_id)
    run_id_var.set(run_id)


async def _answer(
    gateway: Gateway, follower: RunFollower, started: StartRunReply, *, wait: bool, wait_s: float
) -> web.Response:
    """202 with the run id at once (``wait=false``); else 200 with the run once it has ended, or
    202 with the run so far when ``wait_s`` passes first."""
    location = {"Location": f"/runs/{started.run_id}"}
    if not wait:
        return respond(
            ExecutionAccepted(run_id=started.run_id, status=started.status), status=202, headers=location
        )
    if not is_finished(started.status):
        await _wait_until_finished(follower, wait_s)
    run = await gateway.engine.get_run(started.run_id)
    if is_finished(run.status):
        return respond(execution_of(run))
    return respond(execution_of(run), status=202, headers=location)


async def _wait_until_finished(follower: RunFollower, timeout: float) -> bool:  # noqa: ASYNC109
    """True once a terminal notice arrives; False when ``timeout`` passes or the gateway stops."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (remaining := deadline - loop.time()) > 0:
        try:
            progress = await follower.next(remaining)
        except FollowerClosed:
            return False
        if progress is None:
            return False
        if is_terminal(progress):
            return True
    return False


OPERATIONS = (LIST_WORKFLOWS, REGISTER_WORKFLOW, GET_WORKFLOW, EXECUTE_WORKFLOW, WORKFLOW_VERSIONS)
