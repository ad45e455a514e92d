"""Answering tool invokes: one provider attempt per idempotency key, a result published for each.

The runner consumes the provider's durable pull consumer with plain nats-py, in one loop
(:meth:`InvokeRunner._consume`): take what has arrived (an :class:`omni_runtime.nats.Puller`
hands each message over the moment it comes), hold it, start each message as soon as one of
``max_concurrency`` slots is free, take the next. A replica so holds at most one batch beyond
what runs. Every held message, from the moment it is delivered until it is acknowledged, is
reported in progress every ``ack_wait_s / 3``: JetStream redelivers only work whose runner died.

For one message:

1. Decode the envelope and its ``ToolInvoke``. A message that cannot be read is dead-lettered
   (kind ``tool.invoke.malformed``) and terminated: it would fail the same way on every delivery.
2. Look up the idempotency key in the result store. A stored result is published again as it was;
   the provider is not called. A first, fresh delivery of an engine-made key skips the look: no
   earlier delivery can have stored a result (``_may_have_been_answered``).
3. Otherwise call the provider once (it receives the key too, as ``Idempotency-Key``). A provider
   failure is a result with ``success=False``; retrying is the workflow engine's decision.
4. Store the result and publish it to JetStream with ``Nats-Msg-Id`` = the idempotency key (so a
   republish is de-duplicated), together; once both are acknowledged, acknowledge the work.

If NATS is away in steps 2 or 4 (the result store or the result stream does not answer), the work
stays in hand, still reported in progress, and that step alone is tried again with a capped
back-off for as long as NATS is away: it is never given back for it, so an outage cannot use up
its deliveries, and the provider is not called again. Shutdown interrupts such a wait like any
running invoke (:meth:`InvokeRunner.close`). If NATS refuses a request (no stream takes the
result, say) or the runner itself fails, the work is given back (``nak``) and its next delivery
starts over; the stored result or the provider's own idempotency
keeps that from repeating a side effect. Work given back on its last delivery (``max_deliver``)
would never come back, so instead it is dead-lettered (kind ``tool.invoke.exhausted``) with the
reason, and terminated.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from omni_contract import deadletters, streams, subjects
from omni_contract import events as ev
from omni_contract.envelope import (
    HDR_MSG_ID,
    Envelope,
    decode_envelope,
    encode_envelope,
    new_envelope,
    payload_of,
    utcnow,
)
from omni_contract.events import ToolError, ToolInvoke, ToolResult, Usage
from omni_runtime.logging import run_id_var
from omni_runtime.nats import Puller
from omni_runtime.outage import OutageLog
from omni_runtime.publish import NATS_AWAY, PublishError, PublishUnavailable, publish
from omni_runtime.telemetry import extract_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider

from omni_toolrunner.adapters import ProviderBinding
from omni_toolrunner.circuit import CircuitBreaker, CircuitSet
from omni_toolrunner.metrics import OUTCOME_SUCCESS, RunnerMetrics
from omni_toolrunner.provider_health import ProviderStats
from omni_toolrunner.providers import ProviderError, ToolCall, ToolOutcome
from omni_toolrunner.ratelimit import RateLimiter, RateLimitExceeded, RateLimitSet
from omni_toolrunner.results import ResultStore
from omni_toolrunner.settings import ToolRunnerSettings

log = logging.getLogger(__name__)

MALFORMED_KIND = "tool.invoke.malformed"
"""Dead-letter kind of work that cannot be read."""
EXHAUSTED_KIND = "tool.invoke.exhausted"
"""Dead-letter kind of work that failed on its last delivery (``max_deliver``)."""

# A provider adapter enforces the call's deadline itself; this margin only catches one that does not.
_DEADLINE_MARGIN_S = 5.0
_NAK_DELAY_S = 1.0
_TAKE_TIMEOUT_S = 5.0
# A result lookup, store or publish that met a NATS failure is tried again after FIRST, then twice
# as long each time, at most CAP: work resumes within CAP of NATS's return.
_NATS_RETRY_FIRST_S = 0.25
_NATS_RETRY_CAP_S = 5.0

# What means NATS is away for now (rather than refusing the request): for the result store, a timeout
# (also what a request made while reconnecting ends in), a lost or reconnecting connection, JetStream
# unavailable; for a publish, PublishUnavailable (the same). A publish that is refused (PublishRefused:
# no stream takes the result, say) is not: that work is given back.
_NATS_AWAY: tuple[type[BaseException], ...] = (*NATS_AWAY, PublishUnavailable)
# What makes the runner give work back (or, on its last delivery, dead-letter it): a NATS failure
# that is not an outage retried in hand.
_NATS_FAILED: tuple[type[BaseException], ...] = (NatsError, TimeoutError, PublishError)

T = TypeVar("T")


class Unreadable(Exception):
    """A work message that no delivery will ever be able to process."""


@dataclass
class _KeyGate:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class InvokeRunner:
    """Fetches, holds, runs and answers the work of one replica, at most ``max_concurrency`` at once."""

    def __init__(
        self,
        *,
        js: JetStreamContext,
        provider: ProviderBinding,
        store: ResultStore,
        metrics: RunnerMetrics,
        settings: ToolRunnerSettings,
        max_deliver: int,
        source: str,
        instance: str,
        tracer_provider: TracerProvider | None = None,
        circuits: CircuitSet | None = None,
        stats: ProviderStats | None = None,
        limits: RateLimitSet | None = None,
    ) -> None:
        self._js = js
        self._circuits = circuits
        self.limits = limits
        self.stats = stats or ProviderStats(settings.provider, instance)
        self._binding = provider
        self._adapter = provider.adapter
        self._provider = settings.provider
        self._store = store
        self._result_subject = subjects.tool_result(settings.provider)
        self._metrics = metrics
        self._max_deliver = max_deliver
        self._source = source
        self._instance = instance
        self._call_timeout_s = settings.call_timeout_s
        self._publish_timeout_s = settings.publish_timeout_s
        self._heartbeat_s = settings.heartbeat_interval_s
        self._tracer = trace.get_tracer("omni.tool-runner", tracer_provider=tracer_provider)
        self._slots = asyncio.Semaphore(settings.max_concurrency)
        # Fetched, waiting for a slot (in fetch order); and running, keyed by id() since nats-py
        # messages are unhashable dataclasses.
        self._waiting: deque[Msg] = deque()
        self._running: dict[int, Msg] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._gates: dict[str, _KeyGate] = {}
        self._pull: Puller | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._in_flight = metrics.in_flight.labels(self._provider)
        # One per step retried in hand (the lookup, the store, the publish): a warning when NATS
        # fails it first, one every OUTAGE_WARN_EVERY_S while that lasts, a line when it works again.
        self._outages: dict[str, OutageLog] = {}

    # --- the consume loop and its lifecycle ----------------------------------------------------------

    def start(self, pull: Puller) -> None:
        """Consume ``pull`` (the shared durable consumer) until :meth:`close` or :meth:`abort`."""
        if self._consumer is not None:
            raise RuntimeError("the runner is already consuming")
        self._pull = pull
        pull.on_arrival = self._update_gauge  # what arrives behind a busy batch is held too
        self._heartbeat = asyncio.create_task(self._beat(), name="tool-runner-heartbeat")
        self._consumer = asyncio.create_task(self._consume(pull), name="tool-runner-consume")
        self._consumer.add_done_callback(_report_end)

    @property
    def consuming(self) -> bool:
        return self._consumer is not None and not self._consumer.done()

    @property
    def held(self) -> int:
        queued = len(self._pull.queued()) if self._pull is not None else 0
        return len(self._waiting) + len(self._running) + queued

    async def _consume(self, pull: Puller) -> None:
        """Take what has arrived, hold it, start each message once a slot is free; then take more."""
        while True:
            msgs = await pull.take(max_wait_s=_TAKE_TIMEOUT_S)
            if not msgs:
                continue
            self._waiting.extend(msgs)
            self._update_gauge()
            while self._waiting:
                await self._slots.acquire()
                msg = self._waiting.popleft()
                self._running[id(msg)] = msg
                task = asyncio.create_task(self._run(msg))
                self._tasks.add(task)
                task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def close(self, grace_s: float) -> None:
        """Stop fetching, give back what waits for a slot, let running invokes finish for ``grace_s``.

        Invokes still running after that are cancelled without an ack: JetStream redelivers them
        once ``ack_wait`` passes without an in-progress report.
        """
        await self._stop_consuming()
        while self._waiting:
            await self._give_back(self._waiting.popleft(), "shutdown", "the runner shut down")
        for msg in self._pull_queued():
            await self._give_back(msg, "shutdown", "the runner shut down")
        self._update_gauge()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
            if pending:
                log.warning(
                    "%d invokes still running after %.1fs; left unacknowledged for redelivery",
                    len(pending),
                    grace_s,
                )
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        await _cancelled(self._heartbeat)
        self._update_gauge()

    def abort(self) -> None:
        """Drop everything at once, acknowledging and giving back nothing: what a crash would do."""
        for task in (self._consumer, self._heartbeat, *self._tasks):
            if task is not None:
                task.cancel()

    async def release(self) -> None:
        """Unsubscribe from the work consumer if that is still to do (after :meth:`abort`)."""
        await self._stop_consuming()

    async def _stop_consuming(self) -> None:
        await _cancelled(self._consumer)
        if self._pull is not None:
            # Nothing more is delivered to this replica; what was on its way when the pull ended
            # comes back to the consumer after ack_wait.
            await self._pull.stop()

    def _pull_queued(self) -> list[Msg]:
        return self._pull.drain_queued() if self._pull is not None else []

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_s)
            queued = self._pull.queued() if self._pull is not None else []
            for msg in (*queued, *self._waiting, *self._running.values()):
                try:
                    await msg.in_progress()
                except NatsError as exc:
                    # Lost connection: the next beat tries again, and ack_wait covers the gap.
                    log.debug("in-progress ack failed: %s", exc)

    def _update_gauge(self) -> None:
        self._in_flight.set(self.held)

    async def _give_back(self, msg: Msg, reason: str, failure: str, *, delay: float | None = None) -> None:
        """``nak`` the work for a later delivery, or dead-letter it when this delivery was its last."""
        delivered = _num_delivered(msg)
        if self._max_deliver > 0 and delivered is not None and delivered >= self._max_deliver:
            await self._exhausted(msg, f"delivered {delivered} times (max_deliver); last: {failure}")
            return
        self._metrics.handback.labels(self._provider, reason).inc()
        try:
            await msg.nak(delay=delay)
        except NatsError as exc:
            log.warning("could not give work back (%s); it is redelivered after ack_wait", exc)

    async def _exhausted(self, msg: Msg, reason: str) -> None:
        try:
            await self._dead_letter(msg, EXHAUSTED_KIND, reason)
            await msg.term()
        except _NATS_FAILED as exc:
            # JetStream delivers it no more either way; it stays in the work stream, unacknowledged.
            log.error(
                "work %s #%s exhausted its deliveries and could not be dead-lettered (%r): %s",
                msg.subject,
                _stream_seq(msg),
                exc,
                reason,
            )

    # --- one message ---------------------------------------------------------------------------------

    async def _run(self, msg: Msg) -> None:
        try:
            await self._process(msg)
        except _NATS_FAILED as exc:
            # NATS refused a request, or the ack or a dead letter failed (an outage during the store
            # or the publish is retried in hand instead): try this work again later.
            log.warning("giving work back after a NATS failure: %r", exc)
            await self._give_back(msg, "nats_error", f"NATS failed: {exc!r}", delay=_NAK_DELAY_S)
        except Exception as exc:
            # Not the provider's failure (that is a result): a fault here; try again, bounded by max_deliver.
            log.exception("giving work back after an unexpected failure")
            await self._give_back(msg, "internal_error", f"unexpected failure: {exc!r}", delay=_NAK_DELAY_S)
        finally:
            self._running.pop(id(msg), None)
            self._update_gauge()

    async def _process(self, msg: Msg) -> None:
        try:
            envelope, invoke = _read(msg)
        except Unreadable as exc:
            await self._dead_letter(msg, MALFORMED_KIND, str(exc))
            await msg.term()
            return
        token = run_id_var.set(invoke.run_id)
        try:
            with self._tracer.start_as_current_span(
                f"tool.invoke {invoke.tool}",
                context=extract_context(msg.headers),
                kind=SpanKind.CONSUMER,
            ) as span:
                if span.is_recording():  # unsampled (no exporter: the default) spans drop them anyway
                    span.set_attributes(self._span_attributes(invoke, msg))
                await self._answer(
                    envelope, invoke, span, look_up=_may_have_been_answered(msg, envelope, invoke)
                )
            await msg.ack()
        finally:
            run_id_var.reset(token)

    async def _answer(self, envelope: Envelope, invoke: ToolInvoke, span: Span, *, look_up: bool) -> None:
        """Publish the result envelope: the one stored earlier, or one from a provider call now.
        ``look_up`` false: no earlier delivery can have stored one (see ``_may_have_been_answered``)."""
        key = invoke.idempotency_key
        # Two deliveries of one attempt in this replica (a republish): the second waits for the first.
        async with self._gate(key):
            span.set_attribute("omni.result.looked_up", look_up)
            stored = None
            if look_up:
                stored = await self._while_nats_away(
                    "looking up a stored result", lambda: self._store.get(key)
                )
            if stored is not None:
                log.info(
                    "step %s (%s, attempt %d) answered from the stored result",
                    invoke.step,
                    invoke.tool,
                    invoke.attempt,
                )
                self._metrics.cache_hits.labels(invoke.tool, self._provider).inc()
                span.set_attribute("omni.result.cached", True)
                await self._while_nats_away(
                    "publishing the result", lambda: self._publish_result(invoke, stored)
                )
                return
            span.set_attribute("omni.result.cached", False)
            result = await self._call(invoke, span)
            body = encode_envelope(
                new_envelope(
                    ev.TOOL_RESULT_V1,
                    self._source,
                    result,
                    id_=f"{key}/result",
                    correlation_id=envelope.correlation_id or invoke.run_id,
                    causation_id=envelope.id,
                    subject=invoke.step,
                )
            )
            # Stored and published together (both before the ack): one round trip less per step.
            # Whichever lands, a redelivery finds the stored result or JetStream drops the
            # duplicate publish by its message id.
            # While NATS is away each is tried again, the work kept in hand: the provider is not
            # called again, and the work never goes back to the stream for it.
            await asyncio.gather(
                self._while_nats_away("storing the result", lambda: self._store.put(key, body)),
                self._while_nats_away("publishing the result", lambda: self._publish_result(invoke, body)),
            )

    async def _while_nats_away(self, doing: str, step: Callable[[], Awaitable[T]]) -> T:
        """``step`` (a call to the result store or the result stream), tried again with a capped
        back-off for as long as it fails because NATS is away. The message stays in ``_running``
        meanwhile, so the heartbeat keeps reporting it in progress (once NATS answers again), and it
        is never given back for the outage; shutdown cancels the wait like any running invoke."""
        outage = self._outages.get(doing)
        if outage is None:
            outage = self._outages[doing] = OutageLog(log, f"tool-runner {self._provider}")
        delay = _NATS_RETRY_FIRST_S
        while True:
            try:
                done = await step()
            except _NATS_AWAY as exc:
                outage.failed(
                    "NATS failed while %s (%s: %s); keeping the work and trying again",
                    doing,
                    type(exc).__name__,
                    exc,
                )
                await asyncio.sleep(delay)
                delay = min(_NATS_RETRY_CAP_S, delay * 2)
                continue
            outage.recovered(f"{doing} again")
            return done

    @asynccontextmanager
    async def _gate(self, key: str) -> AsyncIterator[None]:
        gate = self._gates.get(key)
        if gate is None:
            gate = self._gates[key] = _KeyGate()
        gate.users += 1
        try:
            async with gate.lock:
                yield
        finally:
            gate.users -= 1
            if gate.users == 0:
                del self._gates[key]

    @property
    def circuit_state(self) -> str:
        return self._circuits.state if self._circuits is not None else "closed"

    async def _circuit_allows(self, circuit: CircuitBreaker | None) -> bool:
        if circuit is None:
            return True
        try:
            return await circuit.allow()
        except Exception as exc:  # noqa: BLE001 - the shared state is unreachable: fail open
            log.warning("circuit state of %s unreadable (%s); calling anyway", self._provider, exc)
            return True

    async def _circuit_record(self, circuit: CircuitBreaker | None, error: ToolError | None) -> None:
        if circuit is None:
            return
        try:
            await circuit.record(None if error is None else error.kind)
        except Exception as exc:  # noqa: BLE001 - the next outcome tries again
            log.warning("could not record the outcome in the circuit of %s: %s", self._provider, exc)

    @property
    def throttled(self) -> int:
        return self.limits.throttled if self.limits is not None else 0

    async def _within_rate(
        self, limiters: list[RateLimiter], timeout_s: float, span: Span
    ) -> tuple[ToolError | None, float]:
        """Wait for the shared rate limits that apply to this call to let one more through; return
        the error to answer with (or None) and the seconds waited.

        The work stays held (and reported in progress) meanwhile, so it occupies one of this
        replica's slots and everything behind it waits in the stream. A wait longer than the call's
        own deadline would only end in the step's timeout: the step gets a retryable
        ``rate_limited`` error instead, saying when to try again, and its retry policy or provider
        fallback decides.
        """
        waited = 0.0
        for limiter in limiters:
            try:
                waited += await limiter.acquire(max_wait_s=max(0.0, timeout_s - waited))
            except RateLimitExceeded as exc:
                self._metrics.throttled.labels(self._provider, "refused").inc()
                span.set_attribute("omni.rate_limit.refused", limiter.provider)
                refused = ToolError(
                    kind="rate_limited",
                    message=f"{limiter.provider}: the shared rate limit allows no call before the deadline",
                    retryable=True,
                    retry_after_s=round(exc.retry_after_s, 3),
                )
                return refused, waited
        if waited > 0:
            self._metrics.throttled.labels(self._provider, "waited").inc()
            self._metrics.throttle_wait.labels(self._provider).observe(waited)
            span.set_attribute("omni.rate_limit.waited_s", round(waited, 3))
        return None, waited

    async def _call(self, invoke: ToolInvoke, span: Span) -> ToolResult:
        started_at = utcnow()
        t0 = time.perf_counter()
        outcome: ToolOutcome | None = None
        error: ToolError | None = None
        timeout_s = invoke.timeout_ms / 1000 if invoke.timeout_ms else self._call_timeout_s
        circuit = self._circuits.for_tool(invoke.tool) if self._circuits is not None else None
        limiters = self.limits.for_tool(invoke.tool) if self.limits is not None else []
        throttled: ToolError | None = None
        if limiters and invoke.tool in self._adapter.tools:
            throttled, waited = await self._within_rate(limiters, timeout_s, span)
            timeout_s = max(timeout_s - waited, 0.001)  # the wait used part of the step's deadline
        if invoke.tool not in self._adapter.tools:
            error = ToolError(
                kind="unknown_tool", message=f"provider {self._provider} does not serve tool {invoke.tool!r}"
            )
        elif throttled is not None:
            error = throttled
        elif not await self._circuit_allows(circuit):  # after the wait: a half-open probe goes at once
            assert circuit is not None
            error = ToolError(
                kind="unavailable", message=f"{circuit.provider}: {circuit.describe()}", retryable=True
            )
        else:
            call = ToolCall(
                tool=invoke.tool,
                input=invoke.input,
                idempotency_key=invoke.idempotency_key,
                config=invoke.config,
                timeout_s=timeout_s,
            )
            try:
                async with asyncio.timeout(timeout_s + _DEADLINE_MARGIN_S):
                    outcome = await self._adapter.call(call)
            except ProviderError as exc:
                error = ToolError(
                    kind=exc.kind.value,
                    message=exc.message,
                    retryable=exc.retryable,
                    status=exc.status,
                    retry_after_s=exc.retry_after_s,
                )
            except TimeoutError:
                error = ToolError(kind="timeout", message=f"no answer within {timeout_s:g}s", retryable=True)
            except Exception as exc:
                # A bug or an unclassified failure still answers the step, so the run does not hang.
                log.exception("tool %s failed unexpectedly", invoke.tool)
                error = ToolError(kind="internal", message=f"{type(exc).__name__}: {exc}")
            finally:
                self._metrics.call_duration.labels(invoke.tool, self._provider).observe(
                    time.perf_counter() - t0
                )
            self.stats.observe(
                (time.perf_counter() - t0) * 1000,
                None if error is None else error.kind,
                None if error is None else error.message,
            )
            await self._circuit_record(circuit, error)
            if outcome is not None and outcome.usage is not None:
                for limiter in limiters:
                    await limiter.record_tokens(outcome.usage.total_tokens)
        duration_ms = (time.perf_counter() - t0) * 1000
        self._metrics.invocations.labels(
            invoke.tool, self._provider, OUTCOME_SUCCESS if error is None else error.kind
        ).inc()
        _record_outcome(span, outcome, error)
        if error is not None:
            log.info("tool %s failed: %s: %s", invoke.tool, error.kind, error.message)
        usage = outcome.usage if outcome is not None else None
        return ToolResult(
            run_id=invoke.run_id,
            step=invoke.step,
            attempt=invoke.attempt,
            tool=invoke.tool,
            provider=invoke.provider,
            idempotency_key=invoke.idempotency_key,
            success=error is None,
            output=outcome.output if outcome is not None else None,
            error=error,
            usage=(
                Usage(
                    input_tokens=usage.input_tokens,
                    output_tokens=usage.output_tokens,
                    total_tokens=usage.total_tokens,
                    cost=usage.cost or 0.0,
                )
                if usage is not None
                else None
            ),
            model=outcome.model if outcome is not None else None,
            started_at=started_at,
            duration_ms=round(duration_ms, 3),
            runner=self._instance,
        )

    async def _publish_result(self, invoke: ToolInvoke, body: bytes) -> None:
        await publish(
            self._js,
            self._result_subject,
            body,
            msg_id=invoke.idempotency_key,
            stream=streams.TOOL_RESULTS.name,
            timeout_s=self._publish_timeout_s,
        )

    async def _dead_letter(self, msg: Msg, kind: str, reason: str) -> None:
        """Publish the work message, as received, to the dead-letter stream with the reason."""
        letter = deadletters.dead_letter(
            kind,
            reason,
            original_subject=msg.subject,
            original=msg.data,
            stream_seq=_stream_seq(msg),
            source=self._source,
        )
        await publish(
            self._js,
            letter.subject,
            letter.body,
            msg_id=letter.msg_id,
            stream=streams.DEADLETTERS.name,
            timeout_s=self._publish_timeout_s,
        )
        self._metrics.deadletters.labels(self._provider, kind).inc()
        log.warning("dead-lettered work on %s (%s): %s", msg.subject, kind, reason)

    def _span_attributes(self, invoke: ToolInvoke, msg: Msg) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": self._binding.operation,
            "gen_ai.provider.name": self._provider,
            "gen_ai.tool.name": invoke.tool,
            "omni.tool": invoke.tool,
            "omni.provider": self._provider,
            "omni.run_id": invoke.run_id,
            "omni.step": invoke.step,
            "omni.attempt": invoke.attempt,
            "messaging.system": "nats",
            "messaging.destination.name": msg.subject,
        }
        model = self._binding.request_model(invoke.tool, invoke.config)
        if model:
            attributes["gen_ai.request.model"] = model
        if invoke.workflow:
            attributes["omni.workflow"] = invoke.workflow
        delivered = _num_delivered(msg)
        if delivered is not None:
            attributes["messaging.nats.delivery_count"] = delivered
        return attributes


def _read(msg: Msg) -> tuple[Envelope, ToolInvoke]:
    try:
        envelope = decode_envelope(msg.data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise Unreadable(f"not an event envelope: {exc}") from exc
    if envelope.type != ev.TOOL_INVOKE_V1:
        raise Unreadable(f"unexpected event type {envelope.type!r} (expected {ev.TOOL_INVOKE_V1})")
    try:
        return envelope, payload_of(envelope, ToolInvoke)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise Unreadable(f"not a {ev.TOOL_INVOKE_V1} payload: {exc}") from exc


def _record_outcome(span: Span, outcome: ToolOutcome | None, error: ToolError | None) -> None:
    if outcome is not None:
        if outcome.model:
            span.set_attribute("gen_ai.response.model", outcome.model)
        if outcome.response_id:
            span.set_attribute("gen_ai.response.id", outcome.response_id)
        if outcome.usage is not None:
            span.set_attribute("gen_ai.usage.input_tokens", outcome.usage.input_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", outcome.usage.output_tokens)
    if error is not None:
        span.set_attribute("error.type", error.kind)
        span.set_status(Status(StatusCode.ERROR, error.message))


def _stream_seq(msg: Msg) -> int | None:
    if not msg.reply:
        return None
    try:
        return int(msg.metadata.sequence.stream)
    except (NatsError, ValueError, IndexError):
        return None


# A first delivery younger than this (by its envelope's time) cannot be a copy published after
# JetStream's duplicate window of the work stream had forgotten the first; half the window leaves
# room for clocks that disagree.
FRESH_WITHIN_S = streams.TOOL_WORK.duplicate_window_s / 2


def _may_have_been_answered(msg: Msg, envelope: Envelope, invoke: ToolInvoke) -> bool:
    """Whether an earlier delivery may have stored a result under this invoke's key, so the result
    store must be asked before the provider is called (a look costs a round trip to NATS per step).

    It cannot when the publisher made the key for this invoke alone (``unique_key``: the engine's
    (run, step, attempt)) and published it with ``Nats-Msg-Id`` = the key, this is the message's
    first delivery, and it is younger than half the work stream's duplicate window: any other
    message with the key is then a copy JetStream has dropped. A redelivery (a runner died holding
    it, or gave it back), a copy relayed after a long outage, or a direct call's key (its caller may
    send it again) is always looked up."""
    if not invoke.unique_key or _num_delivered(msg) != 1:
        return True
    if (msg.headers or {}).get(HDR_MSG_ID) != invoke.idempotency_key:
        return True
    return (utcnow() - envelope.time).total_seconds() > FRESH_WITHIN_S


def _num_delivered(msg: Msg) -> int | None:
    if not msg.reply:
        return None
    try:
        return int(msg.metadata.num_delivered)
    except (NatsError, ValueError, IndexError):
        return None


def _report_end(task: asyncio.Task[None]) -> None:
    """The consume loop ends only when cancelled; anything else is a fault (``/readyz`` says so too)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("the consume loop failed; no more work is fetched", exc_info=task.exception())


async def _cancelled(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
