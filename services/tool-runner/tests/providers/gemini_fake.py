"""A fake of Google's Generative Language API (``generateContent``) for the Gemini adapter tests.

It serves ``POST /v1beta/models/{model}:generateContent`` over real HTTP on a free port and checks a
request the way Gemini does where the adapter could get it wrong: the ``x-goog-api-key`` (a wrong
key is a 400 with ``ErrorInfo`` reason ``API_KEY_INVALID``), unknown models (404), ``responseSchema``
fields outside Gemini's OpenAPI subset (``additionalProperties`` is refused), a system instruction
or a non-audio modality for a TTS model, a thinking budget of 0 for Pro, undecodable inline data.

Answers are built from the request: JSON filling the ``responseSchema`` for text models, 24 kHz
L16 PCM for TTS models, with ``usageMetadata`` counted roughly (4 characters a token). Flash thinks
unless its budget is 0 and Pro always does; thinking counts against ``maxOutputTokens`` as it does
at Google, so a small cap cuts the answer off with ``finishReason: MAX_TOKENS``.

Tests shape the next answers with :meth:`FakeGemini.inject` (an error status and body, a
Retry-After header, a delay, a raw or malformed body, a given candidate text or finish reason).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import json
import math
import socket
import struct
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

API_KEY = "AIza-gemini-test-key"
TEXT_MODELS = frozenset({"gemini-2.5-flash", "gemini-2.5-flash-lite", "gemini-2.5-pro", "gemini-next"})
TTS_MODELS = frozenset({"gemini-2.5-flash-preview-tts", "gemini-2.5-pro-preview-tts"})
PCM_RATE = 24_000
DEFAULT_THINKING_TOKENS = 120

_GRPC_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_SCHEMA_FIELDS = frozenset(
    {
        "type",
        "format",
        "title",
        "description",
        "nullable",
        "enum",
        "maxItems",
        "minItems",
        "properties",
        "required",
        "minProperties",
        "maxProperties",
        "minLength",
        "maxLength",
        "pattern",
        "example",
        "anyOf",
        "propertyOrdering",
        "default",
        "items",
        "minimum",
        "maximum",
    }
)
_SCHEMA_TYPES = frozenset({"STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT", "NULL"})


class RequestRejected(Exception):
    def __init__(self, status: int, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details or []


@dataclass
class Fault:
    """What the next ``times`` matching requests get instead of (or on top of) the normal answer."""

    status: int = 200
    grpc_status: str | None = None
    message: str | None = None
    details: list[dict[str, Any]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    raw_body: bytes | None = None  # sent as is, with content_type
    content_type: str = "application/json"
    body: dict[str, Any] | None = None  # a whole 200 JSON body
    text: str | None = None  # the candidate's text instead of the generated one
    finish_reason: str | None = None
    block_reason: str | None = None  # answer with promptFeedback and no candidates
    audio_data: str | None = None  # inlineData.data as sent
    model: str | None = None  # only requests to this model
    times: int = 1


@dataclass(frozen=True)
class Recorded:
    model: str
    headers: Mapping[str, str]
    body: dict[str, Any]


class FakeGemini:
    def __init__(self, api_key: str = API_KEY) -> None:
        self.api_key = api_key
        self.base_url = ""
        self.requests: list[Recorded] = []
        self.faults: list[Fault] = []
        self._ids = itertools.count(1)

    @property
    def calls(self) -> int:
        return len(self.requests)

    def inject(self, **kwargs: Any) -> Fault:
        fault = Fault(**kwargs)
        self.faults.append(fault)
        return fault

    def _take(self, model: str) -> Fault | None:
        for fault in self.faults:
            if fault.model in (None, model):
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
                return fault
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        model, _, method = request.match_info["model_method"].partition(":")
        if method != "generateContent":
            return _error(404, f"Method {method!r} is not served by this fake")
        try:
            body = json.loads(await request.read())
        except ValueError:
            return _error(400, "Invalid JSON payload received.")
        if not isinstance(body, dict):
            return _error(400, "Invalid JSON payload received. Expected an object.")
        self.requests.append(Recorded(model=model, headers=dict(request.headers), body=body))
        fault = self._take(model)
        if fault is not None and fault.delay_s:
            await asyncio.sleep(fault.delay_s)
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not key:
            return _error(403, "Method doesn't allow unregistered callers. Please use an API key.")
        if key != self.api_key:
            return _error(400, "API key not valid. Please pass a valid API key.", _api_key_invalid())
        if fault is not None:
            if fault.raw_body is not None:
                return web.Response(
                    status=fault.status,
                    body=fault.raw_body,
                    content_type=fault.content_type,
                    headers=fault.headers,
                )
            if fault.status != 200:
                return _error(
                    fault.status,
                    fault.message or f"injected HTTP {fault.status}",
                    fault.details,
                    grpc_status=fault.grpc_status,
                    headers=fault.headers,
                )
            if fault.body is not None:
                return web.json_response(fault.body, headers=fault.headers)
        if model not in TEXT_MODELS | TTS_MODELS:
            return _error(
                404,
                f"models/{model} is not found for API version v1beta, "
                "or is not supported for generateContent.",
            )
        try:
            answer = self._answer(model, body, fault)
        except RequestRejected as exc:
            return _error(exc.status, exc.message, exc.details)
        return web.json_response(answer)

    # --- answers ---------------------------------------------------------------------------------------

    def _answer(self, model: str, body: dict[str, Any], fault: Fault | None) -> dict[str, Any]:
        config = body.get("generationConfig") or {}
        prompt_text, audio_bytes = _read_contents(body)
        system = body.get("systemInstruction")
        if isinstance(system, dict):
            prompt_text += "".join(str(p.get("text", "")) for p in system.get("parts") or [])
        text_tokens = math.ceil(len(prompt_text) / 4)
        audio_tokens = math.ceil(audio_bytes / 1500) if audio_bytes else 0
        usage: dict[str, Any] = {
            "promptTokenCount": text_tokens + audio_tokens,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": text_tokens}]
            + ([{"modality": "AUDIO", "tokenCount": audio_tokens}] if audio_tokens else []),
        }
        if fault is not None and fault.block_reason:
            usage["totalTokenCount"] = usage["promptTokenCount"]
            return {"promptFeedback": {"blockReason": fault.block_reason}, "usageMetadata": usage}
        if model in TTS_MODELS:
            parts, output_tokens, thoughts, finish = self._speech(model, body, config, prompt_text, fault)
        else:
            parts, output_tokens, thoughts, finish = self._text(model, config, fault)
        usage["candidatesTokenCount"] = output_tokens
        if thoughts:
            usage["thoughtsTokenCount"] = thoughts
        usage["totalTokenCount"] = usage["promptTokenCount"] + output_tokens + thoughts
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
        candidate["finishReason"] = fault.finish_reason if fault and fault.finish_reason else finish
        return {
            "candidates": [candidate],
            "usageMetadata": usage,
            "modelVersion": model,
            "responseId": f"fake-response-{next(self._ids)}",
        }

    def _text(
        self, model: str, config: Mapping[str, Any], fault: Fault | None
    ) -> tuple[list[dict[str, Any]], int, int, str]:
        if config.get("responseModalities") not in (None, ["TEXT"]):
            raise RequestRejected(400, "The requested combination of response modalities is not supported.")
        schema = config.get("responseSchema")
        if schema is not None:
            _check_schema(schema, "generation_config.response_schema")
        budget = (config.get("thinkingConfig") or {}).get("thinkingBudget")
        if budget == 0 and model == "gemini-2.5-pro":
            raise RequestRejected(400, "Budget 0 is invalid. This model only works in thinking mode.")
        thoughts = 0 if budget == 0 else DEFAULT_THINKING_TOKENS
        if fault is not None and fault.text is not None:
            text = fault.text
        elif config.get("responseMimeType") == "application/json" and schema is not None:
            text = json.dumps(_fill(schema))
        else:
            text = "A fake answer."
        tokens = math.ceil(len(text) / 4)
        limit = config.get("maxOutputTokens")
        if isinstance(limit, int) and thoughts + tokens > limit:
            room = max(0, limit - thoughts)
            text, tokens = text[: room * 4], room
            return ([{"text": text}] if text else []), tokens, min(thoughts, limit), "MAX_TOKENS"
        return [{"text": text}], tokens, thoughts, "STOP"

    def _speech(
        self,
        model: str,
        body: Mapping[str, Any],
        config: Mapping[str, Any],
        prompt_text: str,
        fault: Fault | None,
    ) -> tuple[list[dict[str, Any]], int, int, str]:
        if body.get("systemInstruction") is not None:
            raise RequestRejected(400, f"Developer instruction is not enabled for models/{model}")
        if config.get("responseModalities") != ["AUDIO"]:
            raise RequestRejected(400, "The requested combination of response modalities is not supported.")
        if "responseSchema" in config or "responseMimeType" in config:
            raise RequestRejected(400, f"JSON mode is not enabled for models/{model}")
        voice = config.get("speechConfig", {}).get("voiceConfig", {}).get("prebuiltVoiceConfig", {})
        if not voice.get("voiceName"):
            raise RequestRejected(400, "speech_config.voice_config: a voice name is required")
        if fault is not None and fault.text is not None:
            return [{"text": fault.text}], math.ceil(len(fault.text) / 4), 0, "STOP"
        pcm = tone_pcm16(len(prompt_text))
        data = fault.audio_data if fault is not None and fault.audio_data is not None else b64(pcm)
        seconds = len(pcm) / 2 / PCM_RATE
        part = {"inlineData": {"mimeType": f"audio/L16;codec=pcm;rate={PCM_RATE}", "data": data}}
        return [part], math.ceil(seconds * 25), 0, "STOP"


# --- request checks ----------------------------------------------------------------------------------


def _read_contents(body: Mapping[str, Any]) -> tuple[str, int]:
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise RequestRejected(400, "* GenerateContentRequest.contents: contents is not specified")
    text, audio = "", 0
    for content in contents:
        for part in content.get("parts") or []:
            if "text" in part:
                text += str(part["text"])
            inline = part.get("inlineData", part.get("inline_data"))
            if inline is not None:
                mime = str(inline.get("mimeType", inline.get("mime_type", "")))
                if not mime.startswith("audio/"):
                    raise RequestRejected(400, f"Unsupported MIME type: {mime}")
                try:
                    audio += len(base64.b64decode(str(inline.get("data", "")), validate=True))
                except (binascii.Error, ValueError) as exc:
                    raise RequestRejected(400, "Base64 decoding failed for inline_data.data") from exc
    return text, audio


def _check_schema(schema: Any, at: str) -> None:
    if not isinstance(schema, dict):
        raise RequestRejected(400, f"Invalid value at '{at}' (Schema)")
    for key in schema:
        if key not in _SCHEMA_FIELDS:
            raise RequestRejected(
                400, f"Invalid JSON payload received. Unknown name \"{key}\" at '{at}': Cannot find field."
            )
    if schema.get("type") not in _SCHEMA_TYPES:
        raise RequestRejected(400, f"Invalid value at '{at}.type' (Type), {json.dumps(schema.get('type'))}")
    properties = schema.get("properties") or {}
    for index, sub in enumerate(properties.values()):
        _check_schema(sub, f"{at}.properties[{index}].value")
    for name in schema.get("required") or []:
        if name not in properties:
            raise RequestRejected(400, f"'{at}': required property {name!r} is not defined")
    if "items" in schema:
        _check_schema(schema["items"], f"{at}.items")


def _fill(schema: Mapping[str, Any]) -> Any:
    kind = schema["type"]
    if kind == "OBJECT":
        properties = schema.get("properties") or {}
        order = schema.get("propertyOrdering") or list(properties)
        return {name: _fill(properties[name]) for name in order}
    if kind == "ARRAY":
        return [_fill(schema["items"])]
    if kind == "STRING":
        return schema["enum"][0] if schema.get("enum") else "fake text"
    if kind == "NUMBER":
        return 0.75
    if kind == "INTEGER":
        return 1
    if kind == "BOOLEAN":
        return True
    return None


# --- wire helpers ------------------------------------------------------------------------------------


def _api_key_invalid() -> list[dict[str, Any]]:
    return [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
            "metadata": {"service": "generativelanguage.googleapis.com"},
        }
    ]


def _error(
    status: int,
    message: str,
    details: list[dict[str, Any]] | None = None,
    *,
    grpc_status: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": grpc_status or _GRPC_STATUS.get(status, "UNKNOWN"),
    }
    if details:
        error["details"] = details
    return web.json_response({"error": error}, status=status, headers=headers)


def retry_info(delay: str) -> dict[str, Any]:
    return {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def tone_pcm16(characters: int) -> bytes:
    """10 ms of a 440 Hz tone per character read, as 16-bit little-endian mono PCM."""
    samples = max(1, characters) * PCM_RATE // 100
    return b"".join(
        struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / PCM_RATE))) for i in range(samples)
    )


@asynccontextmanager
async def running_fake_gemini(api_key: str = API_KEY) -> AsyncIterator[FakeGemini]:
    fake = FakeGemini(api_key)
    app = web.Application()
    app.router.add_post("/v1beta/models/{model_method}", fake.handle)
    # A slow answer the client gave up on must not hold the shutdown up.
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", 0))
        site = web.SockSite(runner, sock)
        await site.start()
        fake.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        yield fake
    finally:
        await runner.cleanup()
        sock.close()
