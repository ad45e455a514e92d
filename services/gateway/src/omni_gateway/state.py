"""What the request handlers share: the NATS connection, the engine client, settings, metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from omni_gateway.engine import EngineClient
from omni_gateway.errors import ApiError
from omni_gateway.follow import RunFollower
from omni_gateway.metrics import GatewayMetrics
from omni_gateway.settings import GatewaySettings

SERVICE = "gateway"
EVENT_SOURCE = "omni-gateway"


@dataclass
class Gateway:
    nc: NATS
    settings: GatewaySettings
    engine: EngineClient
    metrics: GatewayMetrics
    js: JetStreamContext
    stopping: bool = False
    _followers: set[RunFollower] = field(default_factory=set)

    @asynccontextmanager
    async def follow(self, run_id: str) -> AsyncIterator[RunFollower]:
        """Subscribe to one run's progress until the block ends (or the gateway stops)."""
        follower = RunFollower(self.nc, run_id)
        if self.stopping:
            follower.close()
        self._followers.add(follower)
        try:
            async with follower:
                yield follower
        finally:
            self._followers.discard(follower)

    @property
    def following(self) -> int:
        """How many runs requests are following now (waiting executes and event streams)."""
        return len(self._followers)

    def stop(self) -> None:
        """Stop waiting on runs: waiting executes answer 202, event streams end (clients resume
        them elsewhere with ``Last-Event-ID``)."""
        self.stopping = True
        for follower in list(self._followers):
            follower.close()

    async def readiness(self) -> dict[str, str]:
        """Reasons the gateway cannot serve now; empty when it can."""
        problems: dict[str, str] = {}
        if self.stopping:
            problems["service"] = "shutting down"
        if not self.nc.is_connected:
            problems["nats"] = "not connected to NATS"
            return problems
        problem = await self.engine_problem()
        if problem:
            problems["engine"] = problem
        return problems

    async def engine_problem(self) -> str | None:
        """None when the workflow engine answers a workflows.list within the readiness timeout."""
        try:
            await self.engine.list_workflows(timeout_s=self.settings.readiness_timeout_s)
        except ApiError as exc:
            return exc.message
        return None


GATEWAY = web.AppKey("gateway", Gateway)
