"""Authentication: an API key or a bearer token in, an ``Identity`` (or a refusal) out.

Invariants:
- A key is found by its visible prefix and accepted only when the SHA-256 of the whole key
  matches the stored digest (compared in constant time), it is not revoked and not expired.
- A JWT is verified by ``JwtVerifier`` (signature, pinned algorithm, exp/nbf/iss/aud); its
  principal is ``sub``, its tenant and roles come from its claims, plus any roles assigned to
  that principal here.
- Every failure is counted against its source (the caller's IP address as the gateway saw it).
  Past ``slow_after`` failures within ``window_s`` the answer is delayed, growing with each
  failure; past ``refuse_after`` the source is refused (``rate_limited`` with ``retry_after_s``)
  without looking at its credentials, until its failures age out of the window. The counts are
  per replica: with N replicas a source gets at most N times the allowance.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from omni_contract.security import (
    DEFAULT_TENANT,
    AuthenticateRequest,
    Identity,
    parse_api_key,
    same_digest,
)

from omni_security import store
from omni_security.tokens import JwtVerifier, TokenRejected, looks_like_jwt


class AuthenticationFailed(Exception):
    """``reason`` is a short code for the audit log; the message is safe to show the caller."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class RateLimited(Exception):
    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"too many failed authentications from this source; retry in {retry_after_s:.0f}s")
        self.retry_after_s = retry_after_s


@dataclass
class FailureLimiter:
    window_s: float = 60.0
    slow_after: int = 3
    refuse_after: int = 10
    delay_step_s: float = 0.25
    max_delay_s: float = 2.0
    max_sources: int = 100_000

    def __post_init__(self) -> None:
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, source: str, now: float) -> deque[float] | None:
        failures = self._failures.get(source)
        if failures is None:
            return None
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        if not failures:
            del self._failures[source]
            return None
        return failures

    def retry_after(self, source: str) -> float | None:
        """Seconds until ``source`` may try again, or None when it may now."""
        now = time.monotonic()
        failures = self._recent(source, now)
        if failures is None or len(failures) < self.refuse_after:
            return None
        # Refused until enough failures age out to bring it under the limit.
        release = failures[len(failures) - self.refuse_after] + self.window_s
        return max(1.0, math.ceil(release - now))

    def failed(self, source: str) -> float:
        """Count a failure; returns how long to delay its answer."""
        now = time.monotonic()
        failures = self._recent(source, now)
        if failures is None:
            if len(self._failures) >= self.max_sources:
                self._prune(now)
            failures = self._failures[source] = deque()
        failures.append(now)
        excess = len(failures) - self.slow_after
        return 0.0 if excess <= 0 else min(self.max_delay_s, excess * self.delay_step_s)

    def _prune(self, now: float) -> None:
        for source in list(self._failures):
            self._recent(source, now)
        while len(self._failures) >= self.max_sources:  # all recent: forget the oldest source
            self._failures.pop(next(iter(self._failures)))


class Authenticator:
    def __init__(
        self,
        pool: asyncpg.Pool,
        limiter: FailureLimiter,
        jwt: JwtVerifier | None,
    ) -> None:
        self.pool = pool
        self.limiter = limiter
        self.jwt = jwt

    async def authenticate(self, request: AuthenticateRequest) -> Identity:
        """The caller's identity; raises ``RateLimited`` or ``AuthenticationFailed`` (after the
        failure's delay)."""
        source = request.ip_address or "unknown"
        retry_after = self.limiter.retry_after(source)
        if retry_after is not None:
            raise RateLimited(retry_after)
        try:
            return await self._identify(request)
        except AuthenticationFailed:
            delay = self.limiter.failed(source)
            if delay:
                await asyncio.sleep(delay)
            raise

    async def _identify(self, request: AuthenticateRequest) -> Identity:
        credentials = request.credentials
        api_key = credentials.api_key
        bearer = credentials.bearer
        if api_key is None and bearer is not None and not looks_like_jwt(bearer):
            api_key = bearer  # "Authorization: Bearer omni_..." is a key too
        if api_key is not None:
            return await self._by_key(api_key)
        if bearer is not None:
            return await self._by_token(bearer)
        raise AuthenticationFailed("missing", "no credentials: send Authorization: Bearer <API key or token>")

    async def _by_key(self, value: str) -> Identity:
        parsed = parse_api_key(value)
        if parsed is None:
            raise AuthenticationFailed("malformed_key", "the API key is malformed")
        async with self.pool.acquire() as conn:
            key = await store.key_by_prefix(conn, parsed.prefix)
            if key is None or not same_digest(key.digest, parsed.digest):
                raise AuthenticationFailed("unknown_key", "the API key is not valid")
            now = datetime.now(UTC)
            if key.revoked_at is not None:
                raise AuthenticationFailed("revoked_key", "the API key was revoked")
            if key.expires_at is not None and key.expires_at <= now:
                raise AuthenticationFailed("expired_key", "the API key has expired")
            principal = await store.get_principal(conn, key.principal)
            if principal is None:  # deleted with its keys (cascade); a race with that delete
                raise AuthenticationFailed("unknown_key", "the API key is not valid")
            await store.touch_key(conn, key.id, now)
            return await store.identity_of(
                conn, principal, scopes=key.scopes, via="api_key", key_id=key.id, expires_at=key.expires_at
            )

    async def _by_token(self, token: str) -> Identity:
        if self.jwt is None:
            raise AuthenticationFailed(
                "jwt_not_configured", "bearer tokens are not accepted: no issuer is set up"
            )
        try:
            verified = await self.jwt.verify(token)
        except TokenRejected as exc:
            raise AuthenticationFailed(
                f"token_{exc.reason}", f"the bearer token was rejected: {exc}"
            ) from exc
        tenant = verified.tenant or DEFAULT_TENANT
        async with self.pool.acquire() as conn:
            principal = await store.get_principal(conn, verified.sub)
            if principal is not None and principal.tenant != tenant:
                raise AuthenticationFailed("tenant_mismatch", "the token's tenant is not its principal's")
            await store.ensure_tenant(conn, tenant)
            grants = await store.grants_of(conn, verified.sub, tenant, extra_roles=list(verified.roles))
        return Identity(
            principal=verified.sub,
            kind=principal.kind if principal else "user",
            tenant=tenant,
            name=(principal.name if principal else "") or (verified.email or ""),
            roles=sorted({g.role for g in grants}),
            grants=grants,
            via="jwt",
            expires_at=verified.expires_at,
        )
