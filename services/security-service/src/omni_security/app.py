"""The security-service's NATS side, declared with FastStream: three request/reply endpoints
(authenticate, check, admin) shared by the replicas' queue group, and the consumer that appends
audit events to the hash-chained log.

Invariants:
- Every reply is an ``RpcReply``: the result, or an error with a code the gateway maps to HTTP
  (unauthorized 401, forbidden 403, rate_limited 429 with ``retry_after_s``, not_found 404).
- Every authentication, success or failure, and every administrative change or refusal is
  published as an ``AuditEvent`` on ``omni.audit.security-service`` (a JetStream publish, so it
  is in the stream before the reply leaves) and appended to the log by the audit consumer.
- An audit batch is appended in one transaction and acknowledged only after it commits; a
  failure hands it back to be delivered again (never dropped).
- Every change bumps the ``omni_security`` revision, which gateways watch to drop cached
  identities, so a revoked key is refused everywhere within a second.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec
from faststream.nats import NatsBroker
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from omni_contract import subjects
from omni_contract.rpc import FieldProblem, RpcError, RpcReply
from omni_contract.security import AdminRequest, AuditEvent, AuthenticateRequest, CheckRequest, decide
from omni_runtime import nats as omni_nats

from omni_security import audit, store
from omni_security.admin import Admin, AdminError
from omni_security.authn import AuthenticationFailed, Authenticator, RateLimited

log = logging.getLogger(__name__)

SERVICE = subjects.SECURITY_SERVICE_NAME
QUEUE = SERVICE
AUDIT_SUBJECT = subjects.audit(SERVICE)

_reply = msgspec.json.Encoder()


def ok(result: Any) -> bytes:
    return _reply.encode(RpcReply(result=msgspec.Raw(_reply.encode(result))))


def failed(code: str, message: str, *, field: str | None = None, retry_after_s: float | None = None) -> bytes:
    details = [FieldProblem(field=field, message=message)] if field else []
    return _reply.encode(
        RpcReply(error=RpcError(code=code, message=message, details=details, retry_after_s=retry_after_s))
    )


def _decode(body: bytes, kind: type[Any]) -> Any:
    return msgspec.json.decode(body, type=kind)


def _raw(message: Any) -> bytes:
    body: bytes = message.body
    return body


class SecurityApp:
    def __init__(
        self,
        broker: NatsBroker,
        pool: asyncpg.Pool,
        js: JetStreamContext,
        revision: KeyValue,
        authenticator: Authenticator,
    ) -> None:
        self.broker = broker
        self.pool = pool
        self.js = js
        self.revision = revision
        self.authenticator = authenticator
        self.admin = Admin(pool, self.emit, self.changed)
        self._declare()

    def _declare(self) -> None:
        broker = self.broker
        broker.subscriber(subjects.SECURITY_AUTHENTICATE, queue=QUEUE, decoder=_raw)(self.on_authenticate)
        broker.subscriber(subjects.SECURITY_CHECK, queue=QUEUE, decoder=_raw)(self.on_check)
        broker.subscriber(subjects.SECURITY_ADMIN, queue=QUEUE, decoder=_raw)(self.on_admin)
        broker.subscriber(subjects.SECURITY_PING, queue=QUEUE, decoder=_raw)(self.on_ping)

    # -- audit and revision ---------------------------------------------------------------------
    async def emit(self, event: AuditEvent) -> None:
        """Publish one audit event and wait for the stream to hold it."""
        if event.at is None:
            event.at = datetime.now(UTC)
        if event.service is None:
            event.service = SERVICE
        event_id = uuid.uuid4().hex
        await self.js.publish(AUDIT_SUBJECT, _reply.encode(event), headers={"Nats-Msg-Id": event_id})

    async def changed(self) -> None:
        await self.revision.put("revision", datetime.now(UTC).isoformat().encode())

    async def consume_audit(self, pull: omni_nats.Puller, stopping: asyncio.Event) -> None:
        """Append audit events a batch at a time until ``stopping``. A batch is acknowledged after
        its transaction commits; one that fails is handed back (nak) to be delivered again.

        The runtime's puller rather than a FastStream batch subscriber: FastStream's pull loop
        catches nats-py's own TimeoutError, but nats-py 2.16 raises the builtin one when a fetch
        finds nothing, which ended the loop on the first quiet second (seen in CI)."""
        while not stopping.is_set():
            messages = await pull.take(max_wait_s=1.0)
            if not messages:
                continue
            try:
                await self.on_audit_batch([m.data for m in messages])
            except Exception:
                log.exception("audit batch of %d events not appended; handing it back", len(messages))
                for m in messages:
                    await m.nak(delay=1.0)
                continue
            for m in messages:
                await m.ack()

    async def on_audit_batch(self, bodies: list[bytes]) -> None:
        events: list[AuditEvent] = []
        for body in bodies:
            try:
                events.append(_decode(body, AuditEvent))
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                # A malformed event is still a fact worth keeping: recorded as such, not dropped.
                events.append(
                    AuditEvent(action="audit.malformed", outcome="failure", details={"error": str(exc)[:300]})
                )
        async with self.pool.acquire() as conn, conn.transaction():
            await audit.append(conn, [audit.entry_of(event) for event in events])

    # -- request/reply --------------------------------------------------------------------------
    async def on_authenticate(self, body: bytes) -> bytes:
        try:
            request: AuthenticateRequest = _decode(body, AuthenticateRequest)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            return failed("bad_request", f"invalid authenticate request: {exc}")

        def event(action: str, outcome: str, **fields: Any) -> AuditEvent:
            return AuditEvent(
                action=action,
                outcome=outcome,
                ip_address=request.ip_address,
                user_agent=request.user_agent,
                service=request.service,
                **fields,
            )

        try:
            identity = await self.authenticator.authenticate(request)
        except RateLimited as exc:
            await self.emit(
                event(
                    "auth.authenticate",
                    "denied",
                    details={"reason": "rate_limited", "retryAfterS": exc.retry_after_s},
                )
            )
            return failed("rate_limited", str(exc), retry_after_s=exc.retry_after_s)
        except AuthenticationFailed as exc:
            await self.emit(event("auth.authenticate", "failure", details={"reason": exc.reason}))
            return failed("unauthorized", str(exc))
        await self.emit(
            event(
                "auth.authenticate",
                "success",
                principal=identity.principal,
                principal_kind=identity.kind,
                tenant=identity.tenant,
                details={"via": identity.via, **({"keyId": identity.key_id} if identity.key_id else {})},
            )
        )
        return ok(identity)

    async def on_ping(self, _: bytes) -> bytes:
        return ok({})

    async def on_check(self, body: bytes) -> bytes:
        try:
            request: CheckRequest = _decode(body, CheckRequest)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            return failed("bad_request", f"invalid check request: {exc}")
        async with self.pool.acquire() as conn:
            principal = await store.get_principal(conn, request.principal)
            if principal is None:
                return failed("not_found", f"no principal {request.principal!r}", field="principal")
            grants = await store.grants_of(conn, principal.id, request.tenant or principal.tenant)
        return ok(decide(grants, request.resource, request.action, request.instance))

    async def on_admin(self, body: bytes) -> bytes:
        try:
            request: AdminRequest = _decode(body, AdminRequest)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            return failed("bad_request", f"invalid admin request: {exc}")
        try:
            result = await self.admin.run(
                request.op, request.actor, request.params, request.ip_address, request.user_agent
            )
        except AdminError as exc:
            return failed(exc.code, str(exc), field=exc.field)
        return ok(result)
