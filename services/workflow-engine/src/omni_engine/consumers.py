"""JetStream consumers of the engine: trigger events (``app.>``) and tool results.

A message is acknowledged only after what it caused is committed in PostgreSQL, so a crash
before that makes JetStream redeliver it; handlers are idempotent (runs started from a trigger
are keyed by the event, results by run/step/attempt). A message that can never be processed
goes to the dead-letter stream with the reason and is acknowledged; a transient failure
(database or NATS unreachable) keeps the message in hand and retries it with a capped back-off for
as long as the outage lasts, without counting it as a failed delivery.

A trigger event comes from the tenant in its ``Omni-Tenant`` header (``HDR_TENANT``; absent: the
default tenant): it starts only the workflows that tenant sees, its runs belong to that tenant, and
it reaches only the waiting steps of that tenant's runs. A workflow the tenant does not see is, for
its events, as if it did not exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from omni_contract import deadletters, streams
from omni_contract import events as ev
from omni_contract.envelope import HDR_MSG_ID, HDR_TENANT, decode_envelope, payload_of
from omni_contract.events import ToolResult
from omni_contract.history import TriggerRef
from omni_contract.tools import DIRECT_RUN_PREFIX
from omni_runtime.logging import run_id_var
from omni_runtime.nats import Puller
from omni_runtime.outage import OutageLog
from omni_runtime.publish import publish
from omni_runtime.telemetry import extract_context
from opentelemetry import trace

from omni_engine.batch import SOURCE
from omni_engine.definitions import Definitions
from omni_engine.engine import Engine, EngineError, ResultRefused
from omni_engine.tenants import of_run, scoped
from omni_engine.transient import TRANSIENT
from omni_engine.transient import is_transient as is_transient  # re-exported: it lived here first

log = logging.getLogger(__name__)
tracer = trace.get_tracer("omni.workflow-engine")

TRIGGER_NAMESPACE = uuid.UUID("5b1f7c1e-8f5a-4d1c-9c59-0b7d3c0e6a11")


RESULT_REFUSED_KIND = "result.refused"
"""Dead-letter kind of a tool result for no run, step or attempt the engine scheduled."""


class Unprocessable(Exception):
    """The message can never be processed: dead-letter it."""

    def __init__(self, kind: str, reason: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.errors = errors or []


def _delivered(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_delivered)
    except Exception:  # noqa: BLE001 - a message without JetStream metadata (a test's core message)
        return 1


async def dead_letter(js: JetStreamContext, msg: Msg, problem: Unprocessable) -> None:
    letter = deadletters.dead_letter(
        problem.kind,
        problem.reason,
        original_subject=msg.subject,
        original=msg.data,
        stream_seq=msg.metadata.sequence.stream if msg.reply else None,
        source=SOURCE,
        errors=problem.errors,
    )
    await publish(js, letter.subject, letter.body, msg_id=letter.msg_id, stream=streams.DEADLETTERS.name)
    log.warning("dead-lettered %s message: %s", msg.subject, problem.reason)


class TriggerHandler:
    """Starts the workflows whose trigger is the event's subject, and hands the event to the
    steps waiting for it (``wait:``)."""

    def __init__(self, engine: Engine, definitions: Definitions) -> None:
        self.engine = engine
        self.definitions = definitions

    async def __call__(self, msg: Msg) -> None:
        try:
            body = json.loads(msg.data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise Unprocessable("trigger.rejected", f"body is not valid JSON: {exc}") from exc
        event_id: str | None = None
        if isinstance(body, dict) and "specversion" in body and "data" in body:
            event_id = str(body.get("id")) if body.get("id") else None  # a CloudEvents envelope
            payload = body["data"]
        else:
            payload = body
        headers = msg.headers or {}
        if event_id is None:
            event_id = headers.get(HDR_MSG_ID) or f"seq-{msg.metadata.sequence.stream}"
        tenant = of_run(headers.get(HDR_TENANT))
        if isinstance(payload, dict):
            for match in await self.engine.store.matching_waits(msg.subject, payload, tenant):
                await self.engine.on_wait_event(match.run_id, match.step, {"id": event_id, "data": payload})
        defs = await self.definitions.for_trigger(msg.subject, tenant)
        if not defs:
            log.debug("no workflow of tenant %s is triggered by %s", tenant, msg.subject)
            return
        if not isinstance(payload, dict):
            raise Unprocessable("trigger.rejected", "the event payload must be a JSON object")
        rejected: list[dict[str, Any]] = []
        for defn in defs:
            # Two tenants' events with one id are two events: each starts its own run.
            origin = scoped("trigger", tenant, f"{msg.subject}:{event_id}:{defn.name}")
            run_id = uuid.uuid5(TRIGGER_NAMESPACE, origin).hex
            try:
                await self.engine.start_run(
                    defn.name,
                    payload,
                    {},
                    run_id=run_id,
                    origin_key=origin,
                    trigger=TriggerRef(subject=msg.subject, event_id=event_id),
                    spec=defn,
                    tenant=tenant,
                )
            except EngineError as exc:
                if exc.code != "invalid_payload":
                    raise
                rejected.extend({"workflow": defn.name, **msgspec.to_builtins(p)} for p in exc.details)
        if rejected:
            fields = ", ".join(sorted({r["field"] for r in rejected}))
            raise Unprocessable(
                "trigger.rejected", f"payload does not match the trigger schema ({fields})", rejected
            )


class ResultHandler:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def __call__(self, msg: Msg) -> None:
        try:
            envelope = decode_envelope(msg.data)
            if envelope.type != ev.TOOL_RESULT_V1:
                raise Unprocessable("result.unprocessable", f"unexpected event type {envelope.type!r}")
            result = payload_of(envelope, ToolResult)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise Unprocessable("result.unprocessable", f"not a valid {ev.TOOL_RESULT_V1}: {exc}") from exc
        if result.run_id.startswith(DIRECT_RUN_PREFIX):
            return  # a tool called outside any workflow: its caller waits for it, no run does
        token = run_id_var.set(result.run_id)
        try:
            await self.engine.on_result(result)
        except ResultRefused as refused:
            raise Unprocessable(RESULT_REFUSED_KIND, f"result refused: {refused}") from refused
        finally:
            run_id_var.reset(token)


# A message that met a transient failure (see omni_engine.transient) is tried again after FIRST,
# then twice as long each time, at most CAP: runs resume within CAP of the infrastructure's return.
TRANSIENT_RETRY_FIRST_S = 0.25
TRANSIENT_RETRY_CAP_S = 5.0
# While an outage lasts, each consumer says so once, then again every WARN_EVERY.
TRANSIENT_WARN_EVERY_S = 30.0

_outages: dict[str, OutageLog] = {}


def _outage(name: str) -> OutageLog:
    found = _outages.get(name)
    if found is None:
        found = _outages[name] = OutageLog(log, name, every_s=TRANSIENT_WARN_EVERY_S)
    return found


async def _settle(action: Awaitable[None]) -> None:
    """Ack or nak; when NATS is away the message is simply delivered again after its ack wait."""
    try:
        await action
    except TRANSIENT as exc:
        log.debug("could not settle a message (it will be delivered again): %s", exc)


async def consume(
    js: JetStreamContext,
    pull: Puller,
    handler: Callable[[Msg], Awaitable[None]],
    stopping: asyncio.Event,
    *,
    name: str,
    max_failures: int = 5,
    in_progress_s: float = 1.5,
) -> None:
    """Take what has arrived and process it concurrently, as one batch, until ``stopping`` is set.

    Messages are handled the moment they arrive; while a batch is handled the next ones gather,
    so batches grow with the load (and the appends they cause are committed together).
    The batch in hand is finished before returning, so SIGTERM never abandons work half-done.
    A message whose processing raised ``max_failures`` times goes to the dead-letter stream
    (kind ``<name>.exhausted``); transient failures (database or connection trouble) never do.
    While a batch is handled, its unfinished messages and those gathering behind it are reported
    in progress every ``in_progress_s`` (well inside the consumers' ack wait).
    """

    async def one(msg: Msg) -> None:
        ctx = extract_context(msg.headers)
        outage = _outage(name)
        with tracer.start_as_current_span(f"{name} {msg.subject}", context=ctx):
            delay = TRANSIENT_RETRY_FIRST_S
            while True:
                try:
                    try:
                        await handler(msg)
                    except Unprocessable as problem:
                        await dead_letter(js, msg, problem)
                    except Exception as exc:
                        if is_transient(exc):
                            raise
                        delivered = _delivered(msg)
                        if delivered < max_failures:
                            log.exception(
                                "%s: failed to process %s (delivery %d); will retry",
                                name,
                                msg.subject,
                                delivered,
                            )
                            await _settle(msg.nak(delay=2.0))
                            return
                        # Work that keeps failing is kept with the reason instead of retried forever.
                        await dead_letter(
                            js,
                            msg,
                            Unprocessable(
                                f"{name}.exhausted",
                                f"failed {delivered} times; last error: {type(exc).__name__}: {exc}",
                            ),
                        )
                except Exception as exc:
                    if not is_transient(exc):
                        raise
                    # The database or NATS is away: keep the message in hand (the batch reports it
                    # in progress) and try again, however long that lasts; it is never counted as
                    # a failed delivery, so it is never dead-lettered for it.
                    outage.failed(
                        "database or NATS unreachable (%s: %s); keeping the messages and retrying",
                        type(exc).__name__,
                        exc,
                    )
                    if stopping.is_set():
                        await _settle(msg.nak())  # handed back: whoever runs next takes it
                        return
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stopping.wait(), timeout=delay)
                    delay = min(TRANSIENT_RETRY_CAP_S, delay * 2)
                    continue
                outage.recovered("processing again")
                await _settle(msg.ack())
                return

    while not stopping.is_set():
        msgs = await pull.take(max_wait_s=1.0)
        if msgs:
            await _handle_batch(msgs, one, in_progress_s, pull)


async def _handle_batch(
    msgs: list[Msg], one: Callable[[Msg], Awaitable[None]], in_progress_s: float, pull: Puller
) -> None:
    """Handle a batch concurrently, reporting its unfinished messages (and those queued behind it)
    in progress every ``in_progress_s``: a slow batch (the database under load) must not outlive
    the ack wait and be delivered again to another replica while this one still works on it."""
    pending = set(range(len(msgs)))

    async def handle(index: int, msg: Msg) -> None:
        try:
            await one(msg)
        finally:
            pending.discard(index)

    async def keep_alive() -> None:
        while pending:
            await asyncio.sleep(in_progress_s)
            for msg in [msgs[index] for index in list(pending)] + pull.queued():
                with contextlib.suppress(Exception):
                    await msg.in_progress()

    alive = asyncio.create_task(keep_alive())
    try:
        await asyncio.gather(*(handle(i, m) for i, m in enumerate(msgs)))
    finally:
        alive.cancel()
