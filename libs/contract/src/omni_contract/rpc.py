"""Request/reply payloads of the engine's NATS service endpoints (used by the gateway).

Every reply is an ``RpcReply``: ``result`` on success, ``error`` otherwise. Error codes map to HTTP
statuses in the gateway (see ``ERROR_HTTP_STATUS``).

Tenants: every request about runs or workflows may name the caller's ``tenant`` (the gateway sends
the authenticated caller's). With a tenant, the engine answers only about that tenant's runs and
the workflows it can see (its own and the shared ones, loaded from files); another tenant's run or
workflow is ``not_found`` exactly as one that does not exist. ``tenant=None`` is an internal caller:
no filter. A run with no tenant of its own (started before tenants, or by an internal caller)
belongs to ``omni_contract.security.DEFAULT_TENANT``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from omni_contract.events import RunEventRecord, Usage


class FieldProblem(msgspec.Struct, kw_only=True, omit_defaults=True):
    field: str
    message: str
    file: str | None = None
    step: str | None = None


# The largest workflow definition the engine accepts, as text and as stored JSON: well under what
# one NATS message carries (1 MiB by default), so a definition always fits in a request and a reply.
MAX_DEFINITION_BYTES = 256 * 1024


class RpcError(msgspec.Struct, kw_only=True, omit_defaults=True):
    # not_found | invalid_payload | invalid_workflow | bad_request | conflict | idempotency_mismatch
    # | version_exists | id_taken | internal
    code: str
    message: str
    details: list[FieldProblem] = []
    retry_after_s: float | None = None  # rate_limited: when to try again


ERROR_HTTP_STATUS: dict[str, int] = {
    "not_found": 404,
    "invalid_payload": 422,
    "invalid_workflow": 422,
    "bad_request": 400,
    "conflict": 409,
    # A workflow version is immutable: the same id and version with other content.
    "version_exists": 409,
    # A workflow's address (the slug of its name) is that of another workflow, named differently.
    "id_taken": 409,
    # The same Idempotency-Key with a different request body (IETF draft
    # "The Idempotency-Key HTTP Header Field", section 2.7: 422 Unprocessable Content).
    "idempotency_mismatch": 422,
    # The security-service's answers: no or bad credentials, a missing permission, too many failures.
    "unauthorized": 401,
    "forbidden": 403,
    "rate_limited": 429,
    "internal": 500,
}


class RpcReply(msgspec.Struct, kw_only=True, omit_defaults=True):
    """``error`` is set on failure; otherwise ``result`` holds the raw JSON result.

    (msgspec cannot decode ``Raw | None``, so an absent result is the raw JSON ``null``.)
    """

    result: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"null"))
    error: RpcError | None = None


class StartRunRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    workflow: str
    payload: dict[str, Any] = {}
    context: dict[str, Any] = {}
    run_id: str | None = None  # callers may choose the id so they can subscribe before starting
    # Exactly one run per key: the same key again returns that run; the same key with another
    # workflow, payload or context is refused (``idempotency_mismatch``). Keys are per tenant.
    idempotency_key: str | None = None
    # The run belongs to this tenant, and the workflow must be one it can see. None: an internal
    # caller (any workflow; the run belongs to the default tenant).
    tenant: str | None = None


class StartRunReply(msgspec.Struct, kw_only=True):
    run_id: str
    workflow: str
    version: str
    status: str


class GetRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    """runs.get (``name`` is the run id), workflows.get and workflows.versions (the workflow id)."""

    name: str
    tenant: str | None = None  # None: no tenant filter


class ListWorkflowsRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    """workflows.list; an empty request (``{}``) lists every workflow."""

    tenant: str | None = None  # the shared workflows and this tenant's own; None: every workflow


class RegisterWorkflowRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    source: str  # YAML or JSON text of one definition, at most MAX_DEFINITION_BYTES
    filename: str = "<api>"
    # A new workflow belongs to this tenant (None: the default tenant); a new version of a workflow
    # must be one of its own (or, for the default tenant, a shared one), else ``id_taken``.
    tenant: str | None = None


# The key a workflows.register result carries besides the definition: false when the same id,
# version and content were registered before (nothing changed), true for a new version.
REGISTER_CREATED_KEY = "created"


class ListRunsRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    workflow: str | None = None
    status: str | None = None
    limit: int = 50
    cursor: str | None = None  # opaque; from the previous page's next_cursor
    tenant: str | None = None  # only this tenant's runs; None: every run


class StepSummary(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: str
    tool: str | None = None  # None for a step that waits for an event
    status: str
    provider: str | None = None
    attempt: int = 0
    reason: str | None = None  # why it was skipped, or why it is retrying
    started_at: datetime | None = None
    completed_at: datetime | None = None
    duration_ms: float | None = None
    output: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    usage: Usage | None = None


class WaitingFor(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One thing an unfinished run waits for, and since when."""

    kind: str  # step (a tool call in flight) | timer (retry back-off) | event (an outside event)
    step: str | None = None
    since: datetime | None = None
    until: datetime | None = None  # when the timer fires, or when the wait times out
    detail: str = ""  # e.g. "openrouter, attempt 2" or "app.review.decided key=s-1"


class RunSummary(msgspec.Struct, kw_only=True, omit_defaults=True):
    run_id: str
    workflow: str
    version: str
    status: str
    created_at: datetime
    updated_at: datetime
    duration_ms: float | None = None
    steps: list[StepSummary] = []
    payload: dict[str, Any] = {}
    context: dict[str, Any] = {}
    output: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    usage: Usage | None = None
    last_seq: int = 0
    # What an unfinished run waits for (steps in flight, back-off timers, outside events).
    waiting: list[WaitingFor] = []
    rerun_of: str | None = None  # the run this one was rerun from
    rerun_from_step: str | None = None
    tenant: str | None = None  # the tenant the run belongs to (the engine always says it)


class RunPage(msgspec.Struct, kw_only=True, omit_defaults=True):
    runs: list[RunSummary]
    next_cursor: str | None = None


class RunEventsRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    run_id: str
    after_seq: int = 0
    tenant: str | None = None  # None: no tenant filter


class RunEventsReply(msgspec.Struct, kw_only=True):
    run_id: str
    events: list[RunEventRecord]


class CancelRunRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    run_id: str
    reason: str = ""
    tenant: str | None = None  # None: no tenant filter


class RerunRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Start a new run of the same workflow version that reuses the outputs of the steps written
    before ``from_step`` which completed in the old run; ``from_step`` and the steps after it run
    again."""

    run_id: str
    from_step: str
    payload: dict[str, Any] | None = None  # None: the old run's payload
    # None: no tenant filter. The new run belongs to the old run's tenant, whoever asks.
    tenant: str | None = None


class WorkflowVersion(msgspec.Struct, kw_only=True, omit_defaults=True):
    hash: str
    version: str
    origin: str
    created_at: datetime
    current: bool  # the version new runs start with


class WorkflowVersions(msgspec.Struct, kw_only=True):
    name: str  # the workflow's id (its address), as asked for
    versions: list[WorkflowVersion]  # newest first
