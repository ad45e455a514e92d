"""OpenRouter adapter: the bilingual-coach tools over OpenRouter's OpenAI-compatible chat completions.

Wire format (checked against OpenRouter's API reference): ``POST {base_url}/chat/completions`` with
``Authorization: Bearer <key>`` and optional attribution headers ``HTTP-Referer`` / ``X-Title``;
structured output through ``response_format.json_schema``; audio input as an ``input_audio`` content
part; audio output via ``modalities: ["text", "audio"]`` plus ``audio: {voice, format}``, which
OpenRouter only serves streamed (chunks carry ``delta.audio``). Errors come either as an HTTP status
with ``{"error": {"code", "message", "metadata"}}``, or, once the model has started, inside a 200
response (a top-level ``error`` and ``finish_reason: "error"``); both are classified the same way.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx
import msgspec

from omni_toolrunner.providers.audio import wav_from_pcm16
from omni_toolrunner.providers.base import (
    ProviderError,
    ProviderErrorKind,
    ToolCall,
    ToolOutcome,
    Usage,
)
from omni_toolrunner.providers.http_errors import classify_status as _classify
from omni_toolrunner.providers.http_errors import error_message, openai_error_message
from omni_toolrunner.providers.http_errors import retry_after as _retry_after
from omni_toolrunner.providers.http_errors import shorten as _shorten
from omni_toolrunner.providers.openrouter_tools import (
    ALL_TOOLS,
    JSON_TOOLS,
    STT_TRANSCRIBE,
    TTS_SPEAK,
    JsonToolSpec,
    ToolConfig,
    TtsInput,
    tts_prompt,
)

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

PROVIDER = "openrouter"
DEFAULT_BASE_URL = "https://openrouter.ai/api/v1"
DEFAULT_MODEL = "openai/gpt-4o-mini"
# Tools that need a modality the default text model lacks get a model that has it.
DEFAULT_TOOL_MODELS: Mapping[str, str] = {
    STT_TRANSCRIBE: "google/gemini-2.5-flash",
    TTS_SPEAK: "openai/gpt-audio-mini",
}
# Workflow files name models loosely ("deepseek-r1"); OpenRouter wants vendor-qualified slugs.
MODEL_ALIASES: Mapping[str, str] = {
    "deepseek-r1": "deepseek/deepseek-r1",
    "gpt-4o-mini": "openai/gpt-4o-mini",
    "gemini-2.5-flash": "google/gemini-2.5-flash",
    "gpt-audio-mini": "openai/gpt-audio-mini",
}
DEFAULT_VOICE = "alloy"
DEFAULT_APP_TITLE = "Omni"

_CODE_FENCE = re.compile(r"^\s*```(?:json)?\s*(?P<body>.*?)\s*```\s*$", re.DOTALL)


@dataclass(slots=True)
class _Reply:
    """What a completion said, collected from a JSON body or an SSE stream."""

    response_id: str | None = None
    model: str | None = None
    content: str = ""
    finish_reason: str | None = None
    audio: bytearray = field(default_factory=bytearray)
    audio_transcript: str = ""
    usage: Usage | None = None


class OpenRouterAdapter:
    """Serves ``stt.transcribe``, ``nlu.analyze``, ``mt.translate``, ``feedback.generate``, ``tts.speak``.

    Pass ``client`` to share a connection pool (the adapter then leaves closing it to you); without
    one the adapter owns a client and :meth:`aclose` closes it. An empty ``api_key`` makes every call
    fail with ``unavailable`` rather than failing construction, so a runner can still start, register
    and report why its tools do not work.
    """

    def __init__(
        self,
        api_key: str | None,
        base_url: str = DEFAULT_BASE_URL,
        default_model: str = DEFAULT_MODEL,
        client: httpx.AsyncClient | None = None,
        *,
        tool_models: Mapping[str, str] | None = None,
        app_url: str | None = None,
        app_title: str | None = DEFAULT_APP_TITLE,
        require_parameters: bool = True,
    ) -> None:
        self._api_key = api_key or None
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._default_model = default_model
        self._tool_models = {**DEFAULT_TOOL_MODELS, **(tool_models or {})}
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient()
        self._require_parameters = require_parameters
        self._attribution: dict[str, str] = {}
        if app_url:
            self._attribution["HTTP-Referer"] = app_url
        if app_title:
            # X-Title is what OpenRouter documents for app names; X-OpenRouter-Title is its newer spelling.
            self._attribution["X-Title"] = app_title
            self._attribution["X-OpenRouter-Title"] = app_title

    @property
    def provider(self) -> str:
        return PROVIDER

    @property
    def tools(self) -> frozenset[str]:
        return ALL_TOOLS

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def call(self, request: ToolCall) -> ToolOutcome:
        if request.tool not in ALL_TOOLS:
            raise ProviderError(ProviderErrorKind.UNKNOWN_TOOL, f"openrouter does not serve {request.tool!r}")
        if self._api_key is None:
            raise ProviderError(ProviderErrorKind.UNAVAILABLE, "no OpenRouter API key is configured")
        config = _convert(request.config, ToolConfig, "config")
        model = self.model_for(request.tool, request.config)
        started = time.monotonic()
        try:
            try:
                async with asyncio.timeout(request.timeout_s):
                    if request.tool == TTS_SPEAK:
                        outcome = await self._speak(request, config, model)
                    else:
                        outcome = await self._structured(JSON_TOOLS[request.tool], request, config, model)
            except TimeoutError as exc:
                raise ProviderError(
                    ProviderErrorKind.TIMEOUT, f"no complete answer within {request.timeout_s:g}s"
                ) from exc
        except ProviderError as exc:
            logger.info(
                "openrouter %s failed: %s",
                request.tool,
                exc,
                extra={"idempotency_key": request.idempotency_key, "model": model},
            )
            raise
        logger.debug(
            "openrouter %s answered in %.0f ms",
            request.tool,
            (time.monotonic() - started) * 1000,
            extra={"idempotency_key": request.idempotency_key, "model": outcome.model},
        )
        return outcome

    def model_for(self, tool: str, config: Mapping[str, Any] | None = None) -> str:
        """The OpenRouter model a call of ``tool`` with step ``config`` goes to (e.g. for telemetry).

        ``config["model"]`` wins, then the per-tool default (audio tools need audio-capable models),
        then ``default_model``; short names from workflow files are expanded to vendor slugs.
        """
        named = (config or {}).get("model")
        model = (
            named if isinstance(named, str) and named else self._tool_models.get(tool, self._default_model)
        )
        return MODEL_ALIASES.get(model, model)

    # --- tools -----------------------------------------------------------------------------------------

    async def _structured(
        self, spec: JsonToolSpec, request: ToolCall, config: ToolConfig, model: str
    ) -> ToolOutcome:
        data = _convert(request.input, spec.input_type, "input")
        try:
            content = spec.user_content(data)
        except ValueError as exc:
            raise ProviderError(ProviderErrorKind.BAD_REQUEST, str(exc)) from exc
        body: dict[str, Any] = {
            "model": model,
            "messages": [
                {"role": "system", "content": spec.system_prompt},
                {"role": "user", "content": content},
            ],
            "response_format": spec.response_format(),
            "max_tokens": config.max_tokens or spec.max_tokens,
            "temperature": spec.temperature if config.temperature is None else config.temperature,
            "stream": False,
        }
        if self._require_parameters:
            # Without this OpenRouter may route to a provider that ignores response_format.
            body["provider"] = {"require_parameters": True}
        reply = await self._complete(body, request)
        if reply.finish_reason == "length":
            raise ProviderError(
                ProviderErrorKind.MALFORMED_RESPONSE,
                "the answer was cut off by max_tokens before the JSON ended",
            )
        try:
            parsed = msgspec.json.decode(
                _strip_code_fence(reply.content).encode(), type=spec.output_type, strict=False
            )
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
        data = _convert(request.input, TtsInput, "input")
        # pcm16 is the format audio models accept when streaming; it is wrapped into WAV below.
        wire_format = config.audio_format or "pcm16"
        body: dict[str, Any] = {
            "model": model,
            "messages": [
                {"role": "system", "content": tts_prompt(data.language)},
                {"role": "user", "content": data.text},
            ],
            "modalities": ["text", "audio"],
            "audio": {"voice": data.voice or config.voice or DEFAULT_VOICE, "format": wire_format},
            "stream": True,
        }
        if config.max_tokens is not None:
            body["max_tokens"] = config.max_tokens
        if config.temperature is not None:
            body["temperature"] = config.temperature
        reply = await self._complete(body, request)
        if not reply.audio:
            raise ProviderError(ProviderErrorKind.MALFORMED_RESPONSE, "the answer carried no audio")
        audio = bytes(reply.audio)
        out_format = wire_format
        if wire_format == "pcm16":
            audio, out_format = wav_from_pcm16(audio), "wav"
        output = {
            "audioData": base64.b64encode(audio).decode("ascii"),
            "format": out_format,
            "text": reply.audio_transcript or data.text,
        }
        return ToolOutcome(
            output=output, usage=reply.usage, model=reply.model or model, response_id=reply.response_id
        )

    # --- HTTP ------------------------------------------------------------------------------------------

    def _headers(self, request: ToolCall) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self._api_key}",
            "Content-Type": "application/json",
            "Idempotency-Key": request.idempotency_key,
            **self._attribution,
        }

    async def _complete(self, body: Mapping[str, Any], request: ToolCall) -> _Reply:
        payload = msgspec.json.encode(body)
        try:
            async with self._client.stream(
                "POST",
                self._url,
                content=payload,
                headers=self._headers(request),
                timeout=httpx.Timeout(request.timeout_s),
            ) as response:
                if response.status_code != 200:
                    raise _status_error(response.status_code, await response.aread(), response.headers)
                if response.headers.get("content-type", "").startswith("text/event-stream"):
                    return await _read_stream(response.aiter_lines())
                return _read_json(await response.aread())
        except httpx.TimeoutException as exc:
            raise ProviderError(
                ProviderErrorKind.TIMEOUT, f"OpenRouter did not answer in time ({exc!r})"
            ) from exc
        except httpx.TransportError as exc:
            raise ProviderError(
                ProviderErrorKind.UNAVAILABLE, f"cannot reach OpenRouter: {exc!r}", retryable=True
            ) from exc


# --- response reading --------------------------------------------------------------------------------


def _convert(value: Mapping[str, Any], kind: type[_T], what: str) -> _T:
    try:
        return msgspec.convert(value, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise ProviderError(ProviderErrorKind.BAD_REQUEST, f"invalid {what}: {exc}") from exc


def _strip_code_fence(content: str) -> str:
    # Some models wrap JSON in a Markdown fence even under structured output.
    match = _CODE_FENCE.match(content)
    return match.group("body") if match else content


def _read_json(raw: bytes) -> _Reply:
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise ProviderError(ProviderErrorKind.MALFORMED_RESPONSE, "the response body is not JSON") from exc
    if not isinstance(body, dict):
        raise ProviderError(ProviderErrorKind.MALFORMED_RESPONSE, "the response body is not a JSON object")
    _raise_in_band_error(body)
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ProviderError(ProviderErrorKind.MALFORMED_RESPONSE, "the response has no choices")
    choice = choices[0]
    _raise_in_band_error(choice)
    message = choice.get("message")
    if not isinstance(message, dict):
        raise ProviderError(ProviderErrorKind.MALFORMED_RESPONSE, "the first choice has no message")
    reply = _Reply(
        response_id=_str_or_none(body.get("id")),
        model=_str_or_none(body.get("model")),
        content=_text_of(message.get("content")),
        finish_reason=_str_or_none(choice.get("finish_reason")),
        usage=_usage(body.get("usage")),
    )
    audio = message.get("audio")
    if isinstance(audio, dict):
        _add_audio(reply, audio)
    return reply


async def _read_stream(lines: AsyncIterator[str]) -> _Reply:
    reply = _Reply()
    finished = False
    data: list[str] = []
    async for line in lines:
        if line.startswith(":"):
            continue  # SSE comment: OpenRouter's keep-alive ": OPENROUTER PROCESSING"
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
            continue
        if line or not data:
            continue  # other SSE fields (event:, id:) carry nothing we use
        event, data = "\n".join(data), []
        if event == "[DONE]":
            finished = True
            break
        finished = _apply_chunk(reply, event) or finished
    if data and data != ["[DONE]"]:
        finished = _apply_chunk(reply, "\n".join(data)) or finished
    elif data:
        finished = True
    if not finished:
        raise ProviderError(
            ProviderErrorKind.MALFORMED_RESPONSE, "the stream ended before the answer was complete"
        )
    return reply


def _apply_chunk(reply: _Reply, event: str) -> bool:
    """Fold one stream chunk into ``reply``; True once the model reported why it stopped."""
    try:
        chunk = json.loads(event)
    except ValueError as exc:
        raise ProviderError(ProviderErrorKind.MALFORMED_RESPONSE, "a stream chunk is not JSON") from exc
    if not isinstance(chunk, dict):
        raise ProviderError(ProviderErrorKind.MALFORMED_RESPONSE, "a stream chunk is not a JSON object")
    _raise_in_band_error(chunk)
    reply.response_id = reply.response_id or _str_or_none(chunk.get("id"))
    reply.model = reply.model or _str_or_none(chunk.get("model"))
    usage = _usage(chunk.get("usage"))
    if usage is not None:
        reply.usage = usage
    finished = False
    for choice in chunk.get("choices") or []:
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            continue
        _raise_in_band_error(choice)
        delta = choice.get("delta")
        if isinstance(delta, dict):
            reply.content += _text_of(delta.get("content"))
            audio = delta.get("audio")
            if isinstance(audio, dict):
                _add_audio(reply, audio)
        reason = _str_or_none(choice.get("finish_reason"))
        if reason is not None:
            reply.finish_reason = reason
            finished = True
    return finished


def _add_audio(reply: _Reply, audio: Mapping[str, Any]) -> None:
    data = audio.get("data")
    if isinstance(data, str) and data:
        try:
            # Chunks are decoded one by one: each is its own base64 string, padding included.
            reply.audio += base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ProviderError(
                ProviderErrorKind.MALFORMED_RESPONSE, "audio data is not valid base64"
            ) from exc
    transcript = audio.get("transcript")
    if isinstance(transcript, str):
        reply.audio_transcript += transcript


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        # Some providers return content as parts; only text parts matter here.
        return "".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _usage(raw: object) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    prompt, completion = _int(raw.get("prompt_tokens")), _int(raw.get("completion_tokens"))
    cost = raw.get("cost")
    return Usage(
        input_tokens=prompt,
        output_tokens=completion,
        total_tokens=_int(raw.get("total_tokens")) or prompt + completion,
        cost=float(cost) if isinstance(cost, int | float) and not isinstance(cost, bool) else None,
    )


# --- error classification ----------------------------------------------------------------------------


def _raise_in_band_error(container: Mapping[str, Any]) -> None:
    """Raise the error a 200 response or chunk carries (OpenRouter reports late failures this way)."""
    error = container.get("error")
    if error is None and container.get("finish_reason") != "error":
        return
    code: object = None
    message = "the model stopped with an error"
    if isinstance(error, dict):
        code = error.get("code")
        message = str(error.get("message") or message)
    elif isinstance(error, str):
        message = error
    if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599:
        raise _classify(code, message, retry_after_s=None)
    # Mid-stream failures use string codes such as "server_error": upstream trouble, worth a retry.
    raise ProviderError(ProviderErrorKind.SERVER, _shorten(message))


def _status_error(status: int, raw: bytes, headers: httpx.Headers) -> ProviderError:
    message = _error_message(raw) or f"HTTP {status}"
    return _classify(status, message, retry_after_s=_retry_after(headers.get("Retry-After")))


def _error_message(raw: bytes) -> str | None:
    return error_message(raw, openai_error_message)
