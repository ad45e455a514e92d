"""Each OpenAI-compatible profile against the provider simulator over HTTP, speaking its provider's
dialect (``openai_dialects``)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from omni_simulator import RunningSimulator
from omni_toolrunner.providers import ProviderAdapter, ProviderError, ProviderErrorKind
from omni_toolrunner.providers.openai_compatible import (
    DEEPSEEK,
    OPENROUTER,
    PROFILES,
    ModelPrice,
    OpenAICompatibleAdapter,
    ProviderProfile,
    StructuredOutput,
    adapter_for,
)
from openai_dialects import dialect_simulator
from openrouter_fixtures import API_KEY, SPOKEN, add_fault, call, learner_wav_base64, recorded_requests, stats

FAMILY = ("deepseek", "qwen", "grok", "minimax")
TEXT_TOOLS = {"nlu.analyze", "mt.translate", "feedback.generate"}
TRANSLATE = {"text": "Good morning", "sourceLanguage": "en", "targetLanguage": "es"}


@pytest.fixture(params=FAMILY)
def profile(request: pytest.FixtureRequest) -> ProviderProfile:
    return PROFILES[request.param]


@pytest.fixture
async def sim(profile: ProviderProfile) -> AsyncIterator[RunningSimulator]:
    async with dialect_simulator(profile.name) as running:
        yield running


@pytest.fixture
def compat(
    profile: ProviderProfile, sim: RunningSimulator, http_client: httpx.AsyncClient
) -> OpenAICompatibleAdapter:
    return adapter_for(profile.name, API_KEY, sim.base_url, http_client)


async def failure_of(
    adapter: OpenAICompatibleAdapter, tool: str = "mt.translate", **kwargs: Any
) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await adapter.call(call(tool, TRANSLATE if tool == "mt.translate" else {"text": "Hola"}, **kwargs))
    return caught.value


# --- profiles ----------------------------------------------------------------------------------------


def test_profiles_carry_each_providers_documented_endpoint_key_and_tools() -> None:
    facts = {
        name: (p.base_url, p.env.api_key, p.tools, p.structured_output, p.idempotency_key)
        for name, p in PROFILES.items()
    }
    text_only = frozenset(TEXT_TOOLS)
    assert facts == {
        "openrouter": (
            "https://openrouter.ai/api/v1",
            "OPENROUTER_API_KEY",
            text_only | {"stt.transcribe", "tts.speak"},
            StructuredOutput.JSON_SCHEMA,
            True,
        ),
        "deepseek": (
            "https://api.deepseek.com/v1",
            "DEEPSEEK_API_KEY",
            text_only,
            StructuredOutput.JSON_OBJECT,
            False,
        ),
        "qwen": (
            "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
            "QWEN_MAX_API_KEY",
            text_only,
            StructuredOutput.JSON_OBJECT,
            False,
        ),
        "grok": ("https://api.x.ai/v1", "GROK_API_KEY", text_only, StructuredOutput.JSON_SCHEMA, False),
        "minimax": (
            "https://api.minimax.io/v1",
            "MINIMAX_API_KEY",
            text_only,
            StructuredOutput.PROMPT,
            False,
        ),
    }
    assert all(p.docs for p in PROFILES.values())


def test_openrouter_is_the_family_adapter_with_the_openrouter_profile() -> None:
    assert adapter_for("openrouter", "k").profile is OPENROUTER


def test_adapter_for_an_unknown_profile_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="deepseek"):
        adapter_for("mistral", "k")


def test_adapter_announces_its_provider_and_only_the_tools_it_can_serve(
    compat: OpenAICompatibleAdapter, profile: ProviderProfile
) -> None:
    assert isinstance(compat, ProviderAdapter)
    assert compat.provider == profile.name
    assert compat.tools == TEXT_TOOLS


# --- served tools ------------------------------------------------------------------------------------


async def test_nlu_analyze_answers_through_each_profile(
    compat: OpenAICompatibleAdapter, profile: ProviderProfile, sim: RunningSimulator
) -> None:
    request = call("nlu.analyze", {"text": SPOKEN, "language": "en"})

    outcome = await compat.call(request)

    assert outcome.output["intent"] == "statement"
    assert outcome.output["grammar"]["issues"][0]["correction"] == "I go"
    assert outcome.model == profile.default_model
    (sent,) = await recorded_requests(sim)
    assert sent["headers"]["authorization"] == "Bearer ***"
    # Only OpenRouter documents Idempotency-Key and app attribution.
    assert not {"idempotency-key", "x-title", "http-referer"} & set(sent["headers"])
    assert "provider" not in sent["body"]


async def test_mt_translate_answers_through_each_profile(compat: OpenAICompatibleAdapter) -> None:
    outcome = await compat.call(call("mt.translate", TRANSLATE))

    assert outcome.output == {"translatedText": "[es] Good morning", "confidence": 0.9}


async def test_feedback_generate_answers_through_each_profile(compat: OpenAICompatibleAdapter) -> None:
    outcome = await compat.call(
        call(
            "feedback.generate",
            {
                "text": SPOKEN,
                "translation": {"translatedText": "Fui al mercado ayer."},
                "targetLanguage": "es",
            },
        )
    )

    assert set(outcome.output) == {"feedback", "score", "suggestions"}
    assert any("I go" in suggestion for suggestion in outcome.output["suggestions"])


@pytest.mark.parametrize(
    ("tool", "input_"),
    [("stt.transcribe", {"audioData": learner_wav_base64()}), ("tts.speak", {"text": "Hola"})],
)
async def test_audio_tool_the_profile_cannot_serve_is_unknown_without_calling_it(
    compat: OpenAICompatibleAdapter, sim: RunningSimulator, tool: str, input_: dict[str, Any]
) -> None:
    with pytest.raises(ProviderError) as caught:
        await compat.call(call(tool, input_))

    assert (caught.value.kind, caught.value.retryable) == (ProviderErrorKind.UNKNOWN_TOOL, False)
    assert (await stats(sim))["calls"] == 0


# --- structured output -------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["deepseek"], indirect=True)
async def test_deepseek_asks_for_a_json_object_and_puts_the_schema_in_the_prompt(
    compat: OpenAICompatibleAdapter, sim: RunningSimulator
) -> None:
    outcome = await compat.call(call("mt.translate", TRANSLATE))

    assert outcome.output["translatedText"] == "[es] Good morning"
    (sent,) = await recorded_requests(sim)
    assert sent["body"]["response_format"] == {"type": "json_object"}
    system = sent["body"]["messages"][0]["content"]
    assert "JSON" in system  # DeepSeek's JSON Output refuses prompts that do not say so
    assert '"translatedText"' in system
    assert "mt_translate" in system


@pytest.mark.parametrize("profile", ["qwen"], indirect=True)
async def test_qwen_gets_a_strict_schema_on_qwen_plus_and_falls_back_to_json_object_elsewhere(
    compat: OpenAICompatibleAdapter, sim: RunningSimulator
) -> None:
    strict = await compat.call(call("mt.translate", TRANSLATE))
    fallback = await compat.call(call("mt.translate", TRANSLATE, config={"model": "qwen-turbo"}))

    assert strict.output == fallback.output == {"translatedText": "[es] Good morning", "confidence": 0.9}
    first, second = await recorded_requests(sim)
    assert first["body"]["response_format"]["type"] == "json_schema"
    assert first["body"]["response_format"]["json_schema"]["strict"] is True
    assert first["body"]["messages"][0]["content"].count("JSON Schema") == 0
    assert second["body"]["model"] == "qwen-turbo"
    assert second["body"]["response_format"] == {"type": "json_object"}
    assert "mt_translate" in second["body"]["messages"][0]["content"]


@pytest.mark.parametrize("profile", ["grok"], indirect=True)
async def test_grok_gets_the_strict_schema(compat: OpenAICompatibleAdapter, sim: RunningSimulator) -> None:
    await compat.call(call("nlu.analyze", {"text": "Hello Maria"}))

    (sent,) = await recorded_requests(sim)
    assert sent["body"]["response_format"]["json_schema"]["name"] == "nlu_analyze"
    assert sent["body"]["response_format"]["json_schema"]["strict"] is True


@pytest.mark.parametrize("profile", ["minimax"], indirect=True)
async def test_minimax_sends_no_response_format_and_reads_json_out_of_thinking_and_fences(
    compat: OpenAICompatibleAdapter, sim: RunningSimulator
) -> None:
    outcome = await compat.call(call("nlu.analyze", {"text": "Hello Maria"}, config={"maxTokens": 1500}))

    assert outcome.output["entities"] == [{"text": "Maria", "type": "proper_noun"}]
    (sent,) = await recorded_requests(sim)
    body = sent["body"]
    assert "response_format" not in body
    assert "nlu_analyze" in body["messages"][0]["content"]
    assert body["max_completion_tokens"] == 1500
    assert "max_tokens" not in body
    assert body["temperature"] == 0.01  # the tool asks for 0, which MiniMax rejects
    assert body["reasoning_split"] is True


@pytest.mark.parametrize("profile", ["deepseek"], indirect=True)
async def test_workflow_model_names_are_mapped_to_the_providers_own(
    compat: OpenAICompatibleAdapter, sim: RunningSimulator
) -> None:
    outcome = await compat.call(call("mt.translate", TRANSLATE, config={"model": "deepseek-r1"}))

    assert outcome.model == "deepseek-reasoner"
    assert compat.model_for("nlu.analyze") == DEEPSEEK.default_model


# --- usage and cost ----------------------------------------------------------------------------------


async def _set_usage(sim: RunningSimulator, usage: dict[str, Any]) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{sim.root_url}/_sim/config", json={"usage": usage})
    response.raise_for_status()


async def test_usage_and_cost_as_each_provider_reports_or_prices_them(
    compat: OpenAICompatibleAdapter, profile: ProviderProfile, sim: RunningSimulator
) -> None:
    await _set_usage(sim, {"prompt_tokens": 1_000_000, "completion_tokens": 2_000_000, "cost": 9.5})

    outcome = await compat.call(call("mt.translate", TRANSLATE))

    assert outcome.usage is not None
    assert (outcome.usage.input_tokens, outcome.usage.output_tokens, outcome.usage.total_tokens) == (
        1_000_000,
        2_000_000,
        3_000_000,
    )
    expected = {
        "deepseek": 0.27 + 2 * 1.10,  # published price per million tokens, cache misses
        "qwen": 0.4 + 2 * 1.2,
        "grok": 9.5,  # xAI reports what it billed, in ticks
        "minimax": 0.3 + 2 * 1.2,
    }[profile.name]
    assert outcome.usage.cost == pytest.approx(expected)


@pytest.mark.parametrize("profile", ["deepseek"], indirect=True)
async def test_a_model_without_a_published_price_has_no_cost(
    compat: OpenAICompatibleAdapter, sim: RunningSimulator
) -> None:
    outcome = await compat.call(call("mt.translate", TRANSLATE, config={"model": "deepseek-v9-preview"}))

    assert outcome.usage is not None
    assert outcome.usage.input_tokens > 0
    assert outcome.usage.cost is None


def test_cached_prompt_tokens_are_priced_at_the_cache_rate() -> None:
    price = ModelPrice(input_per_mtok=0.27, output_per_mtok=1.10, cached_input_per_mtok=0.07)

    assert price.cost(1_000_000, 0, cached_input_tokens=250_000) == pytest.approx(0.75 * 0.27 + 0.25 * 0.07)
    assert ModelPrice(0.4, 1.2).cost(1_000_000, 0, cached_input_tokens=500_000) == pytest.approx(0.4)
    assert DEEPSEEK.price_of("deepseek-chat-2026-01") is DEEPSEEK.prices["deepseek-chat"]


# --- failures ----------------------------------------------------------------------------------------


async def test_rejected_key_is_auth(compat: OpenAICompatibleAdapter, sim: RunningSimulator) -> None:
    sim.state.expected_key = "a-different-key"

    error = await failure_of(compat)

    assert (error.kind, error.status, error.retryable) == (ProviderErrorKind.AUTH, 401, False)


async def test_rate_limit_carries_retry_after(compat: OpenAICompatibleAdapter, sim: RunningSimulator) -> None:
    await add_fault(sim, {"status": 429, "retry_after": 7})

    error = await failure_of(compat)

    assert (error.kind, error.status, error.retryable) == (ProviderErrorKind.RATE_LIMITED, 429, True)
    assert error.retry_after_s == 7.0


async def test_server_error_is_retryable(compat: OpenAICompatibleAdapter, sim: RunningSimulator) -> None:
    await add_fault(sim, {"status": 500, "message": "upstream fell over"})

    error = await failure_of(compat)

    assert (error.kind, error.status, error.retryable) == (ProviderErrorKind.SERVER, 500, True)
    assert error.message == "upstream fell over"


async def test_slow_answer_is_a_timeout_within_the_call_budget(
    compat: OpenAICompatibleAdapter, sim: RunningSimulator
) -> None:
    await add_fault(sim, {"delay_ms": 2000})

    started = time.monotonic()
    error = await failure_of(compat, timeout_s=0.3)

    assert (error.kind, error.retryable) == (ProviderErrorKind.TIMEOUT, True)
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("fault", [{"malformed": True}, {"malformed_content": True}])
async def test_malformed_answers_are_malformed_responses(
    compat: OpenAICompatibleAdapter, sim: RunningSimulator, fault: dict[str, Any]
) -> None:
    await add_fault(sim, fault)

    error = await failure_of(compat)

    assert (error.kind, error.retryable) == (ProviderErrorKind.MALFORMED_RESPONSE, True)


async def test_missing_key_is_unavailable_and_names_the_variable(
    profile: ProviderProfile, sim: RunningSimulator, http_client: httpx.AsyncClient
) -> None:
    adapter = adapter_for(profile.name, None, sim.base_url, http_client)

    error = await failure_of(adapter)

    assert (error.kind, error.retryable) == (ProviderErrorKind.UNAVAILABLE, False)
    assert str(profile.env.api_key) in error.message
    assert (await stats(sim))["calls"] == 0
