"""JetStream key-value buckets, each defined once and provisioned from its spec.

Every service that uses a bucket creates it when missing (``omni_runtime.nats.ensure_key_value``),
so any of them may start first. A bucket that already exists is used as it is, even when its
configuration differs from the spec (made by an older release, or by a replica with other
settings): names and settings here must therefore stay as deployments already have them.

A bucket whose entries one service writes and others read names its keys and the type of its
values (``key``, ``value_type``): they are part of the contract, and ``omni_contract.proto``
generates ``proto/kv/<bucket>.schema.json`` from them. The buckets of one service have neither:
what its replicas share (tool results, circuits, rate limits), and the mock provider's rules (its
own configuration, whose format the tool-runner defines).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import msgspec

from omni_contract.declared import DECLARED_TOOLS_BUCKET, DECLARED_TOOLS_DESCRIPTION, StoredDeclaration
from omni_contract.tools import (
    PROVIDER_HEALTH_BUCKET,
    REGISTRATION_TTL_S,
    TOOL_REGISTRY_BUCKET,
    ProviderHealth,
    ToolRegistration,
)


class Storage(StrEnum):
    FILE = "file"
    MEMORY = "memory"


@dataclass(frozen=True)
class KvBucketSpec:
    name: str
    description: str
    ttl_s: float | None = None  # None: entries never expire
    history: int = 1  # values kept per key
    storage: Storage = Storage.FILE
    max_value_size: int | None = None  # bytes; None: the server's limit
    direct: bool = False  # reads served by any replica straight from the stream (direct get)
    key: str | None = None  # the keys' pattern, for a bucket in the contract: {provider}.{runner}
    value_type: type[msgspec.Struct] | None = None  # what every entry holds (JSON), likewise

    def __post_init__(self) -> None:
        if (self.key is None) != (self.value_type is None):
            raise ValueError(f"KV bucket {self.name}: a bucket in the contract names both key and value_type")


TOOL_REGISTRY = KvBucketSpec(
    name=TOOL_REGISTRY_BUCKET,
    description="Tool registrations of live tool-runner replicas (refreshed by heartbeats)",
    ttl_s=REGISTRATION_TTL_S,
    key="{provider}.{category}.{action}.{runner}",
    value_type=ToolRegistration,
)
PROVIDER_HEALTH = KvBucketSpec(
    name=PROVIDER_HEALTH_BUCKET,
    description="Each live tool-runner replica's view of its provider (refreshed by heartbeats)",
    ttl_s=REGISTRATION_TTL_S,
    key="{provider}.{runner}",
    value_type=ProviderHealth,
)
DECLARED_TOOLS = KvBucketSpec(
    name=DECLARED_TOOLS_BUCKET,
    description=DECLARED_TOOLS_DESCRIPTION,
    key="{category}.{action} (the tool name)",
    value_type=StoredDeclaration,
)
TOOL_RESULTS = KvBucketSpec(
    name="omni_tool_results",
    description="Tool results by idempotency key (sha256), for redelivered invokes",
    # The default of the runner's OMNI_TOOLRUNNER_RESULT_TTL_S, which a deployment may change.
    ttl_s=24 * 3600.0,
    # Lookups read the last value straight from the stream, no JSON/base64 envelope.
    direct=True,
)
CIRCUITS = KvBucketSpec(name="omni_circuits", description="Circuit breaker state per provider")
RATE_LIMITS_TTL_S = 3600.0
"""How long a rate-limit counter outlives its last change. A window must be shorter, or an idle
stretch inside it would expire the counter and start it again from zero."""
RATE_LIMITS = KvBucketSpec(
    name="omni_ratelimits",
    description="Requests and tokens used per provider and rate-limit window, shared by replicas",
    ttl_s=RATE_LIMITS_TTL_S,
)
MOCK_RULES = KvBucketSpec(
    name="omni_mock_rules", description="The mock provider's rules, followed by its runners"
)
SECURITY_REVISION = KvBucketSpec(
    name="omni_security",
    description="The security-service's revision: any change to keys, principals or roles bumps it, "
    "and every gateway drops its cached decisions",
)

ALL_BUCKETS: tuple[KvBucketSpec, ...] = (
    TOOL_REGISTRY,
    PROVIDER_HEALTH,
    DECLARED_TOOLS,
    TOOL_RESULTS,
    CIRCUITS,
    RATE_LIMITS,
    MOCK_RULES,
    SECURITY_REVISION,
)
