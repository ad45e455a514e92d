"""What the tool runner asks of a provider adapter, and what an adapter gives back.

An adapter turns one :class:`ToolCall` into one :class:`ToolOutcome` or raises :class:`ProviderError`.
It never retries: whether and when to try again is the workflow engine's decision (its retry timers
are durable), and the error's ``retryable`` / ``retry_after_s`` are the facts it decides on.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

import msgspec


class ProviderErrorKind(StrEnum):
    AUTH = "auth"
    RATE_LIMITED = "rate_limited"
    TIMEOUT = "timeout"
    SERVER = "server"
    BAD_REQUEST = "bad_request"
    MALFORMED_RESPONSE = "malformed_response"
    UNAVAILABLE = "unavailable"
    UNKNOWN_TOOL = "unknown_tool"


# Transient by nature; a malformed answer is usually a one-off from a sampling model, so it is too.
_RETRYABLE_KINDS = frozenset(
    {
        ProviderErrorKind.RATE_LIMITED,
        ProviderErrorKind.TIMEOUT,
        ProviderErrorKind.SERVER,
        ProviderErrorKind.MALFORMED_RESPONSE,
    }
)


class ProviderError(Exception):
    """A classified provider failure. ``retryable`` defaults from ``kind`` but may be set explicitly."""

    def __init__(
        self,
        kind: ProviderErrorKind | str,
        message: str,
        *,
        status: int | None = None,
        retry_after_s: float | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = ProviderErrorKind(kind)
        self.message = message
        self.status = status
        self.retry_after_s = retry_after_s
        self.retryable = self.kind in _RETRYABLE_KINDS if retryable is None else retryable

    def __repr__(self) -> str:
        return (
            f"ProviderError(kind={self.kind.value!r}, message={self.message!r}, status={self.status!r}, "
            f"retry_after_s={self.retry_after_s!r}, retryable={self.retryable!r})"
        )

    def __str__(self) -> str:
        status = f" (HTTP {self.status})" if self.status is not None else ""
        return f"{self.kind.value}{status}: {self.message}"


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    """Tokens and cost of one provider call; ``cost`` is in the provider's billing unit (USD credits)."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cost: float | None = None


class ToolCall(msgspec.Struct, frozen=True, kw_only=True):
    """One unit of tool work. ``idempotency_key`` is stable across redeliveries of the same attempt."""

    tool: str
    input: dict[str, Any]
    idempotency_key: str
    config: dict[str, Any] = msgspec.field(default_factory=dict)
    timeout_s: float = 30.0


class ToolOutcome(msgspec.Struct, frozen=True, kw_only=True):
    output: dict[str, Any]
    usage: Usage | None = None
    model: str | None = None
    response_id: str | None = None


@runtime_checkable
class ProviderAdapter(Protocol):
    """A provider behind the tool runner: ``tool-runner-<provider>`` serves ``tools`` through it."""

    @property
    def provider(self) -> str: ...

    @property
    def tools(self) -> frozenset[str]: ...

    async def call(self, request: ToolCall) -> ToolOutcome: ...

    async def aclose(self) -> None: ...
