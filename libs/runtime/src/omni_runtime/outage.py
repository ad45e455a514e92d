"""Logging an outage without flooding: a warning when it starts, then at most one every
``every_s`` while it lasts (however many tries fail meanwhile), and one line when it is over.

A loop that retries while the database or NATS is away keeps one :class:`OutageLog` and calls
:meth:`OutageLog.failed` on every failed try and :meth:`OutageLog.recovered` on every success."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

OUTAGE_WARN_EVERY_S = 30.0
"""While an outage lasts, it is told again at most this often."""


class OutageLog:
    """One loop's (or one connection's) view of an outage, logged to ``logger`` as ``<name>: ...``."""

    def __init__(
        self,
        logger: logging.Logger,
        name: str,
        *,
        every_s: float = OUTAGE_WARN_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.name = name
        self.every_s = every_s
        self._clock = clock
        self.since: float | None = None
        self.failures = 0
        self._next_warning = 0.0

    @property
    def down(self) -> bool:
        """Whether a failure was seen since the last recovery."""
        return self.since is not None

    def failed(self, message: str, *args: object, exc_info: bool = False) -> bool:
        """Count a failed try; log ``<name>: message % args (N failed tries so far)`` as a warning
        when it is the outage's first or ``every_s`` passed since the last warning. Returns whether
        it logged. ``exc_info`` adds the traceback of the exception being handled."""
        now = self._clock()
        self.failures += 1
        if self.since is None:
            self.since = now
        if now < self._next_warning:
            return False
        self._next_warning = now + self.every_s
        told = f"%s: {message} (%d failed tries so far)"  # message is a %-format, like the logger's
        self.logger.warning(told, self.name, *args, self.failures, exc_info=exc_info)
        return True

    def recovered(self, what: str = "working again") -> bool:
        """End the outage, if there was one, with ``<name>: <what> after Ns (N failed tries)``;
        returns whether there was one."""
        if self.since is None:
            return False
        self.logger.info(
            "%s: %s after %.1fs of outage (%d failed tries)",
            self.name,
            what,
            self._clock() - self.since,
            self.failures,
        )
        self.since = None
        self.failures = 0
        self._next_warning = 0.0
        return True
