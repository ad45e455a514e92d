"""JetStream streams and durable consumers, defined once and provisioned idempotently.

Durability: every stream uses file storage. JetStream acknowledges a publish once the message is
written to the store; by default it does not fsync each message (the server syncs every two
minutes, ``sync_interval``). ``make run`` and the benchmarks state the setting they run with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from omni_contract import subjects


class Retention(StrEnum):
    LIMITS = "limits"
    WORK_QUEUE = "workqueue"


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    description: str
    retention: Retention = Retention.LIMITS
    max_age_s: float = 0.0  # 0 = keep until removed by retention
    duplicate_window_s: float = 120.0


@dataclass(frozen=True)
class ConsumerSpec:
    stream: str
    durable: str
    filter_subjects: tuple[str, ...] = field(default_factory=tuple)
    ack_wait_s: float = 30.0
    max_deliver: int = -1
    max_ack_pending: int = 1000
    description: str = ""


APP_EVENTS = StreamSpec(
    name="OMNI_APP_EVENTS",
    subjects=(subjects.APP_ALL,),
    description="Application trigger events published by product teams (app.>)",
    max_age_s=7 * 24 * 3600,
)
TOOL_WORK = StreamSpec(
    name="OMNI_TOOL_WORK",
    subjects=(subjects.TOOL_INVOKE_ALL,),
    description="Tool invocations, one per step attempt, consumed by the provider's tool-runner",
    retention=Retention.WORK_QUEUE,
)
TOOL_RESULTS = StreamSpec(
    name="OMNI_TOOL_RESULTS",
    subjects=(subjects.TOOL_RESULT_ALL,),
    description="Tool results published by tool-runners, consumed by the workflow engine",
    retention=Retention.WORK_QUEUE,
)
RUN_EVENTS = StreamSpec(
    name="OMNI_RUN_EVENTS",
    subjects=(subjects.RUN_EVENTS_ALL,),
    description="Run progress notices for observers (the history itself lives in PostgreSQL)",
    max_age_s=3600,
)
DEADLETTERS = StreamSpec(
    name="OMNI_DEADLETTERS",
    subjects=(subjects.DEADLETTER_ALL,),
    description="Rejected events and work that could not be processed, with the reason",
    max_age_s=30 * 24 * 3600,
)
AUDIT = StreamSpec(
    name="OMNI_AUDIT",
    subjects=(subjects.AUDIT_ALL,),
    description="Audit events from every service, consumed into the security-service's hash-chained log",
    retention=Retention.WORK_QUEUE,
)

ALL_STREAMS: tuple[StreamSpec, ...] = (APP_EVENTS, TOOL_WORK, TOOL_RESULTS, RUN_EVENTS, DEADLETTERS, AUDIT)
# The streams each service provisions at start: those it writes or reads (under NATS authorization
# a service may manage only these).
GATEWAY_STREAMS: tuple[StreamSpec, ...] = (APP_EVENTS, TOOL_WORK, TOOL_RESULTS, DEADLETTERS, AUDIT)
ENGINE_STREAMS: tuple[StreamSpec, ...] = (APP_EVENTS, TOOL_WORK, TOOL_RESULTS, RUN_EVENTS, DEADLETTERS)
TOOL_RUNNER_STREAMS: tuple[StreamSpec, ...] = (TOOL_WORK, TOOL_RESULTS, DEADLETTERS)

# The engine handles a message in milliseconds; a short ack wait hands the messages a killed
# replica held to another (or to its restart) quickly, before the steps they answer time out.
# A redelivery of a message that was in fact handled is a no-op (runs are idempotent on both).
ENGINE_ACK_WAIT_S = 5.0

ENGINE_TRIGGERS = ConsumerSpec(
    stream=APP_EVENTS.name,
    durable="workflow-engine-triggers",
    filter_subjects=(subjects.APP_ALL,),
    ack_wait_s=ENGINE_ACK_WAIT_S,
    description="Starts runs from trigger events",
)
ENGINE_RESULTS = ConsumerSpec(
    stream=TOOL_RESULTS.name,
    durable="workflow-engine-results",
    filter_subjects=(subjects.TOOL_RESULT_ALL,),
    ack_wait_s=ENGINE_ACK_WAIT_S,
    description="Advances runs on tool results",
)

SECURITY_AUDIT = ConsumerSpec(
    stream=AUDIT.name,
    durable="security-service-audit",
    filter_subjects=(subjects.AUDIT_ALL,),
    description="Appends audit events to the hash-chained audit log",
)


def tool_runner_consumer(provider: str) -> ConsumerSpec:
    """The durable consumer that every replica of one provider's tool-runner shares."""
    return ConsumerSpec(
        stream=TOOL_WORK.name,
        durable=f"tool-runner-{subjects.tool_invoke(provider).rsplit('.', 1)[-1]}",
        filter_subjects=(subjects.tool_invoke(provider),),
        ack_wait_s=60.0,
        max_deliver=10,
        description=f"Tool work for provider {provider}",
    )
