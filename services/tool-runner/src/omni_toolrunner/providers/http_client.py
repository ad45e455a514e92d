"""What every HTTP provider adapter shares: the client it owns or borrows, and closing it."""

from __future__ import annotations

from types import TracebackType
from typing import Self

import httpx


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
