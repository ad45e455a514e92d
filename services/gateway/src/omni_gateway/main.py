"""Entry point of ``omni-gateway``: the public HTTP API, served until SIGTERM."""

from __future__ import annotations

import errno
import logging

import pydantic
from aiohttp import web
from omni_contract import streams
from omni_runtime.nats import ensure_streams
from omni_runtime.service import ServiceContext, run_service

from omni_gateway.app import GatewayRunner, build_app
from omni_gateway.settings import HTTP_PORT_ENV, HTTP_PORT_SHARED_ENV, GatewaySettings
from omni_gateway.state import GATEWAY, SERVICE

log = logging.getLogger(__name__)


class ListenError(RuntimeError):
    """The public API cannot listen where it was told to."""


async def body(ctx: ServiceContext) -> None:
    """Serve the API until ``ctx.stopping``; then stop accepting, let requests in flight finish
    (at most ``shutdown_grace_s``), and return so NATS can be drained."""
    settings = ctx.settings
    if not isinstance(settings, GatewaySettings):
        raise TypeError(f"the gateway needs GatewaySettings, got {type(settings).__name__}")
    assert ctx.nc is not None
    await ensure_streams(ctx.js, streams.GATEWAY_STREAMS)
    app = build_app(ctx.nc, settings, ctx.registry)
    ctx.health.add_check("engine", app[GATEWAY].engine_problem)
    runner = GatewayRunner(app, access_log=None, shutdown_timeout=settings.shutdown_grace_s)
    await runner.setup()
    try:
        await _listen(runner, settings)
        await ctx.stopping.wait()
        log.info("no longer accepting requests; finishing those in flight")
    finally:
        await runner.cleanup()


async def _listen(runner: web.AppRunner, settings: GatewaySettings) -> None:
    site = web.TCPSite(runner, settings.http_host, settings.http_port)
    try:
        await site.start()
    except OSError as exc:
        where = f"{settings.http_host}:{settings.http_port}"
        if exc.errno == errno.EADDRINUSE:
            raise ListenError(
                f"the public API cannot listen on {where}: the port is already in use; "
                f"set {HTTP_PORT_ENV} (or {HTTP_PORT_SHARED_ENV}) to a free port"
            ) from None
        raise ListenError(
            f"the public API cannot listen on {where}: {exc.strerror}; check OMNI_GATEWAY_HTTP_HOST"
        ) from None
    for address in runner.addresses:
        log.info("public API on http://%s:%d", address[0], address[1])


def main() -> None:
    try:
        settings = GatewaySettings()
    except pydantic.ValidationError as exc:
        raise SystemExit(f"omni-gateway: invalid settings: {exc}") from None
    try:
        run_service(SERVICE, settings, body, description="Omni public HTTP API")
    except ListenError as exc:
        raise SystemExit(f"omni-gateway: {exc}") from None


if __name__ == "__main__":
    main()
