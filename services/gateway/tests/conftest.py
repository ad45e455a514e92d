"""Fixtures: a NATS connection to a fresh server (``nats_url`` from omni_testkit), the fake
engine on it, and the gateway's app served by aiohttp's test server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web_runner import BaseRunner
from gateway_fakes import ADMIN_KEY, FakeEngine, FakeSecurity, GatewayFactory
from nats.aio.client import Client as NATS
from omni_contract import streams
from omni_gateway.app import GatewayRunner, build_app
from omni_gateway.settings import GatewaySettings
from omni_runtime.nats import ensure_streams
from prometheus_client import CollectorRegistry


class GatewayTestServer(TestServer):
    """aiohttp's test server with the gateway's own runner (JSON answers to unparsable requests)."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return GatewayRunner(self.app, **kwargs)


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    conn = await nats.connect(nats_url, name="gateway-test")
    await ensure_streams(conn.jetstream(), streams.ALL_STREAMS)
    try:
        yield conn
    finally:
        await conn.drain()


@pytest.fixture
async def engine(nc: NATS) -> AsyncIterator[FakeEngine]:
    fake = await FakeEngine(nc).start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
async def security(nc: NATS) -> AsyncIterator[FakeSecurity]:
    fake = await FakeSecurity(nc).start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
async def security_backend(security: FakeSecurity) -> object:
    """What answers for the security-service: the fake, unless a test module overrides this."""
    return security


@pytest.fixture
async def make_gateway(nats_url: str, security_backend: object) -> AsyncIterator[GatewayFactory]:
    """Start a gateway (its own NATS connection, like the real one) with settings overridden.
    Its client sends the admin's key unless ``key`` says otherwise (None: no credentials)."""
    clients: list[TestClient[Any, Any]] = []
    connections: list[NATS] = []

    async def make(
        *, key: str | None = ADMIN_KEY, registry: CollectorRegistry | None = None, **overrides: Any
    ) -> TestClient[Any, Any]:
        conn = await nats.connect(nats_url, name="gateway")
        connections.append(conn)
        settings = GatewaySettings(nats_url=nats_url, **{"rpc_timeout_s": 2.0, **overrides})
        client: TestClient[Any, Any] = TestClient(
            GatewayTestServer(build_app(conn, settings, registry or CollectorRegistry())),
            headers={"Authorization": f"Bearer {key}"} if key else None,
        )
        await client.start_server()
        clients.append(client)
        return client

    try:
        yield make
    finally:
        for client in clients:
            await client.close()
        for conn in connections:
            await conn.drain()


@pytest.fixture
async def gateway(make_gateway: GatewayFactory) -> TestClient[Any, Any]:
    return await make_gateway()
