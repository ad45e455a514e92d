"""Each bilingual-coach tool through the Gemini adapter, over HTTP against the fake Gemini API."""

from __future__ import annotations

import base64
import io
import itertools
import json
import wave
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from gemini_fake import API_KEY, PCM_RATE, FakeGemini, b64, running_fake_gemini, tone_pcm16
from omni_toolrunner.providers import ProviderAdapter, ToolCall
from omni_toolrunner.providers.audio import wav_from_pcm16
from omni_toolrunner.providers.gemini import DEFAULT_PRICES, GeminiAdapter, gemini_schema
from omni_toolrunner.providers.tool_specs import (
    FEEDBACK_PROMPT,
    MT_PROMPT,
    MT_SCHEMA,
    NLU_PROMPT,
    NLU_SCHEMA,
    STT_PROMPT,
)

SPOKEN = "I goes to the market yesterday."
_keys = itertools.count(1)


def call(tool: str, input: dict[str, Any], **kwargs: Any) -> ToolCall:
    return ToolCall(tool=tool, input=input, idempotency_key=f"run-gemini:step:{next(_keys)}", **kwargs)


def learner_wav() -> bytes:
    return wav_from_pcm16(tone_pcm16(40), PCM_RATE)


@pytest.fixture
async def gemini() -> AsyncIterator[FakeGemini]:
    async with running_fake_gemini() as fake:
        yield fake


@pytest.fixture
def gemini_adapter(gemini: FakeGemini, http_client: httpx.AsyncClient) -> GeminiAdapter:
    return GeminiAdapter(api_key=API_KEY, base_url=gemini.base_url, client=http_client)


def test_adapter_announces_its_provider_and_the_five_tools(gemini_adapter: GeminiAdapter) -> None:
    assert isinstance(gemini_adapter, ProviderAdapter)
    assert gemini_adapter.provider == "gemini"
    assert gemini_adapter.tools == {
        "stt.transcribe",
        "nlu.analyze",
        "mt.translate",
        "feedback.generate",
        "tts.speak",
    }


async def test_mt_translate_posts_generate_content_with_key_prompt_and_schema(
    gemini_adapter: GeminiAdapter, gemini: FakeGemini
) -> None:
    outcome = await gemini_adapter.call(
        call("mt.translate", {"text": "Good morning", "sourceLanguage": "en", "targetLanguage": "es"})
    )

    assert outcome.output == {"translatedText": "fake text", "confidence": 0.75}
    assert outcome.model == "gemini-2.5-flash"
    assert outcome.response_id == "fake-response-1"
    (sent,) = gemini.requests
    assert sent.model == "gemini-2.5-flash"
    assert sent.headers["x-goog-api-key"] == API_KEY
    assert "Authorization" not in sent.headers
    assert sent.body["systemInstruction"] == {"parts": [{"text": MT_PROMPT}]}
    (turn,) = sent.body["contents"]
    assert turn["role"] == "user"
    assert json.loads(turn["parts"][0]["text"]) == {
        "text": "Good morning",
        "sourceLanguage": "en",
        "targetLanguage": "es",
    }
    config = sent.body["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseSchema"] == gemini_schema(MT_SCHEMA)
    assert config["maxOutputTokens"] == 1024
    assert config["temperature"] == 0.2
    assert config["thinkingConfig"] == {"thinkingBudget": 0}


def test_response_schema_is_gemini_openapi_subset_in_the_tool_schema_order() -> None:
    schema = gemini_schema(NLU_SCHEMA)

    assert "additionalProperties" not in json.dumps(schema)
    assert schema["type"] == "OBJECT"
    assert schema["propertyOrdering"] == ["intent", "grammar", "entities", "sentiment", "confidence"]
    assert schema["required"] == schema["propertyOrdering"]
    assert schema["properties"]["sentiment"] == {
        "type": "STRING",
        "enum": ["positive", "neutral", "negative", "mixed"],
    }
    issue = schema["properties"]["grammar"]["properties"]["issues"]["items"]
    assert issue["type"] == "OBJECT"
    assert issue["propertyOrdering"] == ["type", "original", "correction", "explanation"]


async def test_nlu_analyze_returns_intent_grammar_entities_sentiment(
    gemini_adapter: GeminiAdapter, gemini: FakeGemini
) -> None:
    outcome = await gemini_adapter.call(
        call("nlu.analyze", {"text": SPOKEN, "language": "en", "context": "language_learning_coaching"})
    )

    out = outcome.output
    assert set(out) == {"intent", "grammar", "entities", "sentiment", "confidence"}
    assert out["grammar"] == {
        "isCorrect": True,
        "score": 0.75,
        "issues": [
            {
                "type": "fake text",
                "original": "fake text",
                "correction": "fake text",
                "explanation": "fake text",
            }
        ],
    }
    assert out["entities"] == [{"text": "fake text", "type": "fake text"}]
    assert out["sentiment"] == "positive"
    (sent,) = gemini.requests
    assert sent.body["systemInstruction"]["parts"][0]["text"] == NLU_PROMPT


async def test_feedback_generate_sends_analysis_and_translation_and_clamps_the_score(
    gemini_adapter: GeminiAdapter, gemini: FakeGemini
) -> None:
    answer = {"feedback": "Nice try!", "score": 140, "suggestions": ["Use 'went' for the past."]}
    gemini.inject(text=json.dumps(answer))
    analysis = {"grammar": {"isCorrect": False}}

    outcome = await gemini_adapter.call(
        call(
            "feedback.generate",
            {
                "text": SPOKEN,
                "analysis": analysis,
                "translation": "Fui al mercado ayer.",
                "targetLanguage": "es",
            },
        )
    )

    assert outcome.output == {**answer, "score": 100}
    (sent,) = gemini.requests
    assert sent.body["systemInstruction"]["parts"][0]["text"] == FEEDBACK_PROMPT
    assert json.loads(sent.body["contents"][0]["parts"][0]["text"]) == {
        "text": SPOKEN,
        "analysis": analysis,
        "translation": "Fui al mercado ayer.",
        "targetLanguage": "es",
    }


async def test_stt_transcribe_sends_the_audio_as_inline_data_and_returns_the_transcript(
    gemini_adapter: GeminiAdapter, gemini: FakeGemini
) -> None:
    answer = {"text": SPOKEN, "confidence": 1.4, "segments": [{"start": 0.0, "end": 1.6, "text": SPOKEN}]}
    gemini.inject(text=json.dumps(answer))
    audio = b64(learner_wav())

    outcome = await gemini_adapter.call(call("stt.transcribe", {"audioData": audio, "language": "en"}))

    assert outcome.output == {**answer, "confidence": 1.0}
    (sent,) = gemini.requests
    assert sent.body["systemInstruction"]["parts"][0]["text"] == STT_PROMPT
    text_part, audio_part = sent.body["contents"][0]["parts"]
    assert json.loads(text_part["text"]) == {"language": "en"}
    assert audio_part == {"inlineData": {"mimeType": "audio/wav", "data": audio}}


async def test_stt_transcribe_takes_the_audio_type_from_a_data_uri(
    gemini_adapter: GeminiAdapter, gemini: FakeGemini
) -> None:
    mp3 = b64(b"ID3" + bytes(64))

    await gemini_adapter.call(call("stt.transcribe", {"audioData": f"data:audio/mpeg;base64,{mp3}"}))

    (sent,) = gemini.requests
    assert sent.body["contents"][0]["parts"][1] == {"inlineData": {"mimeType": "audio/mp3", "data": mp3}}


async def test_tts_speak_asks_a_tts_model_for_audio_and_returns_wav(
    gemini_adapter: GeminiAdapter, gemini: FakeGemini
) -> None:
    outcome = await gemini_adapter.call(call("tts.speak", {"text": "Fui al mercado ayer.", "language": "es"}))

    assert outcome.output["format"] == "wav"
    assert outcome.output["text"] == "Fui al mercado ayer."
    with wave.open(io.BytesIO(base64.b64decode(outcome.output["audioData"]))) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (PCM_RATE, 1, 2)
        assert wav.readframes(wav.getnframes()) == tone_pcm16(len("Fui al mercado ayer."))
    assert outcome.model == "gemini-2.5-flash-preview-tts"
    (sent,) = gemini.requests
    assert sent.model == "gemini-2.5-flash-preview-tts"
    assert "systemInstruction" not in sent.body
    assert sent.body["contents"] == [{"role": "user", "parts": [{"text": "Fui al mercado ayer."}]}]
    assert sent.body["generationConfig"] == {
        "responseModalities": ["AUDIO"],
        "speechConfig": {"voiceConfig": {"prebuiltVoiceConfig": {"voiceName": "Kore"}}},
    }


async def test_tts_speak_voice_comes_from_the_input_then_the_step_config(
    gemini_adapter: GeminiAdapter, gemini: FakeGemini
) -> None:
    await gemini_adapter.call(
        call("tts.speak", {"text": "Hola", "voice": "Puck"}, config={"voice": "Charon"})
    )
    await gemini_adapter.call(call("tts.speak", {"text": "Hola"}, config={"voice": "Charon"}))

    voices = [
        r.body["generationConfig"]["speechConfig"]["voiceConfig"]["prebuiltVoiceConfig"]["voiceName"]
        for r in gemini.requests
    ]
    assert voices == ["Puck", "Charon"]


async def test_tts_speak_passes_wav_audio_through_unchanged(
    gemini_adapter: GeminiAdapter, gemini: FakeGemini
) -> None:
    # Newer TTS models answer with WAV instead of raw L16.
    wav_audio = learner_wav()
    part = {"inlineData": {"mimeType": "audio/wav", "data": b64(wav_audio)}}
    gemini.inject(body={"candidates": [{"content": {"parts": [part]}, "finishReason": "STOP"}]})

    outcome = await gemini_adapter.call(call("tts.speak", {"text": "Hola"}))

    assert base64.b64decode(outcome.output["audioData"]) == wav_audio
    assert outcome.usage is None


async def test_step_config_chooses_model_max_tokens_and_temperature(
    gemini_adapter: GeminiAdapter, gemini: FakeGemini
) -> None:
    config = {"model": "google/gemini-2.5-pro", "maxTokens": 2000, "temperature": 0.3, "timeout": 15000}

    outcome = await gemini_adapter.call(call("nlu.analyze", {"text": "Hello Maria"}, config=config))

    (sent,) = gemini.requests
    assert sent.model == "gemini-2.5-pro"
    generation = sent.body["generationConfig"]
    assert (generation["maxOutputTokens"], generation["temperature"]) == (2000, 0.3)
    # Pro cannot stop thinking; it is left to its default.
    assert "thinkingConfig" not in generation
    assert outcome.model == "gemini-2.5-pro"


def test_model_for_reduces_slugs_and_resource_names_to_model_ids(gemini_adapter: GeminiAdapter) -> None:
    assert gemini_adapter.model_for("mt.translate") == "gemini-2.5-flash"
    assert gemini_adapter.model_for("tts.speak") == "gemini-2.5-flash-preview-tts"
    assert gemini_adapter.model_for("mt.translate", {"model": "models/gemini-2.5-flash-lite"}) == (
        "gemini-2.5-flash-lite"
    )
    assert gemini_adapter.model_for("tts.speak", {"model": "google/gemini-2.5-pro-preview-tts"}) == (
        "gemini-2.5-pro-preview-tts"
    )


async def test_usage_counts_thinking_as_output_and_prices_it(
    gemini_adapter: GeminiAdapter, gemini: FakeGemini
) -> None:
    metadata = {
        "promptTokenCount": 1000,
        "candidatesTokenCount": 100,
        "thoughtsTokenCount": 300,
        "totalTokenCount": 1400,
    }
    text = json.dumps({"translatedText": "Buenos días", "confidence": 0.9})
    gemini.inject(
        body={
            "candidates": [{"content": {"parts": [{"text": text}]}, "finishReason": "STOP"}],
            "usageMetadata": metadata,
            "modelVersion": "gemini-2.5-flash-001",
            "responseId": "abc",
        }
    )

    outcome = await gemini_adapter.call(
        call("mt.translate", {"text": "Good morning", "targetLanguage": "es"})
    )

    assert outcome.usage is not None
    assert (outcome.usage.input_tokens, outcome.usage.output_tokens, outcome.usage.total_tokens) == (
        1000,
        400,
        1400,
    )
    # gemini-2.5-flash: $0.30 per million prompt tokens, $2.50 per million output tokens.
    assert outcome.usage.cost == pytest.approx((1000 * 0.30 + 400 * 2.50) / 1e6)
    assert (outcome.model, outcome.response_id) == ("gemini-2.5-flash-001", "abc")


async def test_usage_prices_audio_prompt_tokens_at_the_audio_rate(
    gemini_adapter: GeminiAdapter, gemini: FakeGemini
) -> None:
    outcome = await gemini_adapter.call(call("stt.transcribe", {"audioData": b64(learner_wav())}))

    assert outcome.usage is not None
    # The fake counts an audio token per 1500 bytes.
    audio_tokens = -(-len(learner_wav()) // 1500)
    text_tokens = outcome.usage.input_tokens - audio_tokens
    assert text_tokens > 0
    flash = DEFAULT_PRICES["gemini-2.5-flash"]
    assert flash.audio_input is not None
    expected = (
        text_tokens * flash.input
        + audio_tokens * flash.audio_input
        + outcome.usage.output_tokens * flash.output
    ) / 1e6
    assert outcome.usage.cost == pytest.approx(expected)
    assert outcome.usage.total_tokens == outcome.usage.input_tokens + outcome.usage.output_tokens


async def test_usage_of_speech_is_priced_with_the_tts_model(
    gemini_adapter: GeminiAdapter, gemini: FakeGemini
) -> None:
    outcome = await gemini_adapter.call(call("tts.speak", {"text": "Hola"}))

    assert outcome.usage is not None
    assert outcome.usage.output_tokens > 0
    tts = DEFAULT_PRICES["gemini-2.5-flash-preview-tts"]
    assert outcome.usage.cost == pytest.approx(
        (outcome.usage.input_tokens * tts.input + outcome.usage.output_tokens * tts.output) / 1e6
    )


async def test_cost_is_unknown_for_a_model_without_a_price(
    gemini_adapter: GeminiAdapter, gemini: FakeGemini
) -> None:
    outcome = await gemini_adapter.call(
        call("mt.translate", {"text": "Hi", "targetLanguage": "es"}, config={"model": "gemini-next"})
    )

    assert outcome.usage is not None
    assert outcome.usage.input_tokens > 0
    assert outcome.usage.cost is None
