from __future__ import annotations

import itertools

import pytest
from omni_testkit import unique_name, wait_for


async def test_wait_for_returns_the_first_truthy_value() -> None:
    counter = itertools.count()
    assert await wait_for(lambda: next(counter) >= 3 and "done", timeout=2, interval=0.001) == "done"


async def test_wait_for_accepts_an_async_predicate() -> None:
    calls = 0

    async def ready() -> int:
        nonlocal calls
        calls += 1
        return calls if calls >= 2 else 0

    assert await wait_for(ready, timeout=2, interval=0.001) == 2


async def test_wait_for_times_out_naming_the_condition_and_last_value() -> None:
    pending = ["job-1"]

    def drained() -> bool:
        return not pending

    with pytest.raises(TimeoutError, match=r"queue drained did not become true within 0.05s.*False"):
        await wait_for(drained, timeout=0.05, interval=0.01, message="queue drained")


async def test_wait_for_retries_listed_exceptions_and_propagates_others() -> None:
    attempts = itertools.count()

    def flaky() -> bool:
        if next(attempts) < 2:
            raise ConnectionRefusedError
        return True

    assert await wait_for(flaky, timeout=2, interval=0.001, retry_on=(ConnectionRefusedError,)) is True

    def broken() -> bool:
        raise ValueError("bug in the predicate")

    with pytest.raises(ValueError, match="bug in the predicate"):
        await wait_for(broken, timeout=2, retry_on=(ConnectionRefusedError,))


def test_unique_names_differ_and_keep_their_prefix() -> None:
    first, second = unique_name("orders"), unique_name("orders")
    assert first != second
    assert first.startswith("orders_")
