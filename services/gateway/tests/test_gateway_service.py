"""The process: settings, streams provisioned at start, a taken port, and a graceful stop."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import nats
import pytest
from gateway_fakes import ADMIN_KEY, FakeEngine, FakeSecurity
from nats.aio.client import Client as NATS
from omni_contract import streams
from omni_gateway.main import ListenError, body
from omni_gateway.settings import GatewaySettings
from omni_runtime.service import serve
from omni_testkit import wait_for


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_the_port_is_read_from_either_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMNI_GATEWAY_HTTP_PORT", raising=False)
    monkeypatch.setenv("OMNI_HTTP_PORT", "9001")
    assert GatewaySettings().http_port == 9001
    monkeypatch.setenv("OMNI_GATEWAY_HTTP_PORT", "9002")
    assert GatewaySettings().http_port == 9002
    monkeypatch.setenv("OMNI_GATEWAY_RPC_TIMEOUT_S", "1.5")
    assert GatewaySettings().rpc_timeout_s == 1.5


class RunningGateway:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.stopping = asyncio.Event()
        self.task = asyncio.create_task(
            serve("gateway", settings, body, install_signals=False, stopping=self.stopping)
        )
        self.base = f"http://127.0.0.1:{settings.http_port}"

    async def stop(self) -> None:
        self.stopping.set()
        await asyncio.wait_for(self.task, timeout=15)


@pytest.fixture
async def running(nats_url: str) -> AsyncIterator[RunningGateway]:
    gateway = RunningGateway(GatewaySettings(nats_url=nats_url, http_port=_free_port(), shutdown_grace_s=5))
    try:
        yield gateway
    finally:
        if not gateway.task.done():
            await gateway.stop()


@pytest.fixture
async def engine_nc(nats_url: str) -> AsyncIterator[NATS]:
    conn = await nats.connect(nats_url)
    try:
        yield conn
    finally:
        await conn.drain()


async def _healthz(session: aiohttp.ClientSession, base: str) -> bool:
    async with session.get(f"{base}/healthz") as response:
        return response.status == 200


@pytest.mark.integration
async def test_the_service_provisions_streams_serves_and_stops(
    running: RunningGateway, engine_nc: NATS
) -> None:
    async with aiohttp.ClientSession() as session:
        await wait_for(lambda: _healthz(session, running.base), timeout=10, retry_on=(aiohttp.ClientError,))
        info = await engine_nc.jetstream().stream_info(streams.APP_EVENTS.name)
        assert info.config.subjects == list(streams.APP_EVENTS.subjects)

        await running.stop()

        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(f"{running.base}/healthz")


@pytest.mark.integration
async def test_stopping_releases_a_waiting_execute_with_202(
    running: RunningGateway, engine_nc: NATS, security: FakeSecurity
) -> None:
    engine = await FakeEngine(engine_nc, auto_complete=False).start()
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as session:
        await wait_for(lambda: _healthz(session, running.base), timeout=10, retry_on=(aiohttp.ClientError,))
        waiting = asyncio.create_task(
            session.post(
                f"{running.base}/workflows/greet/execute?timeout=120", json={"payload": {"name": "Ada"}}
            )
        )
        await wait_for(lambda: engine.runs, timeout=10)

        await running.stop()

        response = await asyncio.wait_for(waiting, timeout=10)
        assert response.status == 202
        body: dict[str, Any] = await response.json()
        assert response.headers["Location"] == f"/runs/{body['runId']}"


@pytest.mark.integration
async def test_a_taken_port_fails_the_start_naming_port_and_setting(nats_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = GatewaySettings(nats_url=nats_url, http_port=port)

        with pytest.raises(ListenError) as failure:
            await serve("gateway", settings, body, install_signals=False)

    message = str(failure.value)
    assert f"127.0.0.1:{port}" in message
    assert "already in use" in message
    assert "OMNI_GATEWAY_HTTP_PORT" in message
