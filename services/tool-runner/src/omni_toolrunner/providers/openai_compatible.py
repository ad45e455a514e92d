"""The OpenAI-compatible family: one chat-completions adapter, configured per provider by a profile.

OpenRouter, DeepSeek, Qwen (DashScope compatible mode), Grok (xAI) and MiniMax all answer
``POST {base_url}/chat/completions`` with ``Authorization: Bearer <key>`` in OpenAI's shape. They
differ in what a :class:`ProviderProfile` records: the base URL and key variable, the default and
per-tool models, which tools they can serve at all (only OpenRouter routes to audio chat models),
how structured output is asked for (``json_schema`` strict, ``json_object`` with the schema in the
prompt, or the prompt alone), which extra headers and body fields they take, and how the cost of a
call is known (reported in ``usage`` or computed from the provider's published prices).

Wire details shared by all: structured output through ``response_format``; audio input as an
``input_audio`` content part; audio output via ``modalities: ["text", "audio"]`` plus ``audio: {voice,
format}``, served streamed (chunks carry ``delta.audio``). Errors come either as an HTTP status with
``{"error": {"code", "message"}}``, or, once the model has started, inside a 200 response (a top-level
``error`` and ``finish_reason: "error"``, as OpenRouter does); both are classified the same way.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

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
from omni_toolrunner.providers.declaration import (
    Bind,
    Idempotency,
    ProviderBinding,
    ProviderDeclaration,
    ProviderEnv,
)
from omni_toolrunner.providers.http_client import HttpAdapter, failures_logged, within_deadline
from omni_toolrunner.providers.http_errors import (
    classify_status,
    convert,
    openai_error_message,
    shorten,
    status_error,
)
from omni_toolrunner.providers.tool_specs import (
    ALL_TOOLS,
    FEEDBACK_GENERATE,
    JSON_TOOLS,
    MT_TRANSLATE,
    NLU_ANALYZE,
    STT_TRANSCRIBE,
    TTS_SPEAK,
    JsonToolSpec,
    ToolConfig,
    TtsInput,
    tool_docs,
    tts_prompt,
)

if TYPE_CHECKING:
    from omni_toolrunner.settings import ToolRunnerSettings

logger = logging.getLogger(__name__)

TEXT_TOOLS = frozenset({NLU_ANALYZE, MT_TRANSLATE, FEEDBACK_GENERATE})
DEFAULT_APP_TITLE = "Omni"

_CODE_FENCE = re.compile(r"^\s*```(?:json)?\s*(?P<body>.*?)\s*```\s*$", re.DOTALL)
# Reasoning models (MiniMax-M2 over /v1, some DeepSeek and Qwen deployments) may put their thinking
# inline in the content, before the answer.
_THINKING = re.compile(r"^\s*<think>.*?</think>\s*", re.DOTALL)
_USD_TICKS = 10_000_000_000  # xAI: 1 USD = 10^10 ticks


class StructuredOutput(StrEnum):
    """How a provider is asked for JSON that fits a tool's schema."""

    JSON_SCHEMA = "json_schema"  # response_format json_schema, strict: the provider enforces the schema
    JSON_OBJECT = "json_object"  # response_format json_object: valid JSON; the schema rides in the prompt
    PROMPT = "prompt"  # no response_format at all: the prompt asks for JSON, the answer is checked here


class CostSource(StrEnum):
    """Where the cost of one call comes from."""

    USAGE_COST = "usage_cost"  # usage.cost in USD credits (OpenRouter)
    USAGE_USD_TICKS = "usage_usd_ticks"  # usage.cost_in_usd_ticks, 10^-10 USD each (xAI)
    PRICE_TABLE = "price_table"  # tokens times the profile's published per-model prices; None when unlisted


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per million tokens, as the provider publishes them (standard tier, no batch discount)."""

    input_per_mtok: float
    output_per_mtok: float
    cached_input_per_mtok: float | None = None  # None: cached prompt tokens cost as much as others

    def cost(self, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0) -> float:
        cached = min(cached_input_tokens, input_tokens) if self.cached_input_per_mtok is not None else 0
        total = (
            (input_tokens - cached) * self.input_per_mtok
            + cached * (self.cached_input_per_mtok or 0.0)
            + output_tokens * self.output_per_mtok
        )
        return round(total / 1_000_000, 12)


@dataclass(frozen=True, slots=True)
class ProviderProfile:
    """What makes one OpenAI-compatible provider different from the next.

    ``json_schema_models`` lists model-name prefixes that get strict ``json_schema`` output even though
    the provider's general mode is weaker (Qwen enforces schemas on qwen-plus only). ``temperature_range``
    clamps the step's temperature into what the provider accepts. ``extra_body`` is merged into every
    request body. ``env`` names the key (the name the product documents first, then the provider's own),
    base URL and model variables. ``docs`` names where the profile's facts were checked.
    """

    name: str
    label: str
    base_url: str
    env: ProviderEnv
    default_model: str
    tools: frozenset[str]
    tool_models: Mapping[str, str] = field(default_factory=dict)
    model_aliases: Mapping[str, str] = field(default_factory=dict)
    structured_output: StructuredOutput = StructuredOutput.JSON_SCHEMA
    json_schema_models: tuple[str, ...] = ()
    idempotency_key: bool = False
    attribution_headers: bool = False  # OpenRouter's HTTP-Referer / X-Title app attribution
    require_parameters: bool = False  # OpenRouter's provider.require_parameters routing filter
    cost: CostSource = CostSource.PRICE_TABLE
    prices: Mapping[str, ModelPrice] = field(default_factory=dict)
    max_tokens_field: str = "max_tokens"
    temperature_range: tuple[float, float] = (0.0, 2.0)
    extra_body: Mapping[str, Any] = field(default_factory=dict)
    default_voice: str = "alloy"
    docs: tuple[str, ...] = ()

    def resolve_model(self, model: str) -> str:
        return self.model_aliases.get(model, model)

    def structured_output_for(self, model: str) -> StructuredOutput:
        if any(model.startswith(prefix) for prefix in self.json_schema_models):
            return StructuredOutput.JSON_SCHEMA
        return self.structured_output

    def price_of(self, model: str) -> ModelPrice | None:
        return _price_in(self.prices, model)


OPENROUTER = ProviderProfile(
    name="openrouter",
    label="OpenRouter",
    base_url="https://openrouter.ai/api/v1",
    env=ProviderEnv("OPENROUTER_API_KEY", base_url="OPENROUTER_BASE_URL", model="OPENROUTER_MODEL"),
    default_model="openai/gpt-4o-mini",
    tools=ALL_TOOLS,
    # Tools that need a modality the default text model lacks get a model that has it.
    tool_models={STT_TRANSCRIBE: "google/gemini-2.5-flash", TTS_SPEAK: "openai/gpt-audio-mini"},
    # Workflow files name models loosely ("deepseek-r1"); OpenRouter wants vendor-qualified slugs.
    model_aliases={
        "deepseek-r1": "deepseek/deepseek-r1",
        "gpt-4o-mini": "openai/gpt-4o-mini",
        "gemini-2.5-flash": "google/gemini-2.5-flash",
        "gpt-audio-mini": "openai/gpt-audio-mini",
    },
    idempotency_key=True,
    attribution_headers=True,
    require_parameters=True,
    cost=CostSource.USAGE_COST,
    docs=("https://openrouter.ai/docs/api-reference/overview",),
)

DEEPSEEK = ProviderProfile(
    name="deepseek",
    label="DeepSeek",
    # DeepSeek documents https://api.deepseek.com; /v1 is accepted for OpenAI compatibility (it is not
    # a model version), and clients that append /chat/completions need it.
    base_url="https://api.deepseek.com/v1",
    env=ProviderEnv("DEEPSEEK_API_KEY", base_url="DEEPSEEK_BASE_URL", model="DEEPSEEK_MODEL"),
    default_model="deepseek-chat",
    # Text in, text out only: no audio input or output, so neither stt.transcribe nor tts.speak.
    tools=TEXT_TOOLS,
    model_aliases={"deepseek-r1": "deepseek-reasoner", "deepseek-v3": "deepseek-chat"},
    # JSON Output is response_format json_object only; the prompt must say "json" and show the shape.
    structured_output=StructuredOutput.JSON_OBJECT,
    prices={
        "deepseek-chat": ModelPrice(0.27, 1.10, cached_input_per_mtok=0.07),
        "deepseek-reasoner": ModelPrice(0.55, 2.19, cached_input_per_mtok=0.14),
    },
    docs=(
        "https://api-docs.deepseek.com/",
        "https://api-docs.deepseek.com/guides/json_mode",
        "https://api-docs.deepseek.com/quick_start/pricing-details-usd",
    ),
)

QWEN = ProviderProfile(
    name="qwen",
    label="Qwen",
    # International (Singapore) endpoint; Beijing is https://dashscope.aliyuncs.com/compatible-mode/v1.
    base_url="https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
    env=ProviderEnv(
        "QWEN_MAX_API_KEY",
        key_aliases=("DASHSCOPE_API_KEY",),
        base_url="DASHSCOPE_BASE_URL",
        model="QWEN_MODEL",
    ),
    default_model="qwen-plus",
    # Qwen's audio models (qwen-omni, qwen3-asr) answer only streamed, take data-URI audio and no
    # response_format: not the shape these tools are written for, so the text tools only.
    tools=TEXT_TOOLS,
    # json_object on most Qwen models; strict json_schema only on the qwen-plus family (non-thinking).
    structured_output=StructuredOutput.JSON_OBJECT,
    json_schema_models=("qwen-plus", "qwen3.5-plus"),
    prices={
        "qwen-max": ModelPrice(1.6, 6.4),
        "qwen-plus": ModelPrice(0.4, 1.2),
        "qwen-turbo": ModelPrice(0.05, 0.2),
    },
    docs=(
        "https://www.alibabacloud.com/help/en/model-studio/compatibility-of-openai-with-dashscope",
        "https://www.alibabacloud.com/help/en/model-studio/qwen-structured-output",
        "https://www.alibabacloud.com/help/en/model-studio/billing-for-model-studio",
    ),
)

GROK = ProviderProfile(
    name="grok",
    label="xAI",
    base_url="https://api.x.ai/v1",
    env=ProviderEnv("GROK_API_KEY", key_aliases=("XAI_API_KEY",), base_url="XAI_BASE_URL", model="XAI_MODEL"),
    default_model="grok-4-1-fast-non-reasoning",
    # Chat completions take text and images only (voice is a separate realtime API).
    tools=TEXT_TOOLS,
    structured_output=StructuredOutput.JSON_SCHEMA,
    # Every response reports what was billed, discounts included.
    cost=CostSource.USAGE_USD_TICKS,
    docs=("https://docs.x.ai/docs/api-reference", "https://docs.x.ai/developers/cost-tracking"),
)

MINIMAX = ProviderProfile(
    name="minimax",
    label="MiniMax",
    # International endpoint; mainland China is https://api.minimaxi.com/v1.
    base_url="https://api.minimax.io/v1",
    env=ProviderEnv("MINIMAX_API_KEY", base_url="MINIMAX_BASE_URL", model="MINIMAX_MODEL"),
    default_model="MiniMax-M2",
    # Speech is MiniMax's separate T2A/ASR APIs, not chat completions.
    tools=TEXT_TOOLS,
    # The OpenAI-compatible API documents no response_format: the prompt carries the schema.
    structured_output=StructuredOutput.PROMPT,
    max_tokens_field="max_completion_tokens",  # max_tokens is deprecated there
    temperature_range=(0.01, 1.0),  # (0, 1]: zero is rejected
    # Keeps the model's thinking out of the content (in reasoning_details); <think> is stripped anyway.
    extra_body={"reasoning_split": True},
    prices={
        "MiniMax-M2": ModelPrice(0.3, 1.2, cached_input_per_mtok=0.03),
    },
    docs=(
        "https://platform.minimax.io/docs/api-reference/text-openai-api",
        "https://platform.minimax.io/docs/guides/pricing",
    ),
)

PROFILES: Mapping[str, ProviderProfile] = {
    profile.name: profile for profile in (OPENROUTER, DEEPSEEK, QWEN, GROK, MINIMAX)
}


@dataclass(slots=True)
class _Reply:
    """What a completion said, collected from a JSON body or an SSE stream."""

    response_id: str | None = None
    model: str | None = None
    content: str = ""
    finish_reason: str | None = None
    audio: bytearray = field(default_factory=bytearray)
    audio_transcript: str = ""
    usage: Mapping[str, Any] | None = None


class OpenAICompatibleAdapter(HttpAdapter):
    """Serves ``profile.tools`` over one provider's OpenAI-compatible chat completions.

    ``base_url`` and ``default_model`` default to the profile's; ``tool_models`` and ``prices``
    extend the profile's. Pass ``client`` to share a connection pool (the adapter then leaves closing
    it to you); without one the adapter owns a client and :meth:`aclose` closes it. An empty
    ``api_key`` makes every call fail with ``unavailable`` rather than failing construction, so a
    runner can still start, register and report why its tools do not work.
    """

    def __init__(
        self,
        profile: ProviderProfile,
        api_key: str | None,
        base_url: str | None = None,
        default_model: str | None = None,
        client: httpx.AsyncClient | None = None,
        *,
        tool_models: Mapping[str, str] | None = None,
        prices: Mapping[str, ModelPrice] | None = None,
        app_url: str | None = None,
        app_title: str | None = DEFAULT_APP_TITLE,
        require_parameters: bool | None = None,
    ) -> None:
        self._profile = profile
        self._api_key = api_key or None
        self._url = (base_url or profile.base_url).rstrip("/") + "/chat/completions"
        self._default_model = default_model or profile.default_model
        self._tool_models = {**profile.tool_models, **(tool_models or {})}
        self._prices = {**profile.prices, **(prices or {})}
        super().__init__(client)
        self._require_parameters = (
            profile.require_parameters if require_parameters is None else require_parameters
        )
        self._extra_headers: dict[str, str] = {}
        if profile.attribution_headers:
            if app_url:
                self._extra_headers["HTTP-Referer"] = app_url
            if app_title:
                # X-Title is what OpenRouter documents for app names; X-OpenRouter-Title, its newer name.
                self._extra_headers["X-Title"] = app_title
                self._extra_headers["X-OpenRouter-Title"] = app_title

    @property
    def profile(self) -> ProviderProfile:
        return self._profile

    @property
    def provider(self) -> str:
        return self._profile.name

    @property
    def tools(self) -> frozenset[str]:
        return self._profile.tools

    async def call(self, request: ToolCall) -> ToolOutcome:
        name = self._profile.name
        if request.tool not in self._profile.tools:
            raise ProviderError(ProviderErrorKind.UNKNOWN_TOOL, f"{name} does not serve {request.tool!r}")
        if self._api_key is None:
            raise ProviderError(
                ProviderErrorKind.UNAVAILABLE,
                f"no {self._profile.label} API key is configured ({self._profile.env.api_key})",
            )
        config = convert(request.config, ToolConfig, "config")
        model = self.model_for(request.tool, request.config)
        started = time.monotonic()
        with failures_logged(logger, name, request, model):
            async with within_deadline(request):
                if request.tool == TTS_SPEAK:
                    outcome = await self._speak(request, config, model)
                else:
                    outcome = await self._structured(JSON_TOOLS[request.tool], request, config, model)
        logger.debug(
            "%s %s answered in %.0f ms",
            name,
            request.tool,
            (time.monotonic() - started) * 1000,
            extra={"idempotency_key": request.idempotency_key, "model": outcome.model},
        )
        return outcome

    def model_for(self, tool: str, config: Mapping[str, Any] | None = None) -> str:
        """The model a call of ``tool`` with step ``config`` goes to (e.g. for telemetry).

        ``config["model"]`` wins, then the per-tool default (audio tools need audio-capable models),
        then ``default_model``; short names from workflow files are expanded by the profile's aliases.
        """
        named = (config or {}).get("model")
        model = (
            named if isinstance(named, str) and named else self._tool_models.get(tool, self._default_model)
        )
        return self._profile.resolve_model(model)

    # --- tools -----------------------------------------------------------------------------------------

    async def _structured(
        self, spec: JsonToolSpec, request: ToolCall, config: ToolConfig, model: str
    ) -> ToolOutcome:
        data = convert(request.input, spec.input_type, "input")
        try:
            content = spec.user_content(data)
        except ValueError as exc:
            raise ProviderError(ProviderErrorKind.BAD_REQUEST, str(exc)) from exc
        mode = self._profile.structured_output_for(model)
        system = spec.system_prompt if mode is StructuredOutput.JSON_SCHEMA else _schema_prompt(spec)
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": content}],
            self._profile.max_tokens_field: config.max_tokens or spec.max_tokens,
            "temperature": self._temperature(
                spec.temperature if config.temperature is None else config.temperature
            ),
            "stream": False,
        }
        if mode is StructuredOutput.JSON_SCHEMA:
            body["response_format"] = spec.response_format()
        elif mode is StructuredOutput.JSON_OBJECT:
            body["response_format"] = {"type": "json_object"}
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
                _json_text(reply.content).encode(), type=spec.output_type, strict=False
            )
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ProviderError(
                ProviderErrorKind.MALFORMED_RESPONSE,
                f"{spec.schema_name} answer does not match its schema: {exc}",
            ) from exc
        return self._outcome(spec.finish(parsed), reply, model)

    async def _speak(self, request: ToolCall, config: ToolConfig, model: str) -> ToolOutcome:
        data = convert(request.input, TtsInput, "input")
        # pcm16 is the format audio models accept when streaming; it is wrapped into WAV below.
        wire_format = config.audio_format or "pcm16"
        body: dict[str, Any] = {
            "model": model,
            "messages": [
                {"role": "system", "content": tts_prompt(data.language)},
                {"role": "user", "content": data.text},
            ],
            "modalities": ["text", "audio"],
            "audio": {
                "voice": data.voice or config.voice or self._profile.default_voice,
                "format": wire_format,
            },
            "stream": True,
        }
        if config.max_tokens is not None:
            body[self._profile.max_tokens_field] = config.max_tokens
        if config.temperature is not None:
            body["temperature"] = self._temperature(config.temperature)
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
        return self._outcome(output, reply, model)

    def _temperature(self, value: float) -> float:
        low, high = self._profile.temperature_range
        return min(high, max(low, value))

    def _outcome(self, output: dict[str, Any], reply: _Reply, model: str) -> ToolOutcome:
        answered_by = reply.model or model
        return ToolOutcome(
            output=output,
            usage=self._usage(reply.usage, answered_by),
            model=answered_by,
            response_id=reply.response_id,
        )

    def _usage(self, raw: Mapping[str, Any] | None, model: str) -> Usage | None:
        if raw is None:
            return None
        prompt, completion = _int(raw.get("prompt_tokens")), _int(raw.get("completion_tokens"))
        cost: float | None = None
        source = self._profile.cost
        if source is CostSource.USAGE_COST:
            cost = _number(raw.get("cost"))
        elif source is CostSource.USAGE_USD_TICKS:
            ticks = _number(raw.get("cost_in_usd_ticks"))
            cost = ticks / _USD_TICKS if ticks is not None else None
        else:
            price = _price_in(self._prices, model)
            if price is not None:
                cost = price.cost(prompt, completion, _cached_tokens(raw))
        return Usage(
            input_tokens=prompt,
            output_tokens=completion,
            total_tokens=_int(raw.get("total_tokens")) or prompt + completion,
            cost=cost,
        )

    # --- HTTP ------------------------------------------------------------------------------------------

    def _headers(self, request: ToolCall) -> dict[str, str]:
        headers = {
            "Authorization": f"Bearer {self._api_key}",
            "Content-Type": "application/json",
            **self._extra_headers,
        }
        if self._profile.idempotency_key:
            headers["Idempotency-Key"] = request.idempotency_key
        return headers

    async def _complete(self, body: Mapping[str, Any], request: ToolCall) -> _Reply:
        payload = msgspec.json.encode({**self._profile.extra_body, **body})
        label = self._profile.label
        try:
            async with self._client.stream(
                "POST",
                self._url,
                content=payload,
                headers=self._headers(request),
                timeout=httpx.Timeout(request.timeout_s),
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise status_error(response, openai_error_message)
                if response.headers.get("content-type", "").startswith("text/event-stream"):
                    return await _read_stream(response.aiter_lines())
                return _read_json(await response.aread())
        except httpx.TimeoutException as exc:
            raise ProviderError(
                ProviderErrorKind.TIMEOUT, f"{label} did not answer in time ({exc!r})"
            ) from exc
        except httpx.TransportError as exc:
            raise ProviderError(
                ProviderErrorKind.UNAVAILABLE, f"cannot reach {label}: {exc!r}", retryable=True
            ) from exc


def adapter_for(
    profile_name: str,
    api_key: str | None,
    base_url: str | None = None,
    client: httpx.AsyncClient | None = None,
    *,
    default_model: str | None = None,
) -> OpenAICompatibleAdapter:
    """The adapter of the OpenAI-compatible provider ``profile_name`` (a key of :data:`PROFILES`)."""
    try:
        profile = PROFILES[profile_name]
    except KeyError:
        known = ", ".join(PROFILES)
        raise ValueError(f"no OpenAI-compatible profile {profile_name!r} (known: {known})") from None
    return OpenAICompatibleAdapter(profile, api_key, base_url, default_model, client)


# --- declarations: one provider per profile ----------------------------------------------------------


def _binder(profile: ProviderProfile) -> Bind:
    def bind(
        settings: ToolRunnerSettings, environ: Mapping[str, str], client: httpx.AsyncClient
    ) -> ProviderBinding:
        key, base_url, model = profile.env.read(environ)
        adapter = OpenAICompatibleAdapter(profile, key, base_url, model, client)
        return ProviderBinding(adapter, "chat", adapter.model_for, profile.env.missing(key))

    return bind


def _bind_openrouter(
    settings: ToolRunnerSettings, environ: Mapping[str, str], client: httpx.AsyncClient
) -> ProviderBinding:
    # The default provider's variables are fields of the settings (read under the same names).
    key = settings.openrouter_api_key.get_secret_value() if settings.openrouter_api_key else None
    adapter = OpenAICompatibleAdapter(
        OPENROUTER, key, settings.openrouter_base_url, settings.openrouter_model, client
    )
    return ProviderBinding(adapter, "chat", adapter.model_for, OPENROUTER.env.missing(key))


def _declaration(
    profile: ProviderProfile, bind: Bind, *, always_started: bool = False
) -> ProviderDeclaration:
    return ProviderDeclaration(
        name=profile.name,
        env=profile.env,
        tools=tool_docs(profile.tools),
        bind=bind,
        idempotency=Idempotency.HEADER if profile.idempotency_key else Idempotency.NONE,
        always_started=always_started,
    )


DECLARATIONS = (
    # `make run` serves OpenRouter through the provider simulator when its key is unset.
    _declaration(OPENROUTER, _bind_openrouter, always_started=True),
    *(_declaration(profile, _binder(profile)) for profile in (DEEPSEEK, QWEN, GROK, MINIMAX)),
)


# --- prompts -----------------------------------------------------------------------------------------


def _schema_prompt(spec: JsonToolSpec) -> str:
    """The system prompt for providers that do not enforce a schema: it carries the schema itself.

    It says "JSON" in so many words, which DeepSeek's and Qwen's json_object mode require.
    """
    schema = json.dumps(spec.schema, ensure_ascii=False, separators=(",", ":"))
    return (
        f"{spec.system_prompt}\n\nReply with one JSON object and nothing else (no Markdown, no prose). "
        f"It must conform to this JSON Schema, named {spec.schema_name}:\n{schema}"
    )


# --- response reading --------------------------------------------------------------------------------


def _json_text(content: str) -> str:
    # Some models think aloud first or wrap the JSON in a Markdown fence, even under structured output.
    content = _THINKING.sub("", content, count=1)
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
    usage = body.get("usage")
    reply = _Reply(
        response_id=_str_or_none(body.get("id")),
        model=_str_or_none(body.get("model")),
        content=_text_of(message.get("content")),
        finish_reason=_str_or_none(choice.get("finish_reason")),
        usage=usage if isinstance(usage, dict) else None,
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
    usage = chunk.get("usage")
    if isinstance(usage, dict):
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


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _price_in(prices: Mapping[str, ModelPrice], model: str) -> ModelPrice | None:
    """The listed price of ``model``, or of the longest listed name it extends (dated snapshots)."""
    if model in prices:
        return prices[model]
    matches = [name for name in prices if model.startswith(name)]
    return prices[max(matches, key=len)] if matches else None


def _cached_tokens(usage: Mapping[str, Any]) -> int:
    """Prompt tokens served from the provider's cache: DeepSeek's own field, else OpenAI's."""
    if "prompt_cache_hit_tokens" in usage:
        return _int(usage.get("prompt_cache_hit_tokens"))
    details = usage.get("prompt_tokens_details")
    return _int(details.get("cached_tokens")) if isinstance(details, dict) else 0


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
        raise classify_status(code, message, retry_after_s=None)
    # Mid-stream failures use string codes such as "server_error": upstream trouble, worth a retry.
    raise ProviderError(ProviderErrorKind.SERVER, shorten(message))
