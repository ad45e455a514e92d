"""Chat-completion bodies in OpenRouter's shape: full responses, stream chunks and error objects.

Shapes follow OpenRouter's API reference (OpenAI-compatible chat completions): ``choices[].message``
with ``finish_reason`` and ``native_finish_reason``, ``usage`` with ``prompt_tokens``,
``completion_tokens``, ``total_tokens`` and ``cost``; streamed chunks carry ``choices[].delta`` (audio
in ``delta.audio``), usage arrives in a final chunk with empty ``choices``, and mid-stream failures
are a chunk with a top-level ``error`` and ``finish_reason: "error"``.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from omni_simulator.answers import BadRequest, Prompt, answer_for_schema, read_prompt
from omni_simulator.audio import PCM16_SAMPLE_RATE, digest, synthesize_pcm16, wav_from_pcm16
from omni_simulator.state import UsageOverride

SIMULATOR_PROVIDER = "Simulator"
DEFAULT_MODEL = "openai/gpt-4o-mini"
_AUDIO_FORMATS = ("wav", "pcm16")
_AUDIO_CHUNK_BYTES = 4_000  # not a multiple of 3, so each chunk's base64 carries its own padding
_TEXT_CHUNKS = 3


@dataclass(frozen=True, slots=True)
class ModelCard:
    id: str
    name: str
    input_modalities: tuple[str, ...]
    output_modalities: tuple[str, ...]
    prompt_price: float  # USD per token, as OpenRouter's catalogue states it
    completion_price: float
    context_length: int = 128_000

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "canonical_slug": self.id,
            "name": self.name,
            "created": 1_700_000_000,
            "description": f"{self.name}, served by the Omni provider simulator.",
            "context_length": self.context_length,
            "architecture": {
                "input_modalities": list(self.input_modalities),
                "output_modalities": list(self.output_modalities),
                "tokenizer": "Other",
                "instruct_type": None,
            },
            "pricing": {
                "prompt": f"{self.prompt_price:.10f}".rstrip("0"),
                "completion": f"{self.completion_price:.10f}".rstrip("0"),
                "request": "0",
                "image": "0",
            },
            "top_provider": {
                "context_length": self.context_length,
                "max_completion_tokens": 16_384,
                "is_moderated": False,
            },
            "per_request_limits": None,
            "supported_parameters": [
                "max_tokens",
                "temperature",
                "response_format",
                "structured_outputs",
            ],
        }


MODELS: tuple[ModelCard, ...] = (
    ModelCard("openai/gpt-4o-mini", "OpenAI: GPT-4o-mini", ("text", "image"), ("text",), 1.5e-7, 6e-7),
    ModelCard(
        "google/gemini-2.5-flash",
        "Google: Gemini 2.5 Flash",
        ("text", "image", "audio"),
        ("text",),
        3e-7,
        2.5e-6,
    ),
    ModelCard(
        "openai/gpt-audio-mini", "OpenAI: GPT Audio Mini", ("text", "audio"), ("text", "audio"), 6e-7, 2.4e-6
    ),
    ModelCard("deepseek/deepseek-r1", "DeepSeek: R1", ("text",), ("text",), 4e-7, 2e-6),
)
_FALLBACK_CARD = ModelCard("*", "Simulated model", ("text",), ("text",), 5e-7, 1.5e-6)


def model_card(model: str) -> ModelCard:
    return next((card for card in MODELS if card.id == model), _FALLBACK_CARD)


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A validated chat-completions request body."""

    body: Mapping[str, Any]
    model: str
    prompt: Prompt
    schema_name: str | None
    schema: Mapping[str, Any] | None
    json_mode: bool
    audio_format: str | None
    voice: str | None
    stream: bool
    max_tokens: int | None


def parse_chat_request(body: object) -> ChatRequest:
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    model = body.get("model") or DEFAULT_MODEL
    if not isinstance(model, str):
        raise BadRequest("model must be a string")
    prompt = read_prompt(body.get("messages"))
    schema_name, schema, json_mode = _response_format(body.get("response_format"))
    audio_format, voice = _audio_output(body.get("modalities"), body.get("audio"))
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("stream must be a boolean")
    max_tokens = body.get("max_tokens")
    if max_tokens is not None and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
    ):
        raise BadRequest("max_tokens must be a positive integer")
    return ChatRequest(
        body=body,
        model=model,
        prompt=prompt,
        schema_name=schema_name,
        schema=schema,
        json_mode=json_mode,
        audio_format=audio_format,
        voice=voice,
        stream=stream,
        max_tokens=max_tokens,
    )


def _response_format(raw: object) -> tuple[str | None, Mapping[str, Any] | None, bool]:
    if raw is None:
        return None, None, False
    if not isinstance(raw, dict):
        raise BadRequest("response_format must be an object")
    kind = raw.get("type")
    if kind == "text":
        return None, None, False
    if kind == "json_object":
        return None, None, True
    if kind != "json_schema":
        raise BadRequest("response_format.type must be one of text, json_object, json_schema")
    spec = raw.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
        raise BadRequest("response_format.json_schema needs a name")
    schema = spec.get("schema", {})
    if not isinstance(schema, dict):
        raise BadRequest("response_format.json_schema.schema must be an object")
    return spec["name"], schema, True


def _audio_output(modalities: object, audio: object) -> tuple[str | None, str | None]:
    if modalities is None:
        return None, None
    if not isinstance(modalities, list) or not all(isinstance(m, str) for m in modalities):
        raise BadRequest("modalities must be an array of strings")
    if "audio" not in modalities:
        return None, None
    if (
        not isinstance(audio, dict)
        or not isinstance(audio.get("voice"), str)
        or not isinstance(audio.get("format"), str)
    ):
        raise BadRequest("audio output needs an audio object with voice and format")
    if audio["format"] not in _AUDIO_FORMATS:
        raise BadRequest(f"audio.format must be one of {', '.join(_AUDIO_FORMATS)} on this simulator")
    return audio["format"], audio["voice"]


def _tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def build_completion(request: ChatRequest) -> dict[str, Any]:
    """The full (non-streamed) response body for ``request``; only its timestamps vary between calls."""
    prompt = request.prompt
    finish = "stop"
    message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None, "reasoning": None}
    audio_tokens = 0
    if request.audio_format is not None:
        spoken = prompt.subject
        pcm = synthesize_pcm16(spoken)
        data = (
            pcm if request.audio_format == "pcm16" else wav_from_pcm16(pcm, PCM16_SAMPLE_RATE, comment=spoken)
        )
        audio_tokens = max(1, len(pcm) // 960)  # ~25 audio tokens per second, like OpenAI's models
        message["audio"] = {
            "id": f"audio_{digest(spoken, request.audio_format)[:24]}",
            "data": base64.b64encode(data).decode("ascii"),
            "transcript": spoken,
            "expires_at": int(time.time()) + 3600,
        }
        message["content"] = ""
        completion_text = spoken
    else:
        if request.schema is not None and request.schema_name is not None:
            value = answer_for_schema(request.schema_name, request.schema, prompt)
            content = json.dumps(value, ensure_ascii=False)
        elif request.json_mode:
            content = json.dumps({"text": prompt.subject}, ensure_ascii=False)
        else:
            content = f"Simulated reply to: {prompt.subject}"
        if request.max_tokens is not None and _tokens(content) > request.max_tokens:
            content = content[: request.max_tokens * 4]
            finish = "length"
        message["content"] = content
        completion_text = content
    prompt_text = prompt.system + prompt.user_text
    input_audio_tokens = sum(max(1, len(part.data) // 640) for part in prompt.audio)
    prompt_tokens = _tokens(prompt_text) + input_audio_tokens
    completion_tokens = _tokens(completion_text) + audio_tokens
    card = model_card(request.model)
    cost = round(prompt_tokens * card.prompt_price + completion_tokens * card.completion_price, 12)
    return {
        "id": f"gen-{digest(json.dumps(request.body, sort_keys=True))[:24]}",
        "provider": SIMULATOR_PROVIDER,
        "model": request.model,
        "object": "chat.completion",
        "created": int(time.time()),
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "logprobs": None,
                "finish_reason": finish,
                "native_finish_reason": finish,
                "message": message,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "cost": cost,
            "is_byok": False,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": input_audio_tokens},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": audio_tokens},
            "cost_details": {"upstream_inference_cost": None},
        },
    }


def with_usage(completion: dict[str, Any], usage: UsageOverride | None) -> dict[str, Any]:
    """``completion`` reporting ``usage`` (when given) instead of the counted figures."""
    if usage is None:
        return completion
    completion["usage"].update(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.prompt_tokens + usage.completion_tokens,
        cost=usage.cost,
    )
    return completion


def with_malformed_content(completion: dict[str, Any]) -> dict[str, Any]:
    """A well-formed envelope whose payload breaks the contract the request asked for."""
    broken: dict[str, Any] = json.loads(json.dumps(completion))
    message = broken["choices"][0]["message"]
    if "audio" in message:
        message["audio"]["data"] = "%%% not base64 %%%"
    else:
        message["content"] = 'Sure! Here is the JSON you asked for: {"text": '
    return broken


def error_body(code: int | str, message: str, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if metadata is not None:
        error["metadata"] = dict(metadata)
    return {"error": error}


def in_band_error(request: ChatRequest, code: int, message: str) -> dict[str, Any]:
    """A 200 response whose generation failed after routing, reported in the body."""
    return {
        "id": f"gen-{digest(json.dumps(request.body, sort_keys=True), 'error')[:24]}",
        "provider": SIMULATOR_PROVIDER,
        "model": request.model,
        "object": "chat.completion",
        "created": int(time.time()),
        **error_body(code, message, {"provider_name": SIMULATOR_PROVIDER}),
        "choices": [
            {
                "index": 0,
                "finish_reason": "error",
                "native_finish_reason": "error",
                "message": {"role": "assistant", "content": ""},
            }
        ],
    }


def stream_chunks(completion: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """The SSE chunks that deliver ``completion`` incrementally, usage last."""
    base = {
        "id": completion["id"],
        "provider": completion["provider"],
        "model": completion["model"],
        "object": "chat.completion.chunk",
        "created": completion["created"],
    }
    choice = completion["choices"][0]
    message = choice["message"]

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            **base,
            "choices": [
                {"index": 0, "delta": delta, "finish_reason": finish, "native_finish_reason": finish}
            ],
        }

    yield chunk({"role": "assistant", "content": ""})
    audio = message.get("audio")
    if isinstance(audio, dict):
        yield chunk({"audio": {"id": audio["id"], "transcript": audio["transcript"]}})
        raw = _b64decode_lenient(audio["data"])
        if raw is None:
            yield chunk({"audio": {"data": audio["data"]}})
        else:
            for start in range(0, len(raw), _AUDIO_CHUNK_BYTES):
                piece = raw[start : start + _AUDIO_CHUNK_BYTES]
                yield chunk({"audio": {"data": base64.b64encode(piece).decode("ascii")}})
        yield chunk({"audio": {"expires_at": audio["expires_at"]}})
    else:
        content = message.get("content") or ""
        size = max(1, math.ceil(len(content) / _TEXT_CHUNKS))
        for start in range(0, len(content), size):
            yield chunk({"content": content[start : start + size]})
    yield chunk({}, choice["finish_reason"])
    yield {**base, "choices": [], "usage": completion["usage"]}


def partial_then_error(
    completion: Mapping[str, Any], code: int | str, message: str
) -> Iterator[dict[str, Any]]:
    """A stream that starts normally and then fails mid-generation, as OpenRouter reports it."""
    chunks = list(stream_chunks(completion))
    yield from chunks[:2]
    base = {k: chunks[0][k] for k in ("id", "provider", "model", "object", "created")}
    yield {
        **base,
        **error_body(code, message),
        "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
    }


def _b64decode_lenient(data: str) -> bytes | None:
    try:
        return base64.b64decode(data, validate=True)
    except ValueError:
        return None


__all__ = [
    "DEFAULT_MODEL",
    "MODELS",
    "BadRequest",
    "ChatRequest",
    "build_completion",
    "error_body",
    "in_band_error",
    "model_card",
    "parse_chat_request",
    "partial_then_error",
    "stream_chunks",
    "with_malformed_content",
]
