"""Answers: schema-conforming JSON, meaningful tool outputs, audio, streaming, usage."""

from __future__ import annotations

import base64
import io
import json
import wave
from typing import Any

import aiohttp
from omni_simulator import RunningSimulator
from omni_simulator.audio import synthesize_pcm16, wav_from_pcm16
from simulator_requests import chat_body


async def post(http: aiohttp.ClientSession, sim: RunningSimulator, body: dict[str, Any]) -> dict[str, Any]:
    async with http.post(f"{sim.base_url}/chat/completions", json=body) as response:
        assert response.status == 200, await response.text()
        result: dict[str, Any] = await response.json()
        return result


def content_of(completion: dict[str, Any]) -> Any:
    return json.loads(completion["choices"][0]["message"]["content"])


NESTED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "$defs": {"tag": {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}},
    "properties": {
        "title": {"type": "string"},
        "mood": {"type": "string", "enum": ["calm", "angry"]},
        "rating": {"type": "integer", "minimum": 3, "maximum": 5},
        "ratio": {"type": "number", "minimum": 0, "maximum": 0.5},
        "flag": {"type": "boolean"},
        "nothing": {"type": "null"},
        "maybe": {"anyOf": [{"type": "null"}, {"type": "string"}]},
        "tags": {"type": "array", "items": {"$ref": "#/$defs/tag"}, "minItems": 2},
        "meta": {"type": "object", "properties": {"created": {"type": "string", "format": "date-time"}}},
    },
    "required": ["title", "mood", "rating", "ratio", "flag", "nothing", "maybe", "tags", "meta"],
    "additionalProperties": False,
}


async def test_json_schema_answer_conforms_to_an_unknown_schema(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    completion = await post(
        http, sim, chat_body("Describe the weather", schema=NESTED_SCHEMA, name="weather")
    )

    value = content_of(completion)
    assert set(value) == set(NESTED_SCHEMA["properties"])
    assert isinstance(value["title"], str)
    assert value["title"]
    assert value["mood"] == "calm"
    assert isinstance(value["rating"], int)
    assert 3 <= value["rating"] <= 5
    assert isinstance(value["ratio"], float)
    assert 0 <= value["ratio"] <= 0.5
    assert value["flag"] is True
    assert value["nothing"] is None
    assert isinstance(value["maybe"], str)
    assert len(value["tags"]) == 2
    assert all(isinstance(tag["label"], str) for tag in value["tags"])
    assert value["meta"] == {"created": "2024-01-01T00:00:00Z"}


async def test_same_request_gives_the_same_content(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    body = chat_body("Describe the weather", schema=NESTED_SCHEMA, name="weather")

    first = await post(http, sim, body)
    second = await post(http, sim, body)

    assert first["choices"][0]["message"] == second["choices"][0]["message"]
    assert first["id"] == second["id"]
    assert sim.state.side_effects == 2


async def test_mt_translate_prefixes_the_target_language(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    schema = {
        "type": "object",
        "properties": {"translatedText": {"type": "string"}, "confidence": {"type": "number"}},
        "required": ["translatedText", "confidence"],
        "additionalProperties": False,
    }
    user = json.dumps({"text": "Good morning", "sourceLanguage": "en", "targetLanguage": "fr"})

    value = content_of(await post(http, sim, chat_body(user, schema=schema, name="mt_translate")))

    assert value == {"translatedText": "[fr] Good morning", "confidence": 0.9}


async def test_nlu_analyze_reports_a_grammar_issue(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    issue = {
        "type": "object",
        "properties": {k: {"type": "string"} for k in ("type", "original", "correction", "explanation")},
    }
    schema = {
        "type": "object",
        "properties": {
            "intent": {"type": "string"},
            "grammar": {
                "type": "object",
                "properties": {
                    "isCorrect": {"type": "boolean"},
                    "score": {"type": "number"},
                    "issues": {"type": "array", "items": issue},
                },
            },
            "sentiment": {"type": "string", "enum": ["positive", "neutral", "negative", "mixed"]},
        },
    }
    user = json.dumps({"text": "I goes to the market yesterday.", "language": "en"})

    value = content_of(await post(http, sim, chat_body(user, schema=schema, name="nlu_analyze")))

    assert value["intent"] == "statement"
    assert value["grammar"]["isCorrect"] is False
    assert value["grammar"]["issues"][0]["correction"] == "I go"
    assert value["sentiment"] == "neutral"


async def test_stt_transcribe_hears_the_text_embedded_in_simulator_audio(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    spoken = "Hola, me llamo Ana."
    audio = base64.b64encode(wav_from_pcm16(synthesize_pcm16(spoken), comment=spoken)).decode()
    schema = {
        "type": "object",
        "properties": {
            "text": {"type": "string"},
            "confidence": {"type": "number"},
            "segments": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "start": {"type": "number"},
                        "end": {"type": "number"},
                        "text": {"type": "string"},
                    },
                },
            },
        },
    }
    user = [
        {"type": "text", "text": json.dumps({"language": "es"})},
        {"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}},
    ]

    completion = await post(http, sim, chat_body(user, schema=schema, name="stt_transcribe"))

    value = content_of(completion)
    assert value["text"] == spoken
    assert value["segments"][0]["text"] == spoken
    assert value["segments"][0]["end"] > 0
    assert completion["usage"]["prompt_tokens_details"]["audio_tokens"] > 0


async def test_stt_transcribe_of_foreign_audio_is_a_stable_learner_sentence(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    foreign = base64.b64encode(wav_from_pcm16(b"\x01\x00" * 800, sample_rate=16_000)).decode()
    schema = {"type": "object", "properties": {"text": {"type": "string"}}}
    user = [{"type": "input_audio", "input_audio": {"data": foreign, "format": "wav"}}]

    first = content_of(await post(http, sim, chat_body(user, schema=schema, name="stt_transcribe")))
    second = content_of(await post(http, sim, chat_body(user, schema=schema, name="stt_transcribe")))

    assert first == second
    assert first["text"].endswith((".", "?"))


async def test_audio_output_is_a_valid_wav_with_its_transcript(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    body = chat_body(
        "Buenos días",
        model="openai/gpt-audio-mini",
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "wav"},
    )

    completion = await post(http, sim, body)

    audio = completion["choices"][0]["message"]["audio"]
    assert audio["transcript"] == "Buenos días"
    assert audio["id"].startswith("audio_")
    assert audio["expires_at"] > 0
    with wave.open(io.BytesIO(base64.b64decode(audio["data"]))) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 24_000)
        assert wav.getnframes() > 0


async def test_streamed_audio_arrives_in_delta_chunks_then_usage_then_done(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    body = chat_body(
        "Buenos días",
        model="openai/gpt-audio-mini",
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "pcm16"},
        stream=True,
    )

    async with http.post(f"{sim.base_url}/chat/completions", json=body) as response:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        raw = await response.text()

    events = [block for block in raw.split("\n\n") if block]
    assert events[0].startswith(":")  # keep-alive comment
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(block.removeprefix("data: ")) for block in events[1:-1]]
    pcm = b"".join(
        base64.b64decode(c["choices"][0]["delta"]["audio"]["data"])
        for c in chunks
        if c["choices"] and "data" in c["choices"][0]["delta"].get("audio", {})
    )
    assert pcm == synthesize_pcm16("Buenos días")
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["total_tokens"] > 0


async def test_streamed_text_reassembles_to_the_full_answer(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    schema = {"type": "object", "properties": {"translatedText": {"type": "string"}}}
    user = json.dumps({"text": "See you soon", "targetLanguage": "de"})

    async with http.post(
        f"{sim.base_url}/chat/completions",
        json=chat_body(user, schema=schema, name="mt_translate", stream=True),
    ) as response:
        raw = await response.text()

    parts = []
    for block in raw.split("\n\n"):
        if block.startswith("data: {"):
            chunk = json.loads(block.removeprefix("data: "))
            if chunk["choices"]:
                parts.append(chunk["choices"][0]["delta"].get("content", ""))
    assert json.loads("".join(parts)) == {"translatedText": "[de] See you soon"}


async def test_usage_counts_tokens_and_prices_them(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    completion = await post(http, sim, chat_body("Hello there"))

    usage = completion["usage"]
    assert usage["prompt_tokens"] > 0
    assert usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["cost"] > 0
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["finish_reason"] == "stop"


async def test_max_tokens_cuts_the_answer_and_says_so(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    completion = await post(http, sim, chat_body("Good morning", schema=NESTED_SCHEMA, max_tokens=3))

    choice = completion["choices"][0]
    assert choice["finish_reason"] == "length"
    assert len(choice["message"]["content"]) <= 12


async def test_openai_style_path_and_models_listing(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{sim.root_url}/v1/chat/completions", json=chat_body("hi")) as response:
        assert response.status == 200
    async with aiohttp.ClientSession() as anonymous, anonymous.get(f"{sim.base_url}/models") as response:
        models = await response.json()

    ids = {model["id"] for model in models["data"]}
    assert {"openai/gpt-4o-mini", "google/gemini-2.5-flash", "openai/gpt-audio-mini"} <= ids
    assert all("pricing" in model and "architecture" in model for model in models["data"])
