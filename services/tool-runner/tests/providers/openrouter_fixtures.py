"""Inputs and helpers shared by the OpenRouter adapter tests (uniquely named so it imports anywhere)."""

from __future__ import annotations

import base64
import itertools
from typing import Any

import httpx
from omni_simulator import RunningSimulator
from omni_simulator.audio import synthesize_pcm16, wav_from_pcm16
from omni_toolrunner.providers import ToolCall

API_KEY = "sk-or-v1-test"
SPOKEN = "I goes to the market yesterday."
_keys = itertools.count(1)


def learner_wav_base64(text: str = SPOKEN) -> str:
    """A WAV the simulator can "hear": it carries its own transcript as metadata."""
    return base64.b64encode(wav_from_pcm16(synthesize_pcm16(text), comment=text)).decode()


def call(tool: str, input: dict[str, Any], *, key: str | None = None, **kwargs: Any) -> ToolCall:
    return ToolCall(
        tool=tool,
        input=input,
        idempotency_key=key or f"run-test:step:{next(_keys)}",
        **kwargs,
    )


async def stats(sim: RunningSimulator) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{sim.root_url}/_sim/stats")
    result: dict[str, Any] = response.json()
    return result


async def recorded_requests(sim: RunningSimulator) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{sim.root_url}/_sim/requests")
    result: list[dict[str, Any]] = response.json()["requests"]
    return result


async def add_fault(sim: RunningSimulator, rule: dict[str, Any]) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{sim.root_url}/_sim/faults", json=rule)
    response.raise_for_status()
