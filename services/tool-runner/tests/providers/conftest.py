"""Fixtures: the provider simulator on a free port and an OpenRouter adapter pointed at it over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from omni_simulator import RunningSimulator, running_simulator
from omni_toolrunner.providers.openai_compatible import OPENROUTER, OpenAICompatibleAdapter
from openrouter_fixtures import API_KEY


@pytest.fixture
async def simulator() -> AsyncIterator[RunningSimulator]:
    async with running_simulator(port=0) as sim:
        yield sim


@pytest.fixture
async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def adapter(simulator: RunningSimulator, http_client: httpx.AsyncClient) -> OpenAICompatibleAdapter:
    return OpenAICompatibleAdapter(
        OPENROUTER,
        api_key=API_KEY,
        base_url=simulator.base_url,
        client=http_client,
        app_url="https://omni.example.invalid",
    )
