"""The gateway against its own OpenAPI document: schemathesis generates requests for every
operation, valid and invalid ones, from the document the gateway serves, and checks that no
answer is a 5xx and that every answer's status, content type and body are the ones documented.

The gateway runs against real NATS and PostgreSQL with the real workflow engine and the real
``mock`` tool-runner, in this test's event loop; schemathesis (which speaks HTTP synchronously)
runs in a thread. The examples are few per operation and seeded from the test's code
(``derandomize``), so a run is bounded and sends the same requests on every try.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from aiohttp.test_utils import TestClient
from gateway_fakes import GatewayFactory
from gateway_runners import serving_engine, serving_runner
from hypothesis import HealthCheck, Phase
from omni_testkit import wait_for
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
# Examples per operation and mode; OMNI_SCHEMATHESIS_EXAMPLES=500 searches further by hand.
EXAMPLES = int(os.environ.get("OMNI_SCHEMATHESIS_EXAMPLES", "25"))
REQUEST_TIMEOUT_S = 60.0


@pytest.fixture
async def engine_in_process(nats_url: str, database_url: str) -> AsyncIterator[None]:
    async with serving_engine(nats_url, database_url):
        yield


@pytest.fixture
async def stack_gateway(
    engine_in_process: None, nats_url: str, make_gateway: GatewayFactory
) -> AsyncIterator[TestClient[Any, Any]]:
    async with serving_runner(nats_url, "mock"):
        # Generous timeouts: on a loaded machine a slow engine must not turn into a 503 or 504.
        client = await make_gateway(
            execute_wait_s=2.0, tool_wait_margin_s=10.0, rpc_timeout_s=15.0, readiness_timeout_s=10.0
        )

        async def mock_registered() -> bool:
            response = await client.get("/tools?provider=mock")
            return response.status == 200 and bool((await response.json())["tools"])

        await wait_for(mock_registered, timeout=30)
        yield client


async def test_every_operation_answers_as_documented_and_never_with_a_5xx(
    stack_gateway: TestClient[Any, Any],
) -> None:
    base_url = str(stack_gateway.make_url("")).rstrip("/")
    sent, failures = await asyncio.to_thread(run_schemathesis, base_url)
    assert not failures, "\n\n".join(failures)
    # Every route of the app is in the document, and each was called (the test cannot pass by
    # sending nothing).
    routes = {
        f"{route.method} {route.resource.canonical}"
        for route in stack_gateway.app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    assert set(sent) == routes - {"GET /openapi.json"}  # schemathesis leaves out the document itself
    assert all(count > 0 for count in sent.values()), sent


def run_schemathesis(base_url: str) -> tuple[dict[str, int], list[str]]:
    """How many requests each operation was sent, and what failed."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", timeout=REQUEST_TIMEOUT_S)
    sent: dict[str, int] = {}
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        sent[operation.label] = 0
        for mode in MODES:
            strategy = operation.as_strategy(generation_mode=mode)

            @hypothesis.settings(
                max_examples=EXAMPLES,
                derandomize=True,
                deadline=None,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
                print_blob=False,
            )
            @hypothesis.given(case=strategy)
            def check(case: schemathesis.Case) -> None:
                sent[case.operation.label] += 1
                case.call_and_validate(base_url=base_url, checks=CHECKS, timeout=REQUEST_TIMEOUT_S)

            try:
                check()
            except hypothesis.errors.Unsatisfiable:
                # Nothing in the operation can be made invalid (no body, no constrained parameter):
                # its positive cases are all there is to send.
                assert mode is schemathesis.GenerationMode.NEGATIVE, operation.label
            except Exception as exc:  # each operation's failure is reported, then the next runs
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    return sent, failures
