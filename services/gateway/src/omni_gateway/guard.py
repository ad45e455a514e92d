"""Who is calling, and may they: enforced on every route before its handler runs.

Invariants:
- Every route's ``Operation`` declares its ``Access`` (``omni_gateway.apidoc``); a request to a
  route that is not public must carry credentials (``Authorization: Bearer <API key or JWT>``,
  or ``X-API-Key``) that the security-service accepts, and, when the operation names a
  permission, the caller's grants must cover it. Otherwise the answer is 401 (with
  ``WWW-Authenticate``), 403 naming the missing permission, or 429 with ``Retry-After`` when
  the source has failed too often; the handler never runs.
- Identities are cached by the SHA-256 of the credential for at most ``auth_cache_s`` (and never
  past the credential's own expiry), and the whole cache is dropped whenever the security-service's
  revision changes (a KV watch), so a revoked key or a changed role counts at every replica within
  moments. Decisions are made here from the cached grants with ``omni_contract.security.decide``,
  the same function the security-service uses.
- Denials and every change made through the API (any method but GET and HEAD, except the
  ``/security`` routes, which the security-service audits itself) are published as audit events
  before the answer leaves.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from datetime import UTC, datetime

import msgspec
import nats.errors
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue
from omni_contract import kv, subjects
from omni_contract.security import (
    DEFAULT_TENANT,
    AuditEvent,
    AuthenticateRequest,
    Credentials,
    Grant,
    Identity,
)
from omni_runtime import nats as omni_nats

from omni_gateway.apidoc import Access, Operation
from omni_gateway.engine import RpcClient
from omni_gateway.errors import ApiError, forbidden, security_unavailable, unauthorized
from omni_gateway.metrics import GatewayMetrics
from omni_gateway.settings import GatewaySettings
from omni_gateway.state import SERVICE

log = logging.getLogger(__name__)

IDENTITY = web.RequestKey("identity", Identity)
"""Where a handler finds the caller's ``Identity`` on the request."""

_READS = frozenset({"GET", "HEAD", "OPTIONS"})
_AUDIT_SUBJECT = subjects.audit(SERVICE)
_SELF_AUDITED_TAG = "security"  # the security-service audits its own changes


UNCHECKED = Identity(
    principal="unauthenticated",
    kind="user",
    tenant=DEFAULT_TENANT,
    roles=["admin"],
    grants=[Grant(permission="*:*", role="admin")],
)
"""Everyone, with ``insecure_no_auth`` (for measuring the guard's cost only)."""


def identity_of(request: web.Request) -> Identity:
    identity: Identity = request[IDENTITY]
    return identity


class Guard:
    def __init__(
        self,
        nc: NATS,
        settings: GatewaySettings,
        metrics: GatewayMetrics,
        operations: tuple[Operation, ...],
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.settings = settings
        self.metrics = metrics
        self.client = RpcClient(
            nc,
            settings.rpc_timeout_s,
            None,
            service="security-service",
            prefix=subjects.SECURITY_RPC_PREFIX,
            unavailable=security_unavailable,
        )
        self.operations: dict[tuple[str, str], Operation] = {
            (op.method.upper(), op.path): op for op in operations
        }
        self._cache: OrderedDict[bytes, tuple[Identity, float]] = OrderedDict()
        self._follower: omni_nats.KeyFollower | None = None

    # -- the revision watch ---------------------------------------------------------------------
    async def start(self) -> None:
        if self.settings.insecure_no_auth:
            log.warning(
                "OMNI_GATEWAY_INSECURE_NO_AUTH is set: every request is let in as an administrator "
                "without credentials (for measuring authentication's cost only)"
            )
        bucket: KeyValue = await omni_nats.ensure_key_value(self.js, kv.SECURITY_REVISION)
        self._follower = omni_nats.KeyFollower(
            bucket, ">", self._on_revision, self._settled, name="gateway-security-revision"
        )
        await self._follower.start()

    async def stop(self) -> None:
        if self._follower is not None:
            await self._follower.stop()

    def _on_revision(self, _: KeyValue.Entry) -> bool:
        self._cache.clear()
        return True

    async def _settled(self) -> None:
        return None

    async def problem(self) -> str | None:
        """None when a security-service replica answers its ping in time (its handlers take
        requests: discovery alone answers before they are subscribed)."""
        try:
            await self.nc.request(subjects.SECURITY_PING, b"{}", timeout=self.settings.readiness_timeout_s)
        except nats.errors.NoRespondersError:
            return "no security-service instance is answering"
        except (nats.errors.Error, TimeoutError):
            return f"the security-service did not answer within {self.settings.readiness_timeout_s:g} s"
        return None

    # -- identify -------------------------------------------------------------------------------
    async def identify(self, request: web.Request) -> Identity:
        if self.settings.insecure_no_auth:
            return UNCHECKED
        credentials, raw = _credentials(request)
        cache_key = hashlib.sha256(raw.encode()).digest()
        now = time.monotonic()
        cached = self._cache.get(cache_key)
        if cached is not None and cached[1] > now:
            self._cache.move_to_end(cache_key)
            return cached[0]
        ask = AuthenticateRequest(
            credentials=credentials,
            ip_address=request.remote,
            user_agent=request.headers.get("User-Agent"),
            service=SERVICE,
        )
        raw_identity = await self.client.call(subjects.SECURITY_AUTHENTICATE, ask)
        identity = msgspec.json.decode(raw_identity, type=Identity)
        expires = now + self.settings.auth_cache_s
        if identity.expires_at is not None:
            expires = min(expires, now + (identity.expires_at - datetime.now(UTC)).total_seconds())
        self._cache[cache_key] = (identity, expires)
        if len(self._cache) > self.settings.auth_cache_size:
            self._cache.popitem(last=False)
        return identity

    # -- the middleware -------------------------------------------------------------------------
    def middleware(self) -> Middleware:
        @web.middleware
        async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
            op = self._operation(request)
            if op is None or op.access.public:  # unknown routes answer 404/405 as before
                return await handler(request)
            try:
                identity = await self.identify(request)
            except ApiError as exc:
                self.metrics.auth.labels(exc.code).inc()
                raise
            request[IDENTITY] = identity
            if op.access.permission is not None:
                await self._authorize(request, op.access, identity, op)
            self.metrics.auth.labels("allowed").inc()
            if request.method in _READS or op.tag == _SELF_AUDITED_TAG:
                return await handler(request)
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except ApiError as exc:
                status = exc.status
                raise
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                await self.audit(
                    request,
                    identity,
                    op.operation_id,
                    "success" if status < 400 else "failure",
                    details={"status": status},
                )

        return guard

    def _operation(self, request: web.Request) -> Operation | None:
        resource = request.match_info.route.resource
        if resource is None:
            return None
        method = "GET" if request.method == "HEAD" else request.method
        return self.operations.get((method, resource.canonical))

    async def _authorize(
        self, request: web.Request, access: Access, identity: Identity, op: Operation
    ) -> None:
        decision = identity.decide(*access.wanted(request.match_info))
        if decision.allowed:
            return
        self.metrics.auth.labels("forbidden").inc()
        await self.audit(
            request,
            identity,
            "access.denied",
            "denied",
            details={
                "operation": op.operation_id,
                "permission": decision.permission,
                "reason": decision.reason,
            },
        )
        raise forbidden(decision.permission, decision.reason)

    async def audit(
        self,
        request: web.Request,
        identity: Identity,
        action: str,
        outcome: str,
        *,
        details: dict[str, object],
    ) -> None:
        event = AuditEvent(
            action=action,
            outcome=outcome,
            principal=identity.principal,
            principal_kind=identity.kind,
            tenant=identity.tenant,
            resource=f"{request.method} {request.path}",
            ip_address=request.remote,
            user_agent=request.headers.get("User-Agent"),
            service=SERVICE,
            at=datetime.now(UTC),
            details=details,
        )
        try:
            await self.js.publish(_AUDIT_SUBJECT, msgspec.json.encode(event))
        except (nats.errors.Error, TimeoutError) as exc:
            # The change is made; its record could not be stored. Loud, so an operator sees the gap.
            log.error("audit event %s for %s not stored: %s", action, identity.principal, exc)


def _credentials(request: web.Request) -> tuple[Credentials, str]:
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        value = value.strip()
        if scheme.lower() != "bearer" or not value:
            raise unauthorized("the Authorization header must be 'Bearer <API key or token>'")
        return Credentials(bearer=value), value
    key = request.headers.get("X-API-Key")
    if key is not None and key.strip():
        return Credentials(api_key=key.strip()), key.strip()
    raise unauthorized("no credentials: send Authorization: Bearer <API key or token>")


GUARD = web.AppKey("guard", Guard)
