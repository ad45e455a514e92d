"""One OpenTelemetry trace follows a run across processes: the gateway's request, the engine's
work and the tool-runner's provider calls share a trace id (traceparent travels in NATS headers).

The services export OTLP/HTTP to a small collector run by this test."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from omni_devstack.servers import free_port
from omni_devstack.supervisor import Stack
from omni_testkit import wait_for
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from .stacks import make_stack
from .test_bilingual_coach import payload

pytestmark = pytest.mark.e2e


class Collector:
    def __init__(self) -> None:
        # trace id -> service names that sent spans of it
        self.services: dict[str, set[str]] = defaultdict(set)
        self.names: dict[str, set[str]] = defaultdict(set)

    async def traces(self, request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest()
        export.ParseFromString(await request.read())
        for resource_spans in export.resource_spans:
            service = next(
                (a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"),
                "?",
            )
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    self.services[span.trace_id.hex()].add(service)
                    self.names[span.trace_id.hex()].add(span.name)
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )


@pytest.fixture
async def collector() -> AsyncIterator[tuple[Collector, int]]:
    c = Collector()
    app = web.Application()
    app.router.add_post("/v1/traces", c.traces)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield c, port
    finally:
        await runner.cleanup()


async def test_one_trace_spans_gateway_engine_and_tool_runner(
    tmp_path: Path, database_url: str, collector: tuple[Collector, int]
) -> None:
    spans, port = collector
    stack: Stack = make_stack(
        tmp_path,
        database_url,
        extra_env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        },
    )
    await asyncio.to_thread(stack.start, 90)
    try:
        async with httpx.AsyncClient(
            base_url=stack.gateway_url, headers=stack.auth_headers, timeout=60
        ) as client:
            response = await client.post("/workflows/bilingual-coach/execute", json={"payload": payload()})
            assert response.status_code == 200, response.text
            assert response.json()["status"] == "completed"

        def one_trace_everywhere() -> str | None:
            for trace_id, services in spans.services.items():
                if {"gateway", "workflow-engine", "tool-runner-openrouter"} <= services:
                    return trace_id
            return None

        trace_id = await wait_for(one_trace_everywhere, timeout=20, message="a trace across three services")
        assert any(name.startswith("tool.invoke") for name in spans.names[trace_id])
    finally:
        await asyncio.to_thread(stack.stop)
