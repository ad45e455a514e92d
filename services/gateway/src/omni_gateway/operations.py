"""``/healthz``, ``/readyz`` and ``/openapi.json``: the routes that serve operators and tooling
rather than callers of the API. Prometheus metrics are on the health port (``/metrics`` there,
with every service's), not on the public one.

The rendered OpenAPI document is the app's (``OPENAPI_DOCUMENT``, set by
``omni_gateway.app.build_app``): ``omni_gateway.openapi`` reads these
routes' descriptions from this module, so this module cannot import it to render the document."""

from __future__ import annotations

from aiohttp import web

from omni_gateway.apidoc import AUTHENTICATED, PUBLIC, Operation, json_answer
from omni_gateway.bodies import respond
from omni_gateway.guard import GUARD
from omni_gateway.state import GATEWAY, SERVICE
from omni_gateway.views import Health, Readiness

OPENAPI_DOCUMENT = web.AppKey("openapi_document", bytes)


HEALTHZ = Operation(
    method="get",
    path="/healthz",
    access=PUBLIC,
    operation_id="healthz",
    tag="operations",
    summary="The process is alive",
    responses={"200": json_answer("Alive", "Health")},
)


async def healthz(_: web.Request) -> web.Response:
    return respond(Health(status="ok", service=SERVICE))


READYZ = Operation(
    method="get",
    path="/readyz",
    access=PUBLIC,
    operation_id="readyz",
    tag="operations",
    summary="The gateway can serve: NATS is connected, the engine and the security-service answer",
    responses={
        "200": json_answer("Ready", "Readiness"),
        "503": json_answer("Not ready, with the reasons", "Readiness"),
    },
)


async def readyz(request: web.Request) -> web.Response:
    problems = await request.app[GATEWAY].readiness()
    if "nats" not in problems and (problem := await request.app[GUARD].problem()):
        problems["security"] = problem
    if problems:
        return respond(Readiness(status="unavailable", service=SERVICE, problems=problems), status=503)
    return respond(Readiness(status="ready", service=SERVICE))


OPENAPI = Operation(
    method="get",
    path="/openapi.json",
    access=AUTHENTICATED,
    operation_id="openapi",
    tag="operations",
    summary="This document",
    responses={
        "200": {
            "description": "OpenAPI 3.1",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    },
)


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI_DOCUMENT], content_type="application/json")


OPERATIONS = (HEALTHZ, READYZ, OPENAPI)
