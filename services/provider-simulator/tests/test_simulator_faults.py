"""Fault injection and idempotency, driven over the /_sim control API."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest
from omni_simulator import RunningSimulator
from simulator_requests import chat_body

TRANSLATE_SCHEMA = {"type": "object", "properties": {"translatedText": {"type": "string"}}}
ANALYZE_SCHEMA = {"type": "object", "properties": {"intent": {"type": "string"}}}


async def add_fault(http: aiohttp.ClientSession, sim: RunningSimulator, rule: Any) -> dict[str, Any]:
    async with http.post(f"{sim.root_url}/_sim/faults", json=rule) as response:
        assert response.status == 200, await response.text()
        result: dict[str, Any] = await response.json()
        return result


async def stats(http: aiohttp.ClientSession, sim: RunningSimulator) -> dict[str, Any]:
    async with http.get(f"{sim.root_url}/_sim/stats") as response:
        result: dict[str, Any] = await response.json()
        return result


async def complete(
    http: aiohttp.ClientSession, sim: RunningSimulator, body: dict[str, Any], key: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    headers = {"Idempotency-Key": key} if key else {}
    async with http.post(f"{sim.base_url}/chat/completions", json=body, headers=headers) as response:
        return response.status, dict(response.headers), await response.read()


async def test_repeated_idempotency_key_replays_the_first_answer_without_a_new_side_effect(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    body = chat_body("hello", schema=TRANSLATE_SCHEMA, name="mt_translate")

    first = await complete(http, sim, body, key="run-1:translate:1")
    second = await complete(http, sim, body, key="run-1:translate:1")

    assert first[0] == second[0] == 200
    assert first[2] == second[2]
    counters = await stats(http, sim)
    assert counters["calls"] == 2
    assert counters["side_effects"] == 1
    assert counters["duplicates"] == 1
    assert counters["by_key"] == {"run-1:translate:1": 2}
    assert counters["by_schema"] == {"mt_translate": 2}


async def test_reusing_a_key_for_a_different_request_is_422(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    await complete(http, sim, chat_body("hello"), key="k")

    status, _, _ = await complete(http, sim, chat_body("goodbye"), key="k")

    assert status == 422
    assert (await stats(http, sim))["side_effects"] == 1


async def test_status_fault_applies_the_given_number_of_times_and_is_not_a_side_effect(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    await add_fault(http, sim, {"match": "any", "status": 500, "times": 1})
    body = chat_body("hello")

    failed = await complete(http, sim, body, key="k1")
    retried = await complete(http, sim, body, key="k1")

    assert failed[0] == 500
    assert b'"code": 500' in failed[2]
    assert retried[0] == 200
    counters = await stats(http, sim)
    assert (counters["calls"], counters["faulted"], counters["side_effects"], counters["duplicates"]) == (
        2,
        1,
        1,
        0,
    )


async def test_rate_limit_fault_sends_retry_after(sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    await add_fault(http, sim, {"status": 429, "retry_after": 7, "times": 1})

    status, headers, _ = await complete(http, sim, chat_body("hello"))

    assert status == 429
    assert headers["Retry-After"] == "7"


async def test_fault_matching_one_schema_leaves_others_alone(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    await add_fault(http, sim, {"match": {"schema": "nlu_analyze"}, "status": 503})

    analyze = await complete(http, sim, chat_body("hi", schema=ANALYZE_SCHEMA, name="nlu_analyze"))
    translate = await complete(http, sim, chat_body("hi", schema=TRANSLATE_SCHEMA, name="mt_translate"))
    analyze_again = await complete(http, sim, chat_body("hi", schema=ANALYZE_SCHEMA, name="nlu_analyze"))

    assert (analyze[0], translate[0], analyze_again[0]) == (503, 200, 503)


async def test_fault_can_match_by_model(sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    await add_fault(http, sim, {"match": {"model": "deepseek/deepseek-r1"}, "status": 502})

    other = await complete(http, sim, chat_body("hi"))
    matched = await complete(http, sim, chat_body("hi", model="deepseek/deepseek-r1"))

    assert (other[0], matched[0]) == (200, 502)


async def test_malformed_fault_returns_a_200_that_is_not_json(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    await add_fault(http, sim, {"malformed": True, "times": 1})

    status, headers, raw = await complete(http, sim, chat_body("hi"))

    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw)


async def test_in_band_fault_streams_a_partial_answer_then_an_error_chunk(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    await add_fault(http, sim, {"in_band": True, "times": 1})

    status, _, raw = await complete(http, sim, chat_body("hi", stream=True))

    assert status == 200
    text = raw.decode()
    assert '"finish_reason": "error"' in text
    assert '"code": "server_error"' in text
    assert "[DONE]" not in text


async def test_delay_only_fault_slows_the_answer_but_still_executes_it(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    await add_fault(http, sim, {"delay_ms": 300, "times": 1})

    started = time.monotonic()
    status, _, _ = await complete(http, sim, chat_body("hi"), key="slow")
    elapsed = time.monotonic() - started

    assert status == 200
    assert elapsed >= 0.3
    counters = await stats(http, sim)
    assert (counters["side_effects"], counters["faulted"]) == (1, 0)


async def test_a_client_that_gives_up_on_a_slow_answer_still_leaves_it_cached(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    await add_fault(http, sim, {"delay_ms": 1000, "times": 1})
    body = chat_body("hi")

    with pytest.raises(asyncio.TimeoutError):
        async with asyncio.timeout(0.2):
            await complete(http, sim, body, key="gave-up")
    retried = await complete(http, sim, body, key="gave-up")

    assert retried[0] == 200
    counters = await stats(http, sim)
    assert (counters["side_effects"], counters["duplicates"]) == (1, 1)


@pytest.mark.parametrize(
    "rule",
    [
        {"status": 200},
        {"status": 500, "malformed": True},
        {"malformed": True, "in_band": True},
        {"times": 0, "status": 500},
        {"match": {"schema": "x", "colour": "red"}, "status": 500},
        {"match": "some"},
        {},
    ],
)
async def test_invalid_fault_rule_is_400(
    sim: RunningSimulator, http: aiohttp.ClientSession, rule: Any
) -> None:
    async with http.post(f"{sim.root_url}/_sim/faults", json=rule) as response:
        assert response.status == 400
    assert sim.state.faults == []


async def test_faults_can_be_listed_and_cleared(sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    await add_fault(http, sim, [{"status": 500}, {"status": 429, "retry_after": 1, "times": 2}])

    async with http.get(f"{sim.root_url}/_sim/faults") as response:
        listed = (await response.json())["faults"]
    async with http.delete(f"{sim.root_url}/_sim/faults") as response:
        cleared = (await response.json())["faults"]

    assert [(rule["status"], rule["remaining"]) for rule in listed] == [(500, None), (429, 2)]
    assert cleared == []


async def test_reset_forgets_counters_cache_and_faults(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    await add_fault(http, sim, {"status": 500, "match": {"idempotency_key": "never"}})
    await complete(http, sim, chat_body("hi"), key="k")

    async with http.post(f"{sim.root_url}/_sim/reset") as response:
        after = await response.json()
    replay = await complete(http, sim, chat_body("hi"), key="k")

    assert after["calls"] == 0
    assert after["by_key"] == {}
    assert sim.state.faults == []
    assert replay[0] == 200
    assert (await stats(http, sim))["side_effects"] == 1


async def test_default_latency_is_configurable(sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{sim.root_url}/_sim/config", json={"latency_ms": 200}) as response:
        assert (await response.json())["latency_ms"] == 200

    started = time.monotonic()
    await complete(http, sim, chat_body("hi"))

    assert time.monotonic() - started >= 0.2


async def test_usage_figures_can_be_set_for_a_test(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    usage = {"prompt_tokens": 700, "completion_tokens": 300, "cost": 0.25}
    async with http.post(f"{sim.root_url}/_sim/config", json={"usage": usage}) as response:
        assert (await response.json())["usage"] == usage

    status, _, raw = await complete(http, sim, chat_body("hi"))
    assert status == 200
    body = json.loads(raw)
    assert body["usage"]["prompt_tokens"] == 700
    assert body["usage"]["completion_tokens"] == 300
    assert body["usage"]["total_tokens"] == 1000
    assert body["usage"]["cost"] == 0.25

    async with http.post(f"{sim.root_url}/_sim/config", json={"clear_usage": True}) as response:
        assert (await response.json())["usage"] is None
    _, _, raw = await complete(http, sim, chat_body("hi again"))
    assert json.loads(raw)["usage"]["total_tokens"] < 1000


async def test_recorded_requests_show_headers_without_the_key(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    await complete(http, sim, chat_body("hi"), key="k-7")

    async with http.get(f"{sim.root_url}/_sim/requests") as response:
        (recorded,) = (await response.json())["requests"]

    assert recorded["headers"]["idempotency-key"] == "k-7"
    assert recorded["headers"]["authorization"] == "Bearer ***"
    assert recorded["body"]["messages"][1]["content"] == "hi"
    assert recorded["outcome"] == "executed"
