"""Who may publish and subscribe to what on NATS: one grant per role, derived from the contract.

Invariants:
- Every subject granted here is built from the contract's subjects, streams, consumers and buckets
  (``subjects.py``, ``streams.py``, ``kv.py``) or from NATS's own protocol subjects (the JetStream
  API ``$JS.API.*``, acknowledgements ``$JS.ACK.*``, flow control ``$JS.FC.*``, key-value
  ``$KV.*``, service discovery ``$SRV.*``, reply inboxes), by the functions below. A new stream,
  consumer or bucket in the contract changes the grants with it.
- Everything not granted is refused: the lists are allow lists, and the server denies the rest.

The roles and why they hold what they hold (``P`` is a tool-runner's provider):

================  ==========================================================================
role              may publish / subscribe
================  ==========================================================================
application       publish ``app.>`` (a trigger event; JetStream stores it in OMNI_APP_EVENTS
                  and acknowledges on the reply inbox) and ``$JS.API.INFO``; subscribe
                  ``_INBOX.>`` for those acknowledgements. Nothing under ``omni.``, and no
                  other JetStream API: it can neither forge results nor invokes, nor read runs.
gateway           requests to the engine (``omni.rpc.engine.>``) and the security-service
                  (``omni.rpc.security.>``); ``app.>`` (``POST /events``); invokes of any
                  provider (direct tool calls, ``tools.py``) and results of any provider (the
                  redrive of a dead letter republishes its original subject, which may be an
                  invoke, a result or an event); ``omni.audit.gateway``. Subscribes to run
                  notices ``omni.run.>`` (waits, server-sent events) and results (direct calls).
                  Reads the dead-letter stream and deletes redriven letters; reads a work
                  message (is a retried direct call still queued?). Reads and watches the
                  tool, provider-health and security buckets; reads and writes declared tools.
workflow-engine   invokes ``omni.tool.invoke.>``, run notices ``omni.run.>`` (only the engine
                  publishes them), dead letters, ``omni.audit.workflow-engine``; requests to
                  the security-service. Serves ``omni.rpc.engine.>``. Pulls and acknowledges
                  its two durables (triggers, results) and reads OMNI_TOOL_RESULTS (the timers
                  wait for results stored before a timer fell due).
tool-runner P     ``omni.tool.result.P`` only (not another provider's results, no invokes),
                  dead letters, ``omni.audit.tool-runner-P``. Pulls and acknowledges its own
                  durable ``tool-runner-P``, whose filter is pinned to ``omni.tool.invoke.P``.
                  Writes only its provider's keys of the tool registry, provider health,
                  circuits and rate limits; reads and writes the shared result store; the
                  ``integrations`` runner also the declared tools, the ``mock`` runner reads
                  its rules.
security-service  serves ``omni.rpc.security.>``; ``omni.audit.security-service``; pulls and
                  acknowledges ``security-service-audit`` on OMNI_AUDIT (every service's
                  audit events); writes the ``omni_security`` revision.
admin             everything: for operators' tools (the ``nats`` CLI) and tests that set up
                  or inspect what no service may.
================  ==========================================================================

The provider-simulator has no role: it speaks HTTP only, and has no NATS credentials.

The JetStream API (``$JS.API.>``) is the dangerous part: whoever may call all of it may delete
streams or read any stream through a consumer of their own. So each role gets only:

- ``INFO``, ``CREATE`` and ``UPDATE`` of the streams it publishes into or consumes from
  (``ensure_stream`` looks, then creates or re-applies the contract's configuration, so any of
  the services may start first), and ``INFO`` of every other Omni stream (read-only);
- for each durable it consumes: its creation with the filter in the API subject
  (``CONSUMER.CREATE.<stream>.<durable>.<filter>``: the server refuses a request whose
  configuration names another filter, so a runner cannot point its durable at another provider's
  work), its info, ``CONSUMER.MSG.NEXT`` (pulls) and ``$JS.ACK.<stream>.<durable>.>`` (acks,
  in-progress, naks);
- for each bucket it reads: the bucket's stream info, message gets (``STREAM.MSG.GET`` and the
  direct get ``DIRECT.GET``), and watches (ephemeral consumers on the bucket's stream only, with
  their info, deletion and flow control); for each bucket it writes: ``$KV.<bucket>.<keys>``,
  narrowed to its provider's keys where the keys start with the provider; for each bucket it
  may create: ``STREAM.CREATE`` of the bucket's stream;
- ``$JS.API.INFO`` and ``STREAM.NAMES`` (read-only; nats-py asks them to find a stream).

Reply inboxes: a service receives replies (to its requests, to JetStream API calls, its pulls
and watches) on an inbox prefix of its own (:func:`inbox_prefix`, e.g. ``_INBOX_gateway``), and
may subscribe only there, so no identity reads another's replies: a reply holds what was asked
for (an identity's grants, a run of another tenant, a stored provider answer). The application
keeps NATS's default ``_INBOX``, shared by nobody else. Services answer requests they received
(RPC, ``$SRV`` discovery) through ``allow_responses``: one reply to each request's reply subject,
within :data:`RESPONSE_WINDOW_S`, with no grant to publish on any inbox.

What subjects cannot express, and stays with the publisher's trust: a service that writes into
a stream may also re-apply its configuration (``STREAM.UPDATE``); every runner may write any
entry of the shared result store (keys are digests of idempotency keys, not per provider); an
application's event carries whatever ``Omni-Tenant`` header it sets.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from omni_contract import kv, streams, subjects
from omni_contract.declared import DECLARED_PROVIDER
from omni_contract.kv import KvBucketSpec
from omni_contract.streams import ConsumerSpec, StreamSpec
from omni_contract.tools import key_token

# -- NATS's own subjects (the protocol's, not Omni's) -----------------------------------------
JS_API = "$JS.API"
"""The JetStream API's subject prefix (no JetStream domain)."""
JS_ACK = "$JS.ACK"
JS_FLOW_CONTROL = "$JS.FC"
KV_PREFIX = "$KV"
KV_STREAM_PREFIX = "KV_"
"""A bucket ``b`` is the stream ``KV_b``."""
SRV_PREFIX = "$SRV"
SRV_VERBS = ("PING", "INFO", "STATS")
"""The NATS service-discovery requests every Omni service answers (``nats.micro``)."""
DEFAULT_INBOX_PREFIX = "_INBOX"

MOCK_PROVIDER = "mock"
"""The tool-runner's provider for tests (``omni_toolrunner.providers.mock``), the only reader of
``omni_mock_rules``; not in the contract's provider table, which lists real providers."""
GATEWAY_NAME = "gateway"
"""The name the gateway registers and audits under (``omni_gateway.state.SERVICE``)."""
APPLICATION_USER = "app"
ADMIN_USER = "admin"

RESPONSE_WINDOW_S = 60
"""How long a service may answer a request it received: longer than any caller waits (the
gateway's RPC timeout is 5 s by default). It also bounds what the server remembers per request."""


class Role(StrEnum):
    GATEWAY = GATEWAY_NAME
    ENGINE = subjects.ENGINE_SERVICE_NAME
    TOOL_RUNNER = "tool-runner"
    SECURITY = subjects.SECURITY_SERVICE_NAME
    APPLICATION = "application"
    ADMIN = "admin"


ROLES: tuple[Role, ...] = tuple(Role)
SERVICE_ROLES: tuple[Role, ...] = (Role.GATEWAY, Role.ENGINE, Role.TOOL_RUNNER, Role.SECURITY)
"""The roles of Omni's own processes, each connecting with an NKey of its own."""


@dataclass(frozen=True)
class Permissions:
    """What one identity may do: allow lists (anything else is refused), and whether it may
    answer the requests it receives (``allow_responses``: one reply each, within
    :data:`RESPONSE_WINDOW_S`)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = False

    def may_publish(self, subject: str) -> bool:
        return any(covers(pattern, subject) for pattern in self.publish)

    def may_subscribe(self, subject: str) -> bool:
        """Whether a subscription to ``subject`` (wildcards allowed) is within the grants."""
        return any(covers(pattern, subject) for pattern in self.subscribe)


def covers(pattern: str, subject: str) -> bool:
    """Whether every subject that ``subject`` matches is matched by ``pattern`` (NATS wildcards:
    ``*`` one token, ``>`` one or more at the end)."""
    granted, asked = pattern.split("."), subject.split(".")
    for i, part in enumerate(granted):
        if part == ">":
            return len(asked) > i
        if i >= len(asked) or asked[i] == ">":
            return False
        if part not in ("*", asked[i]):
            return False
    return len(asked) == len(granted)


# -- identities ---------------------------------------------------------------------------------
def identity(role: Role | str, *, provider: str | None = None) -> str:
    """The name one identity connects, registers (``$SRV``) and audits under: the service's name,
    ``tool-runner-<provider>`` for a runner, ``app`` or ``admin`` for the password users."""
    role = Role(role)
    _check_provider(role, provider)
    if role is Role.TOOL_RUNNER:
        assert provider is not None
        return streams.tool_runner_consumer(provider).durable
    if role is Role.APPLICATION:
        return APPLICATION_USER
    if role is Role.ADMIN:
        return ADMIN_USER
    return role.value


def inbox_prefix(role: Role | str, *, provider: str | None = None) -> str:
    """Where the identity receives replies: ``_INBOX_<identity>`` for a service, NATS's default
    ``_INBOX`` for the application and the admin (the ``inbox_prefix`` of nats-py's connect)."""
    role = Role(role)
    if role in (Role.APPLICATION, Role.ADMIN):
        _check_provider(role, provider)
        return DEFAULT_INBOX_PREFIX
    return f"{DEFAULT_INBOX_PREFIX}_{identity(role, provider=provider)}"


def _check_provider(role: Role, provider: str | None) -> None:
    if role is Role.TOOL_RUNNER and not provider:
        raise ValueError("a tool-runner's permissions are for one provider: name it")
    if role is not Role.TOOL_RUNNER and provider is not None:
        raise ValueError(f"the {role} role has no provider")


# -- subjects of the JetStream API, built from specs ------------------------------------------------
def js_api(*tokens: str) -> str:
    return ".".join((JS_API, *tokens))


def stream_info(stream: StreamSpec | str) -> str:
    return js_api("STREAM", "INFO", _name(stream))


def stream_provisioning(spec: StreamSpec) -> tuple[str, ...]:
    """What ``omni_runtime.nats.ensure_stream`` asks: the stream's info, its creation, its update."""
    return tuple(js_api("STREAM", verb, spec.name) for verb in ("INFO", "CREATE", "UPDATE"))


def stream_message_get(stream: StreamSpec | str) -> tuple[str, ...]:
    """Reading single messages of a stream, by sequence or by subject (plain and direct get)."""
    name = _name(stream)
    return (
        js_api("STREAM", "MSG", "GET", name),
        js_api("DIRECT", "GET", name),
        js_api("DIRECT", "GET", name, ">"),
    )


def stream_message_delete(stream: StreamSpec | str) -> str:
    return js_api("STREAM", "MSG", "DELETE", _name(stream))


def durable_consumer(spec: ConsumerSpec) -> tuple[str, ...]:
    """Creating (or updating) the durable of ``spec`` with its own filter, its info, pulling from it,
    and acknowledging what it delivers.

    With one filter it is in the API subject, which the server checks against the request: the
    durable can be created only with that filter. nats-py puts it there when the configuration
    has a ``name`` (``CONSUMER.DURABLE.CREATE``, used when it has only ``durable_name``, is not
    granted: it would let the holder choose any filter)."""
    create = js_api("CONSUMER", "CREATE", spec.stream, spec.durable)
    if len(spec.filter_subjects) == 1:
        create = f"{create}.{spec.filter_subjects[0]}"
    return (
        create,
        js_api("CONSUMER", "INFO", spec.stream, spec.durable),
        js_api("CONSUMER", "MSG", "NEXT", spec.stream, spec.durable),
        acks(spec),
    )


def acks(spec: ConsumerSpec) -> str:
    """Acknowledgements of the messages a durable delivers: ``$JS.ACK.<stream>.<durable>.>``."""
    return f"{JS_ACK}.{spec.stream}.{spec.durable}.>"


# -- key-value buckets ------------------------------------------------------------------------------
def kv_stream(bucket: KvBucketSpec | str) -> str:
    return KV_STREAM_PREFIX + (bucket.name if isinstance(bucket, KvBucketSpec) else bucket)


def kv_subject(bucket: KvBucketSpec, keys: str = ">") -> str:
    """``$KV.<bucket>.<keys>``: where a put, delete or purge of those keys is published."""
    return f"{KV_PREFIX}.{bucket.name}.{keys}"


def kv_create(bucket: KvBucketSpec) -> tuple[str, ...]:
    """What ``omni_runtime.nats.ensure_key_value`` asks: the bucket's creation, else its info."""
    stream = kv_stream(bucket)
    return (js_api("STREAM", "CREATE", stream), js_api("STREAM", "INFO", stream))


def kv_read(bucket: KvBucketSpec) -> tuple[str, ...]:
    """Opening the bucket, getting keys (plain or direct), and watching it: an ephemeral consumer
    on the bucket's stream (any filter: the holder may read the whole bucket anyway), its info,
    its deletion (``stop_watch``), and flow-control replies."""
    stream = kv_stream(bucket)
    return (
        js_api("STREAM", "INFO", stream),
        *stream_message_get(stream),
        js_api("CONSUMER", "CREATE", stream),
        js_api("CONSUMER", "CREATE", stream, ">"),
        js_api("CONSUMER", "INFO", stream, "*"),
        js_api("CONSUMER", "DELETE", stream, "*"),
        f"{JS_FLOW_CONTROL}.{stream}.>",
    )


def provider_keys(bucket: KvBucketSpec, provider: str) -> tuple[str, ...]:
    """The keys of ``bucket`` that belong to one provider, as subject filters.

    A bucket whose key pattern (``KvBucketSpec.key``) starts with ``{provider}``: that pattern with
    the provider in place and ``*`` for each other token. A tool-runner's own bucket without a
    pattern in the contract (circuits, rate limits): the runner starts each key with its provider
    (``<provider>``, ``<provider>.<integration>``, ``<provider>.<kind>.<window>``)."""
    token = key_token(provider)
    if bucket.key is None:
        return (token, f"{token}.>")
    parts = bucket.key.split(".")
    if parts[0] != "{provider}":
        raise ValueError(f"the keys of {bucket.name} do not start with the provider: {bucket.key}")
    return (".".join([token, *("*" for _ in parts[1:])]),)


# -- the roles ----------------------------------------------------------------------------------------
def permissions_for(role: Role | str, *, provider: str | None = None) -> Permissions:
    """The grants of ``role`` (a tool-runner's for one ``provider``)."""
    role = Role(role)
    _check_provider(role, provider)
    if role is Role.ADMIN:
        return Permissions(publish=(">",), subscribe=(">",))
    if role is Role.APPLICATION:
        return Permissions(
            publish=(subjects.APP_ALL, js_api("INFO")), subscribe=(f"{DEFAULT_INBOX_PREFIX}.>",)
        )
    name = identity(role, provider=provider)
    grant = _Grant()
    grant.publish(subjects.audit(name), js_api("INFO"), js_api("STREAM", "NAMES"))
    grant.publish(*(stream_info(spec) for spec in streams.ALL_STREAMS))
    grant.subscribe(f"{inbox_prefix(role, provider=provider)}.>")
    grant.subscribe(*(f"{SRV_PREFIX}.{verb}" for verb in SRV_VERBS))
    grant.subscribe(*(f"{SRV_PREFIX}.{verb}.{name}{tail}" for verb in SRV_VERBS for tail in ("", ".*")))
    if role is Role.GATEWAY:
        _gateway(grant)
    elif role is Role.ENGINE:
        _engine(grant)
    elif role is Role.TOOL_RUNNER:
        assert provider is not None
        _tool_runner(grant, provider)
    else:
        _security(grant)
    return grant.permissions(allow_responses=True)


def _gateway(grant: _Grant) -> None:
    grant.requests(f"{subjects.ENGINE_RPC_PREFIX}.>", subjects.SECURITY_RPC_ALL)
    grant.publish(subjects.APP_ALL, subjects.TOOL_INVOKE_ALL, subjects.TOOL_RESULT_ALL)
    grant.subscribe(subjects.RUN_EVENTS_ALL, subjects.TOOL_RESULT_ALL)
    grant.streams(
        streams.APP_EVENTS, streams.TOOL_WORK, streams.TOOL_RESULTS, streams.DEADLETTERS, streams.AUDIT
    )
    grant.publish(*stream_message_get(streams.TOOL_WORK), *stream_message_get(streams.DEADLETTERS))
    grant.publish(stream_message_delete(streams.DEADLETTERS))
    grant.publish(*kv_create(kv.SECURITY_REVISION), *kv_read(kv.SECURITY_REVISION))
    grant.publish(*kv_read(kv.TOOL_REGISTRY), *kv_read(kv.PROVIDER_HEALTH))
    grant.publish(*kv_create(kv.DECLARED_TOOLS), *kv_read(kv.DECLARED_TOOLS), kv_subject(kv.DECLARED_TOOLS))


def _engine(grant: _Grant) -> None:
    grant.serves(f"{subjects.ENGINE_RPC_PREFIX}.>")
    grant.requests(subjects.SECURITY_RPC_ALL)
    grant.publish(subjects.TOOL_INVOKE_ALL, subjects.RUN_EVENTS_ALL, subjects.DEADLETTER_ALL)
    grant.streams(
        streams.APP_EVENTS, streams.TOOL_WORK, streams.TOOL_RESULTS, streams.RUN_EVENTS, streams.DEADLETTERS
    )
    grant.publish(*durable_consumer(streams.ENGINE_TRIGGERS), *durable_consumer(streams.ENGINE_RESULTS))
    grant.publish(*stream_message_get(streams.TOOL_RESULTS))


def _tool_runner(grant: _Grant, provider: str) -> None:
    grant.publish(subjects.tool_result(provider), subjects.DEADLETTER_ALL)
    grant.streams(streams.TOOL_WORK, streams.TOOL_RESULTS, streams.DEADLETTERS)
    grant.publish(*durable_consumer(streams.tool_runner_consumer(provider)))
    grant.publish(*kv_create(kv.TOOL_RESULTS), *kv_read(kv.TOOL_RESULTS), kv_subject(kv.TOOL_RESULTS))
    for bucket in (kv.TOOL_REGISTRY, kv.PROVIDER_HEALTH):
        grant.publish(
            *kv_create(bucket), *(kv_subject(bucket, keys) for keys in provider_keys(bucket, provider))
        )
    for bucket in (kv.CIRCUITS, kv.RATE_LIMITS):  # read-modify-write of its own counters and circuits
        grant.publish(*kv_create(bucket), *kv_read(bucket))
        grant.publish(*(kv_subject(bucket, keys) for keys in provider_keys(bucket, provider)))
    if provider == DECLARED_PROVIDER:  # writes the shipped declarations, serves what the bucket holds
        grant.publish(
            *kv_create(kv.DECLARED_TOOLS), *kv_read(kv.DECLARED_TOOLS), kv_subject(kv.DECLARED_TOOLS)
        )
    if provider == MOCK_PROVIDER:
        grant.publish(*kv_create(kv.MOCK_RULES), *kv_read(kv.MOCK_RULES))


def _security(grant: _Grant) -> None:
    grant.serves(subjects.SECURITY_RPC_ALL)
    grant.streams(streams.AUDIT)
    grant.publish(*durable_consumer(streams.SECURITY_AUDIT))
    bucket = kv.SECURITY_REVISION
    grant.publish(*kv_create(bucket), *kv_read(bucket), kv_subject(bucket))


class _Grant:
    """Collects one role's subjects, once each, in the order granted."""

    def __init__(self) -> None:
        self._publish: dict[str, None] = {}
        self._subscribe: dict[str, None] = {}

    def publish(self, *subjects_: str) -> None:
        self._publish.update(dict.fromkeys(subjects_))

    def subscribe(self, *subjects_: str) -> None:
        self._subscribe.update(dict.fromkeys(subjects_))

    def requests(self, *subjects_: str) -> None:
        """Requests to a service: published here, answered on this identity's inbox."""
        self.publish(*subjects_)

    def serves(self, *subjects_: str) -> None:
        """Requests this service answers (the answer goes out through ``allow_responses``)."""
        self.subscribe(*subjects_)

    def streams(self, *specs: StreamSpec) -> None:
        for spec in specs:
            self.publish(*stream_provisioning(spec))

    def permissions(self, *, allow_responses: bool) -> Permissions:
        return Permissions(
            publish=tuple(self._publish), subscribe=tuple(self._subscribe), allow_responses=allow_responses
        )


def _name(stream: StreamSpec | str) -> str:
    return stream.name if isinstance(stream, StreamSpec) else stream
