"""Publishing to JetStream: every service sets the same headers and hears of failures the same way.

Headers of every message:

- ``Nats-Msg-Id``: the caller's message id. JetStream stores a message once per id within the
  stream's duplicate window; a second publish is acknowledged as a duplicate, not stored again.
- ``content-type``: ``application/cloudevents+json`` for an envelope (the default), nothing for a
  body whose type the publisher does not know (a redriven dead letter's original).
- ``traceparent`` / ``tracestate``: the current span's trace context, or the ``traceparent`` the
  caller kept (the engine's outbox rows carry the one of the transaction that wrote them).
- ``Nats-Expected-Stream`` when the caller names the stream: a message that another stream would
  take is refused instead of stored there.

A publish ends in one of three ways:

- :class:`Published`, with ``duplicate`` set when JetStream already held a message with this id
  (stored by an earlier try whose ack was lost): the message is stored either way.
- :class:`PublishUnavailable`, transient: NATS is away (the connection is lost or reconnecting,
  its outbound buffer is full), JetStream is unavailable, or no ack came within the timeout. The
  message may or may not be stored; publishing it again with the same id is safe, and succeeds
  once NATS is back.
- :class:`PublishRefused`, permanent: trying again gets the same answer. JetStream refused the
  message (another stream takes the subject, it is too large, ...), this client's connection is
  closed, or, as :class:`NoStream`, nothing answered: no stream takes the subject (or JetStream is
  not enabled on the server).

The nats-py error is the ``__cause__`` of either failure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import PubAck
from omni_contract.envelope import CONTENT_TYPE, HDR_CONTENT_TYPE, HDR_MSG_ID, HDR_TRACEPARENT

from omni_runtime.telemetry import inject_headers

PUBLISH_TIMEOUT_S = 5.0
"""How long a publish waits for JetStream's ack when the caller does not say (nats-py's default)."""

# What means NATS is away for now rather than refusing: a timeout (also what a request made while
# reconnecting ends in), a lost or reconnecting connection, a full outbound buffer, JetStream 503.
NATS_AWAY: tuple[type[BaseException], ...] = (
    TimeoutError,  # nats.errors.TimeoutError too
    OSError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.js.errors.ServiceUnavailableError,
)


@dataclass(frozen=True, slots=True)
class Published:
    """JetStream's ack: where the message is, and whether it was there already (same message id)."""

    stream: str
    seq: int
    duplicate: bool


class PublishError(Exception):
    """A publish that JetStream did not acknowledge. ``reason`` says why, without the subject."""

    def __init__(self, subject: str, reason: str) -> None:
        super().__init__(f"publishing to {subject}: {reason}")
        self.subject = subject
        self.reason = reason


class PublishUnavailable(PublishError):
    """Transient: NATS or JetStream is away, or the ack did not come in time. The message may be
    stored; publishing it again under the same id is safe."""


class PublishRefused(PublishError):
    """Permanent: the same publish fails the same way until the streams or the message change."""


class NoStream(PublishRefused):
    """Nothing answered the publish: no stream takes the subject (or JetStream is not enabled)."""


async def publish(
    js: JetStreamContext,
    subject: str,
    body: bytes,
    *,
    msg_id: str,
    stream: str | None = None,
    timeout_s: float = PUBLISH_TIMEOUT_S,
    envelope: bool = True,
    extra_headers: dict[str, str] | None = None,
) -> Published:
    """Publish ``body`` to ``subject`` through JetStream and wait up to ``timeout_s`` for its ack.

    ``envelope`` False: the body is not an Omni envelope (no content type is claimed for it).
    ``extra_headers``: more NATS headers, such as the publisher's tenant.
    Raises :class:`PublishUnavailable` or :class:`PublishRefused` (see the module's docstring)."""
    headers = {**(extra_headers or {}), HDR_MSG_ID: msg_id}
    if envelope:
        headers[HDR_CONTENT_TYPE] = CONTENT_TYPE
    inject_headers(headers)
    try:
        ack = await js.publish(subject, body, timeout=timeout_s, stream=stream, headers=headers)
    except (nats.errors.Error, OSError) as exc:  # OSError includes TimeoutError
        raise _failure(exc, subject, f"JetStream did not acknowledge within {timeout_s:g} s") from exc
    return Published(stream=ack.stream, seq=ack.seq, duplicate=bool(ack.duplicate))


def _failure(exc: BaseException, subject: str, timed_out: str) -> PublishError:
    """The publish failure that ``exc`` (raised by nats-py) means; ``timed_out`` says it of a timeout."""
    if isinstance(exc, nats.js.errors.NoStreamResponseError):
        return NoStream(subject, "no JetStream stream takes the subject")
    if isinstance(exc, TimeoutError):
        return PublishUnavailable(subject, timed_out)
    if isinstance(exc, nats.js.errors.ServiceUnavailableError):
        return PublishUnavailable(subject, f"JetStream is unavailable: {exc.description}")
    if isinstance(exc, nats.js.errors.APIError):
        return PublishRefused(subject, f"JetStream refused the message: {exc.description}")
    if isinstance(exc, NATS_AWAY):
        return PublishUnavailable(subject, f"NATS connection: {exc}")
    if isinstance(exc, (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError)):
        return PublishRefused(subject, "the NATS connection is closed")
    return PublishRefused(subject, f"NATS refused the message: {exc}")


class Outgoing(Protocol):
    """One message of a pipelined batch, as the engine's outbox rows are."""

    @property
    def subject(self) -> str: ...
    @property
    def body(self) -> bytes: ...
    @property
    def msg_id(self) -> str: ...
    @property
    def traceparent(self) -> str | None: ...
    @property
    def durable(self) -> bool: ...


class Pipeline:
    """Publishes batches of envelopes without waiting between messages, then waits once.

    A ``durable`` message goes to JetStream, and the batch waits for its ack; any other is a plain
    NATS message (a notice for whoever listens now: no ack, and stored only if a stream takes its
    subject). Each message's headers: its id, the envelope's content type, and its own
    ``traceparent`` (none when it has none: the current span is not the message's).
    """

    def __init__(self, nc: NATS, *, timeout_s: float = PUBLISH_TIMEOUT_S) -> None:
        self._nc = nc
        # One context for every batch: its first async publish subscribes to the acks' inbox.
        self._js = nc.jetstream(timeout=timeout_s)
        self.timeout_s = timeout_s

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Publish ``messages`` in order and wait up to ``timeout_s`` for every ack.

        Raises :class:`PublishUnavailable` or :class:`PublishRefused` for the first failure met
        (any of the others may be stored or not): publish the whole batch again, the message ids
        keep JetStream from storing any twice."""
        futures: list[asyncio.Future[PubAck]] = []
        for m in messages:
            # Inline, one dict per message: this is the engine's hot path.
            headers = {HDR_MSG_ID: m.msg_id, HDR_CONTENT_TYPE: CONTENT_TYPE}
            if m.traceparent:
                headers[HDR_TRACEPARENT] = m.traceparent
            try:
                if m.durable:
                    futures.append(await self._js.publish_async(m.subject, m.body, headers=headers))
                else:
                    await self._nc.publish(m.subject, m.body, headers=headers)
            except (nats.errors.Error, OSError) as exc:
                raise _failure(exc, m.subject, "NATS did not take the message in time") from exc
        if not futures:
            return
        try:
            await asyncio.wait_for(asyncio.gather(*futures), timeout=self.timeout_s)
        except (nats.errors.Error, OSError) as exc:  # OSError includes TimeoutError
            durable = ", ".join(sorted({m.subject for m in messages if m.durable}))
            timed_out = f"JetStream did not acknowledge {len(futures)} messages within {self.timeout_s:g} s"
            raise _failure(exc, durable, timed_out) from exc
