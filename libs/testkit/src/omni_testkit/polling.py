"""Wait for a condition by polling it against a deadline: tests never sleep to wait."""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast, overload

T = TypeVar("T")


@overload
async def wait_for(
    predicate: Callable[[], Awaitable[T]],
    *,
    timeout: float = ...,  # noqa: ASYNC109
    interval: float = ...,
    message: str | None = ...,
    retry_on: tuple[type[Exception], ...] = ...,
) -> T: ...


@overload
async def wait_for(
    predicate: Callable[[], T],
    *,
    timeout: float = ...,  # noqa: ASYNC109
    interval: float = ...,
    message: str | None = ...,
    retry_on: tuple[type[Exception], ...] = ...,
) -> T: ...


async def wait_for(
    predicate: Callable[[], T | Awaitable[T]],
    *,
    timeout: float = 10.0,  # noqa: ASYNC109 - a deadline the caller states is the point of this helper
    interval: float = 0.02,
    message: str | None = None,
    retry_on: tuple[type[Exception], ...] = (),
) -> T:
    """Call ``predicate`` (sync or async) until it returns something truthy, and return that.

    Raises :class:`TimeoutError` after ``timeout`` seconds, naming ``message`` (or the predicate)
    and the last value seen. Exceptions propagate at once, except those listed in ``retry_on``
    (for instance ``ConnectionRefusedError`` while a server comes up), which count as "not yet".
    The predicate is always tried at least once, and once more at the deadline.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: object = None
    while True:
        expired = loop.time() >= deadline
        try:
            outcome = predicate()
            value = cast(T, (await outcome) if inspect.isawaitable(outcome) else outcome)
        except retry_on as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        if expired:
            what = message or getattr(predicate, "__qualname__", repr(predicate))
            raise TimeoutError(f"{what} did not become true within {timeout}s (last result: {last!r})")
        await asyncio.sleep(min(interval, max(0.0, deadline - loop.time())))


def unique_name(prefix: str = "t") -> str:
    """``prefix`` plus a random suffix, for subjects, streams and consumers that tests must not share."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"
