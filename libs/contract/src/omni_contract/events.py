"""Versioned event payloads carried on NATS, and the run-history record types.

Rule: a payload type only grows by optional fields (with defaults). A breaking change is a new
``...vN`` type; readers keep accepting the old one until no producer sends it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import msgspec

# ---------------------------------------------------------------------------------------------
# Event type names (the envelope's ``type``).
TOOL_INVOKE_V1: Final = "omni.tool.invoke.v1"
TOOL_RESULT_V1: Final = "omni.tool.result.v1"
RUN_PROGRESS_V1: Final = "omni.run.progress.v1"
DEADLETTER_V1: Final = "omni.deadletter.v1"


class Usage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What one provider call consumed, as the provider reported it."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cost: float = 0.0


class ToolError(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Why a tool call failed. ``kind`` is one of the provider error kinds
    (auth, rate_limited, timeout, server, bad_request, malformed_response, unavailable,
    unknown_tool, internal)."""

    kind: str
    message: str
    retryable: bool = False
    status: int | None = None
    retry_after_s: float | None = None


class ToolInvoke(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One attempt of one step: do ``tool`` at ``provider`` with ``input``.

    ``idempotency_key`` is deterministic (run, step, attempt): runners and providers use it so a
    redelivered invoke never repeats a side effect.

    ``unique_key``: the publisher made the key for this invoke alone and publishes it with
    ``Nats-Msg-Id`` = the key, so any other message carrying it is a copy that JetStream drops
    within the stream's duplicate window (the engine's invokes). A runner then needs no look at its
    result store for a first delivery younger than half that window. A key a caller may reuse
    (a direct call's ``Idempotency-Key``) leaves it false, and every delivery is looked up.
    """

    run_id: str
    step: str
    attempt: int
    tool: str
    provider: str
    input: dict[str, Any]
    idempotency_key: str
    config: dict[str, Any] = {}
    timeout_ms: int | None = None
    workflow: str | None = None
    unique_key: bool = False


class ToolResult(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The outcome of one ``ToolInvoke``."""

    run_id: str
    step: str
    attempt: int
    tool: str
    provider: str
    idempotency_key: str
    success: bool
    output: dict[str, Any] | None = None
    error: ToolError | None = None
    usage: Usage | None = None
    model: str | None = None
    started_at: datetime | None = None
    duration_ms: float = 0.0
    runner: str | None = None


class RunProgress(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A notice that a run's history grew up to ``seq`` (one per engine transaction, naming its
    last event), for observers. Read the history (PostgreSQL, via the engine) for every event."""

    run_id: str
    workflow: str
    seq: int
    event: str
    status: str
    at: datetime
    step: str | None = None
    data: dict[str, Any] = {}


class DeadLetter(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A message Omni could not accept, kept with the reason instead of being dropped."""

    kind: str  # e.g. "trigger.rejected", "result.unprocessable"
    reason: str
    original_subject: str
    original_body: str  # the body as received (UTF-8, or base64 when not text)
    body_encoding: str = "utf-8"
    errors: list[dict[str, Any]] = []
    stream_seq: int | None = None
    at: datetime | None = None


# ---------------------------------------------------------------------------------------------
# Run history: the append-only event sequence of a run (stored in PostgreSQL, served over the API).
class RunEventType:
    RUN_STARTED: Final = "run.started"
    STEP_SCHEDULED: Final = "step.scheduled"
    STEP_STARTED: Final = "step.started"
    STEP_COMPLETED: Final = "step.completed"
    STEP_FAILED: Final = "step.failed"
    STEP_SKIPPED: Final = "step.skipped"  # its ``when`` was false, or what it needs did not happen
    STEP_RETRYING: Final = "step.retrying"  # failed; the next attempt waits for a back-off timer
    STEP_FALLBACK: Final = "step.fallback"  # switching to the next provider, with the reason
    STEP_TIMED_OUT: Final = "step.timed_out"  # its attempt outlived ``config.timeout``
    STEP_WAITING: Final = "step.waiting"  # waits for an outside event (``wait``)
    COMPENSATION_STARTED: Final = "run.compensating"
    RUN_COMPLETED: Final = "run.completed"
    RUN_FAILED: Final = "run.failed"
    RUN_CANCELLED: Final = "run.cancelled"
    RUN_CANCEL_REQUESTED: Final = "run.cancel_requested"
    RUN_TIMED_OUT: Final = "run.timed_out"
    RUN_BUDGET_EXCEEDED: Final = "run.budget_exceeded"

    TERMINAL: Final = frozenset(
        {RUN_COMPLETED, RUN_FAILED, RUN_CANCELLED, RUN_TIMED_OUT, RUN_BUDGET_EXCEEDED}
    )


class RunStatus:
    RUNNING: Final = "running"
    COMPENSATING: Final = "compensating"  # failing or cancelled: compensation steps are running
    COMPLETED: Final = "completed"
    FAILED: Final = "failed"
    CANCELLED: Final = "cancelled"
    TIMED_OUT: Final = "timed_out"  # guards.budget.maxMs passed
    BUDGET_EXCEEDED: Final = "budget_exceeded"  # guards.budget.maxTokens or maxCost would be passed

    ALL: Final = (RUNNING, COMPENSATING, COMPLETED, FAILED, CANCELLED, TIMED_OUT, BUDGET_EXCEEDED)
    TERMINAL: Final = frozenset({COMPLETED, FAILED, CANCELLED, TIMED_OUT, BUDGET_EXCEEDED})


class StepStatus:
    PENDING: Final = "pending"
    SCHEDULED: Final = "scheduled"
    RUNNING: Final = "running"
    RETRYING: Final = "retrying"  # waiting for the back-off timer before the next attempt
    WAITING: Final = "waiting"  # waiting for an outside event
    COMPLETED: Final = "completed"
    FAILED: Final = "failed"
    SKIPPED: Final = "skipped"
    CANCELLED: Final = "cancelled"

    DONE: Final = frozenset({COMPLETED, FAILED, SKIPPED, CANCELLED})


class RunEventRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One event of a run's history, as ``omni.rpc.engine.runs.events`` and the API serve it.

    ``data`` is the payload of ``type`` at its current version: a struct of
    ``omni_contract.history`` where the engine builds the record, and the same JSON object, as
    plain data, where a reader decodes it (so that it passes on untouched; decode it with
    ``history.decode_data`` for the struct)."""

    run_id: str
    seq: int
    type: str
    at: datetime
    data: Any = {}


EVENT_PAYLOADS: dict[str, type[msgspec.Struct]] = {
    TOOL_INVOKE_V1: ToolInvoke,
    TOOL_RESULT_V1: ToolResult,
    RUN_PROGRESS_V1: RunProgress,
    DEADLETTER_V1: DeadLetter,
}
