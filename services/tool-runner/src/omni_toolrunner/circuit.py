"""A circuit breaker per provider, shared by the provider's replicas through a JetStream KV bucket.

- **closed**: calls go through. A replica counts the provider's failures in a row (server errors,
  timeouts, unreachable, malformed answers: what says the provider is in trouble, not the
  caller); at ``threshold`` it opens the circuit for everyone.
- **open**: no replica calls the provider; each invoke fails at once as ``unavailable`` (the
  engine then retries later or falls back to the next provider). After ``cooldown_s`` the first
  replica to ask takes the circuit to **half-open**, holding the one probe for ``probe_s``.
- **half-open**: only the probe is let through. Its success closes the circuit, its failure
  opens it again; a probe that never reports back loses its hold after ``probe_s``.

Declared tools (the ``integrations`` provider) each call a service of their own, so there the
circuits are per integration (the tool's category: ``integrations.github``): GitHub failing does not
refuse calls to Notion. :class:`CircuitSet` keeps a runner's circuits.

The shared state is one KV entry per provider (or integration), changed only with compare-and-set on its
revision, so two replicas never both open it or both take the probe. Replicas read it at most
once per ``refresh_s`` while it is closed, so a healthy provider costs no KV traffic per call
and an opened circuit reaches every replica within ``refresh_s``.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Final

import msgspec
from nats.js.errors import BadRequestError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

log = logging.getLogger(__name__)

CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half_open"
# Failures that speak of the provider's health (a bad request or a missing key does not).
TRIPPING_KINDS = frozenset({"server", "timeout", "unavailable", "malformed_response"})


class Circuit(msgspec.Struct, kw_only=True, omit_defaults=True):
    state: str = CLOSED
    reason: str | None = None
    opened_at: datetime | None = None
    probe_until: datetime | None = None  # half-open: the probe's hold


class CircuitBreaker:
    def __init__(
        self,
        kv: KeyValue,
        provider: str,
        *,
        threshold: int = 5,
        cooldown_s: float = 30.0,
        probe_s: float = 30.0,
        refresh_s: float = 1.0,
    ) -> None:
        self.kv = kv
        self.provider = provider
        self.threshold = threshold
        self.cooldown = timedelta(seconds=cooldown_s)
        self.probe = timedelta(seconds=probe_s)
        self.refresh_s = refresh_s
        self.failures = 0  # this replica's failures in a row
        self.circuit = Circuit()
        self._revision = 0
        self._read_at = float("-inf")
        self._probing = False  # this replica holds the half-open probe

    async def _read(self) -> None:
        try:
            entry = await self.kv.get(self.provider)
        except KeyNotFoundError:
            self.circuit, self._revision = Circuit(), 0
        else:
            self.circuit = msgspec.json.decode(entry.value or b"{}", type=Circuit)
            self._revision = entry.revision or 0
        self._read_at = time.monotonic()

    async def _swap(self, circuit: Circuit) -> bool:
        """Compare-and-set: True when ``circuit`` replaced the revision this replica last read."""
        value = msgspec.json.encode(circuit)
        try:
            if self._revision:
                self._revision = await self.kv.update(self.provider, value, last=self._revision)
            else:
                self._revision = await self.kv.create(self.provider, value)
        except (KeyWrongLastSequenceError, BadRequestError) as exc:  # another replica changed it first
            log.debug("circuit of %s changed under us: %s", self.provider, exc)
            await self._read()
            return False
        self.circuit = circuit
        return True

    async def allow(self) -> bool:
        """Whether this call may go to the provider."""
        if self.circuit.state == CLOSED and time.monotonic() - self._read_at < self.refresh_s:
            return True
        await self._read()
        now = datetime.now(UTC)
        circuit = self.circuit
        if circuit.state == CLOSED:
            return True
        if circuit.state == OPEN and circuit.opened_at and now < circuit.opened_at + self.cooldown:
            return False
        if circuit.state == HALF_OPEN and circuit.probe_until and now < circuit.probe_until:
            return False  # another replica's probe is out
        taken = await self._swap(
            Circuit(
                state=HALF_OPEN,
                reason=circuit.reason,
                opened_at=circuit.opened_at,
                probe_until=now + self.probe,
            )
        )
        self._probing = taken
        if taken:
            log.info("circuit of %s half-open: probing", self.provider)
        return taken

    async def record(self, error_kind: str | None) -> None:
        """The outcome of a call that :meth:`allow` let through (None: success)."""
        probing, self._probing = self._probing, False
        if error_kind is None:
            self.failures = 0
            if probing or self.circuit.state != CLOSED:
                await self._read()
                if self.circuit.state != CLOSED and await self._swap(Circuit()):
                    log.info("circuit of %s closed", self.provider)
            return
        if error_kind not in TRIPPING_KINDS:
            return
        self.failures += 1
        if probing or self.failures >= self.threshold:
            in_a_row = self.failures  # before awaiting: a success meanwhile resets the count
            await self._read()
            if self.circuit.state == OPEN:
                return
            reason = (
                f"{error_kind} after {in_a_row} failure(s) in a row"
                if not probing
                else f"probe failed: {error_kind}"
            )
            if await self._swap(Circuit(state=OPEN, reason=reason, opened_at=datetime.now(UTC))):
                log.warning("circuit of %s open: %s", self.provider, reason)
            self.failures = 0

    def describe(self) -> str:
        since = f" since {self.circuit.opened_at.isoformat()}" if self.circuit.opened_at else ""
        return f"circuit {self.circuit.state}{since}" + (
            f": {self.circuit.reason}" if self.circuit.reason else ""
        )


_STATE_ORDER = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


class CircuitSet:
    """A runner's circuits: one for its provider, or one per integration (``per_category``)."""

    def __init__(
        self,
        kv: KeyValue,
        provider: str,
        *,
        per_category: bool = False,
        threshold: int = 5,
        cooldown_s: float = 30.0,
    ) -> None:
        self.kv = kv
        self.provider = provider
        self.per_category = per_category
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._circuits: dict[str, CircuitBreaker] = {}

    def for_tool(self, tool: str) -> CircuitBreaker:
        key = f"{self.provider}.{tool.partition('.')[0]}" if self.per_category else self.provider
        circuit = self._circuits.get(key)
        if circuit is None:
            circuit = self._circuits[key] = CircuitBreaker(
                self.kv, key, threshold=self.threshold, cooldown_s=self.cooldown_s
            )
        return circuit

    @property
    def state(self) -> str:
        """The worst state this replica knows of (for its provider's health)."""
        states = [circuit.circuit.state for circuit in self._circuits.values()]
        return max(states, key=lambda state: _STATE_ORDER.get(state, 0), default=CLOSED)
