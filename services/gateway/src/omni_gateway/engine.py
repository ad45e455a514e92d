"""The services behind the gateway (the workflow engine, the security-service), as it sees them:
typed request/reply calls over NATS.

Every reply is an ``RpcReply``. An ``error`` in it becomes an :class:`ApiError` with the HTTP
status of its code; no answer within the timeout (or nobody listening), and a service's
``unavailable`` (its database cannot be reached), become a 503 with ``Retry-After``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from omni_contract import subjects
from omni_contract.envelope import encode
from omni_contract.rpc import (
    ERROR_HTTP_STATUS,
    CancelRunRequest,
    GetRequest,
    ListRunsRequest,
    ListWorkflowsRequest,
    RegisterWorkflowRequest,
    RerunRequest,
    RpcReply,
    RunEventsReply,
    RunEventsRequest,
    RunPage,
    RunSummary,
    StartRunReply,
    StartRunRequest,
    WorkflowVersions,
)
from omni_runtime.telemetry import inject_headers
from opentelemetry import trace

from omni_gateway.errors import ApiError, engine_unavailable, service_unavailable
from omni_gateway.metrics import GatewayMetrics
from omni_gateway.views import WorkflowList

log = logging.getLogger(__name__)
tracer = trace.get_tracer("omni_gateway.engine")

T = TypeVar("T")

# The engine's error code for "my database cannot be reached right now".
UNAVAILABLE = "unavailable"
_reply_decoder = msgspec.json.Decoder(RpcReply)


class RpcClient:
    """Calls to one service's endpoints under ``prefix``; ``unavailable`` makes its 503."""

    def __init__(
        self,
        nc: NATS,
        timeout_s: float,
        metrics: GatewayMetrics | None,
        *,
        service: str,
        prefix: str,
        unavailable: Callable[[str], ApiError],
    ) -> None:
        self.nc = nc
        self.timeout_s = timeout_s
        self.metrics = metrics
        self.service = service
        self.prefix = prefix
        self.unavailable = unavailable

    async def call(self, subject: str, request: Any, *, timeout_s: float | None = None) -> msgspec.Raw:
        """Send ``request`` (a struct or plain data) and return the reply's raw ``result``."""
        endpoint = subject.removeprefix(self.prefix + ".")
        started = time.perf_counter()
        outcome = "error"
        try:
            with tracer.start_as_current_span(
                f"{self.service} {endpoint}",
                kind=trace.SpanKind.CLIENT,
                attributes={"messaging.system": "nats", "messaging.destination.name": subject},
            ):
                result = await self._call(subject, request, timeout_s or self.timeout_s)
            outcome = "ok"
            return result
        except ApiError as exc:
            outcome = exc.code
            raise
        finally:
            if self.metrics is not None:
                self.metrics.rpc_latency.labels(endpoint, outcome).observe(time.perf_counter() - started)

    async def _call(self, subject: str, request: Any, timeout_s: float) -> msgspec.Raw:
        headers = inject_headers({})
        try:
            msg = await self.nc.request(subject, encode(request), timeout=timeout_s, headers=headers or None)
        except nats.errors.NoRespondersError:
            raise self.unavailable("no instance is answering") from None
        except nats.errors.TimeoutError:
            raise self.unavailable(f"no answer within {timeout_s:g} s") from None
        except nats.errors.Error as exc:
            raise self.unavailable(f"NATS connection: {exc}") from None
        service_error = (msg.headers or {}).get(SERVICE_ERROR)
        if service_error is not None:
            # The endpoint raised instead of answering: NATS micro replied for it, with an empty
            # body and the exception in a header (which must not reach the client).
            log.error("the %s failed on %s: %s", self.service, subject, service_error)
            raise ApiError(500, "internal", "internal error")
        try:
            reply = _reply_decoder.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("unreadable reply from %s: %s", subject, exc)
            raise bad_reply(self.service, subject) from None
        if reply.error is not None:
            if reply.error.code == UNAVAILABLE:
                # The service is up but its database is not (a transient outage): try again shortly.
                log.warning("%s unavailable on %s: %s", self.service, subject, reply.error.message)
                raise service_unavailable(reply.error.message)
            if ERROR_HTTP_STATUS.get(reply.error.code, 500) >= 500:
                # The service's own failure text may carry internals; it goes to the log, not the caller.
                log.error(
                    "%s failed on %s: %s: %s", self.service, subject, reply.error.code, reply.error.message
                )
                raise ApiError(500, "internal", f"the {self.service} failed to handle the request")
            raise ApiError.from_rpc(reply.error)
        if bytes(reply.result) == b"null":
            log.error("reply from %s has neither result nor error", subject)
            raise bad_reply(self.service, subject)
        return reply.result

    async def call_as(
        self, subject: str, request: Any, result_type: type[T], *, timeout_s: float | None = None
    ) -> T:
        raw = await self.call(subject, request, timeout_s=timeout_s)
        try:
            return msgspec.json.decode(raw, type=result_type)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("unexpected result from %s: %s", subject, exc)
            raise bad_reply(self.service, subject) from None


class EngineClient(RpcClient):
    def __init__(self, nc: NATS, timeout_s: float, metrics: GatewayMetrics | None = None) -> None:
        super().__init__(
            nc,
            timeout_s,
            metrics,
            service="workflow engine",
            prefix=subjects.ENGINE_RPC_PREFIX,
            unavailable=engine_unavailable,
        )

    # -- the endpoints -------------------------------------------------------------------------
    async def list_workflows(
        self, *, tenant: str | None = None, timeout_s: float | None = None
    ) -> WorkflowList:
        return await self.call_as(
            subjects.ENGINE_WORKFLOWS_LIST,
            ListWorkflowsRequest(tenant=tenant),
            WorkflowList,
            timeout_s=timeout_s,
        )

    async def get_workflow(self, name: str, *, tenant: str | None = None) -> dict[str, Any]:
        return await self.call_as(
            subjects.ENGINE_WORKFLOWS_GET, GetRequest(name=name, tenant=tenant), dict[str, Any]
        )

    async def register_workflow(self, request: RegisterWorkflowRequest) -> dict[str, Any]:
        return await self.call_as(subjects.ENGINE_WORKFLOWS_REGISTER, request, dict[str, Any])

    async def workflow_versions(self, name: str, *, tenant: str | None = None) -> WorkflowVersions:
        return await self.call_as(
            subjects.ENGINE_WORKFLOWS_VERSIONS, GetRequest(name=name, tenant=tenant), WorkflowVersions
        )

    async def start_run(self, request: StartRunRequest) -> StartRunReply:
        return await self.call_as(subjects.ENGINE_RUNS_START, request, StartRunReply)

    async def get_run(self, run_id: str, *, tenant: str | None = None) -> RunSummary:
        return await self.call_as(
            subjects.ENGINE_RUNS_GET, GetRequest(name=run_id, tenant=tenant), RunSummary
        )

    async def list_runs(self, request: ListRunsRequest) -> RunPage:
        return await self.call_as(subjects.ENGINE_RUNS_LIST, request, RunPage)

    async def run_events(
        self, run_id: str, after_seq: int = 0, *, tenant: str | None = None
    ) -> RunEventsReply:
        return await self.call_as(
            subjects.ENGINE_RUNS_EVENTS,
            RunEventsRequest(run_id=run_id, after_seq=after_seq, tenant=tenant),
            RunEventsReply,
        )

    async def cancel_run(self, request: CancelRunRequest) -> RunSummary:
        return await self.call_as(subjects.ENGINE_RUNS_CANCEL, request, RunSummary)

    async def rerun(self, request: RerunRequest) -> StartRunReply:
        return await self.call_as(subjects.ENGINE_RUNS_RERUN, request, StartRunReply)


SERVICE_ERROR = "Nats-Service-Error"
"""The header of a NATS micro reply sent for an endpoint that raised."""


def bad_reply(service: str, subject: str) -> ApiError:
    return ApiError(502, "bad_gateway", f"the {service} sent an unreadable reply to {subject}")
