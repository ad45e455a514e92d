"""What every HTTP provider adapter shares: the client it owns or borrows, the call's deadline,
and one log line per failed call."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from types import TracebackType
from typing import Any, Self

import httpx

from omni_toolrunner.providers.base import ProviderError, ProviderErrorKind, ToolCall


class HttpAdapter:
    """Holds the adapter's ``httpx.AsyncClient``: the runner's shared one when given (the runner
    closes it), otherwise one of its own, closed by :meth:`aclose` or on leaving ``async with``."""

    def __init__(self, client: httpx.AsyncClient | None) -> None:
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient()

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


@contextmanager
def failures_logged(
    logger: logging.Logger, provider: str, request: ToolCall, model: str | None = None
) -> Iterator[None]:
    """Log a ``ProviderError`` raised inside (one line, with the idempotency key) and let it go on."""
    try:
        yield
    except ProviderError as exc:
        extra: dict[str, Any] = {"idempotency_key": request.idempotency_key}
        if model is not None:
            extra["model"] = model
        logger.info("%s %s failed: %s", provider, request.tool, exc, extra=extra)
        raise


@asynccontextmanager
async def within_deadline(request: ToolCall) -> AsyncIterator[None]:
    """Bound everything inside by the call's deadline; running out is a ``timeout`` error."""
    try:
        async with asyncio.timeout(request.timeout_s):
            yield
    except TimeoutError as exc:
        raise ProviderError(
            ProviderErrorKind.TIMEOUT, f"no complete answer within {request.timeout_s:g}s"
        ) from exc
