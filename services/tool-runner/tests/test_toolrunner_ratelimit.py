"""The shared rate limiter against a real nats-server: replicas of one provider counting together.

Windows are 1-2 s so that waiting for the next one stays quick. Tests that wait use real time, with
a clock aligned to just after a window starts where the outcome depends on where in the window
they run; tests that never sleep pin a fake clock.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Callable

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js.errors import NoKeysError
from nats.js.kv import KeyValue
from omni_toolrunner.ratelimit import RateLimiter, RateLimitExceeded, rate_limit_bucket

pytestmark = pytest.mark.integration

PROVIDER = "open-ai"


@pytest.fixture
async def kv(nc: NATS) -> KeyValue:
    return await rate_limit_bucket(nc.jetstream())


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def aligned_clock(window_s: float, into_window_s: float = 0.05) -> Callable[[], float]:
    """Real time, shifted so that it reads ``into_window_s`` past the start of a window now."""
    start = (math.floor(time.time() / window_s) + 1) * window_s + into_window_s
    base = start - time.monotonic()
    return lambda: base + time.monotonic()


async def count(kv: KeyValue, key: str) -> int:
    entry = await kv.get(key)
    return int(entry.value or b"0")


async def test_two_replicas_share_the_requests_of_a_window_and_the_excess_waits_for_the_next(
    kv: KeyValue,
) -> None:
    window_s = 1.0
    a, b = (
        RateLimiter(kv, PROVIDER, requests_per_window=5, tokens_per_window=None, window_s=window_s)
        for _ in "ab"
    )
    # Start just after a window opens (real time, the limiters' own clock) so that the first try of
    # every acquire falls in one window.
    await asyncio.sleep(window_s - time.time() % window_s + 0.05)
    grants: list[tuple[int, float]] = []

    async def acquire(limiter: RateLimiter) -> None:
        waited = await limiter.acquire(max_wait_s=10.0)
        grants.append((math.floor(time.time() / window_s), waited))

    await asyncio.gather(*(acquire(limiter) for limiter in (a, b) * 6))

    assert len(grants) == 12
    per_window = Counter(window for window, _ in grants)
    assert max(per_window.values()) <= 5, per_window
    assert sorted(per_window.values()) == [2, 5, 5], per_window
    first = min(per_window)
    assert all(waited < 0.5 for window, waited in grants if window == first)
    assert all(waited > 0.5 for window, waited in grants if window > first)
    assert a.throttled + b.throttled == 7
    assert a.waited_s + b.waited_s > 7 * 0.5
    for window in per_window:
        assert await count(kv, f"{PROVIDER}.requests.{window}") <= 5


async def test_a_permit_beyond_max_wait_is_refused_at_once_with_the_time_to_the_next_window(
    kv: KeyValue,
) -> None:
    clock = FakeClock(1000 * 2.0 + 0.2)  # 1.8 s before the next 2 s window opens
    a, b = (
        RateLimiter(kv, PROVIDER, requests_per_window=1, tokens_per_window=None, window_s=2.0, clock=clock)
        for _ in "ab"
    )
    assert await a.acquire(max_wait_s=0.0) < 1.0

    started = time.monotonic()
    with pytest.raises(RateLimitExceeded) as refused:
        await a.acquire(max_wait_s=1.0)
    assert time.monotonic() - started < 1.0  # it did not sleep out the 1 s it was allowed
    assert refused.value.retry_after_s == pytest.approx(1.8)
    assert refused.value.provider == PROVIDER
    with pytest.raises(RateLimitExceeded):
        await b.acquire(max_wait_s=0.5)  # the other replica sees the window used up
    assert (a.throttled, b.throttled) == (1, 1)

    clock.now += 2.0
    assert await b.acquire(max_wait_s=0.0) < 1.0  # a new window
    with pytest.raises(RateLimitExceeded) as refused:
        await a.acquire(max_wait_s=0.0)
    assert refused.value.retry_after_s == pytest.approx(1.8)


async def test_tokens_recorded_by_one_replica_hold_back_the_others_until_the_next_window(
    kv: KeyValue,
) -> None:
    window_s = 1.0
    clock = aligned_clock(window_s)
    a, b = (
        RateLimiter(
            kv, PROVIDER, requests_per_window=None, tokens_per_window=1000, window_s=window_s, clock=clock
        )
        for _ in "ab"
    )
    window = math.floor(clock() / window_s)
    assert await a.acquire(max_wait_s=0.0) < 0.5
    assert await b.acquire(max_wait_s=0.0) < 0.5
    await a.record_tokens(600)
    await b.record_tokens(500)  # counted on top of a's 600: the count is shared
    await b.record_tokens(0)
    await b.record_tokens(-5)
    assert await count(kv, f"{PROVIDER}.tokens.{window}") == 1100

    with pytest.raises(RateLimitExceeded):
        await b.acquire(max_wait_s=0.0)
    await asyncio.sleep(a.refresh_s + 0.01)  # a's own count (600) is too old to trust now
    with pytest.raises(RateLimitExceeded):
        await a.acquire(max_wait_s=0.0)
    waited = await a.acquire(max_wait_s=3.0)
    assert 0.7 < waited < 1.5
    assert math.floor(clock() / window_s) == window + 1
    assert await b.acquire(max_wait_s=0.0) < 0.5  # the new window has no tokens yet
    assert (a.throttled, b.throttled) == (2, 1)


async def test_without_limits_nothing_is_written(kv: KeyValue) -> None:
    free = RateLimiter(kv, PROVIDER, requests_per_window=None, tokens_per_window=None, window_s=1.0)
    assert not free.enabled
    for _ in range(3):
        assert await free.acquire(max_wait_s=0.0) == 0.0
    await free.record_tokens(10_000)
    with pytest.raises(NoKeysError):
        await kv.keys()

    clock = FakeClock(500.5)
    requests_only = RateLimiter(
        kv, PROVIDER, requests_per_window=10, tokens_per_window=None, window_s=1.0, clock=clock
    )
    assert requests_only.enabled
    await requests_only.acquire(max_wait_s=0.0)
    await requests_only.record_tokens(10_000)
    assert await kv.keys() == [f"{PROVIDER}.requests.500"]


async def test_a_replica_leases_requests_in_chunks(kv: KeyValue) -> None:
    clock = FakeClock(3000.5)
    a, b = (
        RateLimiter(kv, PROVIDER, requests_per_window=100, tokens_per_window=None, window_s=1.0, clock=clock)
        for _ in "ab"
    )
    key = f"{PROVIDER}.requests.3000"
    await asyncio.gather(*(a.acquire(max_wait_s=0.0) for _ in range(10)))
    entry = await kv.get(key)
    assert entry.value == b"10"  # two leases of 5 (a twentieth of 100)
    assert entry.revision == 2  # the bucket's only writes so far
    await b.acquire(max_wait_s=0.0)
    entry = await kv.get(key)
    assert (entry.value, entry.revision) == (b"15", 3)

    clock.now += 1.0  # a new window: the 4 permits left of b's lease are dropped, b leases anew
    await b.acquire(max_wait_s=0.0)
    assert await count(kv, f"{PROVIDER}.requests.3001") == 5
    assert a.throttled == b.throttled == 0


async def test_leases_shrink_as_the_window_fills_and_never_pass_the_limit(kv: KeyValue) -> None:
    clock = FakeClock(7000.5)
    limiter = RateLimiter(
        kv, PROVIDER, requests_per_window=100, tokens_per_window=None, window_s=1.0, clock=clock
    )
    key = f"{PROVIDER}.requests.7000"
    await kv.create(key, b"90")  # other replicas have used 90
    await limiter.acquire(max_wait_s=0.0)
    assert await count(kv, key) == 92  # 10 left: a lease of 10 // 4
    for _ in range(9):
        await limiter.acquire(max_wait_s=0.0)
    assert await count(kv, key) == 100
    with pytest.raises(RateLimitExceeded):
        await limiter.acquire(max_wait_s=0.0)
    assert await count(kv, key) == 100


async def test_an_unreachable_bucket_lets_calls_through_with_one_warning(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    nc = await nats.connect(nats_url)
    limiter = RateLimiter(
        await rate_limit_bucket(nc.jetstream()),
        PROVIDER,
        requests_per_window=1,
        tokens_per_window=10,
        window_s=1.0,
    )
    await nc.close()
    with caplog.at_level(logging.WARNING, logger="omni_toolrunner.ratelimit"):
        for _ in range(3):
            assert await limiter.acquire(max_wait_s=0.0) < 1.0
        await limiter.record_tokens(100)
    assert limiter.throttled == 0
    warnings = [r for r in caplog.records if r.name == "omni_toolrunner.ratelimit"]
    assert len(warnings) == 1  # once per outage, not once per call
    assert "calling anyway" in warnings[0].getMessage()


@pytest.mark.parametrize(
    ("provider", "window_s", "requests", "message"),
    [
        ("open ai", 1.0, 1, "KV key"),
        ("a..b", 1.0, 1, "KV key"),
        ("gemini", 0.0, 1, "window_s"),
        ("gemini", 7200.0, 1, "window_s"),
        ("gemini", 1.0, 0, "requests_per_window"),
    ],
)
def test_settings_that_cannot_work_are_refused(
    provider: str, window_s: float, requests: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        RateLimiter(None, provider, requests_per_window=requests, tokens_per_window=None, window_s=window_s)  # type: ignore[arg-type]
