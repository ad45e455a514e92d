"""The small HTTP server every service runs: ``/healthz`` (alive), ``/readyz`` (can take work)
and ``/metrics`` (Prometheus)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], Awaitable[str | None]]
"""Returns None when ready, else the reason it is not."""


class HealthServer:
    def __init__(self, service: str, registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0):
        self.service = service
        self.registry = registry
        self.host = host
        self.port = port
        self.checks: dict[str, ReadinessCheck] = {}
        self.draining = False
        self._runner: web.AppRunner | None = None

    def add_check(self, name: str, check: ReadinessCheck) -> None:
        self.checks[name] = check

    async def readiness(self) -> dict[str, str]:
        problems: dict[str, str] = {}
        if self.draining:
            problems["service"] = "shutting down"
        for name, check in self.checks.items():
            try:
                reason = await check()
            except Exception as exc:  # noqa: BLE001 - a failing check means "not ready", with the reason
                reason = f"{type(exc).__name__}: {exc}"
            if reason:
                problems[name] = reason
        return problems

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "service": self.service})

    async def _readyz(self, _: web.Request) -> web.Response:
        problems = await self.readiness()
        if problems:
            return web.json_response(
                {"status": "unavailable", "service": self.service, "problems": problems}, status=503
            )
        return web.json_response({"status": "ready", "service": self.service})

    async def _metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/healthz", self._healthz),
            web.get("/readyz", self._readyz),
            web.get("/metrics", self._metrics),
        ]

    async def start(self) -> None:
        app = web.Application()
        app.add_routes(self.routes())
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self._runner.addresses:  # learn the port the OS chose when port 0 was asked for
            self.port = int(self._runner.addresses[0][1])
        log.info("health endpoints on http://%s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()
