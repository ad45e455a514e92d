"""The tool-runner service: the provider's work consumer, its result store, and the runner.

Every replica binds a nats-py pull subscription to the provider's durable consumer, which they all
share, so JetStream spreads the work across them. Acknowledgement is explicit: a work message is
acked by the runner only after its result is stored and its publish acknowledged.

The hot path is plain nats-py on the service's own connection: fetch, KV get, publish and ack,
nothing per message in between. (It used to run under a FastStream subscriber, whose consume and
publish machinery was over a third of the runner's CPU per step.) The consume loop, its bounded
concurrency and its graceful stop are :class:`~omni_toolrunner.runner.InvokeRunner`'s.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from omni_contract import streams, subjects
from omni_contract.declared import HttpToolDeclaration, integration_limits
from omni_contract.kv import CIRCUITS, TOOL_RESULTS
from omni_contract.tools import ProviderHealth
from omni_runtime import nats as omni_nats
from omni_runtime.service import ServiceContext
from opentelemetry.trace import TracerProvider
from prometheus_client import CollectorRegistry

from omni_toolrunner.adapters import (
    NO_CREDENTIALS,
    PER_TOOL_CREDENTIALS,
    ProviderBinding,
    bind_provider,
    http_client,
)
from omni_toolrunner.catalogue import spec_for
from omni_toolrunner.circuit import CircuitSet
from omni_toolrunner.declarations import DeclarationWatcher, declarations_bucket, publish_files
from omni_toolrunner.metrics import RunnerMetrics
from omni_toolrunner.mock_rules import MockRulesWatcher, mock_rules_bucket
from omni_toolrunner.providers.declared import DeclaredHttpAdapter
from omni_toolrunner.providers.mock import MockAdapter
from omni_toolrunner.ratelimit import RateLimitSet, rate_limit_bucket
from omni_toolrunner.registry import ToolAnnouncer, health_bucket, registry_bucket
from omni_toolrunner.results import KvResultStore, ResultStore
from omni_toolrunner.runner import InvokeRunner
from omni_toolrunner.settings import ToolRunnerSettings

log = logging.getLogger(__name__)


def service_name(provider: str) -> str:
    return f"tool-runner-{provider}"


class ToolRunnerApp:
    """The work consumer, result store and runner of one replica; started and stopped by ``make_body``."""

    def __init__(
        self,
        settings: ToolRunnerSettings,
        *,
        registry: CollectorRegistry,
        instance: str,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        if settings.provider_concurrency is not None and settings.fetch_batch > 1:
            # With the consumer at its max_ack_pending the server holds the rest of a batch back
            # for whichever replica's pull is waiting: pull one at a time so that a freed place
            # goes to a replica with a free slot, not to one whose slots are all busy.
            settings = settings.model_copy(update={"fetch_batch": 1})
        self.settings = settings
        self.instance = instance
        self.tracer_provider = tracer_provider
        self.metrics = RunnerMetrics(registry)
        consumer = streams.tool_runner_consumer(settings.provider)
        # The shared consumer, with this deployment's ack wait (in-progress acks keep live work alive)
        # and, when set, its number of deliveries.
        # The provider's concurrency limit is the consumer's max_ack_pending: JetStream never has
        # more of its work out across all replicas, so excess work waits in the stream.
        self.consumer = replace(
            consumer,
            ack_wait_s=settings.ack_wait_s,
            max_deliver=settings.max_deliver or consumer.max_deliver,
            max_ack_pending=settings.provider_concurrency or consumer.max_ack_pending,
        )
        self.runner: InvokeRunner | None = None
        self._stopped = False

    async def start(
        self, js: JetStreamContext, provider: ProviderBinding, store: ResultStore | None = None
    ) -> None:
        """Open the result store, bind to the work consumer, and start consuming."""
        if store is None:
            store = KvResultStore(await self._results_bucket(js))
        pull = await omni_nats.puller(
            js, self.consumer, batch=self.settings.fetch_batch, expires_s=self.settings.fetch_timeout_s
        )
        circuits = None
        if self.settings.provider not in NO_CREDENTIALS:  # local tools have no far side to trip
            circuits = CircuitSet(
                await omni_nats.ensure_key_value(js, CIRCUITS),
                self.settings.provider,
                # Declared tools each call their own service: one circuit per integration.
                per_category=self.settings.provider in PER_TOOL_CREDENTIALS,
                threshold=self.settings.circuit_threshold,
                cooldown_s=self.settings.circuit_cooldown_s,
            )
        limits = None
        declared = self.settings.provider in PER_TOOL_CREDENTIALS  # declarations may state their own
        if self.settings.requests_per_minute or self.settings.tokens_per_minute or declared:
            limits = RateLimitSet(
                await rate_limit_bucket(js),
                self.settings.provider,
                requests_per_window=self.settings.requests_per_minute,
                tokens_per_window=self.settings.tokens_per_minute,
                window_s=self.settings.rate_window_s,
            )
        self.runner = InvokeRunner(
            js=js,
            provider=provider,
            store=store,
            metrics=self.metrics,
            settings=self.settings,
            max_deliver=self.consumer.max_deliver,
            source=service_name(self.settings.provider),
            instance=self.instance,
            tracer_provider=self.tracer_provider,
            circuits=circuits,
            limits=limits,
        )
        self.runner.start(pull)
        log.info(
            "consuming %s as %s/%s (ack_wait %.1fs, max_deliver %d, %d in flight at most)",
            subjects.tool_invoke(self.settings.provider),
            self.consumer.stream,
            self.consumer.durable,
            self.consumer.ack_wait_s,
            self.consumer.max_deliver,
            self.settings.max_concurrency,
        )

    async def _results_bucket(self, js: JetStreamContext) -> KeyValue:
        # With this deployment's TTL; a bucket made by a replica with another is used as it is.
        return await omni_nats.ensure_key_value(js, replace(TOOL_RESULTS, ttl_s=self.settings.result_ttl_s))

    def provider_health(self, unavailable_reason: str | None) -> Callable[[], ProviderHealth]:
        """How to take this replica's view of its provider, for the registry heartbeat."""

        def take() -> ProviderHealth:
            assert self.runner is not None
            return self.runner.stats.snapshot(
                circuit=self.runner.circuit_state,
                unavailable_reason=unavailable_reason,
                throttled=self.runner.throttled,
            )

        return take

    async def consumer_ready(self) -> str | None:
        if self._stopped or self.runner is None or not self.runner.consuming:
            return "work consumer not bound"
        return None

    async def stop(self, grace_s: float) -> None:
        """Stop fetching, give back waiting work, let running invokes finish within ``grace_s``."""
        if self._stopped:
            return
        self._stopped = True
        if self.runner is not None:
            await self.runner.close(grace_s)

    def abort(self) -> None:
        """Stop at once and acknowledge nothing more (the process is going away)."""
        self._stopped = True
        if self.runner is not None:
            self.runner.abort()

    async def release(self) -> None:
        """Let go of the work consumer if :meth:`stop` did not (a no-op after a clean stop)."""
        if self.runner is not None:
            await self.runner.release()


def make_body(
    settings: ToolRunnerSettings, *, tracer_provider: TracerProvider | None = None
) -> Callable[[ServiceContext], Awaitable[None]]:
    """The service's ``main(ctx)`` for ``omni_runtime.service.serve``/``run_service``.

    ``tracer_provider`` defaults to the process's (tests pass their own).
    """

    async def body(ctx: ServiceContext) -> None:
        await omni_nats.ensure_streams(ctx.js, streams.TOOL_RUNNER_STREAMS)
        app = ToolRunnerApp(
            settings, registry=ctx.registry, instance=ctx.instance, tracer_provider=tracer_provider
        )
        client = http_client(settings)
        ctx.stack.push_async_callback(client.aclose)
        provider = bind_provider(settings, client)
        ctx.stack.push_async_callback(provider.aclose)
        ctx.health.add_check("provider", _provider_ready(provider))
        ctx.health.add_check("consumer", app.consumer_ready)
        registered = asyncio.Event()

        async def registry_ready() -> str | None:
            # Ready means findable: GET /tools and direct calls see a replica only once it is here.
            return None if registered.is_set() else "tools not yet in the registry"

        ctx.health.add_check("registry", registry_ready)
        # Before the service's connection drains: a pull subscription left behind would hold it up.
        ctx.stack.push_async_callback(app.release)

        await app.start(ctx.js, provider)
        announcer = ToolAnnouncer(
            await registry_bucket(ctx.js),
            [
                spec_for(tool, settings.provider, requires_auth=settings.provider not in NO_CREDENTIALS)
                for tool in sorted(provider.adapter.tools)
            ],
            ctx.instance,
            unavailable_reason=provider.missing_credentials,
            health=(await health_bucket(ctx.js), app.provider_health(provider.missing_credentials)),
        )
        await announcer.start()
        registered.set()
        if isinstance(provider.adapter, MockAdapter):
            mock = provider.adapter

            async def announce_mock_tools() -> None:
                specs = [
                    spec_for(tool, settings.provider, requires_auth=False) for tool in sorted(mock.tools)
                ]
                await announcer.replace(specs)

            rules_watcher = MockRulesWatcher(await mock_rules_bucket(ctx.js), mock, announce_mock_tools)
            await rules_watcher.start()
            ctx.stack.push_async_callback(rules_watcher.stop)
        if isinstance(provider.adapter, DeclaredHttpAdapter):
            assert app.runner is not None
            watcher = await serve_declarations(
                ctx.js, provider.adapter, announcer, settings.declarations_dir, app.runner.limits
            )
            ctx.stack.push_async_callback(watcher.stop)
        try:
            await ctx.stopping.wait()
        except asyncio.CancelledError:
            app.abort()
            raise
        await announcer.withdraw()
        await app.stop(settings.shutdown_grace_s)

    return body


async def serve_declarations(
    js: JetStreamContext,
    adapter: DeclaredHttpAdapter,
    announcer: ToolAnnouncer,
    directory: Path | None,
    limits: RateLimitSet | None = None,
) -> DeclarationWatcher:
    """Write the shipped declarations, then serve whatever the bucket declares, following its changes."""
    kv = await declarations_bucket(js)
    if directory is not None:
        written = await publish_files(kv, directory)
        log.info("declared tools from %s: %d written to the bucket", directory, written)

    async def apply(declarations: list[HttpToolDeclaration]) -> None:
        if limits is not None:
            limits.set_integration_limits(integration_limits(declarations))
        adapter.replace(declarations)
        reasons = {
            d.name: reason for d in declarations if (reason := adapter.unavailable_reason(d)) is not None
        }
        await announcer.replace([d.spec() for d in declarations], reasons)

    watcher = DeclarationWatcher(kv, apply)
    await watcher.start()
    return watcher


def _provider_ready(provider: ProviderBinding) -> Callable[[], Awaitable[str | None]]:
    async def check() -> str | None:
        return provider.missing_credentials

    return check
