"""Fixtures: a real simulator on a free port, and a client session pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from omni_simulator import RunningSimulator, running_simulator
from simulator_requests import API_KEY


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    async with running_simulator(port=0) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_KEY}"}) as session:
        yield session
