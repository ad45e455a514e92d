"""ElevenLabs adapter: ``tts.speak`` through ElevenLabs' text-to-speech API.

Wire format (checked against ElevenLabs' API reference): ``POST {base_url}/v1/text-to-speech/{voice_id}
?output_format=mp3_44100_128`` with header ``xi-api-key`` and a JSON body ``{text, model_id,
voice_settings?, language_code?}``; the answer is the audio itself (``audio/mpeg``), with the headers
``request-id`` and ``character-cost`` (the characters billed, which the adapter reports as input
tokens). Errors are JSON ``{"detail": {"status" | "code", "message"}}`` (FastAPI's validation errors:
``{"detail": [{"loc", "msg", "type"}]}``). ElevenLabs reports an exhausted character quota as
``quota_exceeded``, on a 401; that is an account problem, not a bad key.
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import msgspec

from omni_toolrunner.providers.audio import sniff_format, wav_from_pcm16
from omni_toolrunner.providers.base import ProviderError, ProviderErrorKind, ToolCall, ToolOutcome, Usage
from omni_toolrunner.providers.declaration import (
    ProviderBinding,
    ProviderDeclaration,
    ProviderEnv,
    env_value,
    fixed_model,
)
from omni_toolrunner.providers.http_client import HttpAdapter, failures_logged
from omni_toolrunner.providers.http_errors import (
    convert,
    error_message,
    out_of_credits,
    post_json,
    status_error,
)
from omni_toolrunner.providers.tool_specs import TOOL_DOCS, TTS_SPEAK, TtsInput

if TYPE_CHECKING:
    from omni_toolrunner.settings import ToolRunnerSettings

logger = logging.getLogger(__name__)

PROVIDER = "elevenlabs"
ENV = ProviderEnv(
    "ELEVENLABS_API_KEY",
    base_url="ELEVENLABS_BASE_URL",
    model="ELEVENLABS_MODEL",
    extras=("ELEVENLABS_VOICE_ID",),  # the voice of steps that name none
)
DEFAULT_BASE_URL = "https://api.elevenlabs.io"
# Flash v2.5: low latency, 32 languages, and it honours language_code (multilingual v2 rejects it).
DEFAULT_MODEL = "eleven_flash_v2_5"
DEFAULT_OUTPUT_FORMAT = "mp3_44100_128"
# "George", one of ElevenLabs' default voices, available to every account.
DEFAULT_VOICE_ID = "JBFqnCBsd6RMkjVDRZzb"
# Workflows name voices by role ("coach"); these are the roles Omni's workflows use.
DEFAULT_VOICES: Mapping[str, str] = {"coach": DEFAULT_VOICE_ID}
# Models that accept language_code; ElevenLabs answers 400 when other models are sent one.
LANGUAGE_CODE_MODELS = frozenset({"eleven_flash_v2_5", "eleven_turbo_v2_5"})
QUOTA_CODES = frozenset({"quota_exceeded", "insufficient_credits", "payment_required"})

_VOICE_ID = re.compile(r"^[A-Za-z0-9]{20}$")
_LANGUAGE = re.compile(r"^(?P<code>[A-Za-z]{2,3})(?:[-_].*)?$")
_UNIT = Annotated[float, msgspec.Meta(ge=0, le=1)]


class VoiceSettings(
    msgspec.Struct, rename="camel", omit_defaults=True, frozen=True, forbid_unknown_fields=True
):
    stability: _UNIT | None = None
    similarity_boost: _UNIT | None = None
    style: _UNIT | None = None
    use_speaker_boost: bool | None = None
    speed: Annotated[float, msgspec.Meta(ge=0.7, le=1.2)] | None = None


class ElevenLabsConfig(msgspec.Struct, rename="camel", frozen=True):
    """The step ``config`` keys this adapter honours; other keys (timeouts, fallbacks) are the engine's."""

    model: str | None = None
    voice: str | None = None
    output_format: (
        Annotated[str, msgspec.Meta(pattern=r"^(mp3|pcm|wav|opus|ulaw|alaw)_\d+(_\d+)?$")] | None
    ) = None
    voice_settings: VoiceSettings | None = None


class ElevenLabsAdapter(HttpAdapter):
    """Serves ``tts.speak``.

    ``voices`` maps the voice names workflows use (case-insensitive) to ElevenLabs voice ids, on top
    of :data:`DEFAULT_VOICES`; a step may also name a voice id directly, and one naming no voice gets
    ``default_voice_id``. Pass ``client`` to share a connection pool (closing it stays yours). An empty
    ``api_key`` makes every call fail with ``unavailable`` instead of failing construction.
    """

    def __init__(
        self,
        api_key: str | None,
        base_url: str = DEFAULT_BASE_URL,
        client: httpx.AsyncClient | None = None,
        *,
        model: str = DEFAULT_MODEL,
        default_voice_id: str = DEFAULT_VOICE_ID,
        voices: Mapping[str, str] | None = None,
        output_format: str = DEFAULT_OUTPUT_FORMAT,
    ) -> None:
        self._api_key = api_key or None
        self._base_url = base_url.rstrip("/")
        super().__init__(client)
        self._model = model
        self._default_voice_id = default_voice_id
        self._voices = {
            name.lower(): voice_id for name, voice_id in {**DEFAULT_VOICES, **(voices or {})}.items()
        }
        self._output_format = output_format

    @property
    def provider(self) -> str:
        return PROVIDER

    @property
    def tools(self) -> frozenset[str]:
        return frozenset({TTS_SPEAK})

    def voice_id_for(self, voice: str | None) -> str:
        """The ElevenLabs voice id a step's ``voice`` (a name from the table, a voice id, or none) means."""
        if not voice:
            return self._default_voice_id
        named = self._voices.get(voice.strip().lower())
        if named is not None:
            return named
        if _VOICE_ID.match(voice):
            return voice
        known = ", ".join(sorted(self._voices)) or "none"
        raise ProviderError(
            ProviderErrorKind.BAD_REQUEST,
            f"invalid input: unknown voice {voice!r} - at `$.voice` (names: {known}; or a voice id)",
        )

    async def call(self, request: ToolCall) -> ToolOutcome:
        if request.tool != TTS_SPEAK:
            raise ProviderError(ProviderErrorKind.UNKNOWN_TOOL, f"elevenlabs does not serve {request.tool!r}")
        if self._api_key is None:
            raise ProviderError(
                ProviderErrorKind.UNAVAILABLE, f"no ElevenLabs API key is configured ({ENV.api_key})"
            )
        data = convert(request.input, TtsInput, "input")
        config = convert(request.config, ElevenLabsConfig, "config")
        voice_id = self.voice_id_for(data.voice or config.voice)
        model = config.model or self._model
        output_format = config.output_format or self._output_format
        body: dict[str, Any] = {"text": data.text, "model_id": model}
        if config.voice_settings is not None:
            settings: dict[str, Any] = msgspec.to_builtins(config.voice_settings)
            body["voice_settings"] = {_snake(name): value for name, value in settings.items()}
        language = _LANGUAGE.match(data.language)
        if language and model in LANGUAGE_CODE_MODELS:
            body["language_code"] = language.group("code").lower()
        with failures_logged(logger, "elevenlabs", request, model):
            response = await post_json(
                self._client,
                f"{self._base_url}/v1/text-to-speech/{voice_id}",
                body,
                provider="ElevenLabs",
                params={"output_format": output_format},
                headers={"xi-api-key": self._api_key, "Accept": "audio/*"},
                timeout_s=request.timeout_s,
            )
            if response.status_code != 200:
                raise _status_error(response)
            audio, out_format = _read_audio(response, output_format)
        billed = _int_header(response.headers.get("character-cost"))
        characters = billed if billed is not None else len(data.text)
        return ToolOutcome(
            output={
                "audioData": base64.b64encode(audio).decode("ascii"),
                "format": out_format,
                "text": data.text,
            },
            # Characters are what ElevenLabs bills; their price depends on the account's plan.
            usage=Usage(input_tokens=characters, total_tokens=characters),
            model=model,
            response_id=response.headers.get("request-id"),
        )


def _read_audio(response: httpx.Response, output_format: str) -> tuple[bytes, str]:
    content_type = response.headers.get("content-type", "")
    raw = response.content
    if not raw:
        raise ProviderError(ProviderErrorKind.MALFORMED_RESPONSE, "the answer carried no audio")
    if content_type.startswith(("application/json", "text/")):
        raise ProviderError(
            ProviderErrorKind.MALFORMED_RESPONSE, f"expected audio, got {content_type.split(';')[0]}"
        )
    codec, _, rest = output_format.partition("_")
    if codec == "mp3" and sniff_format(raw) != "mp3":
        raise ProviderError(ProviderErrorKind.MALFORMED_RESPONSE, "the answer is not MP3 audio")
    if codec == "pcm":
        # Raw 16-bit PCM at the rate the format names; wrapped so players can read it.
        return wav_from_pcm16(raw, sample_rate=int(rest.split("_")[0])), "wav"
    return raw, codec


def _status_error(response: httpx.Response) -> ProviderError:
    if response.status_code == 402 or _detail_code(response.content) in QUOTA_CODES:
        message = error_message(response.content, _message_of) or "the ElevenLabs quota is used up"
        return out_of_credits(message, status=response.status_code)
    return status_error(response, _message_of)


def _detail_code(raw: bytes) -> str | None:
    try:
        detail = msgspec.json.decode(raw).get("detail")
    except (msgspec.DecodeError, AttributeError):
        return None
    if isinstance(detail, dict):
        code = detail.get("status") or detail.get("code")
        return code if isinstance(code, str) else None
    return None


def _message_of(body: Any) -> str | None:
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, dict):
        message = detail.get("message")
        code = detail.get("status") or detail.get("code")
        if message and code:
            return f"{code}: {message}"
        return str(message or code) if (message or code) else None
    if isinstance(detail, list):
        # FastAPI's validation errors name the field that failed: ["body", "text"].
        parts = [
            f"{'.'.join(str(p) for p in item.get('loc', []))}: {item.get('msg', '')}".strip(": ")
            for item in detail
            if isinstance(item, dict)
        ]
        return "; ".join(parts) or None
    if isinstance(detail, str) and detail:
        return detail
    return None


def _int_header(value: str | None) -> int | None:
    try:
        return max(0, int(value)) if value is not None else None
    except ValueError:
        return None


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


# --- declaration -------------------------------------------------------------------------------------


def _bind(
    settings: ToolRunnerSettings, environ: Mapping[str, str], client: httpx.AsyncClient
) -> ProviderBinding:
    key, base_url, model = ENV.read(environ)
    (voice_variable,) = ENV.extras
    adapter = ElevenLabsAdapter(
        key,
        base_url or DEFAULT_BASE_URL,
        client,
        model=model or DEFAULT_MODEL,
        default_voice_id=env_value(environ, voice_variable) or DEFAULT_VOICE_ID,
    )
    return ProviderBinding(adapter, "text_to_speech", fixed_model(model or DEFAULT_MODEL), ENV.missing(key))


DECLARATION = ProviderDeclaration(name=PROVIDER, env=ENV, tools=(TOOL_DOCS[TTS_SPEAK],), bind=_bind)
