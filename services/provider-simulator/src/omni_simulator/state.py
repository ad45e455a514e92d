"""The simulator's mutable state: counters, the idempotency cache, injected faults, recent requests.

One :class:`SimulatorState` belongs to one app; tests build their own and inspect it directly or over
``/_sim/*``. Everything runs on one event loop, so plain attributes need no locking.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec


class FaultMatch(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Which requests a fault applies to; every field given must match, an empty match takes all."""

    schema: str | None = None
    model: str | None = None
    idempotency_key: str | None = None
    any: bool = False


class FaultSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A fault rule as posted to ``POST /_sim/faults``.

    Exactly one failure mode at most: an HTTP ``status``; ``malformed`` (a 200 whose body is not
    JSON); ``malformed_content`` (a well-formed completion whose content is not what was asked for);
    ``in_band`` (HTTP 200 carrying an error object, OpenRouter's way of reporting failures after the
    model started; uses ``status`` as the code, 502 by default). A rule with only ``delay_ms`` slows
    matching requests down but lets them execute, like a slow provider would.
    """

    match: FaultMatch | Literal["any"] = msgspec.field(default_factory=FaultMatch)
    status: Annotated[int, msgspec.Meta(ge=400, le=599)] | None = None
    retry_after: Annotated[float, msgspec.Meta(ge=0)] | None = None
    delay_ms: Annotated[int, msgspec.Meta(ge=0)] = 0
    times: Annotated[int, msgspec.Meta(ge=1)] | None = None
    malformed: bool = False
    malformed_content: bool = False
    in_band: bool = False
    message: str | None = None

    def __post_init__(self) -> None:
        modes = sum((self.malformed, self.malformed_content, self.in_band))
        if modes > 1:
            raise ValueError("choose at most one of malformed, malformed_content, in_band")
        if self.status is not None and (self.malformed or self.malformed_content):
            raise ValueError("status cannot be combined with malformed or malformed_content")
        if modes == 0 and self.status is None and self.delay_ms == 0:
            raise ValueError("a fault needs a status, a failure mode or a delay_ms")

    @property
    def fails(self) -> bool:
        return self.status is not None or self.malformed or self.malformed_content or self.in_band


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What fault rules and the stats look at in a chat-completions request."""

    model: str
    schema: str | None
    idempotency_key: str | None
    audio_output: bool

    @property
    def schema_label(self) -> str:
        if self.schema:
            return self.schema
        return "audio_output" if self.audio_output else "text"


@dataclass(slots=True)
class FaultRule:
    id: int
    spec: FaultSpec
    remaining: int | None
    hits: int = 0

    def matches(self, info: RequestInfo) -> bool:
        match = self.spec.match
        if match == "any" or not isinstance(match, FaultMatch) or match.any:
            return True
        return (
            (match.schema is None or match.schema == info.schema)
            and (match.model is None or match.model == info.model)
            and (match.idempotency_key is None or match.idempotency_key == info.idempotency_key)
        )

    def to_json(self) -> dict[str, Any]:
        spec: dict[str, Any] = msgspec.to_builtins(self.spec)
        return {"id": self.id, **spec, "remaining": self.remaining, "hits": self.hits}


@dataclass(frozen=True, slots=True)
class CachedResponse:
    fingerprint: str
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """A request as the simulator saw it, for tests that assert on what an adapter sent."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    status: int
    outcome: str

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "headers": self.headers,
            "body": self.body,
            "status": self.status,
            "outcome": self.outcome,
        }


class UsageOverride(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The usage every answer reports: tokens and cost (USD), as OpenRouter's ``usage`` has them."""

    prompt_tokens: Annotated[int, msgspec.Meta(ge=0)] = 0
    completion_tokens: Annotated[int, msgspec.Meta(ge=0)] = 0
    cost: Annotated[float, msgspec.Meta(ge=0)] = 0.0


@dataclass
class SimulatorState:
    """Configuration plus everything the simulator has observed since the last reset."""

    expected_key: str | None = None
    latency_ms: int = 0
    # Usage every answer reports instead of the figures counted from the text (budget tests).
    usage: UsageOverride | None = None
    history_limit: int = 200
    calls: int = field(default=0, init=False)
    side_effects: int = field(default=0, init=False)
    duplicates: int = field(default=0, init=False)
    faulted: int = field(default=0, init=False)
    rejected: int = field(default=0, init=False)
    in_flight: int = field(default=0, init=False)  # chat requests being answered now
    max_in_flight: int = field(default=0, init=False)  # the most at once since the last reset
    by_key: Counter[str] = field(default_factory=Counter, init=False)
    by_schema: Counter[str] = field(default_factory=Counter, init=False)
    by_model: Counter[str] = field(default_factory=Counter, init=False)
    faults: list[FaultRule] = field(default_factory=list, init=False)
    responses: dict[str, CachedResponse] = field(default_factory=dict, init=False)
    history: deque[RecordedRequest] = field(init=False)
    _next_rule_id: int = field(default=1, init=False)

    def __post_init__(self) -> None:
        self.history = deque(maxlen=self.history_limit)

    def reset(self) -> None:
        """Forget counters, cached responses, history and faults; keep the configuration."""
        self.calls = self.side_effects = self.duplicates = self.faulted = self.rejected = 0
        self.max_in_flight = self.in_flight
        self.by_key.clear()
        self.by_schema.clear()
        self.by_model.clear()
        self.faults.clear()
        self.responses.clear()
        self.history.clear()

    def add_fault(self, spec: FaultSpec) -> FaultRule:
        rule = FaultRule(id=self._next_rule_id, spec=spec, remaining=spec.times)
        self._next_rule_id += 1
        self.faults.append(rule)
        return rule

    def take_fault(self, info: RequestInfo) -> FaultRule | None:
        """The first rule matching ``info``, consuming one of its uses; exhausted rules are dropped."""
        for rule in self.faults:
            if not rule.matches(info):
                continue
            rule.hits += 1
            if rule.remaining is not None:
                rule.remaining -= 1
                if rule.remaining <= 0:
                    self.faults.remove(rule)
            return rule
        return None

    def record(self, request: RecordedRequest) -> None:
        self.history.append(request)

    def stats(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "side_effects": self.side_effects,
            "duplicates": self.duplicates,
            "faulted": self.faulted,
            "rejected": self.rejected,
            "max_in_flight": self.max_in_flight,
            "by_key": dict(self.by_key),
            "by_schema": dict(self.by_schema),
            "by_model": dict(self.by_model),
        }
