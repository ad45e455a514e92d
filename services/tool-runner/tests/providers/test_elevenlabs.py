"""The ElevenLabs adapter against a fake of ElevenLabs' API, over real HTTP."""

from __future__ import annotations

import base64
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from elevenlabs_fake import API_KEY, MP3_BYTES, ElevenLabsFake
from http_fake import Fault, serving
from omni_toolrunner.providers import ProviderError, ProviderErrorKind, ToolCall
from omni_toolrunner.providers.elevenlabs import DEFAULT_VOICE_ID, ElevenLabsAdapter

SPEAK = {"text": "¡Muy bien! Tu frase es correcta.", "language": "es", "voice": "coach"}
ANNA = "AZnzlk1XvdvUeBnXmlld"


@pytest.fixture
async def fake() -> AsyncIterator[ElevenLabsFake]:
    fake = ElevenLabsFake(API_KEY)
    async with serving(fake):
        yield fake


@pytest.fixture
def adapter(fake: ElevenLabsFake, http_client: httpx.AsyncClient) -> ElevenLabsAdapter:
    return ElevenLabsAdapter(API_KEY, fake.base_url, http_client, voices={"Anna": ANNA})


def speak(input: dict[str, Any] | None = None, **kwargs: Any) -> ToolCall:
    return ToolCall(
        tool="tts.speak",
        input=SPEAK if input is None else input,
        idempotency_key="run-1:text_to_speech:1",
        **kwargs,
    )


async def failure_of(adapter: ElevenLabsAdapter, request: ToolCall | None = None) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await adapter.call(request or speak())
    return caught.value


async def test_speaks_mp3_with_the_coach_voice_and_reports_billed_characters(
    adapter: ElevenLabsAdapter, fake: ElevenLabsFake
) -> None:
    outcome = await adapter.call(speak())

    assert outcome.output == {
        "audioData": base64.b64encode(MP3_BYTES).decode(),
        "format": "mp3",
        "text": SPEAK["text"],
    }
    [sent] = fake.requests
    assert sent.path == f"/v1/text-to-speech/{DEFAULT_VOICE_ID}"
    assert sent.query == {"output_format": "mp3_44100_128"}
    assert sent.headers["xi-api-key"] == API_KEY
    assert sent.json == {"text": SPEAK["text"], "model_id": "eleven_flash_v2_5", "language_code": "es"}
    # The fake bills flash models half a credit a character, as ElevenLabs does: the header wins.
    billed = len(SPEAK["text"]) // 2
    assert outcome.usage is not None
    assert (outcome.usage.input_tokens, outcome.usage.total_tokens, outcome.usage.cost) == (
        billed,
        billed,
        None,
    )
    assert outcome.model == "eleven_flash_v2_5"
    assert outcome.response_id
    assert len(outcome.response_id) == 32


@pytest.mark.parametrize(
    ("voice", "voice_id"),
    [
        ("Coach", DEFAULT_VOICE_ID),
        ("anna", ANNA),
        ("pNInz6obpgDQGcFmaJgB", "pNInz6obpgDQGcFmaJgB"),
        (None, DEFAULT_VOICE_ID),
    ],
)
async def test_voice_names_map_through_the_table_and_voice_ids_pass_through(
    adapter: ElevenLabsAdapter, fake: ElevenLabsFake, voice: str | None, voice_id: str
) -> None:
    await adapter.call(speak({"text": "Hello", "voice": voice}))

    assert fake.requests[0].path == f"/v1/text-to-speech/{voice_id}"


async def test_an_unknown_voice_name_is_a_bad_request_naming_the_field(
    adapter: ElevenLabsAdapter, fake: ElevenLabsFake
) -> None:
    error = await failure_of(adapter, speak({"text": "Hello", "voice": "pirate"}))

    assert (error.kind, error.retryable) == (ProviderErrorKind.BAD_REQUEST, False)
    assert "$.voice" in error.message
    assert "pirate" in error.message
    assert fake.requests == []


async def test_config_picks_model_format_and_voice_settings(
    adapter: ElevenLabsAdapter, fake: ElevenLabsFake
) -> None:
    config = {
        "model": "eleven_multilingual_v2",
        "outputFormat": "pcm_24000",
        "voiceSettings": {"stability": 0.4, "similarityBoost": 0.8, "useSpeakerBoost": True},
    }

    outcome = await adapter.call(speak(config=config))

    # Multilingual v2 rejects language_code, so it is not sent; pcm comes back wrapped as WAV.
    assert fake.requests[0].json == {
        "text": SPEAK["text"],
        "model_id": "eleven_multilingual_v2",
        "voice_settings": {"stability": 0.4, "similarity_boost": 0.8, "use_speaker_boost": True},
    }
    assert fake.requests[0].query == {"output_format": "pcm_24000"}
    audio = base64.b64decode(outcome.output["audioData"])
    assert outcome.output["format"] == "wav"
    assert audio[:4] == b"RIFF"
    assert audio[8:12] == b"WAVE"
    assert int.from_bytes(audio[24:28], "little") == 24_000


@pytest.mark.parametrize(
    ("input", "config", "field"),
    [
        ({"language": "es"}, {}, "text"),
        ({"text": ""}, {}, "$.text"),
        (SPEAK, {"outputFormat": "aiff"}, "$.outputFormat"),
        (SPEAK, {"voiceSettings": {"stability": 3}}, "$.voiceSettings.stability"),
    ],
)
async def test_invalid_input_is_a_bad_request_naming_the_field_and_calls_nothing(
    adapter: ElevenLabsAdapter,
    fake: ElevenLabsFake,
    input: dict[str, Any],
    config: dict[str, Any],
    field: str,
) -> None:
    error = await failure_of(adapter, speak(input, config=config))

    assert error.kind == ProviderErrorKind.BAD_REQUEST
    assert field in error.message
    assert fake.requests == []


async def test_rejected_key_is_auth_and_not_retryable(
    http_client: httpx.AsyncClient, fake: ElevenLabsFake
) -> None:
    adapter = ElevenLabsAdapter("sk_wrong", fake.base_url, http_client)

    error = await failure_of(adapter)

    assert (error.kind, error.status, error.retryable) == (ProviderErrorKind.AUTH, 401, False)
    assert error.message == "invalid_api_key: Invalid API key"


async def test_used_up_quota_is_unavailable_not_auth(
    adapter: ElevenLabsAdapter, fake: ElevenLabsFake
) -> None:
    # ElevenLabs answers an exhausted quota with 401 quota_exceeded: the key itself is fine.
    fake.fail_next(Fault(status=401, body=fake.quota_exceeded()))

    error = await failure_of(adapter)

    assert (error.kind, error.status, error.retryable) == (ProviderErrorKind.UNAVAILABLE, 401, False)
    assert error.message.startswith("quota_exceeded: This request exceeds your quota")


async def test_too_many_concurrent_requests_is_rate_limited_with_retry_after(
    adapter: ElevenLabsAdapter, fake: ElevenLabsFake
) -> None:
    fake.fail_next(Fault(status=429, headers={"Retry-After": "3"}))

    error = await failure_of(adapter)

    assert (error.kind, error.status, error.retryable, error.retry_after_s) == (
        ProviderErrorKind.RATE_LIMITED,
        429,
        True,
        3.0,
    )
    assert error.message.startswith("too_many_concurrent_requests")


async def test_validation_error_is_a_bad_request_naming_the_field(
    adapter: ElevenLabsAdapter, fake: ElevenLabsFake
) -> None:
    body = {
        "detail": [
            {"loc": ["body", "model_id"], "msg": "Input should be a valid string", "type": "string_type"}
        ]
    }
    fake.fail_next(Fault(status=422, body=body))

    error = await failure_of(adapter)

    assert (error.kind, error.status, error.retryable) == (ProviderErrorKind.BAD_REQUEST, 422, False)
    assert error.message == "body.model_id: Input should be a valid string"


@pytest.mark.parametrize("status", [500, 503])
async def test_server_errors_are_retryable(
    adapter: ElevenLabsAdapter, fake: ElevenLabsFake, status: int
) -> None:
    fake.fail_next(Fault(status=status))

    error = await failure_of(adapter)

    assert (error.kind, error.status, error.retryable) == (ProviderErrorKind.SERVER, status, True)


async def test_slow_answer_is_a_retryable_timeout(adapter: ElevenLabsAdapter, fake: ElevenLabsFake) -> None:
    fake.fail_next(Fault(delay_s=5))

    error = await failure_of(adapter, speak(timeout_s=0.3))

    assert (error.kind, error.retryable) == (ProviderErrorKind.TIMEOUT, True)


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (b"", "audio/mpeg", "no audio"),
        (b'{"audio": "nope"}', "application/json", "expected audio"),
        (b"<html>oops</html>", "audio/mpeg", "not MP3"),
    ],
)
async def test_a_200_without_audio_is_malformed(
    adapter: ElevenLabsAdapter, fake: ElevenLabsFake, body: bytes, content_type: str, expected: str
) -> None:
    fake.fail_next(Fault(status=200, body=body, content_type=content_type))

    error = await failure_of(adapter)

    assert (error.kind, error.retryable) == (ProviderErrorKind.MALFORMED_RESPONSE, True)
    assert expected in error.message


async def test_unreachable_provider_is_retryable_unavailable(http_client: httpx.AsyncClient) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    adapter = ElevenLabsAdapter(API_KEY, f"http://127.0.0.1:{port}", http_client)

    error = await failure_of(adapter)

    assert (error.kind, error.retryable) == (ProviderErrorKind.UNAVAILABLE, True)


async def test_without_a_key_calls_fail_unavailable_without_a_request(
    http_client: httpx.AsyncClient, fake: ElevenLabsFake
) -> None:
    adapter = ElevenLabsAdapter(None, fake.base_url, http_client)

    error = await failure_of(adapter)

    assert (error.kind, error.retryable) == (ProviderErrorKind.UNAVAILABLE, False)
    assert fake.requests == []


async def test_other_tools_are_unknown(adapter: ElevenLabsAdapter) -> None:
    error = await failure_of(adapter, ToolCall(tool="stt.transcribe", input={}, idempotency_key="k"))

    assert error.kind == ProviderErrorKind.UNKNOWN_TOOL
    assert adapter.tools == frozenset({"tts.speak"})
    assert adapter.provider == "elevenlabs"
