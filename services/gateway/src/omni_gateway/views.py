"""The gateway's own HTTP bodies. Like the contract's structs they are declared in snake_case and
leave through :func:`omni_gateway.convert.to_camel`, so one rule names every field on the wire and
in the OpenAPI document."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from omni_contract.declared import StoredDeclaration
from omni_contract.events import RunEventRecord, RunProgress, RunStatus, Usage
from omni_contract.rpc import RunSummary, StepSummary, WaitingFor
from omni_contract.tools import Capability

MAX_CANCEL_REASON = 1000


class ExecuteRequest(msgspec.Struct, kw_only=True):
    """The body of POST /workflows/{name}/execute: the trigger payload and the caller's context."""

    payload: dict[str, Any] = {}
    context: dict[str, Any] = {}


class ExecutionStep(msgspec.Struct, kw_only=True):
    """One step of an executed run."""

    name: str
    tool: str | None  # None for a step that waits for an outside event
    provider: str | None
    status: str
    attempt: int
    reason: Annotated[str, msgspec.Meta(description="Why it was skipped, or why it is retrying")] | None
    duration_ms: float | None
    output: dict[str, Any] | None
    error: dict[str, Any] | None
    usage: Usage | None


class Execution(msgspec.Struct, kw_only=True):
    """A run as execute reports it: ended (200), or still running when the wait ran out (202)."""

    run_id: str
    workflow: str
    version: str
    status: str
    duration: (
        Annotated[float, msgspec.Meta(description="Run time in milliseconds (so far, while it runs)")] | None
    )
    steps: list[ExecutionStep]
    output: dict[str, Any] | None
    error: dict[str, Any] | None
    usage: Usage | None
    waiting: Annotated[
        list[WaitingFor], msgspec.Meta(description="What the run still waits for (empty once it ended)")
    ]


class ExecutionAccepted(msgspec.Struct, kw_only=True):
    """The run has started; follow it at the Location header."""

    run_id: str
    status: str


class CancelRequest(msgspec.Struct, kw_only=True):
    """The body of POST /runs/{runId}/cancel (optional)."""

    reason: Annotated[
        str, msgspec.Meta(max_length=MAX_CANCEL_REASON, description="Recorded with the cancellation")
    ] = ""


class RerunBody(msgspec.Struct, kw_only=True):
    """The body of POST /runs/{runId}/rerun: the step to start again from, and optionally a new
    trigger payload (without one, the old run's payload)."""

    from_step: str
    payload: dict[str, Any] | None = None


class WorkflowList(msgspec.Struct, kw_only=True):
    """The registered workflow definitions, and the problems of definition files the engine could
    not load (each {file, errors: [{file, step, field, message, line}]})."""

    workflows: list[dict[str, Any]]
    errors: list[dict[str, Any]] = []


class EventAccepted(msgspec.Struct, kw_only=True):
    """Where an application event was stored; duplicate is true when its id was seen before."""

    id: str
    subject: str
    stream: str
    seq: int
    duplicate: bool


class DeadLetterView(msgspec.Struct, kw_only=True):
    """A message Omni could not process, as kept in the dead-letter stream: id is its sequence in
    that stream; the other fields are those of the DeadLetter it carries (a letter that cannot be
    read itself is shown with its raw body and an empty originalSubject)."""

    id: int
    subject: Annotated[str, msgspec.Meta(description="Where it is kept: omni.deadletter.<kind>")]
    stored_at: datetime
    source: Annotated[str, msgspec.Meta(description="The service that dead-lettered it")]
    kind: str
    reason: str
    original_subject: str
    original_body: Annotated[str, msgspec.Meta(description="As received: UTF-8 text, or base64")]
    body_encoding: Annotated[str, msgspec.Meta(description="utf-8 or base64")]
    errors: list[dict[str, Any]]
    stream_seq: Annotated[
        int | None, msgspec.Meta(description="The original message's sequence in its own stream")
    ]
    at: Annotated[datetime | None, msgspec.Meta(description="When it was dead-lettered")]


class DeadLetterPage(msgspec.Struct, kw_only=True):
    """Dead letters, newest first; nextCursor fetches the next (older) page."""

    dead_letters: list[DeadLetterView]
    next_cursor: str | None


class DeadLetterRedriven(msgspec.Struct, kw_only=True):
    """Where the original message of dead letter id was published again (stream and seq);
    duplicate is true when JetStream had already stored this redrive (a retried request)."""

    id: int
    subject: str
    stream: str
    seq: int
    duplicate: bool


class ToolView(msgspec.Struct, kw_only=True):
    """One tool at one provider, merged over the runner replicas that registered it: available
    while any of them says so; otherwise unavailable, with the reasons they give."""

    name: Annotated[str, msgspec.Meta(description="<category>.<action>, e.g. stt.transcribe")]
    provider: str
    category: str
    description: str
    version: str
    timeout_ms: Annotated[int, msgspec.Meta(description="How long one call may take at the provider")]
    retryable: bool
    requires_auth: bool
    scopes: list[str]
    capabilities: list[Capability]
    status: Annotated[str, msgspec.Meta(description="available | unavailable")]
    reasons: Annotated[list[str], msgspec.Meta(description="Why it is unavailable (empty when available)")]
    replicas: Annotated[int, msgspec.Meta(description="Runner replicas registered for it now")]
    last_heartbeat: datetime | None


class DeclarationList(msgspec.Struct, kw_only=True):
    """The declared tools (``omni_contract.declared``), sorted by name."""

    declarations: list[StoredDeclaration]


class ToolList(msgspec.Struct, kw_only=True):
    """The registered tools, one entry per (tool, provider), sorted by name then provider."""

    tools: list[ToolView]


class ToolReplica(msgspec.Struct, kw_only=True):
    """One runner replica's registration of a tool."""

    runner: str
    status: str
    reason: str | None
    started_at: datetime | None
    heartbeat_at: datetime | None


class ToolDetail(ToolView, kw_only=True):
    """One tool at one provider, with the JSON Schemas of its input and output."""

    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    runners: list[ToolReplica]


class ToolProviders(msgspec.Struct, kw_only=True):
    """One tool and every provider that serves it."""

    name: str
    providers: list[ToolView]


class ToolExecuteRequest(msgspec.Struct, kw_only=True):
    """The body of POST /tools/{category}/{action}/{provider}."""

    input: Annotated[dict[str, Any], msgspec.Meta(description="Checked against the tool's input schema")]
    context: Annotated[
        dict[str, Any], msgspec.Meta(description="The caller's context (an object); not sent to the tool")
    ] = {}


class ToolExecutionError(msgspec.Struct, kw_only=True):
    """Why a direct tool call failed. code is the API's error code (tool_failed, tool_timeout,
    tool_unavailable); kind the runner's error kind (auth, rate_limited, timeout, server,
    bad_request, malformed_response, unavailable, unknown_tool, internal)."""

    code: str
    kind: str
    message: str
    retryable: bool
    provider_status: Annotated[int | None, msgspec.Meta(description="The provider's HTTP status")]
    retry_after_s: float | None


class ToolExecution(msgspec.Struct, kw_only=True):
    """The outcome of one direct tool call: output on success, error otherwise."""

    success: bool
    tool: str
    provider: str
    output: dict[str, Any] | None
    error: ToolExecutionError | None
    duration: Annotated[float | None, msgspec.Meta(description="Milliseconds the runner spent on the call")]
    usage: Usage | None
    model: str | None
    runner: Annotated[str | None, msgspec.Meta(description="The replica that answered")]


class Health(msgspec.Struct, kw_only=True):
    status: str
    service: str


class Readiness(msgspec.Struct, kw_only=True):
    status: str
    service: str
    problems: dict[str, str] = {}


def execution_of(run: RunSummary) -> Execution:
    return Execution(
        run_id=run.run_id,
        workflow=run.workflow,
        version=run.version,
        status=run.status,
        duration=run.duration_ms,
        steps=[_execution_step(step) for step in run.steps],
        output=run.output,
        error=run.error,
        usage=run.usage,
        waiting=run.waiting,
    )


def _execution_step(step: StepSummary) -> ExecutionStep:
    return ExecutionStep(
        name=step.name,
        tool=step.tool,
        provider=step.provider,
        status=step.status,
        attempt=step.attempt,
        reason=step.reason,
        duration_ms=step.duration_ms,
        output=step.output,
        error=step.error,
        usage=step.usage,
    )


def record_of_progress(progress: RunProgress) -> RunEventRecord:
    """A history record made from a progress notice, for when the history cannot be read."""
    return RunEventRecord(
        run_id=progress.run_id, seq=progress.seq, type=progress.event, at=progress.at, data=progress.data
    )


def is_finished(status: str) -> bool:
    return status in RunStatus.TERMINAL
