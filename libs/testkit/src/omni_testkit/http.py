"""An aiohttp application served on 127.0.0.1 for a test: fakes of outside services, hooks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web


@asynccontextmanager
async def serving_app(app: web.Application, *, shutdown_timeout: float = 0.2) -> AsyncIterator[str]:
    """Serve ``app`` on a free port of 127.0.0.1 for the block; yields its base URL.

    Requests still in progress when the block ends (a fake sleeping out an injected delay) are cut
    short after ``shutdown_timeout``: tests do not wait for them.
    """
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = next(int(address[1]) for address in runner.addresses if isinstance(address, tuple))
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
