"""The gateway against its own OpenAPI document: schemathesis generates requests for every
operation, valid and invalid ones, from the document the gateway serves, and checks that no
answer is a 5xx and that every answer's status, content type and body are the ones documented;
three times: with no credentials, with a viewer's key, and with an admin's. Without credentials
only the public operations may succeed; with a viewer's key only those whose permission
(``x-omni-permission``, its instance taken from the path) the viewer's grants cover.

The gateway runs against real NATS and PostgreSQL with the real workflow engine, the real
security-service and the real ``mock`` tool-runner, in this test's event loop; schemathesis
(which speaks HTTP synchronously) runs in a thread. The examples are few per operation and seeded
from the test's code (``derandomize``), so a run is bounded and sends the same requests on every
try.
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
from gateway_runners import serving_engine, serving_runner, serving_security
from hypothesis import HealthCheck, Phase
from omni_contract.security import SHIPPED_ROLES, Grant, decide
from omni_gateway.openapi import build_openapi
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
async def security_backend(nats_url: str, database_url: str) -> AsyncIterator[str]:
    """The real security-service (instead of the fake); its admin key."""
    async with serving_security(nats_url, database_url) as admin_key:
        yield admin_key


@pytest.fixture
async def stack_gateway(
    engine_in_process: None, nats_url: str, make_gateway: GatewayFactory, security_backend: str
) -> AsyncIterator[TestClient[Any, Any]]:
    async with serving_runner(nats_url, "mock"):
        # Generous timeouts: on a loaded machine a slow engine must not turn into a 503 or 504.
        client = await make_gateway(
            key=security_backend,
            execute_wait_s=2.0,
            tool_wait_margin_s=10.0,
            rpc_timeout_s=15.0,
            readiness_timeout_s=10.0,
        )

        async def mock_registered() -> bool:
            response = await client.get("/tools?provider=mock")
            return response.status == 200 and bool((await response.json())["tools"])

        await wait_for(mock_registered, timeout=30)
        yield client


async def test_every_operation_answers_as_documented_and_never_with_a_5xx(
    stack_gateway: TestClient[Any, Any], security_backend: str
) -> None:
    base_url = str(stack_gateway.make_url("")).rstrip("/")
    admin = {"Authorization": f"Bearer {security_backend}"}
    made = await stack_gateway.post("/security/principals", json={"id": "fuzz-viewer", "roles": ["viewer"]})
    assert made.status == 201, await made.text()
    key = await stack_gateway.post("/security/keys", json={"principal": "fuzz-viewer"})
    viewer = {"Authorization": f"Bearer {(await key.json())['key']}"}
    viewer_grants = [Grant(permission=p, role="viewer") for p in SHIPPED_ROLES["viewer"][1]]

    # The admin last: what it changes (roles, keys, declarations) cannot narrow the others' runs.
    _, failures = await asyncio.to_thread(run_schemathesis, base_url, {}, None)
    assert not failures, "without credentials:\n\n" + "\n\n".join(failures)
    _, failures = await asyncio.to_thread(run_schemathesis, base_url, viewer, viewer_grants)
    assert not failures, "as a viewer:\n\n" + "\n\n".join(failures)
    sent, failures = await asyncio.to_thread(run_schemathesis, base_url, admin, ALL_ALLOWED)
    assert not failures, "as an admin:\n\n" + "\n\n".join(failures)
    # Every route of the app is in the document, and each was called (the test cannot pass by
    # sending nothing).
    routes = {
        f"{route.method} {route.resource.canonical}"
        for route in stack_gateway.app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    assert set(sent) == routes
    assert all(count > 0 for count in sent.values()), sent


ALL_ALLOWED = [Grant(permission="*:*", role="admin")]


def _permitted(case: schemathesis.Case, grants: list[Grant] | None) -> bool:
    """Whether the operation may succeed for a caller with ``grants`` (None: no credentials)."""
    definition = case.operation.definition.raw
    if definition.get("security") == []:
        return True  # public
    if grants is None:
        return False
    permission = definition.get("x-omni-permission")
    if permission is None:
        return True  # any authenticated caller
    resource, action, *instance = permission.split(":", 2)
    params = {name: str(value) for name, value in (case.path_parameters or {}).items()}
    return decide(grants, resource, action, instance[0].format_map(params) if instance else "").allowed


def run_schemathesis(
    base_url: str, headers: dict[str, str], grants: list[Grant] | None
) -> tuple[dict[str, int], list[str]]:
    """How many requests each operation was sent, and what failed. ``grants``: what the
    credentials in ``headers`` allow; None: no credentials, so only public operations may succeed."""
    schema = schemathesis.openapi.from_dict(build_openapi())
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
                response = case.call_and_validate(
                    base_url=base_url, headers=headers, checks=CHECKS, timeout=REQUEST_TIMEOUT_S
                )
                if response.status_code < 400:
                    assert _permitted(case, grants), (
                        f"{case.operation.label} answered {response.status_code} to a caller without "
                        f"the permission it needs: {case.path_parameters}"
                    )

            try:
                check()
            except hypothesis.errors.Unsatisfiable:
                # Nothing in the operation can be made invalid (no body, no constrained parameter):
                # its positive cases are all there is to send.
                assert mode is schemathesis.GenerationMode.NEGATIVE, operation.label
            except Exception as exc:  # each operation's failure is reported, then the next runs
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    return sent, failures
