"""The tool-runner service: a FastStream NATS broker, one pull subscriber, two publishers.

The subscriber is bound to the provider's durable pull consumer, which every replica shares, so
JetStream spreads the work across them. Acknowledgement is manual (``AckPolicy.MANUAL``): a work
message is acked by the runner only after its result is stored and its publish acknowledged.

Why the handler hands messages to :class:`InvokeRunner` instead of FastStream running them:
FastStream's concurrent subscriber (``max_workers``) parks fetched messages in an in-memory queue
where nobody reports them in progress, so with a short ``ack_wait`` and slow provider calls they
would be redelivered to other replicas while still waiting here; and ``PullSub(batch=True)`` keeps
pulling until a batch is full or its timeout passes (added latency at low load) and traces a batch
as one new trace instead of continuing each message's. So FastStream fetches batches
(``PullSub(batch_size=...)``) and runs the handler for every message of a batch at once; the handler
only admits the message into the runner, which holds it (reporting it in progress from that moment)
and returns once a concurrency slot is free, so FastStream fetches no more than the runner can take.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace

from faststream import AckPolicy
from faststream.message import StreamMessage
from faststream.nats import JStream, NatsBroker, PullSub, StorageType
from faststream.nats.prometheus import NatsPrometheusMiddleware
from nats.aio.msg import Msg
from nats.js.errors import BadRequestError
from nats.js.kv import KeyValue
from omni_contract import streams, subjects
from omni_runtime import nats as omni_nats
from omni_runtime.service import ServiceContext
from opentelemetry.trace import TracerProvider
from prometheus_client import CollectorRegistry

from omni_toolrunner.adapters import ProviderBinding, bind_provider, http_client
from omni_toolrunner.metrics import RunnerMetrics
from omni_toolrunner.results import RESULTS_BUCKET, KvResultStore, ResultStore
from omni_toolrunner.runner import InvokeRunner, deadletter_subject
from omni_toolrunner.settings import ToolRunnerSettings

log = logging.getLogger(__name__)


async def _raw_message(message: StreamMessage[Msg]) -> Msg:
    """The subscriber's decoder: the handler gets the nats-py message, to ack and read headers of."""
    return message.raw_message


def service_name(provider: str) -> str:
    return f"tool-runner-{provider}"


class ToolRunnerApp:
    """The broker with its subscriber and publishers, declared once; started and stopped by ``serve``."""

    def __init__(
        self,
        settings: ToolRunnerSettings,
        *,
        registry: CollectorRegistry,
        instance: str,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.settings = settings
        self.instance = instance
        self.tracer_provider = tracer_provider
        self.metrics = RunnerMetrics(registry)
        provider = settings.provider
        # The shared consumer, with this deployment's ack wait: in-progress acks keep live work alive.
        self.consumer = replace(streams.tool_runner_consumer(provider), ack_wait_s=settings.ack_wait_s)
        self.broker = NatsBroker(
            [url.strip() for url in settings.nats_url.split(",") if url.strip()],
            name=f"{instance}/work",
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
            connect_timeout=5,
            # FastStream's graceful stop waits for handlers, i.e. admissions into the runner, which
            # stop() has already told to give their messages back; the runner then finishes the rest.
            graceful_timeout=settings.shutdown_grace_s,
            # No NatsTelemetryMiddleware: the runner opens its own span per invoke (continuing the
            # message's trace, with the GenAI attributes); FastStream's consume and publish spans
            # doubled the tracing cost per step (about 15% of the runner's CPU in a profile).
            middlewares=(NatsPrometheusMiddleware(registry=registry, app_name=service_name(provider)),),
            # Into the service's logging; a line per message only at DEBUG.
            logger=logging.getLogger("faststream.nats"),
            log_level=logging.DEBUG,
            # The handler takes the raw message (see ``_raw_message``): no dependency injection per
            # message. FastDepends resolves a ``NatsMessage`` context parameter through a worker
            # thread, which cost more than the rest of FastStream's consume path together.
            apply_types=False,
        )
        self.subscriber = self.broker.subscriber(
            subjects.tool_invoke(provider),
            stream=JStream(streams.TOOL_WORK.name, declare=False),
            durable=self.consumer.durable,
            config=omni_nats.consumer_config(self.consumer),
            pull_sub=PullSub(batch_size=settings.fetch_batch, timeout=settings.fetch_timeout_s),
            ack_policy=AckPolicy.MANUAL,
            decoder=_raw_message,
            title=f"{service_name(provider)}:invoke",
            description=f"Tool work for provider {provider}",
        )
        self.subscriber(self._on_invoke)
        self.results = self.broker.publisher(
            subjects.tool_result(provider),
            stream=JStream(streams.TOOL_RESULTS.name, declare=False),
            title=f"{service_name(provider)}:result",
            description="One ToolResult per invoke, Nats-Msg-Id = its idempotency key",
        )
        self.deadletters = self.broker.publisher(
            deadletter_subject(),
            stream=JStream(streams.DEADLETTERS.name, declare=False),
            title=f"{service_name(provider)}:deadletter",
            description="Work messages that cannot be read",
        )
        self.runner: InvokeRunner | None = None
        self._bound = False
        self._stopped = False

    async def _on_invoke(self, msg: Msg) -> None:
        if self.runner is None:  # cannot happen: the subscriber starts after the runner exists
            raise RuntimeError("work arrived before the runner was ready")
        await self.runner.admit(msg)

    async def start(self, provider: ProviderBinding, store: ResultStore | None = None) -> None:
        """Connect, open the result store, and start fetching work."""
        await self.broker.connect()
        if store is None:
            store = KvResultStore(await self._results_bucket())
        self.runner = InvokeRunner(
            provider=provider,
            store=store,
            results=self.results,
            deadletters=self.deadletters,
            metrics=self.metrics,
            settings=self.settings,
            source=service_name(self.settings.provider),
            instance=self.instance,
            tracer_provider=self.tracer_provider,
        )
        self.runner.start()
        await self.broker.start()
        self._bound = True
        log.info(
            "consuming %s as %s/%s (ack_wait %.1fs, %d in flight at most)",
            subjects.tool_invoke(self.settings.provider),
            self.consumer.stream,
            self.consumer.durable,
            self.settings.ack_wait_s,
            self.settings.max_concurrency,
        )

    async def _results_bucket(self) -> KeyValue:
        try:
            return await self.broker.key_value(
                RESULTS_BUCKET,
                description="Tool results by idempotency key (sha256), for redelivered invokes",
                ttl=self.settings.result_ttl_s,
                storage=StorageType.FILE,
                # Lookups read the last value straight from the stream, no JSON/base64 envelope.
                direct=True,
            )
        except BadRequestError as exc:
            # Made by a replica with other settings (another TTL): use it as it is.
            log.warning("results bucket exists with another configuration (%s); using it as is", exc)
            return await self.broker.key_value(RESULTS_BUCKET, declare=False)

    async def consumer_ready(self) -> str | None:
        if not self._bound or self._stopped:
            return "work consumer not bound"
        if not await self.broker.ping(timeout=1.0):
            return "work connection to NATS is down"
        return None

    async def stop(self, grace_s: float) -> None:
        """Stop fetching, let running invokes finish within ``grace_s``, then drain the connection."""
        if self._stopped:
            return
        self._stopped = True
        if self.runner is not None:
            self.runner.stop_admitting()
        await self.subscriber.stop()
        if self.runner is not None:
            await self.runner.close(grace_s)
        await self.broker.stop()

    def abort(self) -> None:
        """Stop at once and acknowledge nothing more (the process is going away)."""
        self._stopped = True
        if self.runner is not None:
            self.runner.abort()


def make_body(
    settings: ToolRunnerSettings, *, tracer_provider: TracerProvider | None = None
) -> Callable[[ServiceContext], Awaitable[None]]:
    """The service's ``main(ctx)`` for ``omni_runtime.service.serve``/``run_service``.

    ``tracer_provider`` defaults to the process's (tests pass their own).
    """

    async def body(ctx: ServiceContext) -> None:
        await omni_nats.ensure_streams(ctx.js, streams.ALL_STREAMS)
        app = ToolRunnerApp(
            settings, registry=ctx.registry, instance=ctx.instance, tracer_provider=tracer_provider
        )
        await omni_nats.ensure_consumer(ctx.js, app.consumer)

        client = http_client(settings)
        ctx.stack.push_async_callback(client.aclose)
        provider = bind_provider(settings, client)
        ctx.stack.push_async_callback(provider.aclose)
        ctx.health.add_check("provider", _provider_ready(provider))
        ctx.health.add_check("consumer", app.consumer_ready)
        # Released before the service's own connection drains; a no-op after a clean stop.
        ctx.stack.push_async_callback(app.broker.stop)

        await app.start(provider)
        try:
            await ctx.stopping.wait()
        except asyncio.CancelledError:
            app.abort()
            raise
        await app.stop(settings.shutdown_grace_s)

    return body


def _provider_ready(provider: ProviderBinding) -> Callable[[], Awaitable[str | None]]:
    async def check() -> str | None:
        return provider.missing_credentials

    return check
