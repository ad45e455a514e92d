"""The aiohttp application: routes, the error and observability middlewares."""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web, web_protocol, web_server
from aiohttp.typedefs import Handler, Middleware
from nats.aio.client import Client as NATS
from opentelemetry import propagate, trace
from prometheus_client import CollectorRegistry

from omni_gateway import (
    deadletters,
    declarations,
    events,
    operations,
    runs,
    security,
    servers,
    tools,
    workflows,
)
from omni_gateway.bodies import CONTROL, too_large
from omni_gateway.engine import EngineClient
from omni_gateway.errors import ApiError, error_response
from omni_gateway.guard import GUARD, Guard
from omni_gateway.metrics import GatewayMetrics
from omni_gateway.openapi import OPERATIONS, render_openapi
from omni_gateway.operations import OPENAPI_DOCUMENT
from omni_gateway.settings import GatewaySettings
from omni_gateway.state import GATEWAY, Gateway

log = logging.getLogger(__name__)
tracer = trace.get_tracer("omni_gateway")

UNMATCHED_ROUTE = "unmatched"  # one label for every unknown path, so scanners cannot grow the metrics


def build_app(nc: NATS, settings: GatewaySettings, registry: CollectorRegistry) -> web.Application:
    metrics = GatewayMetrics(registry)
    gateway = Gateway(
        nc=nc,
        settings=settings,
        engine=EngineClient(nc, settings.rpc_timeout_s, metrics),
        metrics=metrics,
        js=nc.jetstream(),
    )
    guard = Guard(nc, settings, metrics, OPERATIONS)
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[_observe(metrics), _errors(settings), guard.middleware()],
    )
    app[GATEWAY] = gateway
    app[GUARD] = guard
    app[OPENAPI_DOCUMENT] = render_openapi().encode()

    async def on_startup(_: web.Application) -> None:
        await guard.start()

    async def on_shutdown(_: web.Application) -> None:
        gateway.stop()

    async def on_cleanup(_: web.Application) -> None:
        await guard.stop()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    app.add_routes(
        [
            web.get("/workflows", workflows.list_workflows),
            web.post("/workflows", workflows.register_workflow),
            web.get("/workflows/{name}", workflows.get_workflow),
            web.post("/workflows/{name}/execute", workflows.execute_workflow),
            web.get("/workflows/{name}/versions", workflows.workflow_versions),
            web.get("/runs", runs.list_runs),
            web.get("/runs/{runId}", runs.get_run),
            web.get("/runs/{runId}/events", runs.run_events),
            web.get("/runs/{runId}/stream", runs.stream_run),
            web.post("/runs/{runId}/cancel", runs.cancel_run),
            web.post("/runs/{runId}/rerun", runs.rerun),
            web.get("/deadletters", deadletters.list_deadletters),
            web.get("/deadletters/{id}", deadletters.get_deadletter),
            web.post("/deadletters/{id}/redrive", deadletters.redrive_deadletter),
            web.post("/events/{subject}", events.publish_event),
            web.get("/tools", tools.list_tools),
            # Before /tools/{name}...: "declarations" is not a tool name (tool names have a dot).
            web.get("/tools/declarations", declarations.list_declarations),
            web.post("/tools/declarations", declarations.create_declaration),
            web.get("/tools/declarations/{name}", declarations.get_declaration),
            web.put("/tools/declarations/{name}", declarations.put_declaration),
            web.delete("/tools/declarations/{name}", declarations.delete_declaration),
            web.get("/tools/{name}", tools.get_tool),
            web.get("/tools/{name}/{provider}", tools.get_tool_provider),
            web.post("/tools/{category}/{action}/{provider}", tools.execute_tool),
            web.get("/servers", servers.list_servers),
            web.get("/servers/{name}", servers.get_server),
            web.get("/healthz", operations.healthz),
            web.get("/readyz", operations.readyz),
            web.get("/openapi.json", operations.openapi),
            *security.ROUTES,
        ]
    )
    return app


def route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED_ROUTE


def _observe(metrics: GatewayMetrics) -> Middleware:
    """A server span per request (continuing an incoming ``traceparent``), and request metrics."""

    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = route_of(request)
        started = time.perf_counter()
        status = 500
        metrics.in_flight.inc()
        with tracer.start_as_current_span(
            f"{request.method} {route}",
            context=propagate.extract(request.headers),
            kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": request.method, "http.route": route, "url.path": request.path},
        ) as span:
            try:
                response = await handler(request)
                status = response.status
                return response
            finally:
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(trace.StatusCode.ERROR)
                metrics.in_flight.dec()
                metrics.requests.labels(request.method, route, str(status)).inc()
                metrics.latency.labels(request.method, route, str(status)).observe(
                    time.perf_counter() - started
                )

    return observe


def _errors(settings: GatewaySettings) -> Middleware:
    """Every error leaves as the API's JSON error shape; nothing else (no traceback) leaks."""

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            _check_names(request)
            return await handler(request)
        except ApiError as exc:
            return exc.response()
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _http_error(request, exc, settings)
        except asyncio.CancelledError:
            raise
        except Exception:  # the last resort: logged with its traceback, answered as 500
            log.exception("unhandled error on %s %s", request.method, request.path)
            return error_response(500, "internal", "internal error")

    return errors


def _check_names(request: web.Request) -> None:
    """Query parameters and path names with control characters (NUL included) or lone surrogates
    name nothing: 400 for a parameter, the event subject or a name being written (PUT), 404 for any
    other path name, before a handler passes them on to NATS or PostgreSQL."""
    for name, value in request.query.items():
        if CONTROL.search(name):
            raise ApiError.bad_request("query", "a query parameter's name has a control character")
        if CONTROL.search(value):
            raise ApiError.bad_request(name, f"{name} has a control character or invalid Unicode")
    for name, value in request.match_info.items():
        if not CONTROL.search(value):
            continue
        if name == "subject" or request.method == "PUT":
            raise ApiError.bad_request(name, f"{name} has a control character or invalid Unicode")
        raise ApiError(404, "not_found", f"no {name} {value!r}: names have no control characters")


def _http_error(request: web.Request, exc: web.HTTPException, settings: GatewaySettings) -> web.Response:
    if isinstance(exc, web.HTTPNotFound):
        return error_response(404, "not_found", f"no route for {request.method} {request.path}")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return error_response(
            405,
            "method_not_allowed",
            f"{request.method} is not allowed on {request.path}; use {allowed}",
            headers={"Allow": allowed},
        )
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return too_large(settings.max_body_bytes).response()
    code = exc.reason.lower().replace(" ", "_").replace("-", "_")
    return error_response(exc.status, code, exc.reason)


# -- errors before any route: aiohttp's HTTP parser ---------------------------------------------
class GatewayRunner(web.AppRunner):
    """An ``AppRunner`` whose connections answer a request aiohttp cannot parse (a bad request
    line or header, a body it cannot frame) with the API's JSON error shape instead of aiohttp's
    plain text. Such a request never reaches the application or its middlewares."""

    async def _make_server(self) -> web_server.Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorServer  # the same object, handing out _JsonErrorHandler
        return server


class _JsonErrorServer(web_server.Server):
    def __call__(self) -> web_protocol.RequestHandler:
        handler = super().__call__()
        handler.__class__ = _JsonErrorHandler
        return handler


class _JsonErrorHandler(web_protocol.RequestHandler):
    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs it; raises if an answer began
        if status >= 500:
            response = error_response(status, "internal", "internal error")
        else:
            reason = (getattr(exc, "message", None) or message or "").strip().splitlines()
            what = reason[0][:200].rstrip(": ").encode("ascii", "backslashreplace").decode() if reason else ""
            response = error_response(
                status, "bad_request", f"malformed HTTP request: {what}" if what else "malformed HTTP request"
            )
        response.force_close()
        return response
