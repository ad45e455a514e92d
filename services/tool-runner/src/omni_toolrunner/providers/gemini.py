"""Gemini adapter: the bilingual-coach tools over Google's own Generative Language API.

Wire format (checked against Google's Gemini API documentation and the error bodies it is known to
send): ``POST {base_url}/v1beta/models/{model}:generateContent`` with the key in ``x-goog-api-key``.
The system prompt goes in ``systemInstruction``, the user turn in ``contents[0].parts`` (``text``
parts and, for audio, ``inlineData {mimeType, data}``). Structured output is
``generationConfig.responseMimeType: application/json`` plus ``responseSchema``, an OpenAPI 3.0 subset
that refuses ``additionalProperties`` and wants upper-case types, so the shared JSON schemas are
translated (:func:`gemini_schema`). Speech comes from the TTS models with ``responseModalities:
["AUDIO"]`` and ``speechConfig`` as an ``inlineData`` part of ``audio/L16;codec=pcm;rate=24000`` (raw
PCM, wrapped into WAV here); TTS models refuse a system instruction, so ``tts.speak`` sends the text
alone.

The answer is ``candidates[0].content.parts[].text`` with a ``finishReason`` and ``usageMetadata``.
Errors are ``{"error": {"code", "message", "status", "details"}}``; a rejected key is a 400 whose
``ErrorInfo`` reason is ``API_KEY_INVALID``, and a 429 says when to come back in a Retry-After header
or a ``RetryInfo`` detail (``retryDelay: "7s"``).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
import msgspec

from omni_toolrunner.providers.audio import PCM16_SAMPLE_RATE, wav_from_pcm16
from omni_toolrunner.providers.base import (
    ProviderError,
    ProviderErrorKind,
    ToolCall,
    ToolOutcome,
    Usage,
)
from omni_toolrunner.providers.declaration import ProviderBinding, ProviderDeclaration, ProviderEnv
from omni_toolrunner.providers.http_client import HttpAdapter, failures_logged, within_deadline
from omni_toolrunner.providers.http_errors import (
    classify_status,
    convert,
    decode_json_object,
    post_json,
    retry_after,
    shorten,
)
from omni_toolrunner.providers.tool_specs import (
    ALL_TOOLS,
    JSON_TOOLS,
    TTS_SPEAK,
    JsonToolSpec,
    ToolConfig,
    TtsInput,
    tool_docs,
)

if TYPE_CHECKING:
    from omni_toolrunner.settings import ToolRunnerSettings

logger = logging.getLogger(__name__)

PROVIDER = "gemini"
ENV = ProviderEnv("GEMINI_API_KEY", base_url="GEMINI_BASE_URL", model="GEMINI_MODEL")
DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
API_VERSION = "v1beta"
DEFAULT_MODEL = "gemini-2.5-flash"
DEFAULT_TOOL_MODELS: Mapping[str, str] = {TTS_SPEAK: "gemini-2.5-flash-preview-tts"}
DEFAULT_VOICE = "Kore"

# Gemini 2.5 Flash thinks by default, and thinking tokens count against maxOutputTokens: the token
# caps of the shared tool specs are sized for the answer alone. These models accept a budget of 0
# (Pro does not: it only runs thinking, and gets its default).
THINKING_OPTIONAL_MODELS = frozenset({"gemini-2.5-flash", "gemini-2.5-flash-lite"})

# Candidates stopped by content policy: sending the same content again is refused again.
_BLOCKED_FINISH_REASONS = frozenset(
    {"SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT"}
)
_AUDIO_MIME_TYPES: Mapping[str, str] = {
    "wav": "audio/wav",
    "mp3": "audio/mp3",
    "aiff": "audio/aiff",
    "aac": "audio/aac",
    "ogg": "audio/ogg",
    "flac": "audio/flac",
    "webm": "audio/webm",
    "m4a": "audio/mp4",
}
# What the responseSchema (OpenAPI 3.0 Schema subset) accepts besides the translated keys.
_SCHEMA_KEYS_KEPT = frozenset({"description", "enum", "format", "nullable", "minItems", "maxItems"})
_PCM_RATE = re.compile(r";\s*rate=(?P<rate>\d+)", re.IGNORECASE)
_RETRY_DELAY = re.compile(r"^\s*(?P<seconds>\d+(?:\.\d+)?)s\s*$")


@dataclass(frozen=True, slots=True)
class GeminiPrice:
    """USD per million tokens. ``output`` includes thinking tokens, which Google bills as output."""

    input: float
    output: float
    audio_input: float | None = None  # audio prompt tokens, where they cost more than text
    max_prompt_tokens: int | None = None  # longer prompts are billed at a higher tier not listed here


# Gemini Developer API, paid tier, standard (not batch or priority) rates as published at
# https://ai.google.dev/gemini-api/docs/pricing: the text rates re-checked against 2026 copies of that
# page, the audio-input and TTS rates as it listed them in 2025. A model not listed has cost None.
DEFAULT_PRICES: Mapping[str, GeminiPrice] = {
    "gemini-2.5-flash": GeminiPrice(input=0.30, audio_input=1.00, output=2.50),
    "gemini-2.5-flash-lite": GeminiPrice(input=0.10, audio_input=0.30, output=0.40),
    "gemini-2.5-pro": GeminiPrice(input=1.25, output=10.00, max_prompt_tokens=200_000),
    "gemini-2.5-flash-preview-tts": GeminiPrice(input=0.50, output=10.00),
    "gemini-2.5-pro-preview-tts": GeminiPrice(input=1.00, output=20.00),
}


@dataclass(slots=True)
class _Reply:
    """What one ``generateContent`` answer said."""

    response_id: str | None = None
    model: str | None = None
    text: str = ""
    finish_reason: str | None = None
    audio: bytearray = field(default_factory=bytearray)
    audio_mime_type: str | None = None
    usage: Usage | None = None
    thoughts_tokens: int = 0


class GeminiAdapter(HttpAdapter):
    """Serves ``stt.transcribe``, ``nlu.analyze``, ``mt.translate``, ``feedback.generate``, ``tts.speak``.

    Same contract as the OpenRouter adapter: pass ``client`` to share a connection pool (closing it
    stays yours), and an empty ``api_key`` makes every call fail with ``unavailable`` instead of
    failing construction. Prompts, schemas and output validation are the shared tool specs'.
    """

    def __init__(
        self,
        api_key: str | None,
        base_url: str = DEFAULT_BASE_URL,
        default_model: str = DEFAULT_MODEL,
        client: httpx.AsyncClient | None = None,
        *,
        tool_models: Mapping[str, str] | None = None,
        prices: Mapping[str, GeminiPrice] | None = None,
    ) -> None:
        self._api_key = api_key or None
        self._base_url = base_url.rstrip("/")
        self._default_model = default_model
        self._tool_models = {**DEFAULT_TOOL_MODELS, **(tool_models or {})}
        self._prices = DEFAULT_PRICES if prices is None else prices
        super().__init__(client)

    @property
    def provider(self) -> str:
        return PROVIDER

    @property
    def tools(self) -> frozenset[str]:
        return ALL_TOOLS

    async def call(self, request: ToolCall) -> ToolOutcome:
        if request.tool not in ALL_TOOLS:
            raise ProviderError(ProviderErrorKind.UNKNOWN_TOOL, f"gemini does not serve {request.tool!r}")
        if self._api_key is None:
            raise ProviderError(
                ProviderErrorKind.UNAVAILABLE, f"no Gemini API key is configured ({ENV.api_key})"
            )
        config = convert(request.config, ToolConfig, "config")
        model = self.model_for(request.tool, request.config)
        started = time.monotonic()
        with failures_logged(logger, "gemini", request, model):
            async with within_deadline(request):
                if request.tool == TTS_SPEAK:
                    outcome = await self._speak(request, config, model)
                else:
                    outcome = await self._structured(JSON_TOOLS[request.tool], request, config, model)
        logger.debug(
            "gemini %s answered in %.0f ms",
            request.tool,
            (time.monotonic() - started) * 1000,
            extra={"idempotency_key": request.idempotency_key, "model": outcome.model},
        )
        return outcome

    def model_for(self, tool: str, config: Mapping[str, Any] | None = None) -> str:
        """The Gemini model a call of ``tool`` with step ``config`` goes to (e.g. for telemetry).

        ``config["model"]`` wins, then the per-tool default (speech needs a TTS model), then
        ``default_model``. OpenRouter-style slugs (``google/gemini-2.5-flash``) and resource names
        (``models/gemini-2.5-flash``) are reduced to the bare model id.
        """
        named = (config or {}).get("model")
        model = (
            named if isinstance(named, str) and named else self._tool_models.get(tool, self._default_model)
        )
        return model.removeprefix("google/").removeprefix("models/")

    # --- tools -----------------------------------------------------------------------------------------

    async def _structured(
        self, spec: JsonToolSpec, request: ToolCall, config: ToolConfig, model: str
    ) -> ToolOutcome:
        data = convert(request.input, spec.input_type, "input")
        try:
            content = spec.user_content(data)
        except ValueError as exc:
            raise ProviderError(ProviderErrorKind.BAD_REQUEST, str(exc)) from exc
        generation: dict[str, Any] = {
            "responseMimeType": "application/json",
            "responseSchema": gemini_schema(spec.schema),
            "maxOutputTokens": config.max_tokens or spec.max_tokens,
            "temperature": spec.temperature if config.temperature is None else config.temperature,
        }
        if model in THINKING_OPTIONAL_MODELS:
            generation["thinkingConfig"] = {"thinkingBudget": 0}
        body = {
            "systemInstruction": {"parts": [{"text": spec.system_prompt}]},
            "contents": [{"role": "user", "parts": gemini_parts(content)}],
            "generationConfig": generation,
        }
        reply = await self._generate(model, body, request)
        _raise_for_finish(reply)
        if not reply.text.strip():
            raise ProviderError(ProviderErrorKind.MALFORMED_RESPONSE, "the answer carried no text")
        try:
            parsed = msgspec.json.decode(reply.text.encode(), type=spec.output_type, strict=False)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ProviderError(
                ProviderErrorKind.MALFORMED_RESPONSE,
                f"{spec.schema_name} answer does not match its schema: {exc}",
            ) from exc
        return ToolOutcome(
            output=spec.finish(parsed),
            usage=reply.usage,
            model=reply.model or model,
            response_id=reply.response_id,
        )

    async def _speak(self, request: ToolCall, config: ToolConfig, model: str) -> ToolOutcome:
        data = convert(request.input, TtsInput, "input")
        if config.audio_format not in (None, "wav", "pcm16"):
            # Gemini speaks raw PCM only; it is wrapped into WAV, and nothing here transcodes.
            raise ProviderError(
                ProviderErrorKind.BAD_REQUEST,
                f"gemini speech comes as wav only, not {config.audio_format!r}",
            )
        generation: dict[str, Any] = {
            "responseModalities": ["AUDIO"],
            "speechConfig": {
                "voiceConfig": {
                    "prebuiltVoiceConfig": {"voiceName": data.voice or config.voice or DEFAULT_VOICE}
                }
            },
        }
        if config.max_tokens is not None:
            generation["maxOutputTokens"] = config.max_tokens
        if config.temperature is not None:
            generation["temperature"] = config.temperature
        body = {
            "contents": [{"role": "user", "parts": [{"text": data.text}]}],
            "generationConfig": generation,
        }
        reply = await self._generate(model, body, request)
        _raise_for_finish(reply)
        if not reply.audio:
            raise ProviderError(ProviderErrorKind.MALFORMED_RESPONSE, "the answer carried no audio")
        output = {
            "audioData": base64.b64encode(_as_wav(bytes(reply.audio), reply.audio_mime_type)).decode("ascii"),
            "format": "wav",
            "text": data.text,
        }
        return ToolOutcome(
            output=output, usage=reply.usage, model=reply.model or model, response_id=reply.response_id
        )

    # --- HTTP ------------------------------------------------------------------------------------------

    async def _generate(self, model: str, body: Mapping[str, Any], request: ToolCall) -> _Reply:
        url = f"{self._base_url}/{API_VERSION}/models/{quote(model, safe='')}:generateContent"
        # Google takes no idempotency key: a retried generation is a new one, billed again.
        response = await post_json(
            self._client,
            url,
            body,
            provider="Gemini",
            headers={"x-goog-api-key": self._api_key or ""},
            timeout_s=request.timeout_s,
        )
        if response.status_code != 200:
            raise _status_error(response.status_code, response.content, response.headers)
        return self._read(response.content, model)

    def _read(self, raw: bytes, model: str) -> _Reply:
        body = decode_json_object(raw, "Gemini")
        reply = _Reply(
            response_id=_str_or_none(body.get("responseId")),
            model=_str_or_none(body.get("modelVersion")),
        )
        metadata = body.get("usageMetadata")
        if isinstance(metadata, dict):
            reply.usage = usage_of(metadata, self._prices.get(model))
            reply.thoughts_tokens = _int(metadata.get("thoughtsTokenCount"))
        candidates = body.get("candidates")
        if not isinstance(candidates, list) or not candidates:
            feedback = body.get("promptFeedback")
            if isinstance(feedback, dict) and feedback.get("blockReason"):
                raise ProviderError(
                    ProviderErrorKind.BAD_REQUEST, f"the prompt was blocked ({feedback['blockReason']})"
                )
            raise ProviderError(ProviderErrorKind.MALFORMED_RESPONSE, "the response has no candidates")
        candidate = candidates[0]
        if not isinstance(candidate, dict):
            raise ProviderError(ProviderErrorKind.MALFORMED_RESPONSE, "the first candidate is not an object")
        reply.finish_reason = _str_or_none(candidate.get("finishReason"))
        content = candidate.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        for part in parts if isinstance(parts, list) else []:
            if isinstance(part, dict) and not part.get("thought"):
                _add_part(reply, part)
        return reply


# --- request building --------------------------------------------------------------------------------


def gemini_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """Translate a tool's strict JSON schema into Gemini's ``responseSchema`` (OpenAPI 3.0 subset).

    Types become upper-case enum names, ``additionalProperties`` (refused as an unknown field) is
    dropped, and objects list ``propertyOrdering`` so the model writes fields in the schema's order.
    """
    out: dict[str, Any] = {key: value for key, value in schema.items() if key in _SCHEMA_KEYS_KEPT}
    kind = schema.get("type")
    if isinstance(kind, str):
        out["type"] = kind.upper()
    properties = schema.get("properties")
    if isinstance(properties, Mapping):
        out["properties"] = {name: gemini_schema(sub) for name, sub in properties.items()}
        out["propertyOrdering"] = list(properties)
    if "required" in schema:
        out["required"] = list(schema["required"])
    items = schema.get("items")
    if isinstance(items, Mapping):
        out["items"] = gemini_schema(items)
    return out


def gemini_parts(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Turn a tool's chat-completions user content into Gemini ``parts``."""
    if isinstance(content, str):
        return [{"text": content}]
    parts: list[dict[str, Any]] = []
    for item in content:
        if item.get("type") == "text":
            parts.append({"text": item["text"]})
        elif item.get("type") == "input_audio":
            audio = item["input_audio"]
            fmt = str(audio["format"]).lower()
            mime_type = _AUDIO_MIME_TYPES.get(fmt, f"audio/{fmt}")
            parts.append({"inlineData": {"mimeType": mime_type, "data": audio["data"]}})
        else:
            raise ValueError(f"no Gemini part for content of type {item.get('type')!r}")
    return parts


# --- response reading --------------------------------------------------------------------------------


def _add_part(reply: _Reply, part: Mapping[str, Any]) -> None:
    text = part.get("text")
    if isinstance(text, str):
        reply.text += text
    inline = part.get("inlineData", part.get("inline_data"))
    if not isinstance(inline, dict):
        return
    data = inline.get("data")
    if not isinstance(data, str) or not data:
        return
    try:
        reply.audio += base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProviderError(ProviderErrorKind.MALFORMED_RESPONSE, "inline data is not valid base64") from exc
    mime_type = inline.get("mimeType", inline.get("mime_type"))
    reply.audio_mime_type = reply.audio_mime_type or _str_or_none(mime_type)


def _raise_for_finish(reply: _Reply) -> None:
    reason = reply.finish_reason
    if reason in (None, "STOP", "FINISH_REASON_UNSPECIFIED"):
        return
    if reason == "MAX_TOKENS":
        thinking = f", {reply.thoughts_tokens} of them thinking" if reply.thoughts_tokens else ""
        raise ProviderError(
            ProviderErrorKind.MALFORMED_RESPONSE,
            f"the answer was cut off by maxOutputTokens before it ended{thinking}",
        )
    if reason in _BLOCKED_FINISH_REASONS:
        raise ProviderError(ProviderErrorKind.BAD_REQUEST, f"the answer was blocked ({reason})")
    # RECITATION, OTHER, MALFORMED_FUNCTION_CALL...: a sampling accident, worth another try.
    raise ProviderError(ProviderErrorKind.MALFORMED_RESPONSE, f"the model stopped early ({reason})")


def _as_wav(audio: bytes, mime_type: str | None) -> bytes:
    kind = (mime_type or "").split(";", 1)[0].strip().lower()
    if kind in ("audio/wav", "audio/x-wav", "audio/wave"):
        return audio
    if kind in ("audio/l16", "audio/pcm", ""):
        # 16-bit little-endian mono; the rate is in the MIME parameters (24 kHz when unstated).
        match = _PCM_RATE.search(mime_type or "")
        return wav_from_pcm16(audio, int(match.group("rate")) if match else PCM16_SAMPLE_RATE)
    raise ProviderError(ProviderErrorKind.MALFORMED_RESPONSE, f"unexpected audio type {mime_type!r}")


def usage_of(metadata: Mapping[str, Any], price: GeminiPrice | None) -> Usage:
    """Tokens and cost from ``usageMetadata``; thinking tokens count (and are billed) as output."""
    prompt = _int(metadata.get("promptTokenCount"))
    output = _int(metadata.get("candidatesTokenCount")) + _int(metadata.get("thoughtsTokenCount"))
    total = _int(metadata.get("totalTokenCount")) or prompt + output
    cost: float | None = None
    if price is not None and (price.max_prompt_tokens is None or prompt <= price.max_prompt_tokens):
        audio = 0
        if price.audio_input is not None:
            for detail in metadata.get("promptTokensDetails") or []:
                if isinstance(detail, dict) and detail.get("modality") == "AUDIO":
                    audio += _int(detail.get("tokenCount"))
        audio = min(audio, prompt)
        cost = (
            (prompt - audio) * price.input + audio * (price.audio_input or 0.0) + output * price.output
        ) / 1_000_000
    return Usage(input_tokens=prompt, output_tokens=output, total_tokens=total, cost=cost)


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


# --- error classification ----------------------------------------------------------------------------


def _status_error(status: int, raw: bytes, headers: httpx.Headers) -> ProviderError:
    error = _error_object(raw)
    message = str(error.get("message") or "") or raw.decode("utf-8", errors="replace").strip()
    message = message or f"HTTP {status}"
    details = [detail for detail in error.get("details") or [] if isinstance(detail, dict)]
    # A key Google does not know is a 400 INVALID_ARGUMENT, told apart only by its ErrorInfo reason.
    if any(str(detail.get("reason", "")).startswith("API_KEY_") for detail in details):
        return ProviderError(ProviderErrorKind.AUTH, shorten(message), status=status)
    retry_after_s = retry_after(headers.get("Retry-After"))
    if retry_after_s is None:
        retry_after_s = retry_delay(details)
    return classify_status(status, message, retry_after_s=retry_after_s)


def _error_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError:
        return {}
    # Some Google front ends wrap the error in a one-element list.
    if isinstance(body, list) and body:
        body = body[0]
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


def retry_delay(details: list[dict[str, Any]]) -> float | None:
    """Seconds from a ``google.rpc.RetryInfo`` detail (``retryDelay`` is a JSON Duration, ``"7s"``)."""
    for detail in details:
        if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            match = _RETRY_DELAY.match(str(detail.get("retryDelay", "")))
            if match:
                return float(match.group("seconds"))
    return None


# --- declaration -------------------------------------------------------------------------------------


def _bind(
    settings: ToolRunnerSettings, environ: Mapping[str, str], client: httpx.AsyncClient
) -> ProviderBinding:
    key, base_url, model = ENV.read(environ)
    adapter = GeminiAdapter(key, base_url or DEFAULT_BASE_URL, model or DEFAULT_MODEL, client)
    return ProviderBinding(adapter, "generate_content", adapter.model_for, ENV.missing(key))


DECLARATION = ProviderDeclaration(name=PROVIDER, env=ENV, tools=tool_docs(ALL_TOOLS), bind=_bind)
