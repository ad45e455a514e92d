"""Workflow definitions: the YAML format, its typed model, and the checks made when one is loaded.

One file holds one workflow::

    name: Bilingual Coach              # display name: free text (printable, at most 200 characters)
    id: bilingual-coach                # optional address, [a-z0-9][a-z0-9-_.]*, used in URLs;
                                       # without it, the slug of the name (see ``workflow_slug``)
    description: ...
    version: 1.0.0                     # a string; quote it if YAML would read it as a number.
                                       # A version is immutable once registered.
    trigger:
      event: app.coach.session.start   # NATS subject under app.
      payload:                         # field: type, "?" after the name marks it optional
        userId: string
        audioData?: string
    retry: {maxAttempts: 3}            # optional: the default retry policy of every step
    steps:                             # a graph: a step runs once the steps it needs are done
      - name: speech_to_text           # [a-z_][a-z0-9_]*, unique
        when: has(trigger.payload.audioData)   # optional CEL condition; false -> skipped
        tool: stt.transcribe           # <category>.<action>
        provider: openrouter|gemini    # tried in order; a YAML list works too
        config: {timeout: 12000}       # free-form; ``timeout`` (ms) must be a positive integer;
                                       # ``fallback``: more providers; ``maxTokens``: budget estimate
        input: {audioData: "${trigger.payload.audioData}"}
        output: {text: string}         # declared output fields
        retry: {maxAttempts: 5, initialInterval: 200, backoffRate: 2, maxInterval: 5000,
                jitter: 0.2, retryOn: [timeout, server, rate_limited]}
        on_error: fail                 # fail | continue | <name of a handler step>
        needs: [other_step]            # run after these (template references add more)
        compensate: {tool: ..., provider: ..., input: {...}}   # undo, when the run fails later
      - name: each_line
        for_each: "${steps.split.output.lines}"   # one call per item, ${item} and ${index}
        concurrency: 4                 # at most this many items in flight
        ...
      - name: approval
        wait: {event: app.review.decided, key: "${trigger.payload.sessionId}",
               match: sessionId, timeout: 3600000}   # waits for an outside event, no tool
    guards:                            # optional
      budget: {maxMs: 60000, maxTokens: 8000, maxCost: 0.5}
      security: {piiRedaction: true, dataRetention: 30d, encryption: true}
      fallbacks: {stt: local}          # tool category (or step name) -> last-resort provider

Field types are ``string``, ``number``, ``integer``, ``boolean``, ``object``, ``array`` and ``any``.
A payload field may also be written in long form: ``userId: {type: string, required: true,
description: ...}``.

Limits (``MAX_STEPS``, ``MAX_DEFINITION_BYTES`` of the text and of the stored JSON, ``MAX_DEPTH`` of
nesting, the lengths of ``name``, ``id``, ``version`` and ``description``) are checked here, before
anything is stored, so every stored definition fits in one RPC reply. Messages echo at most a short
prefix of what they quote, and at most ``MAX_ERRORS`` problems are reported per definition.

Loading never stops at the first problem when it can go on: YAML syntax, structure (unknown or
missing keys, wrong types, bad names) and, once the structure is sound, meaning (duplicate steps,
templates naming unknown payload fields, unknown or later steps, undeclared outputs) are each
reported as a ``WorkflowError`` naming the file, the step, the field and, for YAML text, the line.

The YAML dialect is the safe subset with YAML 1.2 booleans (only ``true``/``false``; ``yes``,
``no``, ``on`` and ``off`` stay strings) and no implicit timestamps (dates stay strings), so every
value is plain JSON data.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import re
import types
import typing
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, TypeAlias, get_args, get_origin

import yaml
from omni_contract.rpc import MAX_DEFINITION_BYTES
from omni_contract.subjects import APP_PREFIX
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from omni_engine.conditions import ConditionError, compile_condition
from omni_engine.templating import (
    PathPart,
    TemplateError,
    collect_references,
    format_path,
    parse_template,
    step_dependencies,
)

FieldType: TypeAlias = Literal["string", "number", "integer", "boolean", "object", "array", "any"]
FIELD_TYPES: tuple[str, ...] = get_args(FieldType)
# Types a template path may go below (``${steps.x.output.grammar.errors}``).
_CONTAINER_TYPES = frozenset({"object", "array", "any"})

# A workflow's address (its ``id``, or the slug of its name): what URLs, runs and triggers key by.
WORKFLOW_ID_RE = re.compile(r"[a-z0-9][a-z0-9\-_.]{0,127}")
MAX_ID_LENGTH = 128
STEP_NAME_RE = re.compile(r"[a-z_][a-z0-9_]{0,63}")
FIELD_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
TOOL_RE = re.compile(r"[a-z][a-z0-9_-]*\.[a-z][a-z0-9_-]*")
PROVIDER_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_SUBJECT_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]+")
# ``steps.<name>`` inside a CEL condition: the condition is decided after that step.
_CONDITION_STEP_RE = re.compile(r"\bsteps\.([a-z_][a-z0-9_]*)")
_RETENTION_RE = re.compile(r"(\d+)([smhdw])")
_RETENTION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}

# Limits, checked before a definition is stored (a stored definition must fit in one RPC reply,
# and a run's summary with one entry per step too).
MAX_FILE_BYTES = MAX_DEFINITION_BYTES  # the YAML or JSON text, and the stored (canonical) JSON
MAX_STEPS = 1000  # the long-history benchmark runs 1,000 sequential steps
MAX_DEPTH = 32  # nesting of mappings and lists, from the top of the document
MAX_NAME_LENGTH = 200
MAX_VERSION_LENGTH = 64
MAX_DESCRIPTION_LENGTH = 4000
MAX_ERRORS = 50  # problems reported per definition; the rest are counted
MAX_MESSAGE_LENGTH = 500  # of one problem's message (a quoted value is cut well before)
MAX_FIELD_LENGTH = 200  # of one problem's field path
_MAX_NODES = 100_000


# ---------------------------------------------------------------------------------------------
# Errors


class WorkflowError(Exception):
    """One problem in one definition.

    ``field`` is the dotted path from the top of the document (``steps[2].input.text``,
    ``trigger.payload.userId``); ``step`` is the name of the step it sits in, when known.
    """

    def __init__(
        self, file: str, step: str | None, field: str | None, message: str, line: int | None = None
    ) -> None:
        self.file = _clip(file, MAX_FIELD_LENGTH)
        self.step = None if step is None else _clip(step, MAX_FIELD_LENGTH)
        self.field = None if field is None else _clip(field, MAX_FIELD_LENGTH)
        self.message = _clip(message, MAX_MESSAGE_LENGTH)
        self.line = line
        super().__init__(self._text())

    def _text(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        parts = [where]
        field = self.field
        if self.step is not None:
            parts.append(f"step {self.step!r}")
            # Inside a step, the path reads relative to it: field 'input.text'.
            if field is not None and field.startswith("steps["):
                _, _, rest = field.partition("].")
                field = rest or None
        if field:
            parts.append(f"field {field!r}")
        parts.append(self.message)
        return ": ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON form; the keys match ``omni_contract.rpc.FieldProblem`` plus ``line``."""
        return {
            "file": self.file,
            "step": self.step,
            "field": self.field,
            "message": self.message,
            "line": self.line,
        }


def _clip(text: str, limit: int) -> str:
    """``text``, cut to ``limit`` characters (marked with an ellipsis) when longer."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _quote(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: what messages echo of a caller's value."""
    return _clip(repr(value), limit)


class WorkflowValidationError(Exception):
    """Every problem found in one definition (at least one)."""

    def __init__(self, file: str, errors: list[WorkflowError]) -> None:
        self.file = file
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "errors": [e.to_dict() for e in self.errors]}


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem in a trigger payload; ``field`` reads ``payload.<name>``."""

    field: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


# ---------------------------------------------------------------------------------------------
# The model


class _Model(BaseModel):
    # strict: a YAML ``"12000"`` is not silently an int, and ``true`` is not a number.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class PayloadField(_Model):
    type: FieldType
    required: bool = True
    description: str = ""


def _check_app_subject(value: str, what: str = "trigger event") -> str:
    tokens = value.split(".")
    if not value.startswith(APP_PREFIX) or not all(_SUBJECT_TOKEN_RE.fullmatch(t) for t in tokens[1:]):
        raise ValueError(
            f"invalid {what} {_quote(value)}: expected a NATS subject under {APP_PREFIX!r} "
            "(such as app.<area>.<event>) made of letters, digits, '-' and '_', without wildcards"
        )
    return value


class Trigger(_Model):
    event: str
    payload: dict[str, PayloadField] = Field(default_factory=dict)

    @field_validator("event")
    @classmethod
    def _check_event(cls, value: str) -> str:
        return _check_app_subject(value)

    @property
    def required_fields(self) -> list[str]:
        return [name for name, spec in self.payload.items() if spec.required]


# Error kinds (``ToolError.kind``) retried by default: the call may well succeed next time.
DEFAULT_RETRY_ON: tuple[str, ...] = ("timeout", "server", "rate_limited", "unavailable", "malformed_response")
# Kinds that no retry or fallback can mend: the request itself is wrong.
NEVER_RETRY: frozenset[str] = frozenset({"validation", "bad_request", "template", "condition", "budget"})
# The pseudo-provider that ends a chain by returning the step's text (a spoken answer degraded to
# text). The engine serves it; no runner is involved.
TEXT_ONLY = "text-only"


class RetryPolicy(_Model):
    """How one provider is retried before the step falls back to the next (times in ms)."""

    max_attempts: int = Field(default=3, alias="maxAttempts", ge=1, le=100)
    initial_interval: int = Field(default=500, alias="initialInterval", ge=0)
    backoff_rate: float = Field(default=2.0, alias="backoffRate", ge=1.0, le=100.0)
    max_interval: int = Field(default=30_000, alias="maxInterval", ge=0)
    jitter: float = Field(default=0.2, ge=0.0, le=1.0)  # +/- this fraction of the interval
    retry_on: tuple[str, ...] = Field(default=DEFAULT_RETRY_ON, alias="retryOn")

    @field_validator("retry_on", mode="before")
    @classmethod
    def _list_to_tuple(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value

    @field_validator("retry_on")
    @classmethod
    def _check_kinds(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = sorted(set(value) & NEVER_RETRY)
        if bad:
            raise ValueError(f"{', '.join(bad)} errors are never retried: the request itself is wrong")
        return value

    def retries(self, kind: str) -> bool:
        return kind in self.retry_on and kind not in NEVER_RETRY

    def interval_ms(self, retry_number: int) -> float:
        """The back-off before retry ``retry_number`` (1 for the first retry), without jitter."""
        return float(min(self.max_interval, self.initial_interval * self.backoff_rate ** (retry_number - 1)))


class Compensation(_Model):
    """The tool call that undoes a completed step, run when the run fails or is cancelled."""

    tool: str
    providers: list[str] = Field(alias="provider", min_length=1)
    config: dict[str, Any] = Field(default_factory=dict)
    input: dict[str, Any] = Field(default_factory=dict)

    @field_validator("providers", mode="before")
    @classmethod
    def _split_providers(cls, value: Any) -> Any:
        return [part.strip() for part in value.split("|")] if isinstance(value, str) else value


class Wait(_Model):
    """Wait for an outside event on ``event`` whose field ``match`` equals ``key`` (rendered)."""

    event: str
    key: str
    match: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
    timeout: int = Field(gt=0)  # ms

    @field_validator("event")
    @classmethod
    def _check_event(cls, value: str) -> str:
        return _check_app_subject(value, "wait event")


class Step(_Model):
    name: str
    description: str = ""
    tool: str | None = None
    providers: list[str] = Field(default_factory=list, alias="provider")
    config: dict[str, Any] = Field(default_factory=dict)
    input: dict[str, Any] = Field(default_factory=dict)
    output: dict[str, FieldType] = Field(default_factory=dict)
    needs: list[str] = Field(default_factory=list)
    when: str | None = None
    retry: RetryPolicy | None = None
    on_error: str = "fail"
    compensate: Compensation | None = None
    for_each: str | None = None
    concurrency: int = Field(default=10, ge=1, le=10_000)
    wait: Wait | None = None

    @field_validator("needs", mode="before")
    @classmethod
    def _one_need(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not STEP_NAME_RE.fullmatch(value):
            raise ValueError(
                f"invalid step name {_quote(value)}: use lower-case letters, digits and '_', "
                "starting with a letter or '_' (at most 64 characters)"
            )
        return value

    @field_validator("tool")
    @classmethod
    def _check_tool(cls, value: str | None) -> str | None:
        if value is not None and not TOOL_RE.fullmatch(value):
            raise ValueError(
                f"invalid tool name {_quote(value)}: expected <category>.<action>, e.g. stt.transcribe"
            )
        return value

    @field_validator("providers", mode="before")
    @classmethod
    def _split_providers(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split("|")]
        return value

    @field_validator("providers")
    @classmethod
    def _check_providers(cls, value: list[str]) -> list[str]:
        for provider in value:
            if not PROVIDER_RE.fullmatch(provider):
                raise ValueError(
                    f"invalid provider name {_quote(provider)}: "
                    "use lower-case letters, digits, '.', '-' and '_'"
                )
        if len(set(value)) != len(value):
            raise ValueError(f"provider listed twice in {'|'.join(value)!r}")
        return value

    @property
    def category(self) -> str:
        """``stt`` for ``stt.transcribe`` (empty for a ``wait`` step)."""
        return (self.tool or "").partition(".")[0]

    @property
    def action(self) -> str:
        return (self.tool or "").partition(".")[2]

    @property
    def timeout_ms(self) -> int | None:
        """``config.timeout`` (checked at load to be a positive integer)."""
        value = self.config.get("timeout")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def dependencies(self) -> set[str]:
        """Steps this one runs after: ``needs`` and those whose output its templates read."""
        found = step_dependencies(self.input) | step_dependencies(self.config) | set(self.needs)
        if self.for_each is not None:
            found |= step_dependencies(self.for_each)
        if self.wait is not None:
            found |= step_dependencies(self.wait.key)
        if self.when is not None:
            found |= set(_CONDITION_STEP_RE.findall(self.when))
        return found


class Budget(_Model):
    max_ms: int | None = Field(default=None, alias="maxMs", gt=0)
    max_tokens: int | None = Field(default=None, alias="maxTokens", gt=0)
    max_cost: float | None = Field(default=None, alias="maxCost", ge=0)


class Security(_Model):
    pii_redaction: bool = Field(default=False, alias="piiRedaction")
    data_retention: str | None = Field(default=None, alias="dataRetention")
    encryption: bool = False

    @field_validator("data_retention")
    @classmethod
    def _check_retention(cls, value: str | None) -> str | None:
        if value is not None and not _RETENTION_RE.fullmatch(value):
            raise ValueError(
                f"invalid retention {value!r}: expected a number and a unit s, m, h, d or w (90d)"
            )
        return value

    @property
    def retention(self) -> timedelta | None:
        if self.data_retention is None:
            return None
        m = _RETENTION_RE.fullmatch(self.data_retention)
        if m is None:  # unreachable after validation
            return None
        return timedelta(**{_RETENTION_UNITS[m.group(2)]: int(m.group(1))})


class Guards(_Model):
    budget: Budget | None = None
    security: Security | None = None
    # Tool category (``stt``) or step name -> provider tried after the step's own providers.
    fallbacks: dict[str, str] = Field(default_factory=dict)

    @field_validator("fallbacks")
    @classmethod
    def _check_fallbacks(cls, value: dict[str, str]) -> dict[str, str]:
        for key, provider in value.items():
            if not PROVIDER_RE.fullmatch(provider):
                raise ValueError(f"invalid provider name {_quote(provider)} for fallback {_quote(key)}")
        return value


def workflow_slug(name: str) -> str:
    """The address a workflow gets from its display name when it has no ``id``.

    A name that is already a valid id (``bilingual-coach``: every name the format accepted before
    display names) is its own slug, so existing workflows keep their URLs. Otherwise: accents
    dropped, lower case, every run of characters other than letters and digits turned into one
    ``-``, and ``-`` trimmed from both ends (``Bilingual Coach Workflow`` ->
    ``bilingual-coach-workflow``). Empty when the name has no letter or digit in a-z, 0-9.
    """
    if WORKFLOW_ID_RE.fullmatch(name):
        return name
    plain = unicodedata.normalize("NFKD", name)
    plain = "".join(c for c in plain if not unicodedata.combining(c)).lower()
    return re.sub(r"[^a-z0-9]+", "-", plain).strip("-")[:MAX_ID_LENGTH].strip("-")


def _printable(value: str, what: str, limit: int) -> str:
    if not value.strip():
        raise ValueError(f"{what} must not be empty")
    if len(value) > limit:
        raise ValueError(f"{what} is {len(value)} characters long, more than the {limit} allowed")
    if not value.isprintable():
        raise ValueError(f"{what} {_quote(value)} holds a control character (tab, newline...)")
    return value


class WorkflowDefinition(_Model):
    """One workflow. ``display_name`` is what its ``name:`` says (free text); ``id`` (its
    address, also ``name`` for the engine's run records) is the ``id:`` written, or else the
    slug of the display name."""

    display_name: str = Field(alias="name")
    explicit_id: str | None = Field(default=None, alias="id")
    description: str = ""
    version: str
    trigger: Trigger
    steps: list[Step] = Field(min_length=1)
    retry: RetryPolicy | None = None
    guards: Guards | None = None

    _source: str = PrivateAttr(default="<memory>")
    _hash: str | None = PrivateAttr(default=None)

    @field_validator("display_name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return _printable(value, "the workflow name", MAX_NAME_LENGTH)

    @field_validator("explicit_id")
    @classmethod
    def _check_id(cls, value: str | None) -> str | None:
        if value is not None and not WORKFLOW_ID_RE.fullmatch(value):
            raise ValueError(
                f"invalid workflow id {_quote(value)}: use lower-case letters, digits, '-', '_' and '.', "
                f"starting with a letter or digit (at most {MAX_ID_LENGTH} characters)"
            )
        return value

    @field_validator("description")
    @classmethod
    def _check_description(cls, value: str) -> str:
        if len(value) > MAX_DESCRIPTION_LENGTH:
            raise ValueError(
                f"the description is {len(value)} characters long, more than the "
                f"{MAX_DESCRIPTION_LENGTH} allowed"
            )
        return value

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, float):
            raise ValueError(
                f"write the version as a string (quote it): YAML reads it as the number {value!r}"
            )
        return value

    @field_validator("version")
    @classmethod
    def _check_version(cls, value: str) -> str:
        return _printable(value, "version", MAX_VERSION_LENGTH)

    @functools.cached_property
    def id(self) -> str:
        """The workflow's address: ``id:`` as written, else the slug of ``name:``. URLs, runs,
        triggers and stored rows key by it."""
        return self.explicit_id or workflow_slug(self.display_name)

    @property
    def name(self) -> str:
        """The address (``id``), under the attribute runs, triggers and metrics have always read;
        the display name is ``display_name``."""
        return self.id

    @property
    def source(self) -> str:
        """Where the definition was read from (a file path, or what the caller named it)."""
        return self._source

    @property
    def content_hash(self) -> str:
        """sha256 (hex) of the canonical JSON of ``definition_to_dict``: independent of key order,
        whitespace, comments and how providers or payload fields were spelled."""
        if self._hash is None:
            self._hash = hashlib.sha256(canonical_json(self).encode()).hexdigest()
        return self._hash

    @property
    def step_names(self) -> list[str]:
        return [step.name for step in self.steps]

    @functools.cached_property
    def _steps_by_name(self) -> dict[str, Step]:
        return {step.name: step for step in self.steps}

    def step(self, name: str) -> Step:
        return self._steps_by_name[name]

    def step_index(self, name: str) -> int:
        for index, step in enumerate(self.steps):
            if step.name == name:
                return index
        raise KeyError(name)

    def dependencies(self) -> dict[str, set[str]]:
        """Each step -> the steps it runs after (always earlier ones, by validation)."""
        return {step.name: step.dependencies for step in self.steps}

    # Derived once per definition and cached in the instance's __dict__ (``cached_property``
    # works on frozen models): the engine asks these on every decision.
    @functools.cached_property
    def _needs(self) -> dict[str, tuple[str, ...]]:
        return {step.name: tuple(sorted(step.dependencies)) for step in self.steps}

    @functools.cached_property
    def handlers(self) -> frozenset[str]:
        """Steps named by another step's ``on_error``: they run only when that step fails."""
        return frozenset(s.on_error for s in self.steps if s.on_error not in ("fail", "continue"))

    def needs_of(self, name: str) -> tuple[str, ...]:
        """The steps ``name`` runs after."""
        return self._needs[name]

    def retry_policy(self, step: Step) -> RetryPolicy:
        return step.retry or self.retry or _DEFAULT_RETRY

    def provider_chain(self, step: Step) -> list[str]:
        """The step's providers in order: its own, then ``config.fallback``, then
        ``guards.fallbacks`` for the step or its tool category."""
        chain = list(step.providers)
        extra = step.config.get("fallback")
        for provider in [extra] if isinstance(extra, str) else extra if isinstance(extra, list) else []:
            if isinstance(provider, str) and provider not in chain:
                chain.append(provider)
        if self.guards is not None:
            for key in (step.name, step.category):
                provider = self.guards.fallbacks.get(key)
                if provider is not None and provider not in chain:
                    chain.append(provider)
        return chain


_DEFAULT_RETRY = RetryPolicy()


# ---------------------------------------------------------------------------------------------
# Serialisation


def definition_to_dict(defn: WorkflowDefinition) -> dict[str, Any]:
    """Plain JSON data for API responses; ``parse_workflow`` reads it back to an equal definition."""
    payload: dict[str, Any] = {}
    for name, spec in defn.trigger.payload.items():
        if spec.description:
            payload[name] = {"type": spec.type, "required": spec.required, "description": spec.description}
        else:
            payload[name if spec.required else f"{name}?"] = spec.type
    out: dict[str, Any] = {"name": defn.display_name}
    if defn.explicit_id is not None:  # written only when given, so older definitions keep their hash
        out["id"] = defn.explicit_id
    out |= {
        "description": defn.description,
        "version": defn.version,
        "trigger": {"event": defn.trigger.event, "payload": payload},
        "steps": [_step_to_dict(step) for step in defn.steps],
    }
    if defn.retry is not None:
        out["retry"] = defn.retry.model_dump(mode="json", by_alias=True)
    if defn.guards is not None:
        out["guards"] = defn.guards.model_dump(mode="json", by_alias=True, exclude_none=True)
    return out


def _step_to_dict(step: Step) -> dict[str, Any]:
    out: dict[str, Any] = {"name": step.name, "description": step.description}
    if step.tool is not None:
        out["tool"] = step.tool
        out["provider"] = list(step.providers)
    out.update(config=copy.deepcopy(step.config), input=copy.deepcopy(step.input), output=dict(step.output))
    # The language's later additions appear only when used, so older definitions keep their hash.
    if step.needs:
        out["needs"] = list(step.needs)
    if step.when is not None:
        out["when"] = step.when
    if step.retry is not None:
        out["retry"] = step.retry.model_dump(mode="json", by_alias=True)
    if step.on_error != "fail":
        out["on_error"] = step.on_error
    if step.compensate is not None:
        out["compensate"] = step.compensate.model_dump(mode="json", by_alias=True)
    if step.for_each is not None:
        out["for_each"] = step.for_each
        out["concurrency"] = step.concurrency
    if step.wait is not None:
        out["wait"] = step.wait.model_dump(mode="json", by_alias=True)
    return out


def canonical_json(defn: WorkflowDefinition) -> str:
    return json.dumps(definition_to_dict(defn), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _json_schema_of(spec: PayloadField) -> dict[str, Any]:
    schema: dict[str, Any] = {}
    if spec.type != "any":
        schema["type"] = spec.type if spec.required else [spec.type, "null"]
    if spec.description:
        schema["description"] = spec.description
    return schema


def to_json_schema(defn: WorkflowDefinition) -> dict[str, Any]:
    """The trigger payload as a JSON Schema (draft 2020-12). Optional fields also accept null."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"{defn.display_name} trigger payload",
        "description": f"Payload of {defn.trigger.event}, which starts workflow {defn.id} {defn.version}.",
        "type": "object",
        "properties": {name: _json_schema_of(spec) for name, spec in defn.trigger.payload.items()},
        "required": defn.trigger.required_fields,
        "additionalProperties": False,
    }


# ---------------------------------------------------------------------------------------------
# Trigger payloads


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__


def _matches(type_: str, value: Any) -> bool:
    actual = _json_type(value)
    if type_ == "any" or type_ == actual:
        return True
    if type_ == "number":
        return actual == "integer"
    # As in JSON Schema, 3.0 is an integer.
    return type_ == "integer" and isinstance(value, float) and value.is_integer()


def validate_payload(defn: WorkflowDefinition, payload: Any) -> list[FieldError]:
    """Check a trigger payload against the trigger's declared fields; ``[]`` when it is valid.

    Required fields must be present and not null; optional ones may be absent or null; every
    present value must have its declared type (booleans are not numbers; 3.0 is an integer);
    fields the trigger does not declare are rejected.
    """
    if not isinstance(payload, Mapping):
        return [FieldError("payload", f"expected an object, got {_json_type(payload)}")]
    declared = defn.trigger.payload
    errors: list[FieldError] = []
    for name, spec in declared.items():
        where = f"payload.{name}"
        if name not in payload:
            if spec.required:
                errors.append(FieldError(where, f"required field is missing (expected {spec.type})"))
            continue
        value = payload[name]
        if value is None:
            if spec.required:
                errors.append(FieldError(where, f"required field is null (expected {spec.type})"))
        elif not _matches(spec.type, value):
            errors.append(FieldError(where, f"expected {spec.type}, got {_json_type(value)}"))
    for key in payload:
        if key not in declared:
            known = ", ".join(declared) or "none"
            errors.append(FieldError(f"payload.{key}", f"unknown field (declared fields: {known})"))
    return errors


# ---------------------------------------------------------------------------------------------
# YAML


# libyaml's parser when PyYAML has it (the wheels do): some twenty times faster than the pure
# Python one, which took seconds to refuse a 10,000-step definition on a busy machine.
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_SafeLoader):  # type: ignore[valid-type,misc]  # chosen at import time
    """Safe YAML with YAML 1.2 booleans and no implicit timestamps: values stay JSON data."""


_BOOL_TAG = "tag:yaml.org,2002:bool"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL_TAG, _TIMESTAMP_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


class _Problems:
    """Collects the errors of one definition, resolving step names and YAML lines for paths."""

    def __init__(self, source: str, node: yaml.Node | None) -> None:
        self.source = source
        self.node = node
        self.data: Any = None
        self.errors: list[WorkflowError] = []

    def add(self, path: tuple[PathPart, ...], message: str, line: int | None = None) -> None:
        step: str | None = None
        if len(path) >= 2 and path[0] == "steps" and isinstance(path[1], int):
            step = self.step_name(path[1])
        self.errors.append(
            WorkflowError(
                self.source,
                step,
                format_path(path) or None,
                message,
                line if line is not None else self.line_of(path),
            )
        )

    def failure(self) -> WorkflowValidationError:
        """The error to raise: the first ``MAX_ERRORS`` problems, and a count of the rest."""
        errors = self.errors
        if len(errors) > MAX_ERRORS:
            more = len(errors) - MAX_ERRORS
            errors = [
                *errors[:MAX_ERRORS],
                WorkflowError(self.source, None, None, f"and {more} more problems, not listed"),
            ]
        return WorkflowValidationError(self.source, errors)

    def step_name(self, index: int) -> str | None:
        """The name written in ``steps[index]``, from the parsed data or else the YAML nodes."""
        steps = self.data.get("steps") if isinstance(self.data, dict) else None
        if isinstance(steps, list):
            item = steps[index] if index < len(steps) else None
            name = item.get("name") if isinstance(item, dict) else None
            return name if isinstance(name, str) else None
        node = self.node
        for part in ("steps", index, "name"):
            node = _child(node, part)
        return node.value if isinstance(node, yaml.ScalarNode) else None

    def line_of(self, path: tuple[PathPart, ...]) -> int | None:
        """The line of the key (or list item) that ``path`` ends at, or of the nearest parent."""
        node = self.node
        if node is None:
            return None
        line = node.start_mark.line + 1
        for part in path:
            if isinstance(node, yaml.MappingNode):
                for key, value in node.value:
                    if isinstance(key, yaml.ScalarNode) and key.value in (str(part), f"{part}?"):
                        line, node = key.start_mark.line + 1, value
                        break
                else:
                    return line
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                return line
        return line


def _child(node: yaml.Node | None, part: PathPart) -> yaml.Node | None:
    found: yaml.Node | None = None
    if isinstance(node, yaml.MappingNode):
        found = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == part), None)
    elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        found = node.value[part]
    return found


def _read_yaml(text: str, problems: _Problems) -> Any:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        problems.node = node
        if node is None:
            return None
        _check_nodes(node, (), problems, set(), [0])
        if problems.errors:
            return None
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        detail = exc.problem or exc.context or "syntax error"
        if exc.problem and exc.context:
            detail += f" ({exc.context}"
            if exc.context_mark is not None:
                detail += f" on line {exc.context_mark.line + 1}"
            detail += ")"
        problems.add((), f"invalid YAML: {detail}", line=mark.line + 1 if mark else None)
    except yaml.YAMLError as exc:
        problems.add((), f"invalid YAML: {exc}")
    except RecursionError:  # the parser itself recurses: a document nested thousands deep
        problems.add((), f"invalid YAML: nested far more than {MAX_DEPTH} levels deep")
    finally:
        loader.dispose()
    return None


def _check_nodes(
    node: yaml.Node, path: tuple[PathPart, ...], problems: _Problems, ancestors: set[int], count: list[int]
) -> None:
    """Duplicate keys (which PyYAML would silently collapse), recursive aliases, runaway size."""
    count[0] += 1
    if count[0] > _MAX_NODES:
        raise yaml.YAMLError(f"document has more than {_MAX_NODES} nodes")
    if len(path) > MAX_DEPTH:
        problems.add(
            path[:MAX_DEPTH], f"nested more than {MAX_DEPTH} levels deep", line=node.start_mark.line + 1
        )
        return
    if id(node) in ancestors:
        problems.add(path, "recursive YAML alias", line=node.start_mark.line + 1)
        return
    ancestors = ancestors | {id(node)}
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else None
            if name is not None and name in seen and key.tag != "tag:yaml.org,2002:merge":
                problems.add(
                    (*path, name),
                    f"duplicate key {_quote(name)} (first written on line {seen[name]})",
                    line=key.start_mark.line + 1,
                )
            elif name is not None:
                seen[name] = key.start_mark.line + 1
            _check_nodes(value, (*path, name if name is not None else "?"), problems, ancestors, count)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _check_nodes(item, (*path, index), problems, ancestors, count)


def _check_keys(value: Any, path: tuple[PathPart, ...], problems: _Problems, depth: int) -> None:
    if depth > MAX_DEPTH and isinstance(value, dict | list):
        problems.add(path, f"nested more than {MAX_DEPTH} levels deep")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                problems.add(
                    (*path, str(key)), f"keys must be strings, not {_json_type(key)} ({_quote(key)})"
                )
            _check_keys(item, (*path, str(key)), problems, depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_keys(item, (*path, index), problems, depth + 1)


# ---------------------------------------------------------------------------------------------
# Structure: normalisation and pydantic errors


def _normalise(data: dict[str, Any], problems: _Problems) -> tuple[dict[str, Any], set[str]]:
    """Rewrite the trigger payload's ``name?: type`` shorthand to ``PayloadField`` form.

    Returns the rewritten document and the names written in shorthand (their type errors are
    reported at ``trigger.payload.<name>`` rather than ``...<name>.type``).
    """
    trigger = data.get("trigger")
    if not isinstance(trigger, dict) or not isinstance(trigger.get("payload"), dict):
        return data, set()
    fields: dict[str, Any] = {}
    shorthand: set[str] = set()
    for key, spec in trigger["payload"].items():
        key = str(key)
        optional = key.endswith("?")
        name = key[:-1] if optional else key
        where: tuple[PathPart, ...] = ("trigger", "payload", name)
        if not FIELD_NAME_RE.fullmatch(name):
            problems.add(
                where,
                f"invalid payload field name {_quote(name)}: use letters, digits and '_', no leading digit",
            )
            continue
        if name in fields:
            problems.add(where, f"payload field {name!r} is declared twice")
            continue
        if isinstance(spec, dict):
            entry = dict(spec)
            if optional:
                if entry.get("required") is True:
                    problems.add(where, f"field {name!r} is marked optional with '?' but says required: true")
                entry["required"] = False
        else:
            entry = {"type": spec, "required": not optional}
            shorthand.add(name)
        fields[name] = entry
    return {**data, "trigger": {**trigger, "payload": fields}}, shorthand


def _field_by_alias(model: type[BaseModel], key: str) -> Any:
    for name, info in model.model_fields.items():
        if (info.alias or name) == key:
            return info.annotation
    return None


def _model_at(loc: tuple[PathPart, ...]) -> type[BaseModel] | None:
    """The model class whose keys sit at ``loc`` (for listing allowed keys)."""
    model: type[BaseModel] = WorkflowDefinition
    skip_key = False
    for part in loc:
        if isinstance(part, int):
            continue
        if skip_key:
            skip_key = False
            continue
        annotation = _field_by_alias(model, part)
        if get_origin(annotation) in (typing.Union, types.UnionType):
            annotation = next((a for a in get_args(annotation) if a is not type(None)), None)
        if get_origin(annotation) is dict:
            annotation, skip_key = get_args(annotation)[1], True
        elif get_origin(annotation) is list:
            annotation = get_args(annotation)[0]
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
}


def _describe(value: Any) -> str:
    kind = _json_type(value)
    if kind in ("object", "array"):
        return "a mapping" if kind == "object" else "a list"
    text = repr(value)
    return f"{kind} {text if len(text) <= 40 else text[:37] + '...'}"


def _structure_errors(exc: ValidationError, shorthand: set[str], problems: _Problems) -> None:
    for err in exc.errors(include_url=False):
        loc: tuple[PathPart, ...] = tuple(err["loc"])
        kind = err["type"]
        if len(loc) == 4 and loc[:2] == ("trigger", "payload") and loc[2] in shorthand and loc[3] == "type":
            loc = loc[:3]
        if kind == "extra_forbidden":
            model = _model_at(loc[:-1])
            allowed = [info.alias or name for name, info in model.model_fields.items()] if model else []
            message = f"unknown key {_quote(loc[-1])}"
            if allowed:
                message += f" (allowed here: {', '.join(allowed)})"
        elif kind == "missing":
            message = f"missing required key {loc[-1]!r}"
        elif kind == "literal_error":
            given = "no type given" if err["input"] is None else f"unknown type {err['input']!r}"
            message = f"{given} (expected one of: {', '.join(FIELD_TYPES)})"
        elif kind == "value_error":
            message = str(err.get("ctx", {}).get("error", err["msg"]))
        elif kind in _EXPECTED:
            message = f"expected {_EXPECTED[kind]}, got {_describe(err['input'])}"
        elif kind == "too_short" and loc == ("steps",):
            message = "a workflow needs at least one step"
        else:
            message = err["msg"]
        problems.add(loc, message)


# ---------------------------------------------------------------------------------------------
# Meaning


def _names(items: list[str]) -> str:
    return ", ".join(items) or "none"


def _check_step_shape(step: Step, i: int, index: dict[str, int], problems: _Problems) -> None:
    """The checks of one step's own fields that need more than one field (or the other steps)."""
    if step.wait is not None:
        for key, present in (("tool", step.tool), ("provider", step.providers), ("for_each", step.for_each)):
            if present:
                problems.add(("steps", i, key), f"a wait step has no {key}: it waits for an event")
        if step.wait.key and "${" in step.wait.key:
            try:
                parse_template(step.wait.key)
            except TemplateError as exc:
                problems.add(("steps", i, "wait", "key"), f"invalid template {exc.snippet!r}: {exc.message}")
    else:
        if step.tool is None:
            problems.add(
                ("steps", i, "tool"), "missing required key 'tool' (or 'wait', to wait for an event)"
            )
        if not step.providers:
            problems.add(("steps", i, "provider"), "missing required key 'provider'")
    for j, need in enumerate(step.needs):
        k = index.get(need)
        if k is None:
            problems.add(("steps", i, "needs", j), f"needs unknown step {need!r}")
        elif k >= i:
            problems.add(
                ("steps", i, "needs", j),
                f"needs step {need!r}, declared after it or itself: name only steps declared before",
            )
    if step.when is not None:
        try:
            compile_condition(step.when)
        except ConditionError as exc:
            problems.add(("steps", i, "when"), str(exc))
        for name in _CONDITION_STEP_RE.findall(step.when):
            k = index.get(name)
            if k is None or k >= i:
                problems.add(
                    ("steps", i, "when"),
                    f"condition reads step {name!r}, which is not a step declared before",
                )
    if step.on_error not in ("fail", "continue"):
        k = index.get(step.on_error)
        if k is None:
            problems.add(
                ("steps", i, "on_error"),
                f"on_error must be fail, continue or the name of a step; there is no step {step.on_error!r}",
            )
        elif k == i:
            problems.add(("steps", i, "on_error"), "a step cannot handle its own failure")
    if step.for_each is not None:
        try:
            template = parse_template(step.for_each)
        except TemplateError:
            template = None  # reported with the other template errors
        if template is not None and not template.is_whole:
            problems.add(
                ("steps", i, "for_each"),
                "for_each must be one template naming a list, e.g. ${steps.x.output.items}",
            )
    if step.compensate is not None:
        if not TOOL_RE.fullmatch(step.compensate.tool):
            problems.add(("steps", i, "compensate", "tool"), f"invalid tool name {step.compensate.tool!r}")
        refs, errors = collect_references(step.compensate.input)
        for err in errors:
            problems.add(
                ("steps", i, "compensate", "input", *err.location), f"invalid template: {err.message}"
            )
        for ref in refs:
            if ref.root == "steps" and ref.step not in index:
                problems.add(
                    ("steps", i, "compensate", "input", *ref.location),
                    f"reference to unknown step {ref.step!r}",
                )


def _check_meaning(defn: WorkflowDefinition, problems: _Problems) -> None:
    if defn.explicit_id is None and not defn.id:
        problems.add(
            ("name",),
            f"the workflow name {_quote(defn.display_name)} has no letter or digit (a-z, 0-9) to make "
            "its address from: add an id (lower-case letters, digits, '-', '_' and '.')",
        )
    index: dict[str, int] = {}
    for i, step in enumerate(defn.steps):
        if step.name in index:
            problems.add(
                ("steps", i, "name"), f"duplicate step name {step.name!r} (also steps[{index[step.name]}])"
            )
        else:
            index[step.name] = i

    payload = defn.trigger.payload
    for i, step in enumerate(defn.steps):
        _check_step_shape(step, i, index, problems)
        for name in step.output:
            if not FIELD_NAME_RE.fullmatch(name):
                problems.add(("steps", i, "output", name), f"invalid output field name {name!r}")
        timeout = step.config.get("timeout")
        if "timeout" in step.config and not (
            isinstance(timeout, int) and not isinstance(timeout, bool) and timeout > 0
        ):
            problems.add(
                ("steps", i, "config", "timeout"),
                f"timeout must be a positive integer number of milliseconds, got {_describe(timeout)}",
            )
        sections: list[tuple[str, Any]] = [("config", step.config), ("input", step.input)]
        if step.for_each is not None:
            sections.append(("for_each", step.for_each))
        if step.wait is not None:
            sections.append(("wait", {"key": step.wait.key}))
        for section, value in sections:
            refs, template_errors = collect_references(value)
            for terr in template_errors:
                problems.add(
                    ("steps", i, section, *terr.location),
                    f"invalid template {terr.snippet!r}: {terr.message}",
                )
            for ref in refs:
                where: tuple[PathPart, ...] = ("steps", i, section, *ref.location)
                shown = f"${{{ref.expression}}}"
                if ref.root in ("item", "index") and (step.for_each is None or section == "for_each"):
                    problems.add(
                        where,
                        f"{shown}: item and index exist only in the input and config of a for_each step",
                    )
                elif ref.root == "trigger" and ref.path:
                    top = ref.path[0]
                    spec = payload.get(top) if isinstance(top, str) else None
                    if spec is None:
                        problems.add(
                            where,
                            f"reference to unknown trigger payload field {top!r} in {shown} "
                            f"(declared: {_names(list(payload))})",
                        )
                    elif len(ref.path) > 1 and spec.type not in _CONTAINER_TYPES:
                        problems.add(
                            where, f"{shown} goes below trigger payload field {top!r}, a {spec.type}"
                        )
                elif ref.root == "steps" and ref.step is not None:
                    j = index.get(ref.step)
                    if j is None:
                        problems.add(where, f"reference to unknown step {ref.step!r} in {shown}")
                    elif j == i:
                        problems.add(where, f"step refers to its own output in {shown} (a cycle)")
                    elif j > i:
                        problems.add(
                            where,
                            f"forward reference to step {ref.step!r} (steps[{j}]) in {shown}: a step can "
                            "only use the output of steps declared before it (so the graph has no cycle)",
                        )
                    elif ref.path and defn.steps[j].output and defn.steps[j].for_each is None:
                        declared = defn.steps[j].output
                        top = ref.path[0]
                        out_type = declared.get(top) if isinstance(top, str) else None
                        if out_type is None:
                            problems.add(
                                where,
                                f"step {ref.step!r} does not declare output field {top!r} used in {shown} "
                                f"(declared: {_names(list(declared))})",
                            )
                        elif len(ref.path) > 1 and out_type not in _CONTAINER_TYPES:
                            problems.add(
                                where,
                                f"{shown} goes below output field {top!r} of step {ref.step!r}, a {out_type}",
                            )

    if defn.guards is not None:
        categories = sorted({step.category for step in defn.steps})
        for key in defn.guards.fallbacks:
            if key not in categories and key not in index:
                problems.add(
                    ("guards", "fallbacks", key),
                    f"fallback for {key!r}, which is neither a tool category used here "
                    f"({_names(categories)}) nor a step name",
                )


# ---------------------------------------------------------------------------------------------
# Loading


def parse_workflow(
    text_or_dict: str | bytes | Mapping[str, Any], source: str = "<memory>"
) -> WorkflowDefinition:
    """Parse and validate one definition from YAML (or JSON) text or already-parsed data.

    ``source`` names it in errors (a file path, or ``<api>``). Raises ``WorkflowValidationError``
    carrying every problem found.
    """
    problems = _Problems(source, None)
    data: Any
    if isinstance(text_or_dict, bytes):
        if len(text_or_dict) > MAX_FILE_BYTES:
            problems.add((), f"the definition is {len(text_or_dict)} bytes, more than {MAX_FILE_BYTES}")
            raise problems.failure()
        try:
            text_or_dict = text_or_dict.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.add((), f"not UTF-8 text: {exc}")
            raise problems.failure() from None
    if isinstance(text_or_dict, str):
        size = len(text_or_dict.encode("utf-8", "surrogatepass"))
        if size > MAX_FILE_BYTES:
            problems.add((), f"the definition is {size} bytes, more than {MAX_FILE_BYTES}")
            raise problems.failure()
        data = _read_yaml(text_or_dict, problems)
        if problems.errors:
            raise problems.failure()
    else:
        data = copy.deepcopy(dict(text_or_dict))
    problems.data = data

    if data is None:
        problems.add((), "the definition is empty")
        raise problems.failure()
    if not isinstance(data, dict):
        problems.add((), f"expected a mapping at the top level, got {_describe(data)}")
        raise problems.failure()

    _check_keys(data, (), problems, 0)
    steps = data.get("steps")
    if isinstance(steps, list) and len(steps) > MAX_STEPS:
        # Alone: validating thousands of steps would only bury this under their own problems.
        problems.errors = [e for e in problems.errors if e.field is None or not e.field.startswith("steps[")]
        problems.add(("steps",), f"{len(steps)} steps, more than the {MAX_STEPS} a workflow may have")
    if problems.errors:
        raise problems.failure()
    normalised, shorthand = _normalise(data, problems)
    try:
        defn = WorkflowDefinition.model_validate(normalised)
    except ValidationError as exc:
        _structure_errors(exc, shorthand, problems)
        raise problems.failure() from None
    if problems.errors:
        raise problems.failure()

    _check_meaning(defn, problems)
    if problems.errors:
        raise problems.failure()
    text = canonical_json(defn)
    size = len(text.encode())
    if size > MAX_DEFINITION_BYTES:
        problems.add((), f"the definition is {size} bytes as stored (JSON), more than {MAX_DEFINITION_BYTES}")
        raise problems.failure()
    defn._source = source
    defn._hash = hashlib.sha256(text.encode()).hexdigest()
    return defn


def address_field(defn: WorkflowDefinition) -> str:
    """The field a workflow's address comes from: ``id`` when written, else ``name``."""
    return "id" if defn.explicit_id is not None else "name"


def load_workflow_file(path: str | Path) -> WorkflowDefinition:
    """Read and validate one file; errors name the file as ``str(path)``."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise WorkflowValidationError(
            source, [WorkflowError(source, None, None, f"cannot read file: {exc.strerror or exc}")]
        ) from None
    return parse_workflow(raw, source)


def load_workflow_dir(directory: str | Path) -> tuple[list[WorkflowDefinition], list[WorkflowError]]:
    """Load every ``*.yaml`` / ``*.yml`` file directly in ``directory`` (sorted by name; hidden files
    skipped). A bad file contributes its errors and never stops the others; a second file that
    reuses a workflow name already loaded is an error of its own. Raises ``NotADirectoryError``
    when ``directory`` is not one."""
    root = Path(directory)
    if not root.is_dir():
        raise NotADirectoryError(str(root))
    definitions: list[WorkflowDefinition] = []
    errors: list[WorkflowError] = []
    seen: dict[str, str] = {}
    files = sorted(
        p
        for p in root.iterdir()
        if p.suffix in (".yaml", ".yml") and not p.name.startswith(".") and p.is_file()
    )
    for file in files:
        try:
            defn = load_workflow_file(file)
        except WorkflowValidationError as exc:
            errors.extend(exc.errors)
            continue
        if defn.id in seen:
            errors.append(
                WorkflowError(
                    defn.source,
                    None,
                    address_field(defn),
                    f"workflow {defn.id!r} is already defined in {seen[defn.id]}",
                )
            )
            continue
        seen[defn.id] = defn.source
        definitions.append(defn)
    return definitions, errors
