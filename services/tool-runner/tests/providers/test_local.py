from __future__ import annotations

import base64
import shutil

import pytest
from omni_toolrunner.providers import ProviderError, ProviderErrorKind, ToolCall
from omni_toolrunner.providers.local import LanguageDetection, LocalAdapter

ESPEAK_INSTALLED = shutil.which("espeak-ng") is not None


@pytest.fixture(scope="module")
def detection() -> LanguageDetection:
    # One detector for the module: loading its models takes about a second.
    return LanguageDetection()


@pytest.fixture
def adapter(detection: LanguageDetection) -> LocalAdapter:
    return LocalAdapter(detection=detection)


async def test_echo_returns_its_input_as_output(adapter: LocalAdapter) -> None:
    outcome = await adapter.call(ToolCall(tool="util.echo", input={"a": [1, 2]}, idempotency_key="k"))
    assert outcome.output == {"a": [1, 2]}
    assert outcome.usage is None


async def test_a_tool_the_local_provider_does_not_serve_is_unknown(adapter: LocalAdapter) -> None:
    with pytest.raises(ProviderError) as caught:
        await adapter.call(ToolCall(tool="stt.transcribe", input={}, idempotency_key="k"))
    assert caught.value.kind is ProviderErrorKind.UNKNOWN_TOOL
    assert not caught.value.retryable


def test_the_local_provider_serves_echo_language_detection_and_speech(adapter: LocalAdapter) -> None:
    assert adapter.tools == {"util.echo", "lang.detect", "tts.speak"}


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("I would like to book a table for two people tonight, please.", "en"),
        ("Me gustaría reservar una mesa para dos personas esta noche, por favor.", "es"),
        ("Je voudrais réserver une table pour deux personnes ce soir, s'il vous plaît.", "fr"),
        ("Ich möchte heute Abend bitte einen Tisch für zwei Personen reservieren.", "de"),
    ],
)
async def test_lang_detect_names_the_language_of_a_sentence(
    adapter: LocalAdapter, text: str, language: str
) -> None:
    outcome = await adapter.call(ToolCall(tool="lang.detect", input={"text": text}, idempotency_key="k"))
    assert outcome.output["language"] == language
    assert 0.5 < outcome.output["confidence"] <= 1


async def test_lang_detect_ranks_the_runners_up_below_the_winner(adapter: LocalAdapter) -> None:
    outcome = await adapter.call(
        ToolCall(tool="lang.detect", input={"text": "Olá, tudo bem com você?"}, idempotency_key="k")
    )
    output = outcome.output
    assert output["language"] == "pt"
    candidates = output["candidates"]
    assert 1 <= len(candidates) <= 3
    assert output["language"] not in {c["language"] for c in candidates}
    confidences = [output["confidence"], *(c["confidence"] for c in candidates)]
    assert confidences == sorted(confidences, reverse=True)


async def test_lang_detect_refuses_text_without_letters(adapter: LocalAdapter) -> None:
    with pytest.raises(ProviderError) as caught:
        await adapter.call(ToolCall(tool="lang.detect", input={"text": "12 + 30 = 42"}, idempotency_key="k"))
    assert caught.value.kind is ProviderErrorKind.BAD_REQUEST
    assert not caught.value.retryable


async def test_lang_detect_refuses_an_input_without_text(adapter: LocalAdapter) -> None:
    with pytest.raises(ProviderError) as caught:
        await adapter.call(ToolCall(tool="lang.detect", input={"text": ""}, idempotency_key="k"))
    assert caught.value.kind is ProviderErrorKind.BAD_REQUEST


def test_language_detection_refuses_a_language_lingua_does_not_know() -> None:
    with pytest.raises(ValueError, match="does not know"):
        LanguageDetection(["en", "xx"])


async def test_tts_without_synthesis_degrades_to_the_text(detection: LanguageDetection) -> None:
    adapter = LocalAdapter(detection=detection, synthesize=False)
    outcome = await adapter.call(
        ToolCall(tool="tts.speak", input={"text": "Buenos días", "language": "es"}, idempotency_key="k")
    )
    assert not adapter.speaks
    assert outcome.output == {
        "text": "Buenos días",
        "format": "text",
        "degraded": True,
        "reason": "espeak-ng is not installed",
    }


async def test_tts_degrades_to_the_text_where_espeak_ng_is_not_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A machine without espeak-ng: nothing named so on the PATH.
    monkeypatch.setenv("PATH", "")
    adapter = LocalAdapter()
    assert not adapter.speaks
    outcome = await adapter.call(ToolCall(tool="tts.speak", input={"text": "Hello"}, idempotency_key="k"))
    assert outcome.output["format"] == "text"
    assert outcome.output["degraded"] is True
    assert outcome.output["text"] == "Hello"


async def test_tts_refuses_an_input_without_text(adapter: LocalAdapter) -> None:
    with pytest.raises(ProviderError) as caught:
        await adapter.call(ToolCall(tool="tts.speak", input={"language": "en"}, idempotency_key="k"))
    assert caught.value.kind is ProviderErrorKind.BAD_REQUEST


@pytest.mark.skipif(not ESPEAK_INSTALLED, reason="espeak-ng is not installed")
async def test_tts_speaks_wav_with_espeak_ng(adapter: LocalAdapter) -> None:
    outcome = await adapter.call(
        ToolCall(tool="tts.speak", input={"text": "Guten Morgen", "language": "de"}, idempotency_key="k")
    )
    assert adapter.speaks
    assert outcome.output["format"] == "wav"
    assert outcome.output["text"] == "Guten Morgen"
    wav = base64.b64decode(outcome.output["audioData"])
    assert wav[:4] == b"RIFF"
    assert wav[8:12] == b"WAVE"
    assert len(wav) > 44  # more than a header


@pytest.mark.skipif(not ESPEAK_INSTALLED, reason="espeak-ng is not installed")
async def test_tts_refuses_a_language_that_is_not_a_tag_before_running_espeak_ng(
    adapter: LocalAdapter,
) -> None:
    with pytest.raises(ProviderError) as caught:
        await adapter.call(
            ToolCall(tool="tts.speak", input={"text": "Hi", "language": "-w/tmp/x"}, idempotency_key="k")
        )
    assert caught.value.kind is ProviderErrorKind.BAD_REQUEST
