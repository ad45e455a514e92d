"""Gemini failures are classified into ProviderError kinds with the right retry facts (real HTTP)."""

from __future__ import annotations

import itertools
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from gemini_fake import API_KEY, FakeGemini, retry_info, running_fake_gemini
from omni_toolrunner.providers import ProviderError, ProviderErrorKind, ToolCall
from omni_toolrunner.providers.gemini import GeminiAdapter, retry_delay

TRANSLATE = {"text": "Good morning", "targetLanguage": "es"}
_keys = itertools.count(1)


@pytest.fixture
async def gemini() -> AsyncIterator[FakeGemini]:
    async with running_fake_gemini() as fake:
        yield fake


@pytest.fixture
def gemini_adapter(gemini: FakeGemini, http_client: httpx.AsyncClient) -> GeminiAdapter:
    return GeminiAdapter(api_key=API_KEY, base_url=gemini.base_url, client=http_client)


async def failure_of(
    adapter: GeminiAdapter,
    tool: str = "mt.translate",
    *,
    input: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    timeout_s: float = 30.0,
) -> ProviderError:
    default_input = TRANSLATE if tool == "mt.translate" else {"text": "Hola"}
    request = ToolCall(
        tool=tool,
        input=input or default_input,
        idempotency_key=f"run-gemini:step:{next(_keys)}",
        config=config or {},
        timeout_s=timeout_s,
    )
    with pytest.raises(ProviderError) as caught:
        await adapter.call(request)
    return caught.value


# --- HTTP errors -------------------------------------------------------------------------------------


async def test_key_google_does_not_know_is_auth_although_it_comes_as_a_400(
    gemini: FakeGemini, http_client: httpx.AsyncClient
) -> None:
    adapter = GeminiAdapter(api_key="AIza-revoked", base_url=gemini.base_url, client=http_client)

    error = await failure_of(adapter)

    assert (error.kind, error.status, error.retryable) == (ProviderErrorKind.AUTH, 400, False)
    assert "API key not valid" in error.message


@pytest.mark.parametrize("status", [401, 403])
async def test_unauthenticated_and_permission_denied_are_auth(
    gemini_adapter: GeminiAdapter, gemini: FakeGemini, status: int
) -> None:
    gemini.inject(status=status, message="The caller does not have permission")

    error = await failure_of(gemini_adapter)

    assert (error.kind, error.status, error.retryable) == (ProviderErrorKind.AUTH, status, False)
    assert error.message == "The caller does not have permission"


async def test_rate_limit_is_retryable_and_carries_the_retry_after_header(
    gemini_adapter: GeminiAdapter, gemini: FakeGemini
) -> None:
    gemini.inject(
        status=429, message="Resource has been exhausted (e.g. check quota).", headers={"Retry-After": "7"}
    )

    error = await failure_of(gemini_adapter)

    assert (error.kind, error.status, error.retryable) == (ProviderErrorKind.RATE_LIMITED, 429, True)
    assert error.retry_after_s == 7.0


async def test_rate_limit_without_a_header_takes_the_retry_info_delay(
    gemini_adapter: GeminiAdapter, gemini: FakeGemini
) -> None:
    gemini.inject(status=429, details=[{"@type": "type.googleapis.com/google.rpc.Help"}, retry_info("12.5s")])

    error = await failure_of(gemini_adapter)

    assert (error.kind, error.retry_after_s) == (ProviderErrorKind.RATE_LIMITED, 12.5)


async def test_rate_limit_with_no_hint_leaves_the_delay_to_the_engine(
    gemini_adapter: GeminiAdapter, gemini: FakeGemini
) -> None:
    gemini.inject(status=429)

    error = await failure_of(gemini_adapter, "tts.speak")

    assert (error.kind, error.retry_after_s) == (ProviderErrorKind.RATE_LIMITED, None)


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_errors_are_retryable(
    gemini_adapter: GeminiAdapter, gemini: FakeGemini, status: int
) -> None:
    gemini.inject(status=status, message="The model is overloaded. Please try again later.")

    error = await failure_of(gemini_adapter)

    assert (error.kind, error.status, error.retryable) == (ProviderErrorKind.SERVER, status, True)
    assert error.message == "The model is overloaded. Please try again later."


async def test_server_error_page_that_is_not_json_is_a_server_error_with_its_text(
    gemini_adapter: GeminiAdapter, gemini: FakeGemini
) -> None:
    gemini.inject(status=502, raw_body=b"<html>502 Bad Gateway</html>", content_type="text/html")

    error = await failure_of(gemini_adapter)

    assert (error.kind, error.status) == (ProviderErrorKind.SERVER, 502)
    assert "502 Bad Gateway" in error.message


async def test_request_gemini_refuses_is_a_bad_request(
    gemini_adapter: GeminiAdapter, gemini: FakeGemini
) -> None:
    gemini.inject(status=400, message="Request contains an invalid argument.")

    error = await failure_of(gemini_adapter)

    assert (error.kind, error.status, error.retryable) == (ProviderErrorKind.BAD_REQUEST, 400, False)


async def test_unknown_model_is_a_bad_request(gemini_adapter: GeminiAdapter) -> None:
    error = await failure_of(gemini_adapter, config={"model": "gemini-0.1-nonexistent"})

    assert (error.kind, error.status, error.retryable) == (ProviderErrorKind.BAD_REQUEST, 404, False)
    assert "gemini-0.1-nonexistent" in error.message


async def test_a_model_that_cannot_speak_is_a_bad_request(gemini_adapter: GeminiAdapter) -> None:
    error = await failure_of(gemini_adapter, "tts.speak", config={"model": "gemini-2.5-flash"})

    assert (error.kind, error.status) == (ProviderErrorKind.BAD_REQUEST, 400)
    assert "response modalities" in error.message


# --- time --------------------------------------------------------------------------------------------


async def test_slow_answer_is_a_retryable_timeout_within_the_call_budget(
    gemini_adapter: GeminiAdapter, gemini: FakeGemini
) -> None:
    gemini.inject(delay_s=2.0)

    started = time.monotonic()
    error = await failure_of(gemini_adapter, timeout_s=0.3)

    assert (error.kind, error.retryable) == (ProviderErrorKind.TIMEOUT, True)
    assert time.monotonic() - started < 1.5


async def test_slow_speech_is_a_timeout_too(gemini_adapter: GeminiAdapter, gemini: FakeGemini) -> None:
    gemini.inject(delay_s=2.0, model="gemini-2.5-flash-preview-tts")

    error = await failure_of(gemini_adapter, "tts.speak", timeout_s=0.3)

    assert error.kind is ProviderErrorKind.TIMEOUT


async def test_deadline_exceeded_at_google_is_a_retryable_server_error(
    gemini_adapter: GeminiAdapter, gemini: FakeGemini
) -> None:
    gemini.inject(status=504, message="Deadline expired before operation could complete.")

    error = await failure_of(gemini_adapter)

    assert (error.kind, error.status, error.retryable) == (ProviderErrorKind.SERVER, 504, True)


# --- malformed answers -------------------------------------------------------------------------------


async def test_body_that_is_not_json_is_a_malformed_response(
    gemini_adapter: GeminiAdapter, gemini: FakeGemini
) -> None:
    gemini.inject(raw_body=b'{"candidates": [', content_type="application/json")

    error = await failure_of(gemini_adapter)

    assert (error.kind, error.retryable) == (ProviderErrorKind.MALFORMED_RESPONSE, True)


@pytest.mark.parametrize(
    "body",
    [
        [{"candidates": []}],
        {"candidates": []},
        {"candidates": ["not an object"]},
        {"candidates": [{"content": {"parts": []}, "finishReason": "STOP"}]},
        {"usageMetadata": {"promptTokenCount": 3}},
    ],
)
async def test_answer_without_a_usable_candidate_is_a_malformed_response(
    gemini_adapter: GeminiAdapter, gemini: FakeGemini, body: Any
) -> None:
    gemini.inject(raw_body=json.dumps(body).encode())

    error = await failure_of(gemini_adapter)

    assert (error.kind, error.retryable) == (ProviderErrorKind.MALFORMED_RESPONSE, True)


async def test_text_that_is_not_json_is_a_malformed_response(
    gemini_adapter: GeminiAdapter, gemini: FakeGemini
) -> None:
    gemini.inject(text="Buenos días")

    error = await failure_of(gemini_adapter)

    assert error.kind is ProviderErrorKind.MALFORMED_RESPONSE
    assert "mt_translate" in error.message


async def test_json_that_breaks_the_schema_is_a_malformed_response(
    gemini_adapter: GeminiAdapter, gemini: FakeGemini
) -> None:
    gemini.inject(text=json.dumps({"translatedText": "Buenos días", "confidence": "high"}))

    error = await failure_of(gemini_adapter)

    assert error.kind is ProviderErrorKind.MALFORMED_RESPONSE
    assert "mt_translate" in error.message


async def test_answer_cut_off_by_max_output_tokens_is_a_malformed_response(
    gemini_adapter: GeminiAdapter,
) -> None:
    error = await failure_of(gemini_adapter, config={"maxTokens": 3})

    assert (error.kind, error.retryable) == (ProviderErrorKind.MALFORMED_RESPONSE, True)
    assert "maxOutputTokens" in error.message


async def test_cut_off_answer_of_a_thinking_model_says_how_much_went_to_thinking(
    gemini_adapter: GeminiAdapter,
) -> None:
    error = await failure_of(gemini_adapter, config={"model": "gemini-2.5-pro", "maxTokens": 125})

    assert error.kind is ProviderErrorKind.MALFORMED_RESPONSE
    assert "120 of them thinking" in error.message


async def test_audio_that_is_not_base64_is_a_malformed_response(
    gemini_adapter: GeminiAdapter, gemini: FakeGemini
) -> None:
    gemini.inject(audio_data="not base64 at all!")

    error = await failure_of(gemini_adapter, "tts.speak")

    assert error.kind is ProviderErrorKind.MALFORMED_RESPONSE


async def test_speech_answer_without_audio_is_a_malformed_response(
    gemini_adapter: GeminiAdapter, gemini: FakeGemini
) -> None:
    gemini.inject(text="I cannot read this aloud.")

    error = await failure_of(gemini_adapter, "tts.speak")

    assert (error.kind, error.message) == (
        ProviderErrorKind.MALFORMED_RESPONSE,
        "the answer carried no audio",
    )


async def test_audio_of_an_unexpected_type_is_a_malformed_response(
    gemini_adapter: GeminiAdapter, gemini: FakeGemini
) -> None:
    part = {"inlineData": {"mimeType": "audio/mpeg", "data": "SUQz"}}
    gemini.inject(body={"candidates": [{"content": {"parts": [part]}, "finishReason": "STOP"}]})

    error = await failure_of(gemini_adapter, "tts.speak")

    assert error.kind is ProviderErrorKind.MALFORMED_RESPONSE
    assert "audio/mpeg" in error.message


async def test_model_stopping_early_for_another_reason_is_a_malformed_response(
    gemini_adapter: GeminiAdapter, gemini: FakeGemini
) -> None:
    gemini.inject(finish_reason="OTHER", model="gemini-2.5-flash-preview-tts")

    error = await failure_of(gemini_adapter, "tts.speak")

    assert (error.kind, error.retryable) == (ProviderErrorKind.MALFORMED_RESPONSE, True)
    assert "OTHER" in error.message


# --- content policy ----------------------------------------------------------------------------------


async def test_blocked_prompt_is_a_bad_request(gemini_adapter: GeminiAdapter, gemini: FakeGemini) -> None:
    gemini.inject(block_reason="PROHIBITED_CONTENT")

    error = await failure_of(gemini_adapter)

    assert (error.kind, error.retryable) == (ProviderErrorKind.BAD_REQUEST, False)
    assert "PROHIBITED_CONTENT" in error.message


async def test_answer_stopped_for_safety_is_a_bad_request(
    gemini_adapter: GeminiAdapter, gemini: FakeGemini
) -> None:
    gemini.inject(finish_reason="SAFETY")

    error = await failure_of(gemini_adapter)

    assert (error.kind, error.retryable) == (ProviderErrorKind.BAD_REQUEST, False)
    assert "SAFETY" in error.message


# --- refused before calling --------------------------------------------------------------------------


@pytest.mark.parametrize("api_key", [None, ""])
async def test_missing_key_is_unavailable_without_calling_gemini(
    gemini: FakeGemini, http_client: httpx.AsyncClient, api_key: str | None
) -> None:
    adapter = GeminiAdapter(api_key=api_key, base_url=gemini.base_url, client=http_client)

    error = await failure_of(adapter)

    assert (error.kind, error.retryable) == (ProviderErrorKind.UNAVAILABLE, False)
    assert gemini.calls == 0


async def test_unknown_tool_is_refused_without_calling_gemini(
    gemini_adapter: GeminiAdapter, gemini: FakeGemini
) -> None:
    error = await failure_of(gemini_adapter, "image.generate")

    assert (error.kind, error.retryable) == (ProviderErrorKind.UNKNOWN_TOOL, False)
    assert gemini.calls == 0


@pytest.mark.parametrize(
    ("tool", "input_", "config"),
    [
        ("stt.transcribe", {"audioData": "base64encoded...", "language": "en"}, {}),
        ("stt.transcribe", {"language": "en"}, {}),
        ("nlu.analyze", {"text": ""}, {}),
        ("mt.translate", {"text": "hi"}, {}),
        ("mt.translate", TRANSLATE, {"temperature": 5}),
        ("tts.speak", {"text": "hi"}, {"audioFormat": "mp3"}),
        ("tts.speak", {"text": "hi"}, {"audioFormat": "aiff"}),
    ],
)
async def test_invalid_input_or_config_is_a_bad_request_without_calling_gemini(
    gemini_adapter: GeminiAdapter,
    gemini: FakeGemini,
    tool: str,
    input_: dict[str, object],
    config: dict[str, object],
) -> None:
    error = await failure_of(gemini_adapter, tool, input=input_, config=config)

    assert (error.kind, error.retryable) == (ProviderErrorKind.BAD_REQUEST, False)
    assert gemini.calls == 0


async def test_unreachable_gemini_is_unavailable_but_retryable(http_client: httpx.AsyncClient) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    adapter = GeminiAdapter(api_key="k", base_url=f"http://127.0.0.1:{closed_port}", client=http_client)

    error = await failure_of(adapter)

    assert (error.kind, error.retryable) == (ProviderErrorKind.UNAVAILABLE, True)


def test_retry_delay_reads_google_durations() -> None:
    assert retry_delay([retry_info("7s")]) == 7.0
    assert retry_delay([retry_info("0.250s")]) == 0.25
    assert retry_delay([{"@type": "type.googleapis.com/google.rpc.QuotaFailure"}, retry_info("3s")]) == 3.0
    assert retry_delay([retry_info("soon")]) is None
    assert retry_delay([]) is None
