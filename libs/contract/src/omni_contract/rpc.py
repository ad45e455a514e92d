"""Request/reply payloads of the engine's NATS service endpoints (used by the gateway).

Every reply is an ``RpcReply``: ``result`` on success, ``error`` otherwise. Error codes map to HTTP
statuses in the gateway (see ``ERROR_HTTP_STATUS``).
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


class RpcError(msgspec.Struct, kw_only=True, omit_defaults=True):
    code: str  # not_found | invalid_payload | invalid_workflow | bad_request | conflict | internal
    message: str
    details: list[FieldProblem] = []


ERROR_HTTP_STATUS: dict[str, int] = {
    "not_found": 404,
    "invalid_payload": 422,
    "invalid_workflow": 422,
    "bad_request": 400,
    "conflict": 409,
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


class StartRunReply(msgspec.Struct, kw_only=True):
    run_id: str
    workflow: str
    version: str
    status: str


class GetRequest(msgspec.Struct, kw_only=True):
    name: str


class RegisterWorkflowRequest(msgspec.Struct, kw_only=True):
    source: str  # YAML or JSON text of one definition
    filename: str = "<api>"


class ListRunsRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    workflow: str | None = None
    status: str | None = None
    limit: int = 50
    cursor: str | None = None  # opaque; from the previous page's next_cursor


class StepSummary(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: str
    tool: str
    status: str
    provider: str | None = None
    attempt: int = 0
    started_at: datetime | None = None
    completed_at: datetime | None = None
    duration_ms: float | None = None
    output: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    usage: Usage | None = None


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


class RunPage(msgspec.Struct, kw_only=True, omit_defaults=True):
    runs: list[RunSummary]
    next_cursor: str | None = None


class RunEventsRequest(msgspec.Struct, kw_only=True):
    run_id: str
    after_seq: int = 0


class RunEventsReply(msgspec.Struct, kw_only=True):
    run_id: str
    events: list[RunEventRecord]
