"""The engine's request/reply endpoints (NATS services API; every replica is in one queue group).

Each handler decodes one typed request from ``omni_contract.rpc`` and answers an ``RpcReply``.

A request that names a tenant is answered about what that tenant sees only (``tenants.py``): a run
or workflow of another tenant is ``not_found`` with the very message of one that does not exist.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
from nats.micro.request import Request
from nats.micro.service import Service
from omni_contract import rpc, subjects
from omni_contract.envelope import encode
from omni_contract.events import RunEventRecord, RunStatus, StepStatus
from omni_runtime.telemetry import extract_context
from opentelemetry import trace

from omni_engine.definition import WorkflowDefinition, definition_to_dict, workflow_slug
from omni_engine.definitions import (
    DefinitionConflict,
    Definitions,
    InvalidDefinition,
    StoredDefinitionInvalid,
    problems_of,
)
from omni_engine.engine import Engine, EngineError
from omni_engine.state import RunState, TaskState, compensation_address, item_address
from omni_engine.store import Store
from omni_engine.tenants import of_run, sees
from omni_engine.transient import is_transient

log = logging.getLogger(__name__)
tracer = trace.get_tracer("omni.workflow-engine")
T = TypeVar("T")
# The answer while the database cannot be reached (code "unavailable": the gateway's 503).
# Requests answered at once (over all endpoints): run starts wait for their commit meanwhile.
DEFAULT_RPC_CONCURRENCY = 64

UNAVAILABLE = "the workflow engine cannot reach its database right now; try again shortly"


def workflow_doc(defn: WorkflowDefinition) -> dict[str, Any]:
    """A definition as the API shows it: its ``id`` (the address: ``id:`` or the slug of the
    name) and display ``name`` first, the definition, and its content ``hash``."""
    return {"id": defn.id, **definition_to_dict(defn), "hash": defn.content_hash}


def workflow_summary(defn: WorkflowDefinition) -> dict[str, Any]:
    """A definition without its steps and payload fields: what a list too large for one reply
    shows (``GET /workflows/{id}`` has the rest)."""
    return {
        "id": defn.id,
        "name": defn.display_name,
        "description": defn.description,
        "version": defn.version,
        "trigger": {"event": defn.trigger.event},
        "steps": [],
        "hash": defn.content_hash,
        "summary": True,
    }


# What an error reply keeps when it would not fit in one NATS message (a definition with many
# long problems): the first details, each message cut.
_FIT_DETAILS = 20
_FIT_MESSAGE = 300


def waiting_for(state: RunState) -> list[rpc.WaitingFor]:
    """What an unfinished run waits for: tool calls in flight, back-off timers, outside events."""
    if state.finished:
        return []
    found: list[rpc.WaitingFor] = []

    def task_wait(address: str, task: TaskState) -> None:
        if task.status in (StepStatus.SCHEDULED, StepStatus.RUNNING):
            found.append(
                rpc.WaitingFor(
                    kind="step",
                    step=address,
                    since=task.started_at if task.status == StepStatus.RUNNING else task.scheduled_at,
                    detail=f"{task.provider}, attempt {task.attempt} ({task.status})",
                )
            )
        elif task.status == StepStatus.RETRYING:
            found.append(
                rpc.WaitingFor(
                    kind="timer",
                    step=address,
                    since=task.completed_at or state.updated_at,
                    until=task.retry_at,
                    detail=task.reason or "retry back-off",
                )
            )

    for step in state.steps:
        if step.status == StepStatus.WAITING and step.wait is not None:
            found.append(
                rpc.WaitingFor(
                    kind="event",
                    step=step.name,
                    since=step.scheduled_at,
                    until=step.wait.until,
                    detail=f"{step.wait.event} with key {step.wait.key}",
                )
            )
        elif step.items is not None:
            for index, item in enumerate(step.items):
                task_wait(item_address(step.name, index), item)
        else:
            task_wait(step.name, step)
        if step.compensation is not None:
            task_wait(compensation_address(step.name), step.compensation)
    return found


def _plain(error: msgspec.Struct | None) -> dict[str, Any] | None:
    """An error as the summaries carry it: plain data, which the gateway passes on as it is."""
    if error is None:
        return None
    plain: dict[str, Any] = msgspec.to_builtins(error)
    return plain


def run_summary(state: RunState) -> rpc.RunSummary:
    end = state.completed_at or datetime.now(UTC)
    return rpc.RunSummary(
        run_id=state.run_id,
        workflow=state.workflow,
        version=state.version,
        status=state.status,
        created_at=state.created_at,
        updated_at=state.updated_at,
        duration_ms=round((end - state.created_at).total_seconds() * 1000, 3),
        steps=[
            rpc.StepSummary(
                name=s.name,
                tool=s.tool,
                status=s.status,
                provider=s.provider,
                attempt=s.attempt,
                reason=s.reason,
                started_at=s.started_at,
                completed_at=s.completed_at,
                duration_ms=s.duration_ms,
                output=s.output,
                error=_plain(s.error),
                usage=s.usage,
            )
            for s in state.steps
        ],
        payload=state.payload,
        context=state.context,
        output=state.output,
        error=_plain(state.error),
        usage=state.usage,
        last_seq=state.last_seq,
        waiting=waiting_for(state),
        rerun_of=state.rerun_of,
        rerun_from_step=state.rerun_from_step,
        tenant=of_run(state.tenant),
    )


class EngineApi:
    def __init__(
        self,
        engine: Engine,
        definitions: Definitions,
        store: Store,
        max_reply_bytes: int = 1 << 20,
        concurrency: int = DEFAULT_RPC_CONCURRENCY,
    ) -> None:
        self.engine = engine
        self.definitions = definitions
        self.store = store
        self.max_reply_bytes = max_reply_bytes  # what one NATS message carries (the server's max_payload)
        self._slots = asyncio.Semaphore(concurrency)
        self._in_flight: set[asyncio.Task[None]] = set()

    async def register(self, service: Service) -> None:
        endpoints: list[tuple[str, str, Callable[[Request], Awaitable[None]]]] = [
            (
                "workflows-list",
                subjects.ENGINE_WORKFLOWS_LIST,
                self._wrap(self.workflows_list, rpc.ListWorkflowsRequest),
            ),
            ("workflows-get", subjects.ENGINE_WORKFLOWS_GET, self._wrap(self.workflows_get, rpc.GetRequest)),
            (
                "workflows-register",
                subjects.ENGINE_WORKFLOWS_REGISTER,
                self._wrap(self.workflows_register, rpc.RegisterWorkflowRequest),
            ),
            ("runs-start", subjects.ENGINE_RUNS_START, self._wrap(self.runs_start, rpc.StartRunRequest)),
            ("runs-get", subjects.ENGINE_RUNS_GET, self._wrap(self.runs_get, rpc.GetRequest)),
            ("runs-list", subjects.ENGINE_RUNS_LIST, self._wrap(self.runs_list, rpc.ListRunsRequest)),
            ("runs-events", subjects.ENGINE_RUNS_EVENTS, self._wrap(self.runs_events, rpc.RunEventsRequest)),
            ("runs-cancel", subjects.ENGINE_RUNS_CANCEL, self._wrap(self.runs_cancel, rpc.CancelRunRequest)),
            ("runs-rerun", subjects.ENGINE_RUNS_RERUN, self._wrap(self.runs_rerun, rpc.RerunRequest)),
            (
                "workflows-versions",
                subjects.ENGINE_WORKFLOWS_VERSIONS,
                self._wrap(self.workflows_versions, rpc.GetRequest),
            ),
        ]
        for name, subject, handler in endpoints:
            await service.add_endpoint(name=name, subject=subject, handler=handler)

    def _wrap(
        self, fn: Callable[[Any], Awaitable[Any]], request_type: type[Any] | None
    ) -> Callable[[Request], Awaitable[None]]:
        async def handle(req: Request) -> None:
            with tracer.start_as_current_span(f"rpc {req.subject}", context=extract_context(req.headers)):
                try:
                    if request_type is None:
                        request = None
                    else:
                        request = msgspec.json.decode(req.data or b"{}", type=request_type)
                    result = encode(await fn(request))
                    if len(result) > self.max_reply_bytes - 1024:
                        raise EngineError(
                            "bad_request",
                            f"the answer would be {len(result)} bytes, more than one NATS message carries "
                            f"({self.max_reply_bytes}): ask for less (a smaller limit)",
                            [rpc.FieldProblem(field="limit", message="too many results for one answer")],
                        )
                    reply = rpc.RpcReply(result=msgspec.Raw(result))
                except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                    reply = rpc.RpcReply(error=rpc.RpcError(code="bad_request", message=str(exc)))
                except EngineError as exc:
                    reply = rpc.RpcReply(
                        error=rpc.RpcError(code=exc.code, message=exc.message, details=exc.details)
                    )
                except InvalidDefinition as exc:
                    reply = rpc.RpcReply(
                        error=rpc.RpcError(code="invalid_workflow", message=str(exc), details=exc.problems)
                    )
                except DefinitionConflict as exc:
                    reply = rpc.RpcReply(
                        error=rpc.RpcError(code=exc.code, message=exc.message, details=[exc.problem])
                    )
                except StoredDefinitionInvalid as exc:
                    reply = rpc.RpcReply(
                        error=rpc.RpcError(code="conflict", message=str(exc), details=problems_of(exc.errors))
                    )
                except Exception as exc:
                    if is_transient(exc):  # the database (or NATS) is unreachable: ask to try again
                        log.warning("engine rpc %s: %s: %s", req.subject, type(exc).__name__, exc)
                        reply = rpc.RpcReply(error=rpc.RpcError(code="unavailable", message=UNAVAILABLE))
                    else:
                        log.exception("engine rpc %s failed", req.subject)
                        reply = rpc.RpcReply(error=rpc.RpcError(code="internal", message="internal error"))
                await req.respond(self._fit(req.subject, reply))

        async def dispatch(req: Request) -> None:
            # The NATS service calls an endpoint's handler for one request at a time: answering here
            # would make each request wait for the ones before it (a run start for its commit), so
            # run starts went one by one, whatever the number of callers. Each request is answered
            # in a task of its own instead, at most ``concurrency`` at once over all endpoints;
            # beyond that this waits, and NATS holds the rest.
            await self._slots.acquire()
            task = asyncio.create_task(handle(req), name=f"rpc {req.subject}")
            self._in_flight.add(task)
            task.add_done_callback(self._answered)

        return dispatch

    def _answered(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._slots.release()
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("engine rpc %s: the answer could not be sent: %r", task.get_name(), exc)

    async def drain(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) for the requests being answered; cancel what is left."""
        if self._in_flight:
            _, pending = await asyncio.wait(set(self._in_flight), timeout=timeout_s)
            for task in pending:
                task.cancel()

    def _fit(self, subject: str, reply: rpc.RpcReply) -> bytes:
        """``reply`` encoded, cut to fit in one NATS message. An answer that does not fit cannot be
        sent at all: the NATS client refuses it, and the caller gets an empty error reply that it
        cannot read (the gateway's 502 "unreadable reply ... truncated"). Text that UTF-8 cannot
        carry (a lone surrogate, as PyYAML makes of an escaped surrogate pair) is escaped, for the
        same reason: an answer that cannot be encoded is no answer."""
        try:
            data = encode(reply)
        except UnicodeEncodeError:
            reply = _encodable(reply)
            data = encode(reply)
        if len(data) <= self.max_reply_bytes - 1024 or reply.error is None:
            return data
        error = reply.error
        log.warning("engine rpc %s: error reply of %d bytes cut to fit one message", subject, len(data))
        details = [
            rpc.FieldProblem(
                field=_cut(d.field, _FIT_MESSAGE),
                message=_cut(d.message, _FIT_MESSAGE),
                file=None if d.file is None else _cut(d.file, _FIT_MESSAGE),
                step=None if d.step is None else _cut(d.step, _FIT_MESSAGE),
            )
            for d in error.details[:_FIT_DETAILS]
        ]
        message = _cut(error.message, _FIT_MESSAGE)
        if len(error.details) > _FIT_DETAILS:
            message += f" ({len(error.details)} problems; the first {_FIT_DETAILS} are listed)"
        return encode(rpc.RpcReply(error=rpc.RpcError(code=error.code, message=message, details=details)))

    async def workflows_list(self, req: rpc.ListWorkflowsRequest | None) -> dict[str, Any]:
        """Every workflow's current version (with a tenant, those it sees: the shared ones and its
        own; no request is an empty one). Never fails because of one stored definition: one that
        no longer loads is listed under ``errors``; when the whole list would not fit in one reply,
        each workflow is shown as a summary (``"summary": true``, no steps)."""
        tenant = req.tenant if req is not None else None
        if tenant is None:
            defs, stored_errors = await self.definitions.all_current()
        else:
            defs, stored_errors = await self.definitions.all_current(tenant)
        errors = [e.to_dict() for e in [*self.definitions.load_errors, *stored_errors]]
        listing: dict[str, Any] = {"workflows": [workflow_doc(d) for d in defs], "errors": errors}
        budget = self.max_reply_bytes - 4096
        if len(encode(listing)) <= budget:
            return listing
        summaries = [workflow_summary(d) for d in defs]
        message = (
            "the definitions do not fit in one answer: each is listed without its steps "
            "(summary: true); GET /workflows/{id} reads one whole"
        )
        errors.append({"file": "<list>", "step": None, "field": None, "message": message, "line": None})
        listing["workflows"] = summaries
        size = len(encode(listing))
        while summaries and size > budget:  # thousands of workflows: list those that fit
            size -= len(encode(summaries.pop())) + 1
        if len(summaries) < len(defs):
            errors[-1]["message"] += f"; {len(defs) - len(summaries)} more are not listed"
        return listing

    async def workflows_get(self, req: rpc.GetRequest) -> dict[str, Any]:
        defn = await self.definitions.current(req.name, req.tenant)
        if defn is None:
            message = f"unknown workflow '{req.name}'"
            slug = workflow_slug(req.name)
            if slug and slug != req.name:
                message += f" (workflows are addressed by id: a workflow named so without one has '{slug}')"
            raise EngineError("not_found", message)
        return workflow_doc(defn)

    async def workflows_register(self, req: rpc.RegisterWorkflowRequest) -> dict[str, Any]:
        defn, created = await self.definitions.register(req.source, req.filename, req.tenant)
        return {**workflow_doc(defn), rpc.REGISTER_CREATED_KEY: created}

    async def runs_start(self, req: rpc.StartRunRequest) -> rpc.StartRunReply:
        state = await self.engine.start_run(
            req.workflow,
            req.payload,
            req.context,
            run_id=req.run_id,
            idempotency_key=req.idempotency_key,
            tenant=req.tenant,
        )
        return _start_reply(state)

    async def runs_cancel(self, req: rpc.CancelRunRequest) -> rpc.RunSummary:
        return run_summary(await self.engine.cancel(req.run_id, req.reason, req.tenant))

    async def runs_rerun(self, req: rpc.RerunRequest) -> rpc.StartRunReply:
        return _start_reply(await self.engine.rerun(req.run_id, req.from_step, req.payload, req.tenant))

    async def workflows_versions(self, req: rpc.GetRequest) -> rpc.WorkflowVersions:
        rows = await self.store.versions(req.name, req.tenant)
        if not rows:
            raise EngineError("not_found", f"unknown workflow '{req.name}'")
        return rpc.WorkflowVersions(
            name=req.name, versions=[msgspec.convert(r, rpc.WorkflowVersion) for r in rows]
        )

    async def runs_get(self, req: rpc.GetRequest) -> rpc.RunSummary:
        state = await self.store.load_run(req.name)
        if state is None or not sees(req.tenant, state.tenant):
            raise EngineError("not_found", f"unknown run '{req.name}'")
        return run_summary(state)

    async def runs_list(self, req: rpc.ListRunsRequest) -> rpc.RunPage:
        if req.status and req.status not in RunStatus.ALL:
            raise EngineError(
                "bad_request",
                f"unknown status '{req.status}'",
                [rpc.FieldProblem(field="status", message=f"expected one of {', '.join(RunStatus.ALL)}")],
            )
        limit = max(1, min(req.limit, 500))
        try:
            states, cursor = await self.store.list_runs(
                req.workflow, req.status, limit, req.cursor, req.tenant
            )
        except ValueError as exc:
            raise EngineError(
                "bad_request", str(exc), [rpc.FieldProblem(field="cursor", message=str(exc))]
            ) from exc
        return rpc.RunPage(runs=[run_summary(s) for s in states], next_cursor=cursor)

    async def runs_events(self, req: rpc.RunEventsRequest) -> rpc.RunEventsReply:
        owner = await self.store.run_tenant(req.run_id)
        if owner is None or not sees(req.tenant, owner):
            raise EngineError("not_found", f"unknown run '{req.run_id}'")
        rows = await self.store.run_events(req.run_id, req.after_seq)
        return rpc.RunEventsReply(
            run_id=req.run_id,
            events=[
                RunEventRecord(run_id=req.run_id, seq=r.seq, type=r.type, at=r.at, data=r.data) for r in rows
            ],
        )


def _start_reply(state: RunState) -> rpc.StartRunReply:
    return rpc.StartRunReply(
        run_id=state.run_id, workflow=state.workflow, version=state.version, status=state.status
    )


def _utf8(text: str) -> str:
    """``text`` with what UTF-8 cannot encode (lone surrogates) written as ``\\udxxx`` escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _encodable(reply: rpc.RpcReply) -> rpc.RpcReply:
    """``reply`` with the text of its error made encodable (its result is encoded already)."""
    error = reply.error
    if error is None:
        return reply
    details = [
        rpc.FieldProblem(
            field=_utf8(d.field),
            message=_utf8(d.message),
            file=None if d.file is None else _utf8(d.file),
            step=None if d.step is None else _utf8(d.step),
        )
        for d in error.details
    ]
    return rpc.RpcReply(
        result=reply.result,
        error=rpc.RpcError(code=_utf8(error.code), message=_utf8(error.message), details=details),
    )


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"
