"""Fixtures: a real NATS server per test (``nats_url`` from omni_testkit) and the provider simulator."""

from __future__ import annotations

from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from omni_contract import streams
from omni_runtime.nats import ensure_streams
from omni_simulator import RunningSimulator, running_simulator


@pytest.fixture
async def simulator() -> AsyncIterator[RunningSimulator]:
    async with running_simulator(port=0) as sim:
        yield sim


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_url, name="tool-runner-tests")
    try:
        yield client
    finally:
        await client.drain()


@pytest.fixture
async def js(nc: NATS) -> JetStreamContext:
    """JetStream with Omni's streams in place, so tests can open readers before a runner starts."""
    context = nc.jetstream()
    await ensure_streams(context, streams.ALL_STREAMS)
    return context
