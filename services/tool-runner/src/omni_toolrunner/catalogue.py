"""What each tool is, takes and gives, whichever provider serves it: the registry's descriptions.

A tool's input and output contract is the same at every provider (the adapters share their
input types and output schemas), so one entry per tool name serves all of them; ``spec_for``
makes the ``ToolSpec`` of one (tool, provider) pair. Schemas are generated from the msgspec
input types the adapters decode with, so the registry cannot drift from what they accept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec
from omni_contract.tools import Capability, ToolSpec

from omni_toolrunner.providers import openrouter_tools as ai
from omni_toolrunner.providers.firecrawl import WEB_SCRAPE, ScrapeInput
from omni_toolrunner.providers.local import ECHO, LANG_DETECT, LangDetectInput
from omni_toolrunner.providers.perplexity import SEARCH_ANSWER, SearchInput


@dataclass(frozen=True)
class ToolDoc:
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    capabilities: list[Capability] = field(default_factory=list)
    timeout_ms: int = 30_000
    scopes: tuple[str, ...] = ("tools:execute",)


def _input(struct: type[msgspec.Struct]) -> dict[str, Any]:
    """The JSON Schema of an input type, with its definitions inlined at the top."""
    schema: dict[str, Any] = msgspec.json.schema(struct)
    ref = schema.get("$ref", "")
    defs = schema.get("$defs", {})
    name = ref.rpartition("/")[2]
    if name in defs:
        return {**defs[name], **({"$defs": defs} if len(defs) > 1 else {})}
    return schema


def _object(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {**required, **(optional or {})},
        "required": list(required),
    }


_TEXT = {"type": "string"}
_NUMBER = {"type": "number"}
_AUDIO_OUT = _object(
    {"text": _TEXT, "format": _TEXT},
    {"audioData": {"type": "string", "contentEncoding": "base64"}, "degraded": {"type": "boolean"}},
)

CATALOGUE: dict[str, ToolDoc] = {
    ai.STT_TRANSCRIBE: ToolDoc(
        "Transcribe recorded speech into text with timed segments",
        _input(ai.SttInput),
        ai.STT_SCHEMA,
        [Capability(name="transcription", input_types=["audio/wav", "audio/mpeg"], output_types=["text"])],
        timeout_ms=60_000,
    ),
    ai.NLU_ANALYZE: ToolDoc(
        "Find the intent, grammar issues, entities and sentiment of a text",
        _input(ai.NluInput),
        ai.NLU_SCHEMA,
        [Capability(name="language-understanding", input_types=["text"], output_types=["application/json"])],
    ),
    ai.MT_TRANSLATE: ToolDoc(
        "Translate a text into another language",
        _input(ai.MtInput),
        ai.MT_SCHEMA,
        [Capability(name="translation", input_types=["text"], output_types=["text"])],
    ),
    ai.FEEDBACK_GENERATE: ToolDoc(
        "Write feedback on a learner's utterance, with a score and suggestions",
        _input(ai.FeedbackInput),
        ai.FEEDBACK_SCHEMA,
        [Capability(name="feedback", input_types=["text"], output_types=["text"])],
    ),
    ai.TTS_SPEAK: ToolDoc(
        "Speak a text aloud (or return it as text when degraded)",
        _input(ai.TtsInput),
        _AUDIO_OUT,
        [Capability(name="speech-synthesis", input_types=["text"], output_types=["audio/wav", "audio/mpeg"])],
        timeout_ms=60_000,
    ),
    LANG_DETECT: ToolDoc(
        "Detect the language of a text, offline",
        _input(LangDetectInput),
        _object(
            {"language": _TEXT, "confidence": _NUMBER},
            {"candidates": {"type": "array", "items": {"type": "object"}}},
        ),
        [Capability(name="language-detection", input_types=["text"], output_types=["text"])],
        timeout_ms=10_000,
    ),
    SEARCH_ANSWER: ToolDoc(
        "Answer a question from a live web search, with citations",
        _input(SearchInput),
        _object({"answer": _TEXT, "citations": {"type": "array", "items": _TEXT}}),
        [Capability(name="web-search", input_types=["text"], output_types=["text"])],
        timeout_ms=60_000,
    ),
    WEB_SCRAPE: ToolDoc(
        "Fetch a web page as Markdown",
        _input(ScrapeInput),
        _object({"markdown": _TEXT, "url": _TEXT}, {"title": _TEXT, "statusCode": {"type": "integer"}}),
        [Capability(name="scraping", input_types=["text/uri-list"], output_types=["text/markdown"])],
        timeout_ms=60_000,
    ),
    ECHO: ToolDoc(
        "Return the input as the output (moving data, benchmarks)",
        {"type": "object"},
        {"type": "object"},
        timeout_ms=1_000,
    ),
}


def spec_for(tool: str, provider: str, *, requires_auth: bool) -> ToolSpec:
    """The registry's description of ``tool`` as ``provider`` serves it."""
    doc = CATALOGUE.get(tool) or ToolDoc(f"{tool} (no description)", {"type": "object"}, {"type": "object"})
    return ToolSpec(
        name=tool,
        provider=provider,
        description=doc.description,
        category=tool.partition(".")[0],
        timeout_ms=doc.timeout_ms,
        retryable=True,
        requires_auth=requires_auth,
        scopes=list(doc.scopes),
        capabilities=list(doc.capabilities),
        input_schema=doc.input_schema,
        output_schema=doc.output_schema,
    )
