"""The ``mock`` provider: answers configured at run time, for tests of everything around a provider.

Its behaviour is a list of :class:`MockRule`. A call is answered by the first rule that is still
live (not spent its ``times``), names the call's tool (or a glob such as ``*`` or ``tts.*``) and
whose ``match`` is a subset of the call's input (nested objects are matched as subsets too, other
values must be equal). The rule answers with its ``output`` or raises its ``error`` as a
:class:`ProviderError`, after ``delay_ms``. A call no rule answers gets a deterministic default,
``{"echo": <input>, "tool": <tool>}``, or an ``unknown_tool`` error when the adapter is ``strict``.

Like a provider that honours ``Idempotency-Key``, it answers a key it has answered before with the
same answer (output or error, after the same delay) without consulting the rules again, so a
redelivered invoke does not consume a rule's ``times`` twice. The answer is decided when the call
arrives: a caller that gives up during the delay (a timeout) leaves the answer standing for the
key's next delivery, as a provider that did the work but answered too late would.

A delay longer than the call's ``timeout_s`` ends in a ``timeout`` error at ``timeout_s``, as an HTTP
adapter's client deadline would.

Rules are loaded at start from the JSON or YAML file named by ``OMNI_MOCK_RULES`` (a list of rules,
or ``{"rules": [...], "strict": true}``) and replaced at run time with :meth:`MockAdapter.configure`:
a running mock runner follows the key ``rules`` of the KV bucket ``omni_mock_rules``
(``omni_toolrunner.mock_rules``), so a test or an operator reconfigures every replica at once.
An invalid rule is refused with its index and field, e.g. ``rules[2].delay_ms: Expected `int >= 0```.
"""

from __future__ import annotations

import asyncio
import copy
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import msgspec

from omni_toolrunner.providers.base import ProviderError, ProviderErrorKind, ToolCall, ToolOutcome
from omni_toolrunner.providers.declaration import (
    Idempotency,
    ProviderBinding,
    ProviderDeclaration,
    ProviderEnv,
    fixed_model,
)
from omni_toolrunner.providers.local import ECHO_DOC, LANG_DETECT_DOC
from omni_toolrunner.providers.tool_specs import TOOL_DOCS

if TYPE_CHECKING:
    from omni_toolrunner.settings import ToolRunnerSettings

MOCK = "mock"
MOCK_RULES_ENV = "OMNI_MOCK_RULES"

# What the mock serves unless told otherwise: every tool another provider serves today. Tools that
# rules name are served as well.
_DEFAULT_TOOL_DOCS = (*TOOL_DOCS.values(), ECHO_DOC, LANG_DETECT_DOC)
DEFAULT_TOOLS = frozenset(doc.name for doc in _DEFAULT_TOOL_DOCS)

_GLOB = re.compile(r"[*?\[]")
_RULE_PATH = re.compile(r"^(?P<message>.*) - at `\$(?:\.rules)?\[(?P<index>\d+)\](?P<field>\S*)`$", re.DOTALL)


class MockError(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The :class:`ProviderError` a rule raises; ``retryable`` defaults from ``kind`` as there."""

    kind: ProviderErrorKind
    message: str
    status: Annotated[int, msgspec.Meta(ge=100, le=599)] | None = None
    retry_after_s: Annotated[float, msgspec.Meta(ge=0)] | None = None
    retryable: bool | None = None

    def exception(self) -> ProviderError:
        return ProviderError(
            self.kind,
            self.message,
            status=self.status,
            retry_after_s=self.retry_after_s,
            retryable=self.retryable,
        )


class MockRule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One configured answer. With neither ``output`` nor ``error`` it gives the default output."""

    tool: Annotated[str, msgspec.Meta(min_length=1)]
    match: dict[str, Any] = {}
    output: dict[str, Any] | None = None
    error: MockError | None = None
    delay_ms: Annotated[int, msgspec.Meta(ge=0)] = 0
    times: Annotated[int, msgspec.Meta(ge=1)] | None = None  # calls it answers before it is spent

    def __post_init__(self) -> None:
        if self.output is not None and self.error is not None:
            raise ValueError("a rule answers with `output` or with `error`, not both")

    def applies_to(self, request: ToolCall) -> bool:
        return fnmatchcase(request.tool, self.tool) and _contains(request.input, self.match)


class MockRules(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A rules file as an object; a file may also be the bare list of rules."""

    rules: list[MockRule] = []
    strict: bool = False


class MockRuleStats(msgspec.Struct, frozen=True, kw_only=True):
    index: int
    tool: str
    calls: int  # calls it answered, a replayed key not counted again
    remaining: int | None  # calls it still answers; None when unlimited
    spent: bool


class MockStats(msgspec.Struct, frozen=True, kw_only=True):
    calls: int  # every call, replays included
    replays: int  # calls answered from an idempotency key seen before
    defaults: int  # calls no rule answered (given the default output, or unknown_tool when strict)
    by_tool: dict[str, int]
    by_key: dict[str, int]  # calls per idempotency key, replays included
    rules: list[MockRuleStats]


class MockRulesError(ValueError):
    """Rules that cannot be used; the message names the source, the rule index and the field."""


@dataclass(slots=True)
class _LiveRule:
    rule: MockRule
    calls: int = 0

    @property
    def remaining(self) -> int | None:
        return None if self.rule.times is None else max(0, self.rule.times - self.calls)

    @property
    def spent(self) -> bool:
        return self.remaining == 0


@dataclass(frozen=True, slots=True)
class _Answer:
    output: dict[str, Any] | None
    error: MockError | None
    delay_ms: int


def _contains(actual: Any, expected: Any) -> bool:
    if isinstance(expected, Mapping):
        return isinstance(actual, Mapping) and all(
            key in actual and _contains(actual[key], value) for key, value in expected.items()
        )
    # Without this, True would match 1 and False would match 0.
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    return bool(expected == actual)


def _rules_error(source: str, exc: msgspec.ValidationError | msgspec.DecodeError) -> MockRulesError:
    text = str(exc)
    found = _RULE_PATH.match(text)
    if found is None:
        return MockRulesError(f"{source}: {text}")
    field = found["field"].lstrip(".")
    where = f"rules[{found['index']}]" + (f".{field}" if field else "")
    return MockRulesError(f"{source}: {where}: {found['message']}")


def validate_rules(
    rules: Iterable[MockRule | Mapping[str, Any]], source: str = "mock rules"
) -> list[MockRule]:
    """Rules as given in code or decoded data, checked as strictly as a rules file."""
    # Structs are round-tripped too: building one in code does not check its field constraints.
    plain = [msgspec.to_builtins(rule) if isinstance(rule, MockRule) else rule for rule in rules]
    try:
        return msgspec.convert(plain, list[MockRule])
    except msgspec.ValidationError as exc:
        raise _rules_error(source, exc) from exc


def load_rules(path: str | os.PathLike[str]) -> MockRules:
    """Read a rules file: JSON when it is named ``*.json``, YAML otherwise."""
    file = Path(path)
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise MockRulesError(f"{file}: cannot read mock rules: {exc.strerror or exc}") from exc
    return decode_rules(data, str(file), yaml=file.suffix.lower() != ".json")


def decode_rules(data: bytes, source: str, *, yaml: bool = False) -> MockRules:
    """Rules from JSON (or YAML) text: a list of rules, or ``{"rules": [...], "strict": ...}``."""
    kind = list[MockRule] | MockRules
    try:
        decoded = msgspec.yaml.decode(data, type=kind) if yaml else msgspec.json.decode(data, type=kind)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise _rules_error(source, exc) from exc
    return decoded if isinstance(decoded, MockRules) else MockRules(rules=decoded)


class MockAdapter:
    """A provider whose every answer is configured; see the module's description of the rules."""

    def __init__(
        self,
        rules: Iterable[MockRule | Mapping[str, Any]] = (),
        *,
        strict: bool = False,
        tools: Iterable[str] = DEFAULT_TOOLS,
    ) -> None:
        self.strict = strict
        self._base_tools = frozenset(tools)
        self._rules: list[_LiveRule] = []
        self._answers: dict[tuple[str, str], _Answer] = {}
        self._by_tool: Counter[str] = Counter()
        self._by_key: Counter[str] = Counter()
        self._replays = 0
        self._defaults = 0
        self.configure(rules)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, tools: Iterable[str] = DEFAULT_TOOLS) -> MockAdapter:
        loaded = load_rules(path)
        return cls(loaded.rules, strict=loaded.strict, tools=tools)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] = os.environ, *, tools: Iterable[str] = DEFAULT_TOOLS
    ) -> MockAdapter:
        """Rules from the file ``OMNI_MOCK_RULES`` names, or none when it is unset or empty."""
        path = environ.get(MOCK_RULES_ENV, "").strip()
        return cls.from_file(path, tools=tools) if path else cls(tools=tools)

    @property
    def provider(self) -> str:
        return MOCK

    @property
    def tools(self) -> frozenset[str]:
        named = {live.rule.tool for live in self._rules if not _GLOB.search(live.rule.tool)}
        return self._base_tools | named

    @property
    def rules(self) -> list[MockRule]:
        """The rules in force, in order."""
        return [live.rule for live in self._rules]

    def configure(self, rules: Iterable[MockRule | Mapping[str, Any]], *, strict: bool | None = None) -> None:
        """Replace the rules and forget every count and remembered answer; all or nothing."""
        checked = validate_rules(rules)
        self.clear()
        self._rules = [_LiveRule(rule) for rule in checked]
        if strict is not None:
            self.strict = strict

    def add_rule(self, rule: MockRule | Mapping[str, Any]) -> int:
        """Append a rule (it answers only what the rules before it do not); returns its index."""
        (checked,) = validate_rules([rule], source=f"mock rule {len(self._rules)}")
        self._rules.append(_LiveRule(checked))
        return len(self._rules) - 1

    def clear(self) -> None:
        """No rules, no counts, no remembered answers."""
        self._rules = []
        self._answers.clear()
        self._by_tool.clear()
        self._by_key.clear()
        self._replays = 0
        self._defaults = 0

    def stats(self) -> MockStats:
        return MockStats(
            calls=sum(self._by_tool.values()),
            replays=self._replays,
            defaults=self._defaults,
            by_tool=dict(self._by_tool),
            by_key=dict(self._by_key),
            rules=[
                MockRuleStats(
                    index=index,
                    tool=live.rule.tool,
                    calls=live.calls,
                    remaining=live.remaining,
                    spent=live.spent,
                )
                for index, live in enumerate(self._rules)
            ],
        )

    async def call(self, request: ToolCall) -> ToolOutcome:
        # Everything up to the delay runs without awaiting, so concurrent calls with one key
        # cannot both consult the rules.
        self._by_tool[request.tool] += 1
        self._by_key[request.idempotency_key] += 1
        key = (request.tool, request.idempotency_key)
        answer = self._answers.get(key)
        if answer is None:
            answer = self._answers[key] = self._decide(request)
        else:
            self._replays += 1
        if answer.delay_ms:
            delay_s = answer.delay_ms / 1000
            if delay_s > request.timeout_s:
                await asyncio.sleep(request.timeout_s)
                raise ProviderError(
                    ProviderErrorKind.TIMEOUT,
                    f"mock: the answer takes {delay_s:g} s, longer than the call's {request.timeout_s:g} s",
                )
            await asyncio.sleep(delay_s)
        if answer.error is not None:
            raise answer.error.exception()
        return ToolOutcome(output=copy.deepcopy(answer.output or {}))

    async def aclose(self) -> None:
        return None

    def _decide(self, request: ToolCall) -> _Answer:
        for live in self._rules:
            if live.spent or not live.rule.applies_to(request):
                continue
            live.calls += 1
            rule = live.rule
            if rule.error is not None:
                return _Answer(output=None, error=rule.error, delay_ms=rule.delay_ms)
            output = rule.output if rule.output is not None else _default_output(request)
            return _Answer(output=copy.deepcopy(output), error=None, delay_ms=rule.delay_ms)
        self._defaults += 1
        if self.strict:
            error = MockError(
                kind=ProviderErrorKind.UNKNOWN_TOOL,
                message=f"mock: no rule answers {request.tool!r} with this input",
            )
            return _Answer(output=None, error=error, delay_ms=0)
        return _Answer(output=_default_output(request), error=None, delay_ms=0)


def _default_output(request: ToolCall) -> dict[str, Any]:
    return {"echo": copy.deepcopy(request.input), "tool": request.tool}


# --- declaration -------------------------------------------------------------------------------------


def _bind(
    settings: ToolRunnerSettings, environ: Mapping[str, str], client: httpx.AsyncClient
) -> ProviderBinding:
    return ProviderBinding(MockAdapter.from_env(environ), "execute_tool", fixed_model(None), None)


DECLARATION = ProviderDeclaration(
    name=MOCK,
    env=ProviderEnv(extras=(MOCK_RULES_ENV,)),
    tools=_DEFAULT_TOOL_DOCS,
    bind=_bind,
    idempotency=Idempotency.REPLAYED,
    tools_at_run_time=True,  # any tool its rules name
    in_process=True,
    shaped_outputs=False,
    listed=False,  # a test double: GET /servers shows it only while it runs
)
