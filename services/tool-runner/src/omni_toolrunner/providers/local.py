"""The ``local`` provider: tools that need no network, the last fallback when remote providers fail.

``util.echo`` returns its input as its output. It is what the benchmarks run (so that they measure
orchestration, not a provider) and a plain building block for workflows that only move data.

``lang.detect`` names the language of a text with lingua, whose n-gram models ship inside its wheel.
The detector knows a bounded set of common languages (:data:`COMMON_LANGUAGES`): every language's
high-accuracy models cost about 20 MB of memory and 0.1 s to load, so all 75 would take about a
gigabyte and several seconds, while twelve take about 250 MB and a second. It is built on the first
``lang.detect`` call, in a worker thread, so a replica that never detects pays nothing.

``tts.speak`` synthesises WAV with ``espeak-ng`` when it is installed; otherwise (or when espeak-ng
cannot speak the language) it degrades to the text itself, marked ``degraded: true``, so a workflow
whose speech providers are all down can still show the learner what would have been said.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import shutil
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import httpx
import msgspec
from lingua import IsoCode639_1, Language, LanguageDetector, LanguageDetectorBuilder
from omni_contract.tools import Capability

from omni_toolrunner.providers.audio import sniff_format
from omni_toolrunner.providers.base import ProviderError, ProviderErrorKind, ToolCall, ToolOutcome
from omni_toolrunner.providers.declaration import (
    ProviderBinding,
    ProviderDeclaration,
    ProviderEnv,
    ToolDoc,
    fixed_model,
    input_schema_of,
    object_schema,
)
from omni_toolrunner.providers.tool_specs import TOOL_DOCS, TTS_SPEAK, TtsInput

if TYPE_CHECKING:
    from omni_toolrunner.settings import ToolRunnerSettings

LOCAL = "local"
ECHO = "util.echo"
LANG_DETECT = "lang.detect"

# The languages learners of the bilingual coach most often speak or study.
COMMON_LANGUAGES = ("en", "es", "fr", "de", "it", "pt", "nl", "ru", "zh", "ja", "ko", "ar")

# How many runners-up ``lang.detect`` reports besides the winner.
_CANDIDATES = 3

# espeak-ng voice names are language tags (``en``, ``en-us``, ``pt-br``); anything else is refused
# before it reaches the command line, where a leading ``-`` would be read as an option.
_VOICE = re.compile(r"^[a-z]{2,3}(?:-[a-z0-9]{1,8})*$")

_S = TypeVar("_S", bound=msgspec.Struct)


class LangDetectInput(msgspec.Struct, frozen=True):
    text: Annotated[str, msgspec.Meta(min_length=1)]


class LanguageDetection:
    """lingua's detector for a bounded set of languages (ISO 639-1 codes), built once, on first use.

    ``detect`` blocks (the first call for about a second while the models load): call it from a
    worker thread. The build is guarded by a thread lock, so concurrent first calls build once.
    """

    def __init__(self, languages: Iterable[str] = COMMON_LANGUAGES) -> None:
        codes = tuple(dict.fromkeys(code.lower() for code in languages))
        if len(codes) < 2:
            raise ValueError("language detection needs at least two languages to choose between")
        try:
            self._languages = [Language.from_iso_code_639_1(IsoCode639_1.from_str(c)) for c in codes]
        except ValueError as exc:
            raise ValueError(f"lingua does not know every language in {codes}") from exc
        self.languages = codes
        self._detector: LanguageDetector | None = None
        self._lock = threading.Lock()

    def _built(self) -> LanguageDetector:
        with self._lock:
            if self._detector is None:
                # Preloading loads the models in parallel: quicker than loading them one by one on
                # the first texts, and later calls never stall on a load.
                self._detector = (
                    LanguageDetectorBuilder.from_languages(*self._languages)
                    .with_preloaded_language_models()
                    .build()
                )
            return self._detector

    def detect(self, text: str) -> dict[str, Any] | None:
        """``{language, confidence, candidates}``, or None when the text has no letters to go on."""
        values = [v for v in self._built().compute_language_confidence_values(text) if v.value > 0]
        if not values:
            return None
        ranked = [
            {"language": v.language.iso_code_639_1.name.lower(), "confidence": round(v.value, 4)}
            for v in values[: _CANDIDATES + 1]
        ]
        best = ranked[0]
        return {"language": best["language"], "confidence": best["confidence"], "candidates": ranked[1:]}


class LocalAdapter:
    """Serves ``util.echo``, ``lang.detect`` and ``tts.speak`` in-process.

    ``detection`` may be shared between adapters (its models are loaded once); ``synthesize=False``
    keeps ``tts.speak`` on text even where espeak-ng is installed.
    """

    def __init__(self, *, detection: LanguageDetection | None = None, synthesize: bool = True) -> None:
        self._detection = detection or LanguageDetection()
        self._espeak = shutil.which("espeak-ng") if synthesize else None

    @property
    def provider(self) -> str:
        return LOCAL

    @property
    def tools(self) -> frozenset[str]:
        return frozenset({ECHO, LANG_DETECT, TTS_SPEAK})

    @property
    def speaks(self) -> bool:
        """Whether ``tts.speak`` answers with audio (espeak-ng is installed) rather than text."""
        return self._espeak is not None

    async def call(self, request: ToolCall) -> ToolOutcome:
        if request.tool == ECHO:
            return ToolOutcome(output=dict(request.input))
        if request.tool == LANG_DETECT:
            return await self._detect(_convert(request.input, LangDetectInput))
        if request.tool == TTS_SPEAK:
            return await self._speak(_convert(request.input, TtsInput), request.timeout_s)
        raise ProviderError(
            ProviderErrorKind.UNKNOWN_TOOL, f"the local provider does not serve {request.tool!r}"
        )

    async def aclose(self) -> None:
        return None

    async def _detect(self, data: LangDetectInput) -> ToolOutcome:
        detected = await asyncio.to_thread(self._detection.detect, data.text)
        if detected is None:
            raise ProviderError(ProviderErrorKind.BAD_REQUEST, "no language can be detected in the text")
        return ToolOutcome(output=detected)

    async def _speak(self, data: TtsInput, timeout_s: float) -> ToolOutcome:
        if self._espeak is None:
            return _spoken_as_text(data, "espeak-ng is not installed")
        voice = data.language.strip().lower().replace("_", "-")
        if not _VOICE.match(voice):
            raise ProviderError(ProviderErrorKind.BAD_REQUEST, f"language {data.language!r} is not a tag")
        process = await asyncio.create_subprocess_exec(
            self._espeak,
            "--stdout",
            "-v",
            voice,
            "-b",
            "1",  # the input is UTF-8
            "--stdin",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(timeout_s):
                wav, errors = await process.communicate(data.text.encode())
        except TimeoutError as exc:
            raise ProviderError(
                ProviderErrorKind.TIMEOUT, f"espeak-ng did not finish within {timeout_s:g} s"
            ) from exc
        finally:
            if process.returncode is None:  # timed out or cancelled: do not leave it running
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if process.returncode != 0 or sniff_format(wav) != "wav":
            reason = errors.decode(errors="replace").strip() or f"exit status {process.returncode}"
            return _spoken_as_text(data, f"espeak-ng could not speak {voice!r}: {reason}")
        output = {"audioData": base64.b64encode(wav).decode("ascii"), "format": "wav", "text": data.text}
        return ToolOutcome(output=output)


def _spoken_as_text(data: TtsInput, reason: str) -> ToolOutcome:
    return ToolOutcome(output={"text": data.text, "format": "text", "degraded": True, "reason": reason})


def _convert(value: dict[str, Any], kind: type[_S]) -> _S:
    try:
        return msgspec.convert(value, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise ProviderError(ProviderErrorKind.BAD_REQUEST, f"invalid input: {exc}") from exc


# --- declaration -------------------------------------------------------------------------------------

ECHO_DOC = ToolDoc(
    ECHO,
    "Return the input as the output (moving data, benchmarks)",
    {"type": "object"},
    {"type": "object"},
    timeout_ms=1_000,
)
LANG_DETECT_DOC = ToolDoc(
    LANG_DETECT,
    "Detect the language of a text, offline",
    input_schema_of(LangDetectInput),
    object_schema(
        {"language": {"type": "string"}, "confidence": {"type": "number"}},
        {"candidates": {"type": "array", "items": {"type": "object"}}},
    ),
    (Capability(name="language-detection", input_types=["text"], output_types=["text"]),),
    timeout_ms=10_000,
)


def _bind(
    settings: ToolRunnerSettings, environ: Mapping[str, str], client: httpx.AsyncClient
) -> ProviderBinding:
    return ProviderBinding(LocalAdapter(), "execute_tool", fixed_model(None), None)


DECLARATION = ProviderDeclaration(
    name=LOCAL,
    env=ProviderEnv(),
    tools=(ECHO_DOC, LANG_DETECT_DOC, TOOL_DOCS[TTS_SPEAK]),
    bind=_bind,
    in_process=True,
    always_started=True,  # the last fallback of every workflow
)
