"""JetStream key-value buckets, each defined once and provisioned from its spec.

Every service that uses a bucket creates it when missing (``omni_runtime.nats.ensure_key_value``),
so any of them may start first. A bucket that already exists is used as it is, even when its
configuration differs from the spec (made by an older release, or by a replica with other
settings): names and settings here must therefore stay as deployments already have them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from omni_contract.declared import DECLARED_TOOLS_BUCKET, DECLARED_TOOLS_DESCRIPTION
from omni_contract.tools import PROVIDER_HEALTH_BUCKET, REGISTRATION_TTL_S, TOOL_REGISTRY_BUCKET


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


TOOL_REGISTRY = KvBucketSpec(
    name=TOOL_REGISTRY_BUCKET,
    description="Tool registrations of live tool-runner replicas (refreshed by heartbeats)",
    ttl_s=REGISTRATION_TTL_S,
)
PROVIDER_HEALTH = KvBucketSpec(
    name=PROVIDER_HEALTH_BUCKET,
    description="Each live tool-runner replica's view of its provider (refreshed by heartbeats)",
    ttl_s=REGISTRATION_TTL_S,
)
DECLARED_TOOLS = KvBucketSpec(name=DECLARED_TOOLS_BUCKET, description=DECLARED_TOOLS_DESCRIPTION)
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

ALL_BUCKETS: tuple[KvBucketSpec, ...] = (
    TOOL_REGISTRY,
    PROVIDER_HEALTH,
    DECLARED_TOOLS,
    TOOL_RESULTS,
    CIRCUITS,
    RATE_LIMITS,
    MOCK_RULES,
)
