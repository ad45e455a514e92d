"""The life of a service process, the same for every Omni service.

``run_service`` sets up logging and tracing, starts the health server, connects to NATS, registers
the service for NATS service discovery (``$SRV.PING|INFO|STATS``), then calls the service's
``main(ctx)``. ``main`` starts its consumers and returns only once ``ctx.stopping`` is set and its
in-flight work is finished or handed back. Resources are owned by ``ctx.stack`` and released in
reverse order: NATS is drained last but one, the health server is stopped last.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import nats.errors
import uvloop
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.micro import add_service
from nats.micro.service import Service as MicroService
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from omni_runtime import nats as omni_nats
from omni_runtime.health import HealthServer
from omni_runtime.logging import setup_logging
from omni_runtime.settings import ServiceSettings
from omni_runtime.telemetry import setup_tracing

log = logging.getLogger(__name__)

VERSION = "0.1.0"


@dataclass
class ServiceContext:
    name: str
    settings: ServiceSettings
    instance: str
    registry: CollectorRegistry
    health: HealthServer
    stack: AsyncExitStack
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    nc: NATS | None = None
    micro: MicroService | None = None

    @property
    def js(self) -> JetStreamContext:
        assert self.nc is not None, "NATS is not connected"
        return self.nc.jetstream()


def default_instance(name: str) -> str:
    return f"{name}@{socket.gethostname()}:{os.getpid()}"


async def serve(
    name: str,
    settings: ServiceSettings,
    main: Callable[[ServiceContext], Awaitable[None]],
    *,
    description: str = "",
    install_signals: bool = True,
    stopping: asyncio.Event | None = None,
) -> None:
    """Run one service until SIGTERM/SIGINT (or until ``stopping`` is set, for in-process tests)."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    async with AsyncExitStack() as stack:
        ctx = ServiceContext(
            name=name,
            settings=settings,
            instance=settings.instance or default_instance(name),
            registry=registry,
            health=HealthServer(name, registry, settings.health_host, settings.health_port),
            stack=stack,
            stopping=stopping or asyncio.Event(),
        )
        if install_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, _on_signal, ctx, sig)
        await ctx.health.start()
        stack.push_async_callback(ctx.health.stop)

        ctx.nc = await omni_nats.connect(settings.nats_url, ctx.instance)
        stack.push_async_callback(_drain, ctx.nc)
        nc = ctx.nc
        ctx.health.add_check("nats", _nats_ready(nc))
        ctx.micro = await add_service(
            nc,
            name=name,
            version=VERSION,
            description=description or name,
            metadata={"instance": ctx.instance, "health": f"http://{ctx.health.host}:{ctx.health.port}"},
        )
        stack.push_async_callback(ctx.micro.stop)
        log.info("%s started as %s", name, ctx.instance)
        await main(ctx)
        ctx.health.draining = True
        log.info("%s stopping", name)


def _nats_ready(nc: NATS) -> Callable[[], Awaitable[str | None]]:
    async def check() -> str | None:
        return None if nc.is_connected else "not connected to NATS"

    return check


def _on_signal(ctx: ServiceContext, sig: signal.Signals) -> None:
    if not ctx.stopping.is_set():
        log.info("received %s: finishing in-flight work", sig.name)
        ctx.health.draining = True
        ctx.stopping.set()


# How long draining NATS may take at shutdown before the connection is closed anyway.
DRAIN_TIMEOUT_S = 5.0


async def _drain(nc: NATS) -> None:
    """Drain NATS (subscriptions finish what they hold, publishes are flushed), then close.

    The bound is the client's own ``drain_timeout``: cancelling ``drain()`` from outside (as
    ``asyncio.wait_for`` would) leaves the subscriptions' gathered drains with an exception nobody
    retrieves, and asyncio prints "_GatheringFuture exception was never retrieved" with a
    traceback at every Ctrl-C.
    """
    if nc.is_closed:
        return
    nc.options["drain_timeout"] = DRAIN_TIMEOUT_S
    nc._disconnected_cb = None  # disconnecting on purpose is no warning ("nats disconnected")
    try:
        await nc.drain()
    except nats.errors.Error as exc:  # NATS is away (reconnecting) or the connection is closed
        log.info("nats not drained (%s); closing", exc or type(exc).__name__)
        await nc.close()


def run_service(
    name: str,
    settings: ServiceSettings,
    main: Callable[[ServiceContext], Awaitable[None]],
    *,
    description: str = "",
) -> None:
    """Process entry point: logging, tracing, uvloop, then ``serve``."""
    setup_logging(name, settings.log_level, settings.log_format)
    tracer_provider = setup_tracing(name)
    try:
        uvloop.run(serve(name, settings, main, description=description))
    finally:
        tracer_provider.shutdown()  # export the spans still batched
