"""Each bilingual-coach tool through the OpenRouter adapter against the real simulator over HTTP."""

from __future__ import annotations

import base64
import io
import wave

from omni_simulator import RunningSimulator
from omni_toolrunner.providers import ProviderAdapter
from omni_toolrunner.providers.openai_compatible import OPENROUTER, OpenAICompatibleAdapter
from openrouter_fixtures import SPOKEN, call, learner_wav_base64, recorded_requests


def test_adapter_announces_its_provider_and_the_five_tools(adapter: OpenAICompatibleAdapter) -> None:
    assert isinstance(adapter, ProviderAdapter)
    assert adapter.provider == "openrouter"
    assert adapter.tools == {
        "stt.transcribe",
        "nlu.analyze",
        "mt.translate",
        "feedback.generate",
        "tts.speak",
    }


async def test_stt_transcribe_sends_audio_as_input_audio_and_returns_the_transcript(
    adapter: OpenAICompatibleAdapter, simulator: RunningSimulator
) -> None:
    request = call("stt.transcribe", {"audioData": learner_wav_base64(), "language": "en"})

    outcome = await adapter.call(request)

    assert outcome.output["text"] == SPOKEN
    assert 0 <= outcome.output["confidence"] <= 1
    assert outcome.output["segments"][0]["text"] == SPOKEN
    assert outcome.output["segments"][0]["end"] > outcome.output["segments"][0]["start"]
    assert outcome.model == "google/gemini-2.5-flash"
    assert outcome.usage is not None
    assert outcome.usage.input_tokens > 0
    assert outcome.usage.cost
    assert outcome.response_id
    assert outcome.response_id.startswith("gen-")

    (sent,) = await recorded_requests(simulator)
    assert sent["headers"]["idempotency-key"] == request.idempotency_key
    assert sent["headers"]["http-referer"] == "https://omni.example.invalid"
    assert sent["headers"]["x-title"] == "Omni"
    assert sent["headers"]["x-openrouter-title"] == "Omni"
    body = sent["body"]
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["name"] == "stt_transcribe"
    assert body["response_format"]["json_schema"]["strict"] is True
    assert body["provider"] == {"require_parameters": True}
    assert body["messages"][0]["role"] == "system"
    audio_part = body["messages"][1]["content"][1]
    assert audio_part == {
        "type": "input_audio",
        "input_audio": {"data": request.input["audioData"], "format": "wav"},
    }


async def test_stt_transcribe_accepts_a_data_uri_and_sends_plain_base64(
    adapter: OpenAICompatibleAdapter, simulator: RunningSimulator
) -> None:
    plain = learner_wav_base64()

    await adapter.call(call("stt.transcribe", {"audioData": f"data:audio/wav;base64,{plain}"}))

    (sent,) = await recorded_requests(simulator)
    assert sent["body"]["messages"][1]["content"][1]["input_audio"] == {"data": plain, "format": "wav"}


async def test_nlu_analyze_returns_intent_grammar_entities_sentiment(
    adapter: OpenAICompatibleAdapter, simulator: RunningSimulator
) -> None:
    outcome = await adapter.call(
        call("nlu.analyze", {"text": SPOKEN, "language": "en", "context": "language_learning_coaching"})
    )

    out = outcome.output
    assert set(out) == {"intent", "grammar", "entities", "sentiment", "confidence"}
    assert out["intent"] == "statement"
    assert out["grammar"]["isCorrect"] is False
    assert out["grammar"]["issues"][0]["correction"] == "I go"
    assert out["sentiment"] == "neutral"
    assert isinstance(out["entities"], list)
    (sent,) = await recorded_requests(simulator)
    assert sent["body"]["response_format"]["json_schema"]["name"] == "nlu_analyze"


async def test_step_config_chooses_model_max_tokens_and_temperature(
    adapter: OpenAICompatibleAdapter, simulator: RunningSimulator
) -> None:
    config = {"model": "deepseek-r1", "maxTokens": 2000, "temperature": 0.3, "timeout": 15000}

    outcome = await adapter.call(call("nlu.analyze", {"text": "Hello Maria"}, config=config))

    (sent,) = await recorded_requests(simulator)
    assert sent["body"]["model"] == "deepseek/deepseek-r1"
    assert sent["body"]["max_tokens"] == 2000
    assert sent["body"]["temperature"] == 0.3
    assert outcome.model == "deepseek/deepseek-r1"
    assert outcome.output["entities"] == [{"text": "Maria", "type": "proper_noun"}]


async def test_mt_translate_returns_the_translation(adapter: OpenAICompatibleAdapter) -> None:
    outcome = await adapter.call(
        call("mt.translate", {"text": "Good morning", "sourceLanguage": "en", "targetLanguage": "es"})
    )

    assert outcome.output == {"translatedText": "[es] Good morning", "confidence": 0.9}
    assert outcome.model == "openai/gpt-4o-mini"


async def test_feedback_generate_returns_feedback_score_and_suggestions(
    adapter: OpenAICompatibleAdapter,
) -> None:
    outcome = await adapter.call(
        call(
            "feedback.generate",
            {
                "text": SPOKEN,
                "analysis": {"intent": "statement", "grammar": {"isCorrect": False}},
                "translation": {"translatedText": "[es] Fui al mercado ayer."},
                "targetLanguage": "es",
            },
        )
    )

    out = outcome.output
    assert set(out) == {"feedback", "score", "suggestions"}
    assert SPOKEN in out["feedback"]
    assert out["score"] == 85
    assert any("I go" in suggestion for suggestion in out["suggestions"])


async def test_tts_speak_streams_pcm16_and_returns_a_wav(
    adapter: OpenAICompatibleAdapter, simulator: RunningSimulator
) -> None:
    outcome = await adapter.call(
        call("tts.speak", {"text": "Fui al mercado ayer.", "language": "es", "voice": "nova"})
    )

    assert outcome.output["format"] == "wav"
    assert outcome.output["text"] == "Fui al mercado ayer."
    with wave.open(io.BytesIO(base64.b64decode(outcome.output["audioData"]))) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 24_000)
        assert wav.getnframes() > 0
    assert outcome.model == "openai/gpt-audio-mini"
    assert outcome.usage is not None
    assert outcome.usage.output_tokens > 0

    (sent,) = await recorded_requests(simulator)
    body = sent["body"]
    assert body["stream"] is True
    assert body["modalities"] == ["text", "audio"]
    assert body["audio"] == {"voice": "nova", "format": "pcm16"}
    assert "response_format" not in body


async def test_tts_speak_can_ask_for_wav_directly(
    adapter: OpenAICompatibleAdapter, simulator: RunningSimulator
) -> None:
    outcome = await adapter.call(
        call("tts.speak", {"text": "Hola"}, config={"audioFormat": "wav", "voice": "echo"})
    )

    assert outcome.output["format"] == "wav"
    with wave.open(io.BytesIO(base64.b64decode(outcome.output["audioData"]))) as wav:
        assert wav.getnframes() > 0
    (sent,) = await recorded_requests(simulator)
    assert sent["body"]["audio"] == {"voice": "echo", "format": "wav"}


async def test_adapter_without_a_client_owns_and_closes_its_own(simulator: RunningSimulator) -> None:
    async with OpenAICompatibleAdapter(OPENROUTER, api_key="k", base_url=simulator.base_url) as owned:
        outcome = await owned.call(call("mt.translate", {"text": "Hi", "targetLanguage": "it"}))

    assert outcome.output["translatedText"] == "[it] Hi"


async def test_model_for_prefers_step_config_then_tool_default_then_adapter_default(
    adapter: OpenAICompatibleAdapter,
) -> None:
    custom = OpenAICompatibleAdapter(
        OPENROUTER, api_key="k", default_model="mistralai/mistral-small", tool_models={"mt.translate": "x/y"}
    )

    assert adapter.model_for("nlu.analyze", {"model": "deepseek-r1"}) == "deepseek/deepseek-r1"
    assert (
        adapter.model_for("nlu.analyze", {"model": "anthropic/claude-3.5-haiku"})
        == "anthropic/claude-3.5-haiku"
    )
    assert adapter.model_for("stt.transcribe") == "google/gemini-2.5-flash"
    assert adapter.model_for("tts.speak", {}) == "openai/gpt-audio-mini"
    assert adapter.model_for("nlu.analyze") == "openai/gpt-4o-mini"
    assert custom.model_for("feedback.generate") == "mistralai/mistral-small"
    assert custom.model_for("mt.translate") == "x/y"
    await custom.aclose()
