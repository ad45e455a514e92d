"""``/runs``: list and read runs, their history, and a live stream of their progress."""

from __future__ import annotations

import logging
import re

import msgspec
from aiohttp import web
from omni_contract.events import RunEventRecord, RunEventType, RunProgress, RunStatus
from omni_contract.rpc import CancelRunRequest, ListRunsRequest, RerunRequest
from omni_runtime.logging import run_id_var

from omni_gateway.apidoc import (
    Operation,
    json_answer,
    needs,
    page_parameters,
    param_ref,
    schema_ref,
    string_header,
)
from omni_gateway.bodies import json_type, parse_int, query_int, read_json_object, respond
from omni_gateway.convert import to_camel
from omni_gateway.errors import ApiError, ErrorDetail
from omni_gateway.follow import FollowerClosed, is_terminal
from omni_gateway.guard import identity_of
from omni_gateway.state import GATEWAY, Gateway
from omni_gateway.views import MAX_CANCEL_REASON, ExecutionAccepted, is_finished, record_of_progress

log = logging.getLogger(__name__)

MAX_PAGE = 500
DEFAULT_PAGE = 50
MAX_SEQ = 2**63 - 1
MAX_STEP_NAME = 256
# A run id becomes one NATS subject token; anything else cannot name a run.
_RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


def run_id_of(request: web.Request) -> str:
    run_id = request.match_info["runId"]
    if not _RUN_ID.fullmatch(run_id):
        raise ApiError(404, "not_found", f"run {run_id!r} not found")
    run_id_var.set(run_id)
    return run_id


LIST_RUNS = Operation(
    method="get",
    path="/runs",
    access=needs("run:read"),
    operation_id="listRuns",
    tag="runs",
    summary="List runs, newest first, a page at a time",
    responses={"200": json_answer("One page of runs; nextCursor fetches the next", "RunPage")},
    errors=("BadRequest", "EngineUnavailable"),
    parameters=(
        {"name": "workflow", "in": "query", "required": False, "schema": {"type": "string"}},
        {
            "name": "status",
            "in": "query",
            "required": False,
            "schema": {"type": "string", "enum": list(RunStatus.ALL)},
        },
        *page_parameters(MAX_PAGE, DEFAULT_PAGE),
    ),
)


async def list_runs(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    status = request.query.get("status") or None
    if status is not None and status not in RunStatus.ALL:
        raise ApiError.bad_request("status", f"status must be one of {', '.join(RunStatus.ALL)}")
    query = ListRunsRequest(
        workflow=request.query.get("workflow") or None,
        status=status,
        limit=query_int(request, "limit", DEFAULT_PAGE, minimum=1, maximum=MAX_PAGE),
        cursor=request.query.get("cursor") or None,
        tenant=identity_of(request).tenant,
    )
    page = await gateway.engine.list_runs(query)
    # Listing applies the decision reading applies: a grant may name workflows (run:read:greet).
    identity = identity_of(request)
    page.runs = [run for run in page.runs if identity.decide("run", "read", run.workflow).allowed]
    return respond(page)


GET_RUN = Operation(
    method="get",
    path="/runs/{runId}",
    access=needs("run:read"),
    operation_id="getRun",
    tag="runs",
    summary="Read one run with its steps",
    responses={"200": json_answer("The run", "RunSummary")},
    errors=("NotFound", "EngineUnavailable"),
    parameters=(param_ref("RunId"),),
)


async def get_run(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    run_id = run_id_of(request)
    identity = identity_of(request)
    run = await gateway.engine.get_run(run_id, tenant=identity.tenant)
    if not identity.decide("run", "read", run.workflow).allowed:
        raise ApiError(404, "not_found", f"no run {run_id!r}")  # as if it did not exist
    return respond(run)


RUN_EVENTS = Operation(
    method="get",
    path="/runs/{runId}/events",
    access=needs("run:read"),
    operation_id="getRunEvents",
    tag="runs",
    summary="Read a run's history of events",
    responses={"200": json_answer("The events after `after`, in order", "RunEventsReply")},
    errors=("BadRequest", "NotFound", "EngineUnavailable"),
    parameters=(param_ref("RunId"), param_ref("After")),
)


async def run_events(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    run_id = run_id_of(request)
    after = query_int(request, "after", 0, minimum=0, maximum=MAX_SEQ)
    return respond(await gateway.engine.run_events(run_id, after, tenant=identity_of(request).tenant))


CANCEL_RUN = Operation(
    method="post",
    path="/runs/{runId}/cancel",
    access=needs("run:cancel"),
    operation_id="cancelRun",
    tag="runs",
    summary="Cancel a run",
    responses={
        "202": {
            **json_answer(
                "The cancellation is recorded; the run is shown as it is now. It becomes "
                "cancelled once the work in flight has stopped and compensation has run. "
                "A run that has already ended is answered unchanged.",
                "RunSummary",
            ),
            "headers": {"Location": string_header("The run's URL")},
        }
    },
    errors=("BadRequest", "NotFound", "PayloadTooLarge", "EngineUnavailable"),
    request_body={
        "required": False,
        "content": {"application/json": {"schema": schema_ref("CancelRequest")}},
    },
    parameters=(param_ref("RunId"),),
)


async def cancel_run(request: web.Request) -> web.Response:
    """Record the cancellation and answer at once: the engine then stops the work in flight and
    runs compensation, and the run becomes ``cancelled`` (poll it, or follow its stream)."""
    gateway = request.app[GATEWAY]
    run_id = run_id_of(request)
    body = await read_json_object(request, gateway.settings.max_body_bytes)
    reason = body.get("reason")
    if reason is None:
        reason = ""
    if not isinstance(reason, str):
        raise ApiError.bad_request("reason", f"reason must be a string, not {json_type(reason)}")
    if len(reason) > MAX_CANCEL_REASON:
        raise ApiError.bad_request("reason", f"reason is longer than {MAX_CANCEL_REASON} characters")
    run = await gateway.engine.cancel_run(
        CancelRunRequest(run_id=run_id, reason=reason, tenant=identity_of(request).tenant)
    )
    return respond(run, status=202, headers={"Location": f"/runs/{run.run_id}"})


RERUN = Operation(
    method="post",
    path="/runs/{runId}/rerun",
    access=needs("run:rerun"),
    operation_id="rerunRun",
    tag="runs",
    summary="Run a workflow again from one of its steps",
    responses={
        "202": {
            **json_answer("The new run has started; follow it at Location", "ExecutionAccepted"),
            "headers": {"Location": string_header("The new run's URL")},
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
        "content": {"application/json": {"schema": schema_ref("RerunBody")}},
    },
    parameters=(param_ref("RunId"),),
)


async def rerun(request: web.Request) -> web.Response:
    """Start a new run of the same workflow version from ``fromStep`` (the engine reuses the outputs
    of the steps before it); answered like an execute with ``wait=false``."""
    gateway = request.app[GATEWAY]
    run_id = run_id_of(request)
    body = await read_json_object(request, gateway.settings.max_body_bytes)
    from_step = body.get("fromStep")
    if from_step is None:
        raise _unprocessable("fromStep", "fromStep is required: the name of the step to run again from")
    if not isinstance(from_step, str):
        raise _unprocessable("fromStep", f"fromStep must be a step name, not {json_type(from_step)}")
    if not from_step.strip():
        raise _unprocessable("fromStep", "fromStep must be a step name, not an empty string")
    if len(from_step) > MAX_STEP_NAME:
        raise _unprocessable("fromStep", f"fromStep is longer than {MAX_STEP_NAME} characters")
    payload = body.get("payload")
    if payload is not None and not isinstance(payload, dict):
        raise ApiError.bad_request("payload", f"payload must be a JSON object, not {json_type(payload)}")
    started = await gateway.engine.rerun(
        RerunRequest(run_id=run_id, from_step=from_step, payload=payload, tenant=identity_of(request).tenant)
    )
    log.info("run %s rerun from step %s as %s", run_id, from_step, started.run_id)
    return respond(
        ExecutionAccepted(run_id=started.run_id, status=started.status),
        status=202,
        headers={"Location": f"/runs/{started.run_id}"},
    )


def _unprocessable(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid_request", message, [ErrorDetail(field=field, message=message)])


def _resume_after(request: web.Request) -> int:
    """Where a stream starts: ``?after=``, else the ``Last-Event-ID`` of a reconnecting client."""
    if request.query.get("after"):
        return query_int(request, "after", 0, minimum=0, maximum=MAX_SEQ)
    last_event_id = request.headers.get("Last-Event-ID", "").strip()
    if last_event_id:
        return parse_int("Last-Event-ID", last_event_id, minimum=0, maximum=MAX_SEQ)
    return 0


STREAM_RUN = Operation(
    method="get",
    path="/runs/{runId}/stream",
    access=needs("run:read"),
    operation_id="streamRun",
    tag="runs",
    summary="Follow a run's progress as server-sent events",
    responses={
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
    parameters=(
        param_ref("RunId"),
        param_ref("After"),
        {
            "name": "Last-Event-ID",
            "in": "header",
            "required": False,
            "description": "The seq of the last event received, when reconnecting",
            "schema": {"type": "integer", "minimum": 0},
        },
    ),
)


async def stream_run(request: web.Request) -> web.StreamResponse:
    """Server-sent events: the run's history, then each event as it is appended, until the run ends.

    The subscription to the run's notices is opened before the history is read, so an event
    appended in between is not missed; ``seq`` removes the duplicate. A notice only says that the
    history grew, so on each one the stream reads the new records: every event sent, replayed or
    live, is the same full history record (``RunEventRecord``), without gaps.
    """
    gateway = request.app[GATEWAY]
    run_id = run_id_of(request)
    after = _resume_after(request)
    async with gateway.follow(run_id) as follower:
        history = await gateway.engine.run_events(run_id, after, tenant=identity_of(request).tenant)
        if not history.events and after > 0 and await _already_over(gateway, run_id, after):
            # 204 tells an EventSource that reconnects after the end to stop reconnecting.
            return web.Response(status=204)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # proxies must not hold events back
            }
        )
        await response.prepare(request)
        sse = _SseWriter(response, after)
        try:
            ended = await sse.records(history.events)
            while not ended:
                try:
                    notice = await follower.next(gateway.settings.sse_heartbeat_s)
                except FollowerClosed:
                    break
                if notice is None:
                    await sse.comment("heartbeat")
                elif notice.seq > sse.last_seq:
                    ended = await _catch_up(gateway, sse, notice)
            await response.write_eof()
        except ConnectionResetError:
            log.debug("client left the stream of run %s", run_id)
    return response


async def _already_over(gateway: Gateway, run_id: str, after: int) -> bool:
    run = await gateway.engine.get_run(run_id)
    return is_finished(run.status) and run.last_seq <= after


async def _catch_up(gateway: Gateway, sse: _SseWriter, notice: RunProgress) -> bool:
    """Send the records up to (at least) the notice's; True once the run's end was sent."""
    try:
        fresh = await gateway.engine.run_events(notice.run_id, sse.last_seq)
    except ApiError as exc:
        log.warning("could not read new events of run %s: %s", notice.run_id, exc.message)
    else:
        if await sse.records(fresh.events):
            return True
    if notice.seq > sse.last_seq:  # the history could not be read (or lags): the notice is all there is
        await sse.send(record_of_progress(notice))
        return is_terminal(notice)
    return False


class _SseWriter:
    def __init__(self, response: web.StreamResponse, after: int) -> None:
        self.response = response
        self.last_seq = after

    async def records(self, records: list[RunEventRecord]) -> bool:
        """Send the history records not sent yet; True when one of them ends the run."""
        for record in records:
            if record.seq <= self.last_seq:
                continue
            await self.send(record)
            if record.type in RunEventType.TERMINAL:
                return True
        return False

    async def send(self, record: RunEventRecord) -> None:
        data = msgspec.json.encode(to_camel(record)).decode()
        kind = record.type.replace("\r", " ").replace("\n", " ")
        await self.response.write(f"id: {record.seq}\nevent: {kind}\ndata: {data}\n\n".encode())
        self.last_seq = record.seq

    async def comment(self, text: str) -> None:
        await self.response.write(f": {text}\n\n".encode())


OPERATIONS = (LIST_RUNS, GET_RUN, RUN_EVENTS, STREAM_RUN, CANCEL_RUN, RERUN)
