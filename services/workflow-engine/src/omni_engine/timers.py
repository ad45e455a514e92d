"""Fires durable timers: retry back-off, step timeouts, run deadlines, wait timeouts.

Timers live in PostgreSQL beside the run they belong to (``migrations/004``), set and cleared in
the transactions of the run's events, so they survive a restart of every process. Each replica
polls for due timers, leasing them with ``FOR UPDATE SKIP LOCKED`` so replicas never fire the
same timer at once; a fired timer is deleted in the transaction that records its effect. A
replica that dies while firing one leaves its lease to run out, and another replica fires it
then; firing twice is harmless because the run's state tells a stale timer from a live one.

The poller sleeps until the earliest timer it knows of (one this replica set, or the earliest
in the table), at most ``poll_s``: timers fire within a few milliseconds of being due on the
replica that set them, and within ``poll_s`` elsewhere.

A result that reached JetStream before a step's deadline wins over the step's timeout, in
whatever order the engine reads them: a timer fires only once every result stored before it
was due has been folded in (``pending_since``: the stream time of the oldest result not yet
processed). After a pause or a restart, a deadline that passed while its answer sat in the
stream therefore finds the step already completed, and the timer is stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from omni_contract import streams, subjects
from omni_runtime.outage import OutageLog

from omni_engine.engine import Engine
from omni_engine.store import Store
from omni_engine.transient import is_transient

log = logging.getLogger(__name__)

HELD_BACK_POLL_S = 0.05


async def oldest_unprocessed_result(js: JetStreamContext) -> datetime | None:
    """When the oldest result still in the results stream reached it (it is a work queue, so
    what is there is not yet processed), or None when none waits."""
    try:
        msg = await js.get_msg(streams.TOOL_RESULTS.name, seq=1, next=True, subject=subjects.TOOL_RESULT_ALL)
    except NotFoundError:
        return None
    return msg.time


class TimerPoller:
    def __init__(
        self,
        engine: Engine,
        store: Store,
        *,
        poll_s: float = 0.5,
        lease_s: float = 30.0,
        batch: int = 200,
        pending_since: Callable[[], Awaitable[datetime | None]] | None = None,
    ) -> None:
        self.pending_since = pending_since
        self.engine = engine
        self.store = store
        self.poll_s = poll_s
        self.lease_s = lease_s
        self.batch = batch
        self._wake = asyncio.Event()
        self._next: datetime | None = None
        # A poll failing every poll_s says so once, then every OUTAGE_WARN_EVERY_S.
        self._outage = OutageLog(log, "timer poll")
        self._faults = OutageLog(log, "timer poll")
        engine.on_timer_set = self.note

    def note(self, fire_at: datetime) -> None:
        """A timer due at ``fire_at`` was just set: wake up for it if it is sooner than planned."""
        if self._next is None or fire_at < self._next:
            self._next = fire_at
            self._wake.set()

    async def fire_due(self) -> int:
        """Fire every timer that is due now; returns how many fired (stale ones included)."""
        fired = 0
        while True:
            # Timers due at or after the oldest unprocessed result wait until it is folded in.
            before = await self.pending_since() if self.pending_since is not None else None
            due = await self.store.claim_due_timers(self.batch, self.lease_s, before)
            if not due:
                return fired
            results = await asyncio.gather(
                *(self.engine.on_timer(t.run_id, t.name, t.data) for t in due), return_exceptions=True
            )
            for timer, outcome in zip(due, results, strict=True):
                if isinstance(outcome, BaseException):
                    # Left leased: it fires again when the lease runs out.
                    log.error("timer %s of run %s failed: %r", timer.name, timer.run_id, outcome)
            fired += len(due)
            if len(due) < self.batch:
                return fired

    async def run(self, stopping: asyncio.Event) -> None:
        """Fire timers until ``stopping``."""
        while not stopping.is_set():
            try:
                await self.fire_due()
                self._next = await self.store.next_timer_at()
            except Exception as exc:  # noqa: BLE001 - the database is away (or a fault): try again shortly
                if is_transient(exc):
                    self._outage.failed(
                        "database or NATS unreachable (%s: %s); polling again", type(exc).__name__, exc
                    )
                else:
                    self._faults.failed("failed; polling again", exc_info=True)
                self._next = None
            else:
                self._outage.recovered("firing timers again")
                self._faults.recovered("firing timers again")
            delay = self.poll_s
            if self._next is not None:
                delay = min(delay, max(0.0, (self._next - datetime.now(UTC)).total_seconds()))
                if delay == 0.0:
                    # Due, yet not fired: held back until the results before it are folded in.
                    delay = HELD_BACK_POLL_S
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                # ``note`` wakes it early for a timer due sooner than planned.
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
