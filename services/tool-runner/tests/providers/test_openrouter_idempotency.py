"""The idempotency key reaches the provider, so redelivered work is not done twice."""

from __future__ import annotations

import pytest
from omni_simulator import RunningSimulator
from omni_toolrunner.providers import ProviderError, ProviderErrorKind
from omni_toolrunner.providers.openai_compatible import OpenAICompatibleAdapter
from openrouter_fixtures import add_fault, call, stats

TRANSLATE = {"text": "Good morning", "targetLanguage": "es"}


async def test_redelivered_call_with_the_same_key_is_one_side_effect(
    adapter: OpenAICompatibleAdapter, simulator: RunningSimulator
) -> None:
    request = call("mt.translate", TRANSLATE, key="run-42:translate:attempt-1")

    first = await adapter.call(request)
    second = await adapter.call(request)

    assert first == second
    counters = await stats(simulator)
    assert counters["calls"] == 2
    assert counters["side_effects"] == 1
    assert counters["duplicates"] == 1
    assert counters["by_key"] == {"run-42:translate:attempt-1": 2}


async def test_distinct_keys_are_distinct_side_effects(
    adapter: OpenAICompatibleAdapter, simulator: RunningSimulator
) -> None:
    await adapter.call(call("mt.translate", TRANSLATE, key="run-42:translate:attempt-1"))
    await adapter.call(call("mt.translate", TRANSLATE, key="run-42:translate:attempt-2"))

    assert (await stats(simulator))["side_effects"] == 2


async def test_redelivery_after_a_client_timeout_gets_the_answer_already_paid_for(
    adapter: OpenAICompatibleAdapter, simulator: RunningSimulator
) -> None:
    await add_fault(simulator, {"delay_ms": 1500, "times": 1})
    request = call("nlu.analyze", {"text": "Hello Maria"}, key="run-7:nlu:attempt-1", timeout_s=0.3)

    with pytest.raises(ProviderError) as caught:
        await adapter.call(request)
    outcome = await adapter.call(call("nlu.analyze", {"text": "Hello Maria"}, key="run-7:nlu:attempt-1"))

    assert caught.value.kind is ProviderErrorKind.TIMEOUT
    assert outcome.output["entities"] == [{"text": "Maria", "type": "proper_noun"}]
    counters = await stats(simulator)
    assert (counters["side_effects"], counters["duplicates"]) == (1, 1)


async def test_retry_after_a_server_error_executes_once(
    adapter: OpenAICompatibleAdapter, simulator: RunningSimulator
) -> None:
    await add_fault(simulator, {"status": 503, "times": 1})
    request = call("tts.speak", {"text": "Hola"}, key="run-9:tts:attempt-1")

    with pytest.raises(ProviderError):
        await adapter.call(request)
    outcome = await adapter.call(request)

    assert outcome.output["format"] == "wav"
    counters = await stats(simulator)
    assert (counters["calls"], counters["faulted"], counters["side_effects"]) == (2, 1, 1)
