"""Deterministic answers: read a chat-completions request, produce content that fits its schema.

Known schema names (the ones Omni's tools use) get meaningful values; anything else still gets a
value that conforms to the JSON schema it asked for, so new tools work against the simulator without
touching it.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from omni_simulator.audio import digest, duration_s_for, transcript_for


class BadRequest(ValueError):
    """The request cannot be served as sent (answered with HTTP 400)."""


@dataclass(frozen=True, slots=True)
class AudioPart:
    data: bytes
    format: str


@dataclass(frozen=True, slots=True)
class Prompt:
    """The parts of a chat request that answers are derived from."""

    system: str
    user_text: str
    user_json: Mapping[str, Any] | None
    audio: tuple[AudioPart, ...] = field(default=())

    @property
    def subject(self) -> str:
        """The text the request is about: an explicit ``text`` field, what the audio says, or the prose."""
        if self.user_json is not None:
            text = self.user_json.get("text")
            if isinstance(text, str) and text:
                return text
        if self.audio:
            return " ".join(transcript_for(part.data) for part in self.audio)
        return self.user_text.strip()

    def field(self, name: str, default: str) -> str:
        if self.user_json is not None:
            value = self.user_json.get(name)
            if isinstance(value, str) and value:
                return value
        return default


def read_prompt(messages: object) -> Prompt:
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty array")
    system: list[str] = []
    user_text: list[str] = []
    audio: list[AudioPart] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(f"messages[{index}] must be an object with a string role")
        texts, parts = _read_content(message.get("content"), index)
        role = message["role"]
        if role in ("system", "developer"):
            system.extend(texts)
        elif role == "user":
            # Only the latest user turn matters for a one-shot tool call.
            user_text, audio = list(texts), list(parts)
    text = "\n".join(user_text)
    return Prompt(system="\n".join(system), user_text=text, user_json=_json_object(text), audio=tuple(audio))


def _read_content(content: object, index: int) -> tuple[list[str], list[AudioPart]]:
    if content is None:
        return [], []
    if isinstance(content, str):
        return [content], []
    if not isinstance(content, list):
        raise BadRequest(f"messages[{index}].content must be a string or an array of parts")
    texts: list[str] = []
    audio: list[AudioPart] = []
    for part in content:
        if not isinstance(part, dict):
            raise BadRequest(f"messages[{index}].content parts must be objects")
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "input_audio":
            audio.append(_read_audio(part.get("input_audio"), index))
    return texts, audio


def _read_audio(raw: object, index: int) -> AudioPart:
    if (
        not isinstance(raw, dict)
        or not isinstance(raw.get("data"), str)
        or not isinstance(raw.get("format"), str)
    ):
        raise BadRequest(f"messages[{index}]: input_audio needs string data and format")
    try:
        data = base64.b64decode(raw["data"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"messages[{index}]: input_audio.data is not valid base64") from exc
    if not data:
        raise BadRequest(f"messages[{index}]: input_audio.data is empty")
    return AudioPart(data=data, format=raw["format"])


def _json_object(text: str) -> Mapping[str, Any] | None:
    stripped = text.strip()
    if not stripped.startswith("{"):
        return None
    try:
        value = json.loads(stripped)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# --- meaningful values for Omni's own tool schemas -------------------------------------------------

_POSITIVE = ("good", "great", "love", "like", "happy", "thanks", "gracias", "bueno", "me gusta")
_NEGATIVE = ("bad", "sad", "hate", "terrible", "angry", "malo", "triste")
_GRAMMAR_RULES: tuple[tuple[re.Pattern[str], str, str, str], ...] = (
    (re.compile(r"\bI goes\b"), "subject_verb_agreement", "I go", "Use 'go' with 'I'."),
    (
        re.compile(r"\b(she|he|it) don't\b", re.I),
        "subject_verb_agreement",
        "doesn't",
        "Use 'doesn't' after he/she/it.",
    ),
    (
        re.compile(r"\bsince (\w+) years\b", re.I),
        "preposition",
        "for \\1 years",
        "Use 'for' with a length of time.",
    ),
    (re.compile(r"\beated\b", re.I), "irregular_verb", "ate", "'eat' is irregular: the past is 'ate'."),
    (re.compile(r"(?:^|[.!?]\s+|\s)i\b"), "capitalization", "I", "The pronoun 'I' is always capitalized."),
)


def _stt(prompt: Prompt) -> dict[str, Any]:
    text = " ".join(transcript_for(part.data) for part in prompt.audio) or prompt.subject
    duration = sum(duration_s_for(part.data) for part in prompt.audio)
    return {
        "text": text,
        "language": prompt.field("language", "en"),
        "confidence": 0.93,
        "segments": [{"start": 0.0, "end": round(duration, 3), "text": text}],
    }


def _grammar_issues(text: str) -> list[dict[str, str]]:
    issues = []
    for pattern, kind, correction, explanation in _GRAMMAR_RULES:
        found = pattern.search(text)
        if found:
            issues.append(
                {
                    "type": kind,
                    "original": found.group(0).strip(),
                    "correction": found.expand(correction),
                    "explanation": explanation,
                }
            )
    return issues


def _nlu(prompt: Prompt) -> dict[str, Any]:
    text = prompt.subject
    lowered = text.lower()
    if text.rstrip().endswith("?"):
        intent = "question"
    elif re.match(r"\s*(hello|hi|hola|bonjour)\b", lowered):
        intent = "greeting"
    else:
        intent = "statement"
    issues = _grammar_issues(text)
    words = re.findall(r"\b[A-Z][a-z]+\b", text)
    entities = [{"text": word, "type": "proper_noun"} for word in words[1:] if word != "I"]
    positive = any(word in lowered for word in _POSITIVE)
    negative = any(word in lowered for word in _NEGATIVE)
    sentiment = {(True, True): "mixed", (True, False): "positive", (False, True): "negative"}.get(
        (positive, negative), "neutral"
    )
    return {
        "intent": intent,
        "grammar": {
            "isCorrect": not issues,
            "score": round(max(0.0, 1.0 - 0.2 * len(issues)), 2),
            "issues": issues,
            "errors": issues,
        },
        "entities": entities,
        "sentiment": sentiment,
        "confidence": 0.9,
    }


def _mt(prompt: Prompt) -> dict[str, Any]:
    target = prompt.field("targetLanguage", "es")
    return {"translatedText": f"[{target}] {prompt.subject}", "confidence": 0.9}


def _feedback(prompt: Prompt) -> dict[str, Any]:
    text = prompt.subject
    target = prompt.field("targetLanguage", "es")
    issues = _grammar_issues(text)
    suggestions = [
        f"{issue['original']} -> {issue['correction']}: {issue['explanation']}" for issue in issues
    ]
    suggestions.append(f"Try saying the whole sentence again in '{target}'.")
    if not issues:
        verdict = "Nicely done"
    elif len(issues) == 1:
        verdict = "Good effort; there is one thing to polish"
    else:
        verdict = f"Good effort; there are {len(issues)} things to polish"
    return {
        "feedback": f'{verdict}. You said: "{text}".',
        "score": max(0, 100 - 15 * len(issues)),
        "suggestions": suggestions,
    }


_HINTS: dict[str, Callable[[Prompt], dict[str, Any]]] = {
    "stt_transcribe": _stt,
    "nlu_analyze": _nlu,
    "mt_translate": _mt,
    "feedback_generate": _feedback,
}


def answer_for_schema(name: str, schema: Mapping[str, Any], prompt: Prompt) -> Any:
    hint_fn = _HINTS.get(name)
    hint = hint_fn(prompt) if hint_fn is not None else None
    return SchemaFiller(schema, prompt).fill(schema, hint)


# --- JSON Schema walking ---------------------------------------------------------------------------

_MAX_DEPTH = 16
_NUMERIC = ("number", "integer")


class SchemaFiller:
    """Builds a value conforming to a JSON schema, preferring a hint wherever the hint fits."""

    def __init__(self, root: Mapping[str, Any], prompt: Prompt) -> None:
        self._root = root
        self._prompt = prompt

    def fill(self, schema: Mapping[str, Any], hint: Any = None, name: str = "", depth: int = 0) -> Any:
        schema = self._resolve(schema)
        if depth > _MAX_DEPTH:
            return self._minimal(schema)
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return hint if hint in schema["enum"] else schema["enum"][0]
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                return self.fill(self._pick_option(options, hint), hint, name, depth + 1)
        if isinstance(schema.get("allOf"), list):
            merged: dict[str, Any] = {}
            for part in schema["allOf"]:
                merged = _merge(merged, self._resolve(part))
            rest = {k: v for k, v in schema.items() if k != "allOf"}
            return self.fill(_merge(merged, rest), hint, name, depth + 1)
        kind = self._type_of(schema, hint)
        if kind == "object":
            return self._object(schema, hint, depth)
        if kind == "array":
            return self._array(schema, hint, name, depth)
        if kind == "string":
            return hint if isinstance(hint, str) else self._string(schema, name)
        if kind in _NUMERIC:
            return _number(schema, hint, integer=kind == "integer")
        if kind == "boolean":
            return hint if isinstance(hint, bool) else True
        if kind == "null":
            return None
        return hint if hint is not None else self._string(schema, name)

    def _resolve(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        seen = 0
        while isinstance(schema.get("$ref"), str) and seen < _MAX_DEPTH:
            ref: str = schema["$ref"]
            if not ref.startswith("#/"):
                return {}
            target: Any = self._root
            for token in ref[2:].split("/"):
                token = token.replace("~1", "/").replace("~0", "~")
                target = target.get(token) if isinstance(target, Mapping) else None
            schema = target if isinstance(target, Mapping) else {}
            seen += 1
        return schema

    def _pick_option(self, options: list[Any], hint: Any) -> Mapping[str, Any]:
        resolved = [self._resolve(o) for o in options if isinstance(o, Mapping)]
        for option in resolved:
            if hint is not None and _accepts(option, hint):
                return option
        non_null = [o for o in resolved if o.get("type") != "null"]
        return (non_null or resolved or [{}])[0]

    @staticmethod
    def _type_of(schema: Mapping[str, Any], hint: Any) -> str | None:
        declared = schema.get("type")
        if isinstance(declared, list):
            for kind in declared:
                if hint is not None and _accepts({"type": kind}, hint):
                    return str(kind)
            candidates = [k for k in declared if k != "null"] or declared
            return str(candidates[0]) if candidates else None
        if isinstance(declared, str):
            return declared
        if "properties" in schema:
            return "object"
        if "items" in schema:
            return "array"
        return None

    def _object(self, schema: Mapping[str, Any], hint: Any, depth: int) -> dict[str, Any]:
        properties = schema.get("properties")
        hints = hint if isinstance(hint, Mapping) else {}
        if not isinstance(properties, Mapping):
            return {}
        return {
            key: self.fill(sub, hints.get(key), key, depth + 1)
            for key, sub in properties.items()
            if isinstance(sub, Mapping)
        }

    def _array(self, schema: Mapping[str, Any], hint: Any, name: str, depth: int) -> list[Any]:
        items = schema.get("items")
        item_schema: Mapping[str, Any] = items if isinstance(items, Mapping) else {}
        low = int(schema.get("minItems", 0) or 0)
        high = schema.get("maxItems")
        if isinstance(hint, list):
            hints: list[Any] = list(hint)
        else:
            hints = [None] * max(low, 1)
        if isinstance(high, int):
            hints = hints[:high]
        while len(hints) < low:
            hints.append(None)
        return [self.fill(item_schema, h, name, depth + 1) for h in hints]

    def _string(self, schema: Mapping[str, Any], name: str) -> str:
        fmt = schema.get("format")
        if fmt == "date-time":
            return "2024-01-01T00:00:00Z"
        if fmt == "date":
            return "2024-01-01"
        if fmt in ("uri", "url"):
            return "https://example.invalid/simulated"
        if fmt == "email":
            return "learner@example.invalid"
        lowered = name.lower()
        if lowered in ("text", "transcript", "content", "original"):
            value = self._prompt.subject
        elif "translat" in lowered:
            value = f"[{self._prompt.field('targetLanguage', 'es')}] {self._prompt.subject}"
        elif "language" in lowered:
            value = self._prompt.field(name, "en")
        else:
            value = f"{name or 'value'}-{digest(self._prompt.subject, name)[:8]}"
        max_len = schema.get("maxLength")
        return value[:max_len] if isinstance(max_len, int) else value

    def _minimal(self, schema: Mapping[str, Any]) -> Any:
        kind = self._type_of(schema, None)
        return {"object": {}, "array": [], "string": "", "number": 0, "integer": 0, "boolean": False}.get(
            kind or ""
        )


def _accepts(schema: Mapping[str, Any], value: Any) -> bool:
    kind = schema.get("type")
    checks: dict[str, Callable[[Any], bool]] = {
        "string": lambda v: isinstance(v, str),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "object": lambda v: isinstance(v, Mapping),
        "array": lambda v: isinstance(v, list),
        "null": lambda v: v is None,
    }
    check = checks.get(kind) if isinstance(kind, str) else None
    return check(value) if check is not None else True


def _number(schema: Mapping[str, Any], hint: Any, *, integer: bool) -> int | float:
    if isinstance(hint, int | float) and not isinstance(hint, bool):
        value: float = hint
    else:
        value = 1 if integer else 0.9
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    step = 1 if integer else 0.01
    if isinstance(low, int | float) and value < low + (step if "exclusiveMinimum" in schema else 0):
        value = low + (step if "exclusiveMinimum" in schema else 0)
    if isinstance(high, int | float) and value > high - (step if "exclusiveMaximum" in schema else 0):
        value = high - (step if "exclusiveMaximum" in schema else 0)
    return round(value) if integer else float(value)


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if key == "properties" and isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = {**merged[key], **value}
        elif key == "required" and isinstance(value, list) and isinstance(merged.get(key), list):
            merged[key] = [*merged[key], *value]
        else:
            merged[key] = value
    return merged
