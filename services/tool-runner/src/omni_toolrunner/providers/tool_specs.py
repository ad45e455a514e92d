"""The five bilingual-coach tools, whichever provider serves them: names, typed I/O, schemas, prompts.

Input and output field names are the workflow's (camelCase). The chat-completion providers (the
OpenAI-compatible family, Gemini) answer each JSON-producing tool with structured output
(``response_format.json_schema`` with ``strict: true``, or the provider's equivalent); the schemas
keep to the subset strict mode accepts everywhere (every property required, ``additionalProperties:
false``, no numeric bounds), and bounds are enforced here after decoding instead. :data:`TOOL_DOCS`
are the tools' registry descriptions, which every provider serving them declares.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
from omni_contract.tools import Capability

from omni_toolrunner.providers.audio import read_base64_audio
from omni_toolrunner.providers.declaration import ToolDoc, input_schema_of, object_schema

STT_TRANSCRIBE = "stt.transcribe"
NLU_ANALYZE = "nlu.analyze"
MT_TRANSLATE = "mt.translate"
FEEDBACK_GENERATE = "feedback.generate"
TTS_SPEAK = "tts.speak"

NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]


# --- inputs ------------------------------------------------------------------------------------------


class SttInput(msgspec.Struct, rename="camel", frozen=True):
    audio_data: NonEmpty
    language: str = "en"
    format: str | None = None


class NluInput(msgspec.Struct, rename="camel", frozen=True):
    text: NonEmpty
    language: str = "en"
    context: str | None = None


class MtInput(msgspec.Struct, rename="camel", frozen=True):
    text: NonEmpty
    target_language: NonEmpty
    source_language: str | None = None


class FeedbackInput(msgspec.Struct, rename="camel", frozen=True):
    text: NonEmpty
    target_language: str | None = None
    analysis: dict[str, Any] | None = None
    translation: dict[str, Any] | str | None = None


class TtsInput(msgspec.Struct, rename="camel", frozen=True):
    text: NonEmpty
    language: str = "en"
    voice: str | None = None


class ToolConfig(msgspec.Struct, rename="camel", frozen=True):
    """The step ``config`` keys this adapter honours; other keys (timeouts, fallbacks) are the engine's."""

    model: str | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    voice: str | None = None
    audio_format: Literal["pcm16", "wav", "mp3", "flac", "opus"] | None = None


# --- outputs -----------------------------------------------------------------------------------------


class Segment(msgspec.Struct):
    start: float
    end: float
    text: str


class SttOutput(msgspec.Struct):
    text: str
    confidence: float
    segments: list[Segment]


class GrammarIssue(msgspec.Struct):
    type: str
    original: str
    correction: str
    explanation: str


class Grammar(msgspec.Struct, rename="camel"):
    is_correct: bool
    score: float
    issues: list[GrammarIssue]


class Entity(msgspec.Struct):
    text: str
    type: str


class NluOutput(msgspec.Struct):
    intent: str
    grammar: Grammar
    entities: list[Entity]
    sentiment: Literal["positive", "neutral", "negative", "mixed"]
    confidence: float


class MtOutput(msgspec.Struct, rename="camel"):
    translated_text: str
    confidence: float


class FeedbackOutput(msgspec.Struct):
    feedback: str
    score: float
    suggestions: list[str]


# --- schemas -----------------------------------------------------------------------------------------


def _object(properties: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": dict(properties),
        "required": list(properties),
        "additionalProperties": False,
    }


def _string(description: str) -> dict[str, Any]:
    return {"type": "string", "description": description}


def _number(description: str) -> dict[str, Any]:
    return {"type": "number", "description": description}


_CONFIDENCE = _number("How sure you are, from 0 to 1.")

STT_SCHEMA = _object(
    {
        "text": _string("The verbatim transcript, in the spoken language."),
        "confidence": _CONFIDENCE,
        "segments": {
            "type": "array",
            "description": "The transcript split into utterances with times in seconds.",
            "items": _object(
                {
                    "start": _number("Start, seconds."),
                    "end": _number("End, seconds."),
                    "text": _string("Words."),
                }
            ),
        },
    }
)

NLU_SCHEMA = _object(
    {
        "intent": _string("What the speaker wants, as a short snake_case label, e.g. statement, question."),
        "grammar": _object(
            {
                "isCorrect": {"type": "boolean", "description": "True when there are no grammar issues."},
                "score": _number("Grammatical accuracy from 0 to 1."),
                "issues": {
                    "type": "array",
                    "items": _object(
                        {
                            "type": _string("Kind of issue, snake_case, e.g. subject_verb_agreement."),
                            "original": _string("The wrong fragment as said."),
                            "correction": _string("The corrected fragment."),
                            "explanation": _string("One short sentence a learner understands."),
                        }
                    ),
                },
            }
        ),
        "entities": {
            "type": "array",
            "items": _object({"text": _string("The entity as said."), "type": _string("Entity type.")}),
        },
        "sentiment": {"type": "string", "enum": ["positive", "neutral", "negative", "mixed"]},
        "confidence": _CONFIDENCE,
    }
)

MT_SCHEMA = _object(
    {
        "translatedText": _string("The translation, in the target language only."),
        "confidence": _CONFIDENCE,
    }
)

FEEDBACK_SCHEMA = _object(
    {
        "feedback": _string("Two or three encouraging sentences addressed to the learner."),
        "score": _number("Overall score from 0 to 100."),
        "suggestions": {"type": "array", "items": _string("One concrete thing to practise.")},
    }
)


# --- prompts -----------------------------------------------------------------------------------------

STT_PROMPT = (
    "You are a speech-to-text engine for a language-learning app. Transcribe the user's audio verbatim "
    "in the language it is spoken in, keeping the speaker's mistakes; never translate or correct. "
    "The user message states the expected language. Answer only with the JSON object the schema defines."
)
NLU_PROMPT = (
    "You analyse sentences spoken by language learners. Given the text, its language and the context, "
    "identify the intent, every grammar issue (with a correction and a one-sentence explanation), named "
    "entities and the sentiment. Answer only with the JSON object the schema defines."
)
MT_PROMPT = (
    "You are a translator. Translate the text from the source language (detect it when not given) into "
    "the target language, preserving meaning and register. Answer only with the JSON object the schema "
    "defines."
)
FEEDBACK_PROMPT = (
    "You are a warm, precise language coach. Using the learner's sentence, the grammar analysis and the "
    "translation, write short feedback in the learner's language, a score from 0 to 100, and concrete "
    "suggestions. Answer only with the JSON object the schema defines."
)


def tts_prompt(language: str) -> str:
    return (
        "You are a text-to-speech voice. Read the user's message aloud exactly as written, word for word, "
        f"with natural pronunciation for the language '{language}'. Do not answer it, add or omit anything."
    )


# --- specs -------------------------------------------------------------------------------------------


def _as_json(value: Mapping[str, Any]) -> str:
    return json.dumps({k: v for k, v in value.items() if v is not None}, ensure_ascii=False)


def _clamp(value: float, low: float, high: float) -> float:
    return min(high, max(low, value))


def _stt_content(data: SttInput) -> list[dict[str, Any]]:
    audio = read_base64_audio(data.audio_data, data.format)
    return [
        {"type": "text", "text": _as_json({"language": data.language})},
        {"type": "input_audio", "input_audio": {"data": audio.base64, "format": audio.format}},
    ]


def _stt_finish(out: SttOutput) -> dict[str, Any]:
    segments = [
        {"start": max(0.0, s.start), "end": max(0.0, s.start, s.end), "text": s.text} for s in out.segments
    ]
    return {"text": out.text, "confidence": _clamp(out.confidence, 0, 1), "segments": segments}


def _nlu_finish(out: NluOutput) -> dict[str, Any]:
    result: dict[str, Any] = msgspec.to_builtins(out)
    result["confidence"] = _clamp(out.confidence, 0, 1)
    result["grammar"]["score"] = _clamp(out.grammar.score, 0, 1)
    return result


def _mt_finish(out: MtOutput) -> dict[str, Any]:
    return {"translatedText": out.translated_text, "confidence": _clamp(out.confidence, 0, 1)}


def _feedback_finish(out: FeedbackOutput) -> dict[str, Any]:
    return {"feedback": out.feedback, "score": _clamp(out.score, 0, 100), "suggestions": out.suggestions}


@dataclass(frozen=True, slots=True)
class JsonToolSpec:
    """A tool answered by one structured-output chat completion."""

    tool: str
    schema_name: str
    schema: Mapping[str, Any]
    system_prompt: str
    input_type: type[msgspec.Struct]
    output_type: type[msgspec.Struct]
    user_content: Callable[[Any], str | list[dict[str, Any]]]
    finish: Callable[[Any], dict[str, Any]]
    temperature: float
    max_tokens: int

    def response_format(self) -> dict[str, Any]:
        return {
            "type": "json_schema",
            "json_schema": {"name": self.schema_name, "strict": True, "schema": self.schema},
        }


JSON_TOOLS: Mapping[str, JsonToolSpec] = {
    spec.tool: spec
    for spec in (
        JsonToolSpec(
            tool=STT_TRANSCRIBE,
            schema_name="stt_transcribe",
            schema=STT_SCHEMA,
            system_prompt=STT_PROMPT,
            input_type=SttInput,
            output_type=SttOutput,
            user_content=_stt_content,
            finish=_stt_finish,
            temperature=0.0,
            max_tokens=2048,
        ),
        JsonToolSpec(
            tool=NLU_ANALYZE,
            schema_name="nlu_analyze",
            schema=NLU_SCHEMA,
            system_prompt=NLU_PROMPT,
            input_type=NluInput,
            output_type=NluOutput,
            user_content=lambda d: _as_json({"text": d.text, "language": d.language, "context": d.context}),
            finish=_nlu_finish,
            temperature=0.0,
            max_tokens=2000,
        ),
        JsonToolSpec(
            tool=MT_TRANSLATE,
            schema_name="mt_translate",
            schema=MT_SCHEMA,
            system_prompt=MT_PROMPT,
            input_type=MtInput,
            output_type=MtOutput,
            user_content=lambda d: _as_json(
                {"text": d.text, "sourceLanguage": d.source_language, "targetLanguage": d.target_language}
            ),
            finish=_mt_finish,
            temperature=0.2,
            max_tokens=1024,
        ),
        JsonToolSpec(
            tool=FEEDBACK_GENERATE,
            schema_name="feedback_generate",
            schema=FEEDBACK_SCHEMA,
            system_prompt=FEEDBACK_PROMPT,
            input_type=FeedbackInput,
            output_type=FeedbackOutput,
            user_content=lambda d: _as_json(
                {
                    "text": d.text,
                    "analysis": d.analysis,
                    "translation": d.translation,
                    "targetLanguage": d.target_language,
                }
            ),
            finish=_feedback_finish,
            temperature=0.7,
            max_tokens=1024,
        ),
    )
}

ALL_TOOLS = frozenset({*JSON_TOOLS, TTS_SPEAK})

# --- registry descriptions ---------------------------------------------------------------------------

AUDIO_OUTPUT_SCHEMA = object_schema(
    {"text": {"type": "string"}, "format": {"type": "string"}},
    {"audioData": {"type": "string", "contentEncoding": "base64"}, "degraded": {"type": "boolean"}},
)
"""What ``tts.speak`` answers: audio with its format and text, or (degraded) the text alone."""

TOOL_DOCS: Mapping[str, ToolDoc] = {
    doc.name: doc
    for doc in (
        ToolDoc(
            STT_TRANSCRIBE,
            "Transcribe recorded speech into text with timed segments",
            input_schema_of(SttInput),
            STT_SCHEMA,
            (
                Capability(
                    name="transcription", input_types=["audio/wav", "audio/mpeg"], output_types=["text"]
                ),
            ),
            timeout_ms=60_000,
        ),
        ToolDoc(
            NLU_ANALYZE,
            "Find the intent, grammar issues, entities and sentiment of a text",
            input_schema_of(NluInput),
            NLU_SCHEMA,
            (
                Capability(
                    name="language-understanding", input_types=["text"], output_types=["application/json"]
                ),
            ),
        ),
        ToolDoc(
            MT_TRANSLATE,
            "Translate a text into another language",
            input_schema_of(MtInput),
            MT_SCHEMA,
            (Capability(name="translation", input_types=["text"], output_types=["text"]),),
        ),
        ToolDoc(
            FEEDBACK_GENERATE,
            "Write feedback on a learner's utterance, with a score and suggestions",
            input_schema_of(FeedbackInput),
            FEEDBACK_SCHEMA,
            (Capability(name="feedback", input_types=["text"], output_types=["text"]),),
        ),
        ToolDoc(
            TTS_SPEAK,
            "Speak a text aloud (or return it as text when degraded)",
            input_schema_of(TtsInput),
            AUDIO_OUTPUT_SCHEMA,
            (
                Capability(
                    name="speech-synthesis", input_types=["text"], output_types=["audio/wav", "audio/mpeg"]
                ),
            ),
            timeout_ms=60_000,
        ),
    )
}


def tool_docs(tools: frozenset[str]) -> tuple[ToolDoc, ...]:
    """The descriptions of ``tools`` (names of :data:`TOOL_DOCS`), in name order."""
    return tuple(TOOL_DOCS[name] for name in sorted(tools))
