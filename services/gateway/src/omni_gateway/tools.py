"""``/tools``: the tools the runners serve, read from their registry, and a tool executed directly.

The registry is the JetStream KV bucket ``omni_tools`` (``omni_contract.tools``): one
``ToolRegistration`` per (tool, provider, runner replica), kept alive by the replica's heartbeats.
The gateway reads it on every request, through one ordered consumer that delivers the latest value
of each key (what ``KeyValue.keys()`` does, with the values included), so a listing costs one
JetStream request however many tools there are. A missing bucket means no runner has started yet:
no tools, not an error.

A direct execution is one ``ToolInvoke`` outside any workflow run (run id ``direct-<uuid>``, step
``direct``, attempt 1), published to the provider's work subject like the engine's. The gateway
subscribes to the provider's result subject with core NATS *before* publishing and keeps the one
result that carries its idempotency key. Results also reach the workflow engine's durable consumer
on ``OMNI_TOOL_RESULTS``, which logs and drops them as results of unknown runs.

With an ``Idempotency-Key`` header the invoke's idempotency key is derived from it (and from the
tool, provider and input), so a retried request is answered from the runner's stored result
instead of calling the provider again: JetStream drops the repeated invoke as a duplicate, and the
gateway then either waits for the first one's result (its invoke is still queued or in flight) or,
when the runner has already finished it, sends the invoke once more under a fresh message id so the
runner publishes its stored result again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import jsonschema  # type: ignore[import-untyped]  # ships no type information
import msgspec
import nats.errors
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from omni_contract import streams, subjects
from omni_contract.envelope import (
    HDR_MSG_ID,
    decode_envelope,
    encode_envelope,
    new_envelope,
    payload_of,
)
from omni_contract.events import TOOL_INVOKE_V1, TOOL_RESULT_V1, ToolError, ToolInvoke, ToolResult
from omni_contract.providers import PROVIDER_KEYS
from omni_contract.tools import (
    AVAILABLE,
    DIRECT_RUN_PREFIX,
    TOOL_REGISTRY_BUCKET,
    UNAVAILABLE,
    ToolRegistration,
    key_token,
)
from omni_runtime import nats as omni_nats
from omni_runtime.logging import run_id_var
from omni_runtime.publish import Published, publish
from opentelemetry import trace

from omni_gateway import jetstream
from omni_gateway.apidoc import Operation, json_answer, needs, param_ref, schema_ref
from omni_gateway.bodies import json_type, read_json_object, respond
from omni_gateway.errors import ApiError, ErrorDetail
from omni_gateway.guard import identity_of
from omni_gateway.state import EVENT_SOURCE, GATEWAY
from omni_gateway.views import (
    ToolDetail,
    ToolExecution,
    ToolExecutionError,
    ToolList,
    ToolProviders,
    ToolReplica,
    ToolView,
)
from omni_gateway.workflows import IDEMPOTENCY_KEY, IDEMPOTENCY_KEY_SCHEMA, idempotency_key_of

log = logging.getLogger(__name__)

T = TypeVar("T")

DIRECT_STEP = "direct"
DIRECT_KEY_PREFIX = "direct:"
LIST_FILTERS = ("name", "provider", "category", "capability")
MAX_FILTER = 128

# JetStream API error codes (nats-server's errors.json).
_NEVER = datetime.min.replace(tzinfo=UTC)
_FILTER = re.compile(r"[^\s*>]+")
_TOOL_NAME = re.compile(r"[^\s*>.]+\.[^\s*>.]+")

# What a failed call is answered with, by the runner's error kind: the provider failed (502), it
# did not answer in time (504), or it cannot serve now (503).
_FAILED = (502, "tool_failed")
_TIMED_OUT = (504, "tool_timeout")
_UNAVAILABLE = (503, "tool_unavailable")
_BY_KIND = {"timeout": _TIMED_OUT, "unavailable": _UNAVAILABLE}


# -- the registry -------------------------------------------------------------------------------
@dataclass
class RegisteredTool:
    """The registrations of one (tool, provider) pair, one per live runner replica."""

    name: str
    provider: str
    entries: list[ToolRegistration] = field(default_factory=list)

    @property
    def available(self) -> list[ToolRegistration]:
        return [entry for entry in self.entries if entry.status == AVAILABLE]

    @property
    def current(self) -> ToolRegistration:
        """The entry whose spec speaks for the pair: the freshest of those that say available (replicas
        of two versions may overlap during a rollout)."""
        candidates = self.available or self.entries
        return max(candidates, key=lambda entry: _heartbeat(entry) or _NEVER)

    @property
    def category(self) -> str:
        return self.current.spec.category or self.name.partition(".")[0]

    def reasons(self) -> list[str]:
        if self.available:
            return []
        found = {entry.reason or f"runner {entry.runner} says {entry.status}" for entry in self.entries}
        return sorted(found)

    def view(self) -> ToolView:
        spec = self.current.spec
        beats = [beat for beat in (_heartbeat(entry) for entry in self.entries) if beat is not None]
        return ToolView(
            name=self.name,
            provider=self.provider,
            category=self.category,
            description=spec.description,
            version=spec.version,
            timeout_ms=spec.timeout_ms,
            retryable=spec.retryable,
            requires_auth=spec.requires_auth,
            scopes=spec.scopes,
            capabilities=spec.capabilities,
            status=AVAILABLE if self.available else UNAVAILABLE,
            reasons=self.reasons(),
            replicas=len(self.entries),
            last_heartbeat=max(beats) if beats else None,
        )

    def detail(self) -> ToolDetail:
        spec = self.current.spec
        runners = [
            ToolReplica(
                runner=entry.runner,
                status=entry.status,
                reason=entry.reason,
                started_at=entry.started_at,
                heartbeat_at=entry.heartbeat_at,
            )
            for entry in sorted(self.entries, key=lambda entry: entry.runner)
        ]
        return ToolDetail(
            **msgspec.structs.asdict(self.view()),
            input_schema=spec.input_schema,
            output_schema=spec.output_schema,
            runners=runners,
        )


def _heartbeat(entry: ToolRegistration) -> datetime | None:
    return entry.heartbeat_at or entry.started_at


class ToolRegistry:
    """Reads the tool registry bucket; every NATS failure is a 503 ``tools_unavailable``."""

    def __init__(self, js: JetStreamContext, timeout_s: float) -> None:
        self.js = js
        self.timeout_s = timeout_s

    async def tools(self, *, provider: str | None = None, name: str | None = None) -> list[RegisteredTool]:
        """The registered (tool, provider) pairs, sorted; ``provider``/``name`` narrow the keys read.
        A ``name`` that is not ``<category>.<action>`` names no tool (nor a key filter)."""
        if name is not None and not _TOOL_NAME.fullmatch(name):
            return []
        category, _, action = name.partition(".") if name else ("*", "", "*")
        pattern = ".".join(
            (
                key_token(provider) if provider else "*",
                key_token(category) if name else "*",
                key_token(action) if name else "*",
                "*",
            )
        )
        pairs: dict[tuple[str, str], RegisteredTool] = {}
        for entry in await self._entries(pattern):
            # Keys are made safe for the bucket, so two names may share one: the entry decides.
            if (provider and entry.spec.provider != provider) or (name and entry.spec.name != name):
                continue
            pair = (entry.spec.name, entry.spec.provider)
            pairs.setdefault(pair, RegisteredTool(name=pair[0], provider=pair[1])).entries.append(entry)
        return [pairs[pair] for pair in sorted(pairs)]

    async def _entries(self, pattern: str) -> list[ToolRegistration]:
        try:
            with jetstream_errors("read the tool registry"):
                kv = await self.js.key_value(TOOL_REGISTRY_BUCKET)
                try:
                    return await asyncio.wait_for(self._read(kv, pattern), timeout=self.timeout_s)
                except TimeoutError:
                    raise tools_unavailable(
                        f"the tool registry was not read within {self.timeout_s:g} s"
                    ) from None
        except jetstream.Missing:
            return []  # no bucket: no runner has started yet, so no tools

    @staticmethod
    async def _read(kv: KeyValue, pattern: str) -> list[ToolRegistration]:
        return await read_entries(kv, pattern, ToolRegistration, TOOL_REGISTRY_BUCKET)


# How long to wait for entries after nats-py's "nothing (more) to deliver" marker. The marker can
# come before entries already on their way: nats-py decides it from the consumer's pending count,
# which is 0 once the server has sent everything, even when this client has not handled it yet.
_QUIET_S = 0.05


async def read_entries(kv: KeyValue, pattern: str, type_: type[T], bucket: str) -> list[T]:
    """The latest value of every key matching ``pattern``, decoded; unreadable entries are skipped.

    Reading ends at the entry that says nothing is pending after it (``delta == 0``), or when no
    entry follows the watcher's initial marker within ``_QUIET_S``.
    """
    watcher = await omni_nats.watch(kv, pattern, ignore_deletes=True)
    found: list[T] = []
    marker = False
    try:
        while True:
            try:
                entry = await watcher.updates(timeout=_QUIET_S if marker else 30.0)  # type: ignore[no-untyped-call]
            except nats.errors.TimeoutError:
                if marker:
                    break
                raise
            if entry is None:
                marker = True
                continue
            try:
                found.append(msgspec.json.decode(entry.value or b"", type=type_))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.warning("%s entry %s cannot be read, skipped: %s", bucket, entry.key, exc)
            if entry.delta == 0:
                break
    finally:
        await omni_nats.stop_watch(watcher)  # and its consumer, which would outlive it otherwise
    return found


# -- routes -------------------------------------------------------------------------------------
def _query_filter(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "string", "maxLength": MAX_FILTER},
    }


LIST_TOOLS = Operation(
    method="get",
    path="/tools",
    access=needs("tool:read"),
    operation_id="listTools",
    tag="tools",
    summary="List the registered tools, one entry per tool and provider",
    responses={
        "200": json_answer("The tools, merged over the runner replicas that registered them", "ToolList")
    },
    errors=("BadRequest", "ToolsUnavailable"),
    description=(
        "Read from the runners' registry (the omni_tools KV bucket). A tool is available "
        "while any live replica says so; otherwise reasons say why not. Unknown query "
        "parameters are refused with 400."
    ),
    parameters=(
        _query_filter("name", "Only this tool (<category>.<action>)"),
        _query_filter("provider", "Only tools at this provider"),
        _query_filter("category", "Only tools of this category (e.g. stt)"),
        _query_filter("capability", "Only tools with a capability of this name"),
    ),
)


async def list_tools(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    unknown = sorted(set(request.query) - set(LIST_FILTERS))
    if unknown:
        raise ApiError.bad_request(
            unknown[0], f"unknown query parameter {unknown[0]!r}; use {', '.join(LIST_FILTERS)}"
        )
    wanted = {name: _filter_value(request, name) for name in LIST_FILTERS}
    if wanted["name"] is not None and not _TOOL_NAME.fullmatch(wanted["name"]):
        raise ApiError.bad_request("name", "name must be a tool name such as stt.transcribe")
    registry = ToolRegistry(gateway.js, gateway.settings.rpc_timeout_s)
    found = await registry.tools(provider=wanted["provider"], name=wanted["name"])
    identity = identity_of(request)
    views = [
        tool.view()
        for tool in found
        # Listing applies the decision calling applies: a tool the caller may not execute is left out.
        if identity.decide("tool", "execute", tool.name).allowed
        and (wanted["category"] is None or tool.category == wanted["category"])
        and (
            wanted["capability"] is None
            or any(capability.name == wanted["capability"] for capability in tool.current.spec.capabilities)
        )
    ]
    return respond(ToolList(tools=views))


GET_TOOL = Operation(
    method="get",
    path="/tools/{name}",
    access=needs("tool:read:{name}"),
    operation_id="getTool",
    tag="tools",
    summary="Read one tool with each provider that serves it",
    responses={"200": json_answer("The tool at each provider", "ToolProviders")},
    errors=("NotFound", "ToolsUnavailable"),
    parameters=(param_ref("ToolName"),),
)


async def get_tool(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    name = request.match_info["name"]
    found = await ToolRegistry(gateway.js, gateway.settings.rpc_timeout_s).tools(name=name)
    if not found:
        raise ApiError(404, "not_found", f"no runner has registered the tool {name!r}")
    return respond(ToolProviders(name=name, providers=[tool.view() for tool in found]))


GET_TOOL_PROVIDER = Operation(
    method="get",
    path="/tools/{name}/{provider}",
    access=needs("tool:read:{name}"),
    operation_id="getToolProvider",
    tag="tools",
    summary="Read one tool at one provider, with its input and output schemas",
    responses={"200": json_answer("The tool at the provider, and the replicas serving it", "ToolDetail")},
    errors=("NotFound", "ToolsUnavailable"),
    parameters=(param_ref("ToolName"), param_ref("Provider")),
)


async def get_tool_provider(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    name, provider = request.match_info["name"], request.match_info["provider"]
    found = await ToolRegistry(gateway.js, gateway.settings.rpc_timeout_s).tools(name=name, provider=provider)
    if not found:
        raise ApiError(
            404, "not_found", f"no runner has registered the tool {name!r} at provider {provider!r}"
        )
    return respond(found[0].detail())


EXECUTE_TOOL = Operation(
    method="post",
    path="/tools/{category}/{action}/{provider}",
    access=needs("tool:execute:{category}.{action}"),
    operation_id="executeTool",
    tag="tools",
    summary="Call one tool at one provider, outside any workflow, and wait for its result",
    responses={
        "200": json_answer("The tool answered", "ToolExecution"),
        "502": json_answer("The provider failed (error.kind says how)", "ToolExecution"),
        "503": {
            "description": (
                "No runner replica is live and available for the tool at the provider "
                "(a ToolExecution with error.code tool_unavailable, saying why); or NATS "
                "could not be used (tools_unavailable); or the security-service did not answer "
                "(security_unavailable)"
            ),
            "content": {
                "application/json": {
                    "schema": {"oneOf": [schema_ref("ToolExecution"), schema_ref("ErrorBody")]}
                }
            },
        },
        "504": json_answer(
            "No result within the tool's timeout and the gateway's margin, or the provider timed out",
            "ToolExecution",
        ),
    },
    errors=("BadRequest", "NotFound", "PayloadTooLarge", "InvalidRequest", "InvalidPayload"),
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
        "content": {"application/json": {"schema": schema_ref("ToolExecuteRequest")}},
    },
    parameters=(
        {"name": "category", "in": "path", "required": True, "schema": {"type": "string"}},
        {"name": "action", "in": "path", "required": True, "schema": {"type": "string"}},
        param_ref("Provider"),
        {
            "name": IDEMPOTENCY_KEY,
            "in": "header",
            "required": False,
            "description": "Call the tool at most once per key and input",
            "schema": IDEMPOTENCY_KEY_SCHEMA,
        },
    ),
)


async def execute_tool(request: web.Request) -> web.Response:
    """Call one tool at one provider outside any workflow and wait for its result."""
    gateway = request.app[GATEWAY]
    tool = f"{request.match_info['category']}.{request.match_info['action']}"
    provider = request.match_info["provider"]
    header_key = idempotency_key_of(request)
    body = await read_json_object(request, gateway.settings.max_body_bytes)
    tool_input = _input_of(body)
    context = body.get("context")
    if context is not None and not isinstance(context, dict):
        raise ApiError.bad_request("context", f"context must be a JSON object, not {json_type(context)}")

    registry = ToolRegistry(gateway.js, gateway.settings.rpc_timeout_s)
    found = await registry.tools(name=tool, provider=provider)
    if not found:
        return await _unregistered(registry, tool, provider)
    registered = found[0]
    if not registered.available:
        why = "; ".join(registered.reasons())
        return _failure(
            tool, provider, _UNAVAILABLE, "unavailable", f"{tool} at {provider} is unavailable: {why}"
        )
    spec = registered.current.spec
    _check_input(spec.input_schema, tool_input)

    request_id = uuid.uuid4().hex
    invoke = ToolInvoke(
        run_id=DIRECT_RUN_PREFIX + request_id,
        step=DIRECT_STEP,
        attempt=1,
        tool=tool,
        provider=provider,
        input=tool_input,
        idempotency_key=_idempotency_key(request_id, header_key, tool, provider, tool_input),
        timeout_ms=spec.timeout_ms,
    )
    run_id_var.set(invoke.run_id)
    span = trace.get_current_span()
    span.set_attribute("omni.run_id", invoke.run_id)
    span.set_attribute("omni.tool", tool)
    span.set_attribute("omni.provider", provider)
    wait_s = spec.timeout_ms / 1000 + gateway.settings.tool_wait_margin_s
    result = await DirectCall(gateway.nc, gateway.js, invoke, gateway.settings.rpc_timeout_s).run(wait_s)
    if result is None:
        return _failure(
            tool,
            provider,
            _TIMED_OUT,
            "timeout",
            f"no result from {tool} at {provider} within {wait_s:g} s "
            f"(the tool's timeout of {spec.timeout_ms} ms and a margin of "
            f"{gateway.settings.tool_wait_margin_s:g} s)",
            retryable=True,
        )
    return _answer(result)


async def _unregistered(registry: ToolRegistry, tool: str, provider: str) -> web.Response:
    """No live replica has registered ``tool`` at ``provider``. When the provider is one Omni knows
    and none of its runners is live, the tool may well be served once one is back: 503. Otherwise
    (its live runners do not serve the tool, or Omni has no such provider) the tool is not there: 404.
    """
    provider_live = bool(await registry.tools(provider=provider))
    if not provider_live and provider in PROVIDER_KEYS:
        return _failure(
            tool,
            provider,
            _UNAVAILABLE,
            "unavailable",
            f"no tool-runner of {provider} is live to serve {tool}",
        )
    if provider_live:
        raise ApiError(404, "not_found", f"the runners of {provider!r} serve no tool {tool!r}")
    raise ApiError(404, "not_found", f"no tool {tool!r} at {provider!r}: Omni knows no such provider")


def _filter_value(request: web.Request, name: str) -> str | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    if len(raw) > MAX_FILTER or not _FILTER.fullmatch(raw):
        raise ApiError.bad_request(
            name, f"{name} must be 1 to {MAX_FILTER} characters without whitespace or wildcards"
        )
    return raw


def _input_of(body: dict[str, Any]) -> dict[str, Any]:
    if "input" not in body or body["input"] is None:
        message = "input is required: the tool's input as a JSON object"
        raise ApiError(422, "invalid_request", message, [ErrorDetail(field="input", message=message)])
    value = body["input"]
    if not isinstance(value, dict):
        raise ApiError.bad_request("input", f"input must be a JSON object, not {json_type(value)}")
    return value


OPERATIONS = (LIST_TOOLS, GET_TOOL, GET_TOOL_PROVIDER, EXECUTE_TOOL)


# -- input validation ---------------------------------------------------------------------------
def _check_input(schema: dict[str, Any], value: dict[str, Any]) -> None:
    """422 ``invalid_payload`` with one detail per problem, each naming its field (``input.text``)."""
    if not schema:
        return
    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        # The runner checks the input again: a bad schema in the registry must not block calls.
        log.warning("the registered input schema is not a valid JSON Schema, not checked: %s", exc.message)
        return
    details: list[ErrorDetail] = []
    for error in sorted(cls(schema).iter_errors(value), key=lambda error: _field_path(error.absolute_path)):
        details.extend(_details_of(error))
    if details:
        raise ApiError(
            422,
            "invalid_payload",
            f"input does not match the tool's input schema: {details[0].field}: {details[0].message}",
            details,
        )


def _details_of(error: jsonschema.exceptions.ValidationError) -> list[ErrorDetail]:
    path = _field_path(error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [name for name in error.validator_value if name not in error.instance]
        # jsonschema reports each missing property as its own error: name each once.
        names = [name for name in missing if f"'{name}'" in error.message] or missing[:1]
        return [ErrorDetail(field=f"{path}.{name}", message="is required") for name in names]
    return [ErrorDetail(field=path, message=error.message)]


def _field_path(parts: Iterable[Any]) -> str:
    path = "input"
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


# -- the call -----------------------------------------------------------------------------------
def _idempotency_key(
    request_id: str, header_key: str | None, tool: str, provider: str, tool_input: dict[str, Any]
) -> str:
    """``direct:<uuid>``; with an Idempotency-Key, a digest of it and of what is called, so the same
    key with another input is another call rather than the first call's answer."""
    if header_key is None:
        return DIRECT_KEY_PREFIX + request_id
    canonical = json.dumps([header_key, tool, provider, tool_input], sort_keys=True, separators=(",", ":"))
    return DIRECT_KEY_PREFIX + hashlib.sha256(canonical.encode()).hexdigest()


class DirectCall:
    """Publish one invoke and wait for the result that carries its idempotency key."""

    def __init__(self, nc: NATS, js: JetStreamContext, invoke: ToolInvoke, publish_timeout_s: float) -> None:
        self.nc = nc
        self.js = js
        self.invoke = invoke
        self.publish_timeout_s = publish_timeout_s
        self._result: asyncio.Future[ToolResult] = asyncio.get_running_loop().create_future()

    async def run(self, wait_s: float) -> ToolResult | None:
        """The result, or None when none came within ``wait_s``."""
        with jetstream_errors("subscribe to tool results"):
            sub = await self.nc.subscribe(subjects.tool_result(self.invoke.provider), cb=self._on_result)
        try:
            await self._publish()
            try:
                return await asyncio.wait_for(asyncio.shield(self._result), timeout=wait_s)
            except TimeoutError:
                log.warning(
                    "no result for direct invoke %s within %.3g s", self.invoke.idempotency_key, wait_s
                )
                return None
        finally:
            # A connection already closed has dropped the subscription with it.
            with suppress(nats.errors.ConnectionClosedError):
                await sub.unsubscribe()

    async def _on_result(self, msg: Msg) -> None:
        key = self.invoke.idempotency_key
        # The runner publishes each result with Nats-Msg-Id = its idempotency key: most results of
        # other calls are passed over without decoding them.
        msg_id = (msg.headers or {}).get(HDR_MSG_ID)
        if self._result.done() or (msg_id is not None and msg_id != key):
            return
        try:
            envelope = decode_envelope(msg.data)
            if envelope.type != TOOL_RESULT_V1:
                return
            result = payload_of(envelope, ToolResult)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("a result on %s cannot be read: %s", msg.subject, exc)
            return
        if result.idempotency_key == key and not self._result.done():
            self._result.set_result(result)

    async def _publish(self) -> None:
        invoke = self.invoke
        body = encode_envelope(
            new_envelope(
                TOOL_INVOKE_V1, EVENT_SOURCE, invoke, correlation_id=invoke.run_id, subject=invoke.step
            )
        )
        ack = await self._send(body, invoke.idempotency_key)
        if not ack.duplicate:
            return
        # A retried request: JetStream dropped the invoke as a duplicate of the first one. While
        # that one is still in the work stream (queued, or held by a runner) its result is yet to
        # come; once it is gone the runner has stored and published its result, and an invoke under
        # a fresh message id (the same idempotency key) makes it publish that result again.
        if await self._still_queued(ack.seq):
            log.info(
                "direct invoke %s is a retry; waiting for the first call's result", invoke.idempotency_key
            )
            return
        log.info(
            "direct invoke %s is a retry of a finished call; asking for its result", invoke.idempotency_key
        )
        await self._send(body, f"{invoke.idempotency_key}:replay:{uuid.uuid4().hex}")

    async def _send(self, body: bytes, msg_id: str) -> Published:
        with jetstream.publish_errors(
            f"a direct invoke of {self.invoke.tool}",
            tools_unavailable,
            no_stream=lambda: tools_unavailable("no JetStream stream takes tool invokes"),
        ):
            return await publish(
                self.js,
                subjects.tool_invoke(self.invoke.provider),
                body,
                msg_id=msg_id,
                stream=streams.TOOL_WORK.name,
                timeout_s=self.publish_timeout_s,
            )

    async def _still_queued(self, seq: int) -> bool:
        try:
            with jetstream_errors("read the work stream"):
                await self.js.get_msg(streams.TOOL_WORK.name, seq=seq)
        except jetstream.Missing:
            return False
        return True


# -- answers ------------------------------------------------------------------------------------
def _answer(result: ToolResult) -> web.Response:
    execution = ToolExecution(
        success=result.success,
        tool=result.tool,
        provider=result.provider,
        output=result.output,
        error=None,
        duration=result.duration_ms,
        usage=result.usage,
        model=result.model,
        runner=result.runner,
    )
    if result.success:
        return respond(execution)
    error = result.error or ToolError(
        kind="internal", message="the runner reported a failure without an error"
    )
    status, code = _BY_KIND.get(error.kind, _FAILED)
    execution.error = ToolExecutionError(
        code=code,
        kind=error.kind,
        message=error.message,
        retryable=error.retryable,
        provider_status=error.status,
        retry_after_s=error.retry_after_s,
    )
    headers = None
    if error.retry_after_s is not None:
        headers = {"Retry-After": str(max(1, round(error.retry_after_s)))}
    return respond(execution, status=status, headers=headers)


def _failure(
    tool: str, provider: str, answer: tuple[int, str], kind: str, message: str, *, retryable: bool = False
) -> web.Response:
    status, code = answer
    error = ToolExecutionError(
        code=code, kind=kind, message=message, retryable=retryable, provider_status=None, retry_after_s=None
    )
    execution = ToolExecution(
        success=False,
        tool=tool,
        provider=provider,
        output=None,
        error=error,
        duration=None,
        usage=None,
        model=None,
        runner=None,
    )
    return respond(execution, status=status)


@contextmanager
def jetstream_errors(doing: str) -> Iterator[None]:
    with jetstream.jetstream_errors(doing, tools_unavailable):
        yield


def tools_unavailable(reason: str) -> ApiError:
    return ApiError(503, "tools_unavailable", f"tools unavailable: {reason}")
