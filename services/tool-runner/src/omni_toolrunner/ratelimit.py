"""Requests and tokens per window for one provider, shared by its replicas through a JetStream KV bucket.

A provider's quota is usually "N requests and M tokens per minute" for the whole account, however
many tool-runner replicas serve it, so the counting has to be shared. Each limit is a counter per
fixed window of ``window_s`` seconds aligned to the epoch (window ``floor(now / window_s)``), kept
in the ``omni_ratelimits`` bucket under ``<provider>.requests.<window>`` and
``<provider>.tokens.<window>`` as ASCII decimal, and only ever raised with compare-and-set on the
entry's revision, so two replicas never both count from the same value. A window's counters are
never reset: the next window simply uses new keys, and the bucket's TTL sweeps the old ones.

- **Requests** are leased in chunks so that a busy replica does not pay a KV round trip per call:
  when its permits for the current window run out it adds a lease (about a twentieth of the limit,
  less as the window fills up) to the shared counter and hands those permits out locally. Permits
  still unused when the window ends are dropped, which errs on the safe side: the shared counter
  never undercounts, at worst a window ends slightly below its limit. Leases shrink as the window
  fills so that few permits sit stranded in other replicas' leases when the counter reaches the limit.
- **Tokens** are only known after a call, so they are checked before it and counted after it:
  :meth:`RateLimiter.acquire` refuses to start a call while the window's token counter is at or
  above the limit, and :meth:`RateLimiter.record_tokens` adds what the call used. A window can
  therefore end above its token limit by what the calls in flight when it was reached use, plus the
  calls let through on a token count read at most ``refresh`` (1 s or a twentieth of the window,
  whichever is less) earlier; it cannot run on past the limit once every replica has seen it.

A caller that finds the window used up waits until the next window opens (plus a little jitter so
the replicas' waiters do not all hit the KV at the same instant); the tool-runner holds the work
message un-acked meanwhile, so excess work waits in the stream instead of failing. When the wait
would be longer than the caller can afford, :class:`RateLimitExceeded` says at once when to retry.

The windows follow each replica's wall clock: replicas whose clocks disagree by a few milliseconds
count a few calls around a boundary in a neighbouring window, which a per-minute quota tolerates.
When the bucket cannot be reached the limiter fails open, like the circuit breaker: a provider's own
429 answers remain the backstop, while refusing all work because of the KV would stop everything.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import re
import time
from collections.abc import Callable, Mapping
from typing import Final

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import BadRequestError, KeyNotFoundError
from nats.js.kv import KeyValue
from omni_contract.kv import RATE_LIMITS, RATE_LIMITS_TTL_S
from omni_runtime.nats import ensure_key_value

log = logging.getLogger(__name__)

_CAS_ATTEMPTS: Final = 16
"""Compare-and-set attempts before giving up. Every conflict means another replica's write went
through, so running out of attempts says the KV misbehaves rather than that the limit is busy."""
_LEASE_DIVISOR: Final = 20  # a lease is at most this fraction of the limit...
_LEASE_TAPER: Final = 4  # ...and at most this fraction of what is left of the window's limit
_MAX_JITTER_S: Final = 0.25
_MAX_REFRESH_S: Final = 1.0
_PROVIDER = re.compile(r"[-/_=a-zA-Z0-9]+(\.[-/_=a-zA-Z0-9]+)*")


class RateLimitExceeded(Exception):
    """No permit can come within the time the caller is willing to wait.

    ``retry_after_s`` is when the next window opens: the earliest a permit could come, not a
    promise (the next window may fill up before this caller gets there)."""

    def __init__(self, retry_after_s: float, *, provider: str | None = None) -> None:
        self.retry_after_s = retry_after_s
        self.provider = provider
        who = f"{provider}: " if provider else ""
        super().__init__(f"{who}rate limit reached; the next window opens in {retry_after_s:.2f}s")


class _Contended(Exception):
    """Compare-and-set kept losing (private: the limiter fails open on it)."""


async def rate_limit_bucket(js: JetStreamContext) -> KeyValue:
    """The bucket of the shared rate-limit counters, created when missing."""
    return await ensure_key_value(js, RATE_LIMITS)


class RateLimiter:
    """One provider's request and token limits per window, as seen by one replica.

    ``requests_per_window`` / ``tokens_per_window`` None: no limit of that kind. ``clock`` gives the
    epoch seconds the windows are cut from (injectable for tests); waits are measured with the
    monotonic clock. ``throttled`` (acquires that had to wait or were refused) and ``waited_s``
    (seconds spent in :meth:`acquire`) are for the runner's metrics.
    """

    def __init__(
        self,
        kv: KeyValue,
        provider: str,
        *,
        requests_per_window: int | None,
        tokens_per_window: int | None,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not _PROVIDER.fullmatch(provider):
            raise ValueError(f"provider {provider!r} cannot be part of a KV key")
        if not 0 < window_s <= RATE_LIMITS_TTL_S:
            raise ValueError(f"window_s must be in (0, {RATE_LIMITS_TTL_S:g}], got {window_s}")
        for name, limit in (
            ("requests_per_window", requests_per_window),
            ("tokens_per_window", tokens_per_window),
        ):
            if limit is not None and limit < 1:
                raise ValueError(f"{name} must be at least 1 (None: no limit), got {limit}")
        self.kv = kv
        self.provider = provider
        self.requests_per_window = requests_per_window
        self.tokens_per_window = tokens_per_window
        self.window_s = window_s
        self.refresh_s = min(_MAX_REFRESH_S, window_s / 20)
        self._clock = clock
        self.throttled = 0
        self.waited_s = 0.0
        # Requests: this replica's unused permits of window ``_lease_window``; the window known to be
        # used up (counters only grow within a window, so that stays true until it ends).
        self._lease_lock = asyncio.Lock()
        self._lease_window = -1
        self._lease_left = 0
        self._requests_full_window = -1
        # Tokens: the last count seen (window, count, monotonic time of the read).
        self._tokens_lock = asyncio.Lock()
        self._tokens_seen: tuple[int, int, float] = (-1, 0, float("-inf"))
        self._record_lock = asyncio.Lock()
        self._tokens_pending = 0
        self._unreachable = False

    @property
    def enabled(self) -> bool:
        return self.requests_per_window is not None or self.tokens_per_window is not None

    def _window(self, now: float) -> int:
        return math.floor(now / self.window_s)

    def _key(self, kind: str, window: int) -> str:
        return f"{self.provider}.{kind}.{window}"

    async def acquire(self, *, max_wait_s: float) -> float:
        """Wait for a permit to call the provider; return the seconds spent waiting.

        Raises :class:`RateLimitExceeded` as soon as it is clear that no permit can come within
        ``max_wait_s`` (the next window opens later than that), without sleeping first.
        """
        if not self.enabled:
            return 0.0
        started = time.monotonic()
        throttled = False
        try:
            while True:
                now = self._clock()
                window = self._window(now)
                try:
                    granted = await self._tokens_allow(window) and await self._take_request(window)
                except (NatsError, TimeoutError, _Contended) as exc:
                    self._kv_failed(exc)
                    return time.monotonic() - started
                if granted:
                    return time.monotonic() - started
                now = self._clock()
                if self._window(now) != window:
                    continue  # the window ended while we asked: try the new one at once
                throttled = True
                to_next = (window + 1) * self.window_s - now
                left = max_wait_s - (time.monotonic() - started)
                if to_next > left:
                    raise RateLimitExceeded(to_next, provider=self.provider)
                jitter = random.uniform(0.0, min(_MAX_JITTER_S, self.window_s / 20))
                log.debug(
                    "rate limit of %s reached; waiting %.2fs for the next window", self.provider, to_next
                )
                await asyncio.sleep(min(to_next + jitter, left))
        finally:
            self.waited_s += time.monotonic() - started
            if throttled:
                self.throttled += 1

    async def record_tokens(self, n: int) -> None:
        """Count the tokens a call used in the current window (n <= 0, or no token limit: nothing).

        Calls finishing together in this replica are added in one write: whoever holds the lock
        writes everything recorded so far, the others find their tokens already counted.
        """
        if n <= 0 or self.tokens_per_window is None:
            return
        self._tokens_pending += n
        async with self._record_lock:
            pending, self._tokens_pending = self._tokens_pending, 0
            if not pending:
                return
            window = self._window(self._clock())
            try:
                _, count = await self._add(self._key("tokens", window), lambda _count: pending)
            except (NatsError, TimeoutError, _Contended) as exc:
                self._kv_failed(exc, f"{pending} tokens not counted")
                return
            self._tokens_seen = (window, count, time.monotonic())

    async def _tokens_allow(self, window: int) -> bool:
        limit = self.tokens_per_window
        if limit is None:
            return True
        if self._tokens_fresh(window):
            return self._tokens_seen[1] < limit
        async with self._tokens_lock:
            if not self._tokens_fresh(window):  # not read meanwhile by another acquirer
                count, _ = await self._read(self._key("tokens", window))
                self._tokens_seen = (window, count, time.monotonic())
        return self._tokens_seen[1] < limit

    def _tokens_fresh(self, window: int) -> bool:
        seen_window, count, read_at = self._tokens_seen
        if seen_window != window:
            return False
        assert self.tokens_per_window is not None
        # A count at the limit stays there until the window ends: no need to read it again.
        return count >= self.tokens_per_window or time.monotonic() - read_at < self.refresh_s

    async def _take_request(self, window: int) -> bool:
        """Take one permit of ``window``, leasing more from the shared counter when none are left."""
        if self.requests_per_window is None:
            return True
        if self._take_leased(window):
            return True
        async with self._lease_lock:  # one lease at a time: the acquirers queued here share it
            if self._take_leased(window):
                return True
            if self._requests_full_window == window or self._window(self._clock()) != window:
                return False
            leased = await self._lease(window)
            if not leased:
                self._requests_full_window = window
                return False
            if self._window(self._clock()) != window:
                return False  # the window ended during the round trip: its permits are worthless now
            self._lease_window, self._lease_left = window, leased - 1
            return True

    def _take_leased(self, window: int) -> bool:
        if self._lease_window != window or self._lease_left <= 0:
            return False
        self._lease_left -= 1
        return True

    async def _lease(self, window: int) -> int:
        limit = self.requests_per_window
        assert limit is not None

        def lease(count: int) -> int:
            left = limit - count
            return max(1, min(limit // _LEASE_DIVISOR, left // _LEASE_TAPER)) if left > 0 else 0

        leased, _ = await self._add(self._key("requests", window), lease)
        return leased

    async def _read(self, key: str) -> tuple[int, int]:
        """The counter and its revision (0, 0 when there is none yet)."""
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            self._kv_ok()
            return 0, 0
        self._kv_ok()  # here, not in acquire: an acquire served from a lease says nothing of the KV
        raw = entry.value or b"0"
        try:
            count = int(raw)
        except ValueError:
            # Not ours to interpret: count from zero; the compare-and-set overwrites it.
            log.warning("rate-limit counter %s holds %r; counting it as 0", key, raw[:32])
            count = 0
        return count, entry.revision or 0

    async def _add(self, key: str, amount: Callable[[int], int]) -> tuple[int, int]:
        """Compare-and-set ``amount(count)`` onto the counter; return what was added and the new count."""
        for _ in range(_CAS_ATTEMPTS):
            count, revision = await self._read(key)
            added = amount(count)
            if added <= 0:
                return 0, count
            value = str(count + added).encode()
            try:
                if revision:
                    await self.kv.update(key, value, last=revision)
                else:
                    await self.kv.create(key, value)
            # Wrong last sequence (a BadRequestError): another replica wrote first. Not found: the
            # entry that made ``create`` fail went away (TTL) before the client could look at it.
            except (BadRequestError, KeyNotFoundError) as exc:
                log.debug("rate-limit counter %s changed under us: %s", key, exc)
                continue
            return added, count + added
        raise _Contended(f"{key}: {_CAS_ATTEMPTS} compare-and-set attempts lost")

    def _kv_failed(self, exc: Exception, consequence: str = "calling anyway") -> None:
        """Fail open. Warn once per outage: at full speed every call would log the same line."""
        if not self._unreachable:
            log.warning("rate limits of %s unreadable (%r); %s", self.provider, exc, consequence)
            self._unreachable = True
        else:
            log.debug("rate limits of %s still unreadable (%r); %s", self.provider, exc, consequence)

    def _kv_ok(self) -> None:
        if self._unreachable:
            log.info("rate limits of %s readable again", self.provider)
            self._unreachable = False


class RateLimitSet:
    """A runner's rate limiters: its provider's (from its settings) and, for declared tools, one per
    integration (the tool name's category, keyed ``<provider>.<category>``), whose limit is the
    smallest that the integration's declarations state. A call waits for every limiter that applies.
    """

    def __init__(
        self,
        kv: KeyValue,
        provider: str,
        *,
        requests_per_window: int | None = None,
        tokens_per_window: int | None = None,
        window_s: float = 60.0,
    ) -> None:
        self.kv = kv
        self.provider = provider
        self.window_s = window_s
        self.provider_limiter = (
            RateLimiter(
                kv,
                provider,
                requests_per_window=requests_per_window,
                tokens_per_window=tokens_per_window,
                window_s=window_s,
            )
            if requests_per_window or tokens_per_window
            else None
        )
        self._integrations: dict[str, RateLimiter] = {}
        self._retired_throttled = 0  # counts of limiters replaced since start

    def set_integration_limits(self, limits: Mapping[str, tuple[int | None, int | None]]) -> None:
        """``category -> (requests, tokens)`` per window; a limiter whose limits are unchanged is kept
        (with its lease), the others are replaced or dropped."""
        current: dict[str, RateLimiter] = {}
        for category, (requests, tokens) in limits.items():
            if not requests and not tokens:
                continue
            kept = self._integrations.get(category)
            if kept is not None and (kept.requests_per_window, kept.tokens_per_window) == (requests, tokens):
                current[category] = kept
                continue
            current[category] = RateLimiter(
                self.kv,
                f"{self.provider}.{category}",
                requests_per_window=requests,
                tokens_per_window=tokens,
                window_s=self.window_s,
            )
        for category, limiter in self._integrations.items():
            if current.get(category) is not limiter:
                self._retired_throttled += limiter.throttled
        self._integrations = current

    def for_tool(self, tool: str) -> list[RateLimiter]:
        found = [self.provider_limiter] if self.provider_limiter is not None else []
        integration = self._integrations.get(tool.partition(".")[0])
        if integration is not None:
            found.append(integration)
        return found

    @property
    def throttled(self) -> int:
        limiters = [self.provider_limiter, *self._integrations.values()]
        return self._retired_throttled + sum(limiter.throttled for limiter in limiters if limiter is not None)
