"""The typed model of a workflow definition (pydantic), and its plain JSON form.

The model is strict (a YAML ``"12000"`` is not silently an int, and ``true`` is not a number),
frozen and refuses unknown keys; each field's own checks live on it as validators. Checks that
need more than one field, or the other steps, are in ``checks``. A definition's JSON form
(``definition_to_dict``) writes the language's later additions only when used, so a definition
stored before them keeps its content hash.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import re
import unicodedata
from datetime import timedelta
from typing import Any, Literal, TypeAlias, get_args

from omni_contract.subjects import APP_PREFIX
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from omni_engine.definition.errors import quote
from omni_engine.definition.limits import MAX_DESCRIPTION_LENGTH, MAX_NAME_LENGTH, MAX_VERSION_LENGTH
from omni_engine.templating import step_dependencies

FieldType: TypeAlias = Literal["string", "number", "integer", "boolean", "object", "array", "any"]
FIELD_TYPES: tuple[str, ...] = get_args(FieldType)

# A workflow's address (its ``id``, or the slug of its name): what URLs, runs and triggers key by.
WORKFLOW_ID_RE = re.compile(r"[a-z0-9][a-z0-9\-_.]{0,127}")
MAX_ID_LENGTH = 128
STEP_NAME_RE = re.compile(r"[a-z_][a-z0-9_]{0,63}")
FIELD_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
TOOL_RE = re.compile(r"[a-z][a-z0-9_-]*\.[a-z][a-z0-9_-]*")
PROVIDER_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_SUBJECT_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]+")
# ``steps.<name>`` inside a CEL condition: the condition is decided after that step.
CONDITION_STEP_RE = re.compile(r"\bsteps\.([a-z_][a-z0-9_]*)")
_RETENTION_RE = re.compile(r"(\d+)([smhdw])")
_RETENTION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


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
            f"invalid {what} {quote(value)}: expected a NATS subject under {APP_PREFIX!r} "
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
                f"invalid step name {quote(value)}: use lower-case letters, digits and '_', "
                "starting with a letter or '_' (at most 64 characters)"
            )
        return value

    @field_validator("tool")
    @classmethod
    def _check_tool(cls, value: str | None) -> str | None:
        if value is not None and not TOOL_RE.fullmatch(value):
            raise ValueError(
                f"invalid tool name {quote(value)}: expected <category>.<action>, e.g. stt.transcribe"
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
                    f"invalid provider name {quote(provider)}: "
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
            found |= set(CONDITION_STEP_RE.findall(self.when))
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
                raise ValueError(f"invalid provider name {quote(provider)} for fallback {quote(key)}")
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
        raise ValueError(f"{what} {quote(value)} holds a control character (tab, newline...)")
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
                f"invalid workflow id {quote(value)}: use lower-case letters, digits, '-', '_' and '.', "
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


def address_field(defn: WorkflowDefinition) -> str:
    """The field a workflow's address comes from: ``id`` when written, else ``name``."""
    return "id" if defn.explicit_id is not None else "name"
