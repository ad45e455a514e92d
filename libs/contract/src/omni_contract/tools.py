"""The tool registry: what each runner serves, kept alive by heartbeats in a JetStream KV bucket.

A tool is a (name, provider) pair. Every tool-runner replica writes one ``ToolRegistration`` per
tool it serves under ``registry_key(provider, tool, runner)`` when it starts, and writes it again
every ``HEARTBEAT_S``. The bucket forgets entries older than ``REGISTRATION_TTL_S``, so the tools
of a runner that falls silent (killed, partitioned) disappear without anyone cleaning up; a
runner that stops in an orderly way deletes its entries. Readers (the gateway) merge the
replicas' entries of a (tool, provider) pair: it is available while any replica says so.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Final

import msgspec

TOOL_REGISTRY_BUCKET: Final = "omni_tools"
HEARTBEAT_S: Final = 5.0
REGISTRATION_TTL_S: Final = 15.0  # three missed heartbeats

# Run ids of tool calls made outside any workflow (``POST /tools/...``): the engine skips their results.
DIRECT_RUN_PREFIX: Final = "direct-"

AVAILABLE: Final = "available"
UNAVAILABLE: Final = "unavailable"  # the runner is up but cannot serve (e.g. no API key), with a reason

_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_\-=]")


class Capability(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: str
    description: str = ""
    input_types: list[str] = []  # e.g. ["text"], ["audio/wav", "audio/mpeg"]
    output_types: list[str] = []


class ToolSpec(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What a tool is and takes, as one provider serves it."""

    name: str  # <category>.<action>, e.g. stt.transcribe
    provider: str
    description: str = ""
    version: str = "1"
    category: str = ""
    timeout_ms: int = 30_000
    retryable: bool = True  # whether a failed call may be tried again (its errors say which kinds)
    requires_auth: bool = False  # the provider needs credentials (an API key)
    scopes: list[str] = []  # what a caller must be allowed to do to execute it
    capabilities: list[Capability] = []
    input_schema: dict[str, Any] = {}  # JSON Schema of ``input``
    output_schema: dict[str, Any] = {}  # JSON Schema of ``output``


class ToolRegistration(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One runner replica's word on one tool: serving it or not (with why), as of ``heartbeat_at``."""

    spec: ToolSpec
    runner: str  # the replica (its NATS service instance id)
    status: str = AVAILABLE
    reason: str | None = None
    started_at: datetime | None = None
    heartbeat_at: datetime | None = None


def key_token(value: str) -> str:
    """``value`` made safe for one token of a KV key (dots separate tokens)."""
    return _KEY_UNSAFE.sub("_", value)


def registry_key(provider: str, tool: str, runner: str) -> str:
    """``<provider>.<category>.<action>.<runner>``: a reader lists a provider's or a tool's entries
    with a key filter such as ``openrouter.>`` or ``*.stt.transcribe.*``."""
    category, _, action = tool.partition(".")
    return ".".join(key_token(part) for part in (provider, category, action, runner))


# ---------------------------------------------------------------------------------------------
# Provider health: each runner replica's view of its provider, refreshed with its heartbeats.

PROVIDER_HEALTH_BUCKET: Final = "omni_providers"

HEALTHY: Final = "healthy"
DEGRADED: Final = "degraded"  # some recent calls failed
CIRCUIT_OPEN: Final = "circuit_open"  # calls are refused until a probe succeeds
# UNAVAILABLE (above): the replica cannot call the provider at all (no key)


class ProviderHealth(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One replica's recent calls to its provider (the last ``window`` calls)."""

    provider: str
    runner: str
    status: str
    reason: str | None = None
    circuit: str = "closed"
    calls: int = 0  # calls in the window
    errors: int = 0
    error_rate: float = 0.0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None
    throttled: int = 0  # calls held back by the provider's rate limits since the replica started
    updated_at: datetime | None = None


def health_key(provider: str, runner: str) -> str:
    return f"{key_token(provider)}.{key_token(runner)}"
