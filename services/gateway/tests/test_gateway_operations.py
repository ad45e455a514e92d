"""Health, readiness, metrics, tracing and the OpenAPI document."""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from gateway_fakes import FakeEngine, FakeSecurity, GatewayFactory
from nats.aio.client import Client as NATS
from omni_contract import subjects
from omni_contract.events import RunStatus
from omni_gateway import security
from omni_gateway.app import build_app
from omni_gateway.openapi import OPERATIONS, build_openapi, render_openapi
from omni_gateway.settings import GatewaySettings
from prometheus_client import CollectorRegistry, generate_latest

Client = TestClient[Any, Any]

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.mark.integration
async def test_healthz_answers_while_the_process_lives(gateway: Client) -> None:
    response = await gateway.get("/healthz")

    assert response.status == 200
    assert await response.json() == {"status": "ok", "service": "gateway"}


@pytest.mark.integration
async def test_readyz_is_503_with_the_reason_when_no_engine_answers(gateway: Client) -> None:
    response = await gateway.get("/readyz")

    assert response.status == 503
    body = await response.json()
    assert body["status"] == "unavailable"
    assert set(body["problems"]) == {"engine"}
    assert "workflow engine unavailable" in body["problems"]["engine"]


@pytest.mark.integration
async def test_readyz_is_503_naming_the_security_service_when_none_answers(
    gateway: Client, engine: FakeEngine, security: FakeSecurity
) -> None:
    await security.stop()

    response = await gateway.get("/readyz")

    assert response.status == 503
    assert (await response.json())["problems"] == {"security": "no security-service instance is answering"}


@pytest.mark.integration
async def test_readyz_is_200_once_the_engine_answers(gateway: Client, engine: FakeEngine) -> None:
    response = await gateway.get("/readyz")

    assert response.status == 200
    assert (await response.json())["status"] == "ready"


@pytest.mark.integration
async def test_requests_are_counted_by_route_and_status(
    make_gateway: GatewayFactory, engine: FakeEngine
) -> None:
    registry = CollectorRegistry()
    gateway = await make_gateway(registry=registry)
    await gateway.get("/workflows/greet")
    await gateway.get("/workflows/nope")
    await gateway.get("/no/such/path")

    text = generate_latest(registry).decode()

    assert 'omni_gateway_http_requests_total{method="GET",route="/workflows/{name}",status="200"} 1.0' in text
    assert 'omni_gateway_http_requests_total{method="GET",route="/workflows/{name}",status="404"} 1.0' in text
    assert 'omni_gateway_http_requests_total{method="GET",route="unmatched",status="404"} 1.0' in text
    assert 'omni_gateway_http_request_duration_seconds_count{method="GET",route="/workflows/{name}"' in text
    assert 'omni_gateway_engine_rpc_duration_seconds_count{endpoint="workflows.get",outcome="ok"} 1.0' in text
    assert 'omni_gateway_auth_decisions_total{outcome="allowed"} 2.0' in text


@pytest.mark.integration
async def test_metrics_are_not_on_the_public_port(gateway: Client, engine: FakeEngine) -> None:
    """Prometheus scrapes the health port (every service's /metrics); the public API has none."""
    response = await gateway.get("/metrics")

    assert response.status == 404


@pytest.mark.integration
async def test_an_incoming_traceparent_reaches_the_engine(gateway: Client, engine: FakeEngine) -> None:
    await gateway.get("/workflows/greet", headers={"traceparent": TRACEPARENT})

    [(_, _, headers)] = [call for call in engine.calls if call[0] == subjects.ENGINE_WORKFLOWS_GET]
    assert headers["traceparent"].split("-")[1] == TRACE_ID


@pytest.mark.integration
async def test_openapi_json_is_served_as_generated(gateway: Client) -> None:
    response = await gateway.get("/openapi.json")

    assert response.status == 200
    assert await response.text() == render_openapi()


def test_openapi_document_is_deterministic() -> None:
    assert render_openapi() == render_openapi()
    assert build_openapi() == build_openapi()


def test_openapi_document_describes_every_route_with_resolvable_refs() -> None:
    doc = build_openapi()

    assert doc["openapi"] == "3.1.0"
    assert set(doc["paths"]) == {
        "/workflows",
        "/workflows/{name}",
        "/workflows/{name}/execute",
        "/runs",
        "/runs/{runId}",
        "/runs/{runId}/events",
        "/runs/{runId}/stream",
        "/runs/{runId}/cancel",
        "/runs/{runId}/rerun",
        "/workflows/{name}/versions",
        "/deadletters",
        "/deadletters/{id}",
        "/deadletters/{id}/redrive",
        "/events/{subject}",
        "/tools",
        "/tools/declarations",
        "/tools/declarations/{name}",
        "/tools/{name}",
        "/tools/{name}/{provider}",
        "/tools/{category}/{action}/{provider}",
        "/servers",
        "/servers/{name}",
        "/healthz",
        "/readyz",
        "/openapi.json",
        *(op.path for op in security.OPERATIONS),
    }
    operation_ids = [op["operationId"] for path in doc["paths"].values() for op in path.values()]
    assert len(operation_ids) == len(set(operation_ids))
    for ref in _refs(doc):
        _, section, kind, name = ref.split("/")
        assert name in doc[section][kind], ref


def test_every_route_has_exactly_one_operation_described_beside_its_handler() -> None:
    app = build_app(NATS(), GatewaySettings(), CollectorRegistry())
    routes = [route for route in app.router.routes() if route.resource is not None and route.method != "HEAD"]
    served = Counter((route.method.lower(), route.resource.canonical) for route in routes if route.resource)
    described = Counter((op.method, op.path) for op in OPERATIONS)

    assert described == served
    assert all(count == 1 for count in served.values())
    for route in routes:
        assert route.resource is not None
        module = sys.modules[route.handler.__module__]
        beside = {(op.method, op.path) for op in getattr(module, "OPERATIONS", ())}
        assert (route.method.lower(), route.resource.canonical) in beside, (
            f"{route.method} {route.resource.canonical} is not described in {module.__name__}.OPERATIONS"
        )
    document = build_openapi()["paths"]
    assert {(method, path) for path, methods in document.items() for method in methods} == set(served)


def test_openapi_describes_idempotent_execute_and_every_run_status() -> None:
    doc = build_openapi()
    execute = doc["paths"]["/workflows/{name}/execute"]["post"]
    list_runs = doc["paths"]["/runs"]["get"]

    [key] = [p for p in execute["parameters"] if p.get("name") == "Idempotency-Key"]
    assert key["in"] == "header"
    assert key["schema"]["maxLength"] == 255
    assert "Idempotency-Key" in execute["responses"]["422"]["description"]
    assert "payload does not match" in execute["responses"]["422"]["description"]
    [status] = [p for p in list_runs["parameters"] if p["name"] == "status"]
    assert set(status["schema"]["enum"]) == set(RunStatus.ALL)


def test_openapi_schemas_use_the_camel_case_names_of_the_bodies() -> None:
    schemas = build_openapi()["components"]["schemas"]

    assert {"runId", "workflow", "status", "duration", "steps", "output", "error"} <= set(
        schemas["Execution"]["properties"]
    )
    assert "durationMs" in schemas["ExecutionStep"]["properties"]
    assert schemas["RunSummary"]["properties"]["createdAt"] == {"type": "string", "format": "date-time"}
    assert "nextCursor" in schemas["RunPage"]["properties"]
    assert set(schemas["ErrorInfo"]["required"]) == {"code", "message"}
    assert "inputTokens" in schemas["Usage"]["properties"]
    assert {"waiting", "rerunOf", "rerunFromStep"} <= set(schemas["RunSummary"]["properties"])
    assert "reason" in schemas["ExecutionStep"]["properties"]
    assert "waiting" in schemas["Execution"]["properties"]
    assert schemas["RerunBody"]["required"] == ["fromStep"]
    assert {"id", "originalSubject", "bodyEncoding", "storedAt"} <= set(
        schemas["DeadLetterView"]["properties"]
    )
    assert "deadLetters" in schemas["DeadLetterPage"]["properties"]


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []
