"""Failures are classified into ProviderError kinds with the right retry facts."""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from omni_simulator import RunningSimulator
from omni_toolrunner.providers import ProviderError, ProviderErrorKind
from omni_toolrunner.providers.http_errors import retry_after
from omni_toolrunner.providers.openai_compatible import OPENROUTER, OpenAICompatibleAdapter
from openrouter_fixtures import add_fault, call, learner_wav_base64, stats

TRANSLATE = {"text": "Good morning", "targetLanguage": "es"}


async def failure_of(
    adapter: OpenAICompatibleAdapter,
    tool: str = "mt.translate",
    *,
    input: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    timeout_s: float = 30.0,
) -> ProviderError:
    default_input = TRANSLATE if tool == "mt.translate" else {"text": "Hola"}
    request = call(tool, input or default_input, config=config or {}, timeout_s=timeout_s)
    with pytest.raises(ProviderError) as caught:
        await adapter.call(request)
    return caught.value


async def test_rejected_key_is_auth_and_not_retryable(
    adapter: OpenAICompatibleAdapter, simulator: RunningSimulator
) -> None:
    simulator.state.expected_key = "a-different-key"

    error = await failure_of(adapter)

    assert (error.kind, error.status, error.retryable) == (ProviderErrorKind.AUTH, 401, False)


async def test_forbidden_is_auth(adapter: OpenAICompatibleAdapter, simulator: RunningSimulator) -> None:
    await add_fault(simulator, {"status": 403, "message": "flagged by moderation"})

    error = await failure_of(adapter)

    assert (error.kind, error.status, error.retryable) == (ProviderErrorKind.AUTH, 403, False)
    assert "flagged by moderation" in error.message


async def test_rate_limit_is_retryable_and_carriesretry_after(
    adapter: OpenAICompatibleAdapter, simulator: RunningSimulator
) -> None:
    await add_fault(simulator, {"status": 429, "retry_after": 7})

    error = await failure_of(adapter)

    assert (error.kind, error.status, error.retryable) == (ProviderErrorKind.RATE_LIMITED, 429, True)
    assert error.retry_after_s == 7.0


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_errors_are_retryable(
    adapter: OpenAICompatibleAdapter, simulator: RunningSimulator, status: int
) -> None:
    await add_fault(simulator, {"status": status})

    error = await failure_of(adapter)

    assert (error.kind, error.status, error.retryable) == (ProviderErrorKind.SERVER, status, True)


async def test_request_timeout_status_is_a_retryable_timeout(
    adapter: OpenAICompatibleAdapter, simulator: RunningSimulator
) -> None:
    await add_fault(simulator, {"status": 408})

    error = await failure_of(adapter)

    assert (error.kind, error.retryable) == (ProviderErrorKind.TIMEOUT, True)


@pytest.mark.parametrize("status", [400, 402, 404, 422])
async def test_other_client_errors_are_bad_requests(
    adapter: OpenAICompatibleAdapter, simulator: RunningSimulator, status: int
) -> None:
    await add_fault(simulator, {"status": status})

    error = await failure_of(adapter)

    assert (error.kind, error.status, error.retryable) == (ProviderErrorKind.BAD_REQUEST, status, False)


async def test_error_reported_inside_a_200_body_is_classified_by_its_code(
    adapter: OpenAICompatibleAdapter, simulator: RunningSimulator
) -> None:
    await add_fault(simulator, {"in_band": True, "status": 502, "message": "upstream exploded"})

    error = await failure_of(adapter)

    assert (error.kind, error.status, error.retryable) == (ProviderErrorKind.SERVER, 502, True)
    assert error.message == "upstream exploded"


async def test_error_in_the_middle_of_an_audio_stream_is_a_retryable_server_error(
    adapter: OpenAICompatibleAdapter, simulator: RunningSimulator
) -> None:
    await add_fault(simulator, {"in_band": True, "match": {"model": "openai/gpt-audio-mini"}})

    error = await failure_of(adapter, "tts.speak")

    assert (error.kind, error.retryable) == (ProviderErrorKind.SERVER, True)


async def test_slow_answer_is_a_retryable_timeout_within_the_call_budget(
    adapter: OpenAICompatibleAdapter, simulator: RunningSimulator
) -> None:
    await add_fault(simulator, {"delay_ms": 2000})

    started = time.monotonic()
    error = await failure_of(adapter, timeout_s=0.3)

    assert (error.kind, error.retryable) == (ProviderErrorKind.TIMEOUT, True)
    assert time.monotonic() - started < 2


async def test_body_that_is_not_json_is_a_malformed_response(
    adapter: OpenAICompatibleAdapter, simulator: RunningSimulator
) -> None:
    await add_fault(simulator, {"malformed": True})

    error = await failure_of(adapter)

    assert (error.kind, error.retryable) == (ProviderErrorKind.MALFORMED_RESPONSE, True)


async def test_content_that_breaks_the_schema_is_a_malformed_response(
    adapter: OpenAICompatibleAdapter, simulator: RunningSimulator
) -> None:
    await add_fault(simulator, {"malformed_content": True})

    error = await failure_of(adapter)

    assert error.kind is ProviderErrorKind.MALFORMED_RESPONSE
    assert "mt_translate" in error.message


async def test_audio_that_is_not_base64_is_a_malformed_response(
    adapter: OpenAICompatibleAdapter, simulator: RunningSimulator
) -> None:
    await add_fault(simulator, {"malformed_content": True})

    error = await failure_of(adapter, "tts.speak")

    assert error.kind is ProviderErrorKind.MALFORMED_RESPONSE


async def test_answer_cut_off_by_max_tokens_is_a_malformed_response(adapter: OpenAICompatibleAdapter) -> None:
    error = await failure_of(adapter, config={"maxTokens": 3})

    assert error.kind is ProviderErrorKind.MALFORMED_RESPONSE
    assert "max_tokens" in error.message


@pytest.mark.parametrize("api_key", [None, ""])
async def test_missing_key_is_unavailable_without_calling_the_provider(
    simulator: RunningSimulator, http_client: httpx.AsyncClient, api_key: str | None
) -> None:
    adapter = OpenAICompatibleAdapter(
        OPENROUTER, api_key=api_key, base_url=simulator.base_url, client=http_client
    )

    error = await failure_of(adapter)

    assert (error.kind, error.retryable) == (ProviderErrorKind.UNAVAILABLE, False)
    assert (await stats(simulator))["calls"] == 0


async def test_unknown_tool_is_refused_without_calling_the_provider(
    adapter: OpenAICompatibleAdapter, simulator: RunningSimulator
) -> None:
    error = await failure_of(adapter, "image.generate")

    assert (error.kind, error.retryable) == (ProviderErrorKind.UNKNOWN_TOOL, False)
    assert (await stats(simulator))["calls"] == 0


@pytest.mark.parametrize(
    ("tool", "input_", "config"),
    [
        ("stt.transcribe", {"audioData": "base64encoded...", "language": "en"}, {}),
        ("stt.transcribe", {"language": "en"}, {}),
        ("nlu.analyze", {"text": ""}, {}),
        ("mt.translate", {"text": "hi"}, {}),
        ("mt.translate", TRANSLATE, {"temperature": 5}),
        ("tts.speak", {"text": "hi"}, {"audioFormat": "aiff"}),
    ],
)
async def test_invalid_input_or_config_is_a_bad_request_without_calling_the_provider(
    adapter: OpenAICompatibleAdapter,
    simulator: RunningSimulator,
    tool: str,
    input_: dict[str, object],
    config: dict[str, object],
) -> None:
    error = await failure_of(adapter, tool, input=input_, config=config)

    assert (error.kind, error.retryable) == (ProviderErrorKind.BAD_REQUEST, False)
    assert (await stats(simulator))["calls"] == 0


async def test_unreachable_provider_is_unavailable_but_retryable(http_client: httpx.AsyncClient) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    adapter = OpenAICompatibleAdapter(
        OPENROUTER, api_key="k", base_url=f"http://127.0.0.1:{closed_port}/api/v1", client=http_client
    )

    error = await failure_of(adapter, "stt.transcribe", input={"audioData": learner_wav_base64()})

    assert (error.kind, error.retryable) == (ProviderErrorKind.UNAVAILABLE, True)


def test_retry_after_reads_seconds_and_http_dates() -> None:
    in_a_minute = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)

    assert retry_after("12") == 12.0
    assert retry_after("0.5") == 0.5
    assert 55 <= (retry_after(in_a_minute) or 0) <= 60
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert retry_after("soon") is None
    assert retry_after(None) is None
