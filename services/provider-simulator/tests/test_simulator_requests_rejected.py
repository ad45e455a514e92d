"""Requests the simulator refuses, answered in OpenRouter's error shape."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from omni_simulator import RunningSimulator, SimulatorState, running_simulator
from simulator_requests import chat_body


async def error_of(response: aiohttp.ClientResponse) -> dict[str, Any]:
    body: dict[str, Any] = await response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == response.status
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    error: dict[str, Any] = body["error"]
    return error


@pytest.mark.parametrize("authorization", [None, "Bearer ", "Basic abc"])
async def test_missing_bearer_key_is_401(sim: RunningSimulator, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{sim.base_url}/chat/completions", json=chat_body("hi"), headers=headers) as response,
    ):
        assert response.status == 401
        await error_of(response)
    assert sim.state.stats()["rejected"] == 1
    assert sim.state.side_effects == 0


async def test_a_configured_key_rejects_any_other_key() -> None:
    async with (
        running_simulator(state=SimulatorState(expected_key="right")) as sim,
        aiohttp.ClientSession() as session,
    ):
        url = f"{sim.base_url}/chat/completions"
        async with session.post(
            url, json=chat_body("hi"), headers={"Authorization": "Bearer wrong"}
        ) as response:
            assert response.status == 401
        async with session.post(
            url, json=chat_body("hi"), headers={"Authorization": "Bearer right"}
        ) as response:
            assert response.status == 200


async def test_body_that_is_not_json_is_400(sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    async with http.post(
        f"{sim.base_url}/chat/completions", data=b"{not json", headers={"Content-Type": "application/json"}
    ) as response:
        assert response.status == 400
        assert "JSON" in (await error_of(response))["message"]


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ([], "JSON object"),
        ({"model": "x"}, "messages"),
        ({"messages": [{"content": "no role"}]}, "role"),
        (
            {"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "xml"}},
            "response_format",
        ),
        (
            {"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema"}},
            "name",
        ),
        ({"messages": [{"role": "user", "content": "x"}], "modalities": ["text", "audio"]}, "voice"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "input_audio", "input_audio": {"data": "@@", "format": "wav"}}],
                    }
                ]
            },
            "base64",
        ),
    ],
)
async def test_invalid_chat_request_is_400_with_a_reason(
    sim: RunningSimulator, http: aiohttp.ClientSession, body: Any, complaint: str
) -> None:
    async with http.post(f"{sim.base_url}/chat/completions", json=body) as response:
        assert response.status == 400
        assert complaint in (await error_of(response))["message"]
    assert sim.state.side_effects == 0


async def test_unknown_path_is_404_in_the_error_shape(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{sim.base_url}/embeddings") as response:
        assert response.status == 404
        await error_of(response)
