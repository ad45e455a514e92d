"""A stand-in for the workflow engine: answers the engine's NATS endpoints with ``RpcReply``
bodies and publishes ``RunProgress`` notices, so the gateway's HTTP edge is tested alone."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from aiohttp.test_utils import TestClient
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from omni_contract import events, rpc, security, subjects
from omni_contract.envelope import encode, encode_envelope, new_envelope
from omni_testkit import subscribed

GatewayFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
"""``make_gateway(**settings)``: a gateway app on a test server, with its own NATS connection."""

GREET: dict[str, Any] = {
    "name": "greet",
    "description": "Say hello",
    "version": "1.0.0",
    "hash": "abc123",
    "trigger": {"event": "app.greet.requested", "payload": {"name": "string", "language?": "string"}},
    "steps": [
        {
            "name": "compose",
            "description": "Write the greeting",
            "tool": "text.generate",
            "provider": ["mock"],
            "config": {},
            "input": {"name": "${trigger.payload.name}"},
            "output": {"text": "string"},
        }
    ],
}

T0 = datetime(2026, 1, 1, tzinfo=UTC)

# The status a run ends in with each terminal history event.
TERMINAL_STATUS: dict[str, str] = {
    events.RunEventType.RUN_COMPLETED: events.RunStatus.COMPLETED,
    events.RunEventType.RUN_FAILED: events.RunStatus.FAILED,
    events.RunEventType.RUN_CANCELLED: events.RunStatus.CANCELLED,
    events.RunEventType.RUN_TIMED_OUT: events.RunStatus.TIMED_OUT,
    events.RunEventType.RUN_BUDGET_EXCEEDED: events.RunStatus.BUDGET_EXCEEDED,
}


@dataclass
class FakeRun:
    summary: rpc.RunSummary
    history: list[events.RunEventRecord] = field(default_factory=list)


class FakeEngine:
    """``auto_complete``: runs end right after they start (a completed step, then run.completed).
    Otherwise the test moves them on with :meth:`append`."""

    def __init__(self, nc: NATS, *, auto_complete: bool = True) -> None:
        self.nc = nc
        self.auto_complete = auto_complete
        self.workflows: dict[str, dict[str, Any]] = {"greet": dict(GREET)}
        self.runs: dict[str, FakeRun] = {}
        self.calls: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        self.silent: set[str] = set()  # subjects that receive requests but never answer
        self.internal_failure: set[str] = set()
        self.auto_cancel = True  # a cancel request is followed by run.cancelled at once
        self.idempotency_keys: dict[str, tuple[str, rpc.StartRunRequest]] = {}
        self._subs: list[Subscription] = []
        self._clock = T0

    async def start(self) -> FakeEngine:
        handlers: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
            subjects.ENGINE_WORKFLOWS_LIST: self._workflows_list,
            subjects.ENGINE_WORKFLOWS_GET: self._workflows_get,
            subjects.ENGINE_WORKFLOWS_REGISTER: self._workflows_register,
            subjects.ENGINE_RUNS_START: self._runs_start,
            subjects.ENGINE_RUNS_GET: self._runs_get,
            subjects.ENGINE_RUNS_LIST: self._runs_list,
            subjects.ENGINE_RUNS_EVENTS: self._runs_events,
            subjects.ENGINE_RUNS_CANCEL: self._runs_cancel,
            subjects.ENGINE_RUNS_RERUN: self._runs_rerun,
            subjects.ENGINE_WORKFLOWS_VERSIONS: self._workflows_versions,
        }
        for subject, handler in handlers.items():
            self._subs.append(
                await self.nc.subscribe(subject, queue="engine", cb=self._serve(subject, handler))
            )
        await subscribed(self.nc)  # the gateway calls over its own connection
        return self

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        self._subs.clear()

    def calls_to(self, subject: str) -> list[dict[str, Any]]:
        return [body for called, body, _ in self.calls if called == subject]

    def _serve(
        self, subject: str, handler: Callable[[dict[str, Any]], Awaitable[Any]]
    ) -> Callable[[Msg], Awaitable[None]]:
        async def serve(msg: Msg) -> None:
            body = json.loads(msg.data or b"{}")
            self.calls.append((subject, body, dict(msg.headers or {})))
            if subject in self.silent:
                return
            if subject in self.internal_failure:
                reply = rpc.RpcReply(
                    error=rpc.RpcError(code="internal", message="Traceback: KeyError 'db password=hunter2'")
                )
                await msg.respond(encode(reply))
                return
            after: Callable[[], Awaitable[None]] | None = None
            try:
                result = await handler(body)
                if isinstance(result, tuple):
                    result, after = result
                reply = rpc.RpcReply(result=msgspec.Raw(encode(result)))
            except RpcFailure as failure:
                reply = rpc.RpcReply(error=failure.error)
            await msg.respond(encode(reply))
            if after is not None:
                await after()

        return serve

    # -- endpoints ------------------------------------------------------------------------------
    async def _workflows_list(self, _: dict[str, Any]) -> dict[str, Any]:
        return {"workflows": list(self.workflows.values()), "errors": []}

    async def _workflows_get(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body["name"]
        if name not in self.workflows:
            raise RpcFailure("not_found", f"unknown workflow '{name}'")
        return self.workflows[name]

    async def _workflows_register(self, body: dict[str, Any]) -> dict[str, Any]:
        definition = json.loads(body["source"])
        filename = body.get("filename", "<api>")
        problems = []
        if not definition.get("steps"):
            problems.append(rpc.FieldProblem(field="steps", message="at least one step", file=filename))
        for index, step in enumerate(definition.get("steps") or []):
            if "tool" not in step:
                problems.append(
                    rpc.FieldProblem(
                        field=f"steps[{index}].tool", message="required", file=filename, step=step.get("name")
                    )
                )
        if problems:
            raise RpcFailure("invalid_workflow", f"{filename}: the definition is invalid", problems)
        stored = {**definition, "hash": "h-" + definition["name"]}
        self.workflows[definition["name"]] = stored
        return stored

    async def _workflows_versions(self, body: dict[str, Any]) -> rpc.WorkflowVersions:
        name = body["name"]
        if name not in self.workflows:
            raise RpcFailure("not_found", f"unknown workflow '{name}'")
        return rpc.WorkflowVersions(
            name=name,
            versions=[
                rpc.WorkflowVersion(
                    hash="abc123", version="1.0.0", origin="file:greet.yaml", created_at=T0, current=True
                ),
                rpc.WorkflowVersion(
                    hash="0ld",
                    version="0.9.0",
                    origin="api",
                    created_at=T0 - timedelta(days=1),
                    current=False,
                ),
            ],
        )

    async def _runs_start(self, body: dict[str, Any]) -> Any:
        start = msgspec.convert(body, rpc.StartRunRequest)
        key = start.idempotency_key
        if key is not None and key in self.idempotency_keys:
            run_id, first = self.idempotency_keys[key]
            if (first.workflow, first.payload, first.context) != (
                start.workflow,
                start.payload,
                start.context,
            ):
                raise RpcFailure(
                    "idempotency_mismatch",
                    f"this Idempotency-Key was first used with another request; it started run '{run_id}'",
                    [
                        rpc.FieldProblem(
                            field="Idempotency-Key", message="reused with a different request body"
                        )
                    ],
                )
            summary = self.runs[run_id].summary
            return rpc.StartRunReply(
                run_id=run_id, workflow=summary.workflow, version=summary.version, status=summary.status
            )
        if start.workflow not in self.workflows:
            raise RpcFailure("not_found", f"unknown workflow '{start.workflow}'")
        if not isinstance(start.payload.get("name"), str):
            raise RpcFailure(
                "invalid_payload",
                f"payload does not match the trigger schema of '{start.workflow}'",
                [
                    rpc.FieldProblem(
                        field="payload.name", message="required field is missing (expected string)"
                    )
                ],
            )
        run_id = start.run_id or "generated"
        if key is not None:
            self.idempotency_keys[key] = (run_id, start)
        return await self._create(run_id, start.workflow, start.payload, start.context)

    async def _create(
        self,
        run_id: str,
        workflow: str,
        payload: dict[str, Any],
        context: dict[str, Any],
        *,
        rerun_of: str | None = None,
        rerun_from_step: str | None = None,
    ) -> tuple[rpc.StartRunReply, Callable[[], Awaitable[None]]]:
        now = self._tick()
        self.runs[run_id] = FakeRun(
            summary=rpc.RunSummary(
                run_id=run_id,
                workflow=workflow,
                version="1.0.0",
                status=events.RunStatus.RUNNING,
                created_at=now,
                updated_at=now,
                steps=[
                    rpc.StepSummary(name="compose", tool="text.generate", status=events.StepStatus.PENDING)
                ],
                payload=payload,
                context=context,
                rerun_of=rerun_of,
                rerun_from_step=rerun_from_step,
            )
        )
        await self.append(run_id, events.RunEventType.RUN_STARTED, {"workflow": workflow}, notice=False)
        reply = rpc.StartRunReply(
            run_id=run_id, workflow=workflow, version="1.0.0", status=events.RunStatus.RUNNING
        )

        async def progress() -> None:
            await self._notify(run_id, self.runs[run_id].history[-1])
            if self.auto_complete:
                await self.complete(run_id)

        return reply, progress

    async def _runs_cancel(self, body: dict[str, Any]) -> Any:
        cancel = msgspec.convert(body, rpc.CancelRunRequest)
        run = self.runs.get(cancel.run_id)
        if run is None:
            raise RpcFailure("not_found", f"unknown run '{cancel.run_id}'")
        if run.summary.status in events.RunStatus.TERMINAL:
            return run.summary  # like the engine: cancelling a run that has ended changes nothing
        await self.append(
            cancel.run_id, events.RunEventType.RUN_CANCEL_REQUESTED, {"reason": cancel.reason}, notice=False
        )
        summary = msgspec.structs.replace(run.summary)

        async def stop() -> None:
            await self._notify(cancel.run_id, run.history[-1])
            if self.auto_cancel:
                await self.append(cancel.run_id, events.RunEventType.RUN_CANCELLED, {"reason": cancel.reason})

        return summary, stop

    async def _runs_rerun(self, body: dict[str, Any]) -> Any:
        rerun = msgspec.convert(body, rpc.RerunRequest)
        old = self.runs.get(rerun.run_id)
        if old is None:
            raise RpcFailure("not_found", f"unknown run '{rerun.run_id}'")
        if rerun.from_step not in {step.name for step in old.summary.steps}:
            raise RpcFailure(
                "invalid_payload",
                f"run '{rerun.run_id}' has no step '{rerun.from_step}'",
                [rpc.FieldProblem(field="fromStep", message="expected one of compose")],
            )
        payload = old.summary.payload if rerun.payload is None else rerun.payload
        return await self._create(
            f"rerun-{len(self.runs)}",
            old.summary.workflow,
            payload,
            old.summary.context,
            rerun_of=rerun.run_id,
            rerun_from_step=rerun.from_step,
        )

    async def _runs_get(self, body: dict[str, Any]) -> rpc.RunSummary:
        run = self.runs.get(body["name"])
        if run is None:
            raise RpcFailure("not_found", f"unknown run '{body['name']}'")
        return run.summary

    async def _runs_list(self, body: dict[str, Any]) -> rpc.RunPage:
        query = msgspec.convert(body, rpc.ListRunsRequest)
        runs = [
            r.summary
            for r in self.runs.values()
            if (query.workflow is None or r.summary.workflow == query.workflow)
            and (query.status is None or r.summary.status == query.status)
        ]
        start = int(query.cursor or 0)
        page = runs[start : start + query.limit]
        more = start + query.limit < len(runs)
        return rpc.RunPage(runs=page, next_cursor=str(start + query.limit) if more else None)

    async def _runs_events(self, body: dict[str, Any]) -> rpc.RunEventsReply:
        query = msgspec.convert(body, rpc.RunEventsRequest)
        run = self.runs.get(query.run_id)
        if run is None:
            raise RpcFailure("not_found", f"unknown run '{query.run_id}'")
        return rpc.RunEventsReply(
            run_id=query.run_id, events=[e for e in run.history if e.seq > query.after_seq]
        )

    # -- moving runs on -------------------------------------------------------------------------
    async def append(
        self, run_id: str, event_type: str, data: dict[str, Any] | None = None, *, notice: bool = True
    ) -> events.RunEventRecord:
        """Append to the run's history (updating its summary) and, with ``notice``, publish it."""
        run = self.runs[run_id]
        record = events.RunEventRecord(
            run_id=run_id, seq=len(run.history) + 1, type=event_type, at=self._tick(), data=data or {}
        )
        run.history.append(record)
        summary = run.summary
        summary.updated_at = record.at
        summary.last_seq = record.seq
        if event_type == events.RunEventType.STEP_STARTED:
            summary.steps[0].status = events.StepStatus.RUNNING
            summary.steps[0].attempt = 1
        elif event_type == events.RunEventType.STEP_COMPLETED:
            step = summary.steps[0]
            step.status = events.StepStatus.COMPLETED
            step.provider = "mock"
            step.duration_ms = 12.5
            step.output = (data or {}).get("output")
            step.usage = events.Usage(input_tokens=3, output_tokens=5, total_tokens=8)
        elif event_type in events.RunEventType.TERMINAL:
            summary.status = TERMINAL_STATUS[event_type]
            summary.waiting = []
            summary.output = (data or {}).get("output")
            summary.error = (data or {}).get("error")
            summary.duration_ms = (record.at - summary.created_at).total_seconds() * 1000
        if notice:
            await self._notify(run_id, record)
        return record

    async def complete(self, run_id: str) -> None:
        output = {"text": "Hello, " + str(self.runs[run_id].summary.payload.get("name"))}
        await self.append(run_id, events.RunEventType.STEP_STARTED, {"step": "compose"}, notice=False)
        await self.append(run_id, events.RunEventType.STEP_COMPLETED, {"step": "compose", "output": output})
        await self.append(run_id, events.RunEventType.RUN_COMPLETED, {"output": output})

    async def _notify(self, run_id: str, record: events.RunEventRecord) -> None:
        run = self.runs[run_id]
        progress = events.RunProgress(
            run_id=run_id,
            workflow=run.summary.workflow,
            seq=record.seq,
            event=record.type,
            status=run.summary.status,
            at=record.at,
            step=record.data.get("step"),
        )
        envelope = new_envelope(events.RUN_PROGRESS_V1, "fake-engine", progress)
        await self.nc.publish(subjects.run_event(run_id, record.type), encode_envelope(envelope))
        await self.nc.flush()

    def _tick(self) -> datetime:
        self._clock += timedelta(milliseconds=10)
        return self._clock


class RpcFailure(Exception):
    def __init__(self, code: str, message: str, details: list[rpc.FieldProblem] | None = None) -> None:
        super().__init__(message)
        self.error = rpc.RpcError(code=code, message=message, details=details or [])


async def read_sse(response: Any, *, limit: int = 100) -> list[dict[str, str]]:
    """Parse a text/event-stream until the server ends it; comments are kept as ``{"comment": ...}``."""
    items: list[dict[str, str]] = []
    current: dict[str, str] = {}
    while len(items) < limit:
        line = await asyncio.wait_for(response.content.readline(), timeout=10)
        if not line:
            break
        text = line.decode().rstrip("\n")
        if text == "":
            if current:
                items.append(current)
                current = {}
        elif text.startswith(":"):
            items.append({"comment": text[1:].strip()})
        else:
            key, _, value = text.partition(": ")
            current[key] = value
    return items


# -- the security-service, as the gateway's tests need it ----------------------------------------
ROLE_KEYS = {role: security.new_api_key() for role in security.SHIPPED_ROLES}
"""A key per shipped role that the fake security-service knows (its principal is the role's name)."""
ADMIN_KEY = ROLE_KEYS["admin"]
VIEWER_KEY = ROLE_KEYS["viewer"]


def _identity(principal: str, role: str) -> security.Identity:
    _, permissions = security.SHIPPED_ROLES[role]
    return security.Identity(
        principal=principal,
        kind="user",
        tenant=security.DEFAULT_TENANT,
        roles=[role],
        grants=[security.Grant(permission=p, role=role) for p in permissions],
    )


class FakeSecurity:
    """Answers ``authenticate`` for the keys of :data:`ROLE_KEYS` (401 otherwise) and
    counts the requests, so the gateway's guard is tested alone; the real service is tested
    with the gateway in the security-service's and the end-to-end tests."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self.identities = {key: _identity(role, role) for role, key in ROLE_KEYS.items()}
        self.requests: list[security.AuthenticateRequest] = []
        self._subs: list[Subscription] = []

    async def start(self) -> FakeSecurity:
        self._subs = [
            await self.nc.subscribe(subjects.SECURITY_AUTHENTICATE, cb=self._authenticate),
            await self.nc.subscribe(subjects.SECURITY_PING, cb=self._ping),
        ]
        await subscribed(self.nc)
        return self

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        self._subs = []

    async def _ping(self, msg: Msg) -> None:
        await msg.respond(b"{}")

    async def _authenticate(self, msg: Msg) -> None:
        request = msgspec.json.decode(msg.data, type=security.AuthenticateRequest)
        self.requests.append(request)
        credential = request.credentials.api_key or request.credentials.bearer or ""
        identity = self.identities.get(credential)
        if identity is None:
            reply = rpc.RpcReply(error=rpc.RpcError(code="unauthorized", message="the API key is not valid"))
        else:
            reply = rpc.RpcReply(result=msgspec.Raw(msgspec.json.encode(identity)))
        await msg.respond(msgspec.json.encode(reply))
