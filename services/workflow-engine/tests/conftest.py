"""Fixtures of the engine's tests: ``harness`` (see engine_harness.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from engine_harness import Harness, open_harness


@pytest.fixture
async def harness(nats_url: str, database_url: str) -> AsyncIterator[Harness]:
    async for h in open_harness(nats_url, database_url):
        yield h
