"""Following one run's progress notices on a core NATS subscription.

The subscription is opened before the run is started (execute) or its history is read (stream),
so no notice published in between is missed; a reader de-duplicates by ``seq``.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from omni_contract import events, subjects
from omni_contract.envelope import decode_envelope, payload_of

log = logging.getLogger(__name__)


class FollowerClosed(Exception):
    """The gateway is shutting down: stop waiting for this run."""


class _Closed:
    pass


_CLOSED = _Closed()


class RunFollower:
    def __init__(self, nc: NATS, run_id: str) -> None:
        self.nc = nc
        self.run_id = run_id
        self._queue: asyncio.Queue[events.RunProgress | _Closed] = asyncio.Queue()
        self._sub: Subscription | None = None
        self.closed = False

    async def __aenter__(self) -> RunFollower:
        self._sub = await self.nc.subscribe(subjects.run_events_of(self.run_id), cb=self._on_msg)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._sub is None:
            return
        sub, self._sub = self._sub, None
        try:
            await sub.unsubscribe()
        except nats.errors.Error as err:
            # The connection is already closed or draining; the interest goes away with it.
            log.debug("unsubscribe from run %s: %s", self.run_id, err)

    def close(self) -> None:
        """Wake the reader with :class:`FollowerClosed` (used when the gateway stops)."""
        self.closed = True
        self._queue.put_nowait(_CLOSED)

    async def _on_msg(self, msg: Msg) -> None:
        try:
            envelope = decode_envelope(msg.data)
            if envelope.type != events.RUN_PROGRESS_V1:
                return
            progress = payload_of(envelope, events.RunProgress)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("ignoring unreadable progress notice on %s: %s", msg.subject, exc)
            return
        if progress.run_id == self.run_id:
            self._queue.put_nowait(progress)

    async def next(self, timeout: float) -> events.RunProgress | None:  # noqa: ASYNC109 - a wait bound, not a cancel scope
        """The next notice, or None when none came within ``timeout`` seconds."""
        if self.closed:
            raise FollowerClosed
        try:
            item = await asyncio.wait_for(self._queue.get(), timeout=max(timeout, 0.0))
        except TimeoutError:
            return None
        if isinstance(item, _Closed):
            raise FollowerClosed
        return item


def is_terminal(progress: events.RunProgress) -> bool:
    return progress.status in events.RunStatus.TERMINAL or progress.event in events.RunEventType.TERMINAL
