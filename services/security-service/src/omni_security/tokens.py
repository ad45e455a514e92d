"""JWT bearer tokens from outside identity providers: verified, or refused with a reason code.

Invariants:
- **Issuers are configuration.** A token's (unverified) ``iss`` only selects which configured
  issuer verifies it; that issuer's rules are then applied strictly, and ``iss`` is checked again
  with the signature. An issuer nobody configured is ``unknown_issuer``.
- **Algorithms are pinned per issuer.** The header's ``alg`` must be one the issuer allows, and it
  must fit the key: RS*/PS* only with an RSA key, ES256/384/512 only with an EC key on the matching
  curve, HS256 only with the issuer's configured secret. An HMAC algorithm never takes its key from
  a JWKS, so a public key can never become an HMAC secret (the RS256/HS256 confusion). ``none`` is
  not an algorithm here: configuration refuses it, tokens with it are ``alg_not_allowed``.
- **Claims.** ``exp``, ``iss``, ``aud`` and ``sub`` are required; ``exp``, ``nbf`` and ``iat`` are
  checked with ``leeway_s`` of clock skew; ``aud`` must name one of the issuer's audiences. The
  signature is checked before any claim, so an unsigned or forged token never learns whether its
  claims would have passed. Headers that ask for more (``crit``) are refused; ``jku``, ``x5u`` and
  ``jwk`` are never followed: keys come only from the configured JWKS URL.
- **The key set cache** (one per JWKS URL): fetched on first use and kept ``ttl_s`` (10 min, as
  Supabase serves it); a stale set is refreshed on the next use. A ``kid`` that is not in the set
  triggers one refetch (a key rotated in at the IdP is picked up at once) but fetches, for any
  reason, start at most once per ``refetch_interval_s``: a flood of tokens with made-up kids costs
  the IdP one request per interval. Concurrent needs share one in-flight fetch. Fetches go through
  ``httpx.AsyncClient`` with a timeout; a failed or malformed fetch keeps the last good set (there
  is no maximum staleness: an IdP that is down issues no new keys either), and with no good set yet
  the answer is ``jwks_unavailable``.
- **Identity.** The principal is ``sub``; the tenant and roles are read from the first of the
  configured claim paths that is present (``tenant`` then ``app_metadata.tenant``; ``roles`` then
  ``app_metadata.roles``). Never from ``user_metadata``: a Supabase user can edit that.
- **Messages never echo the token** (nor its claims): a ``TokenRejected`` carries a short reason code
  and a fixed sentence.

Supabase (``SUPABASE_URL``, optionally ``SUPABASE_ANON_KEY`` and ``SUPABASE_JWT_SECRET``, read
without the ``OMNI_SECURITY_`` prefix): issuer ``{SUPABASE_URL}/auth/v1``, keys from
``{SUPABASE_URL}/auth/v1/.well-known/jwks.json`` (the anon key sent as ``apikey``), ES256 and RS256
(its asymmetric signing keys), HS256 with the legacy JWT secret when it is set, audience
``authenticated``. Supabase's own ``role`` claim (``authenticated``) is a PostgreSQL role and is not
read as an Omni role.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self

import httpx
import jwt
from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

log = logging.getLogger(__name__)

Reason = Literal[
    "expired",
    "not_yet_valid",
    "bad_signature",
    "unknown_issuer",
    "bad_audience",
    "alg_not_allowed",
    "unknown_key",
    "malformed",
    "jwks_unavailable",
]

# Algorithm -> (JWK key type, EC curve). Anything else, "none" included, is never accepted.
_ASYMMETRIC: dict[str, tuple[str, str | None]] = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
}
_HMAC = frozenset({"HS256"})
SUPPORTED_ALGORITHMS = frozenset(_ASYMMETRIC) | _HMAC
SUPABASE_ALGORITHMS = ("ES256", "RS256")
SUPABASE_AUDIENCE = "authenticated"
MIN_HMAC_SECRET_BYTES = 32  # RFC 7518 3.2: at least the hash's size
MAX_TOKEN_CHARS = 16_384  # Supabase tokens carry user_metadata; bigger is not a token we issue to

_JWT_SHAPE = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")

_MESSAGES: dict[Reason, str] = {
    "expired": "the token has expired",
    "not_yet_valid": "the token is not valid yet",
    "bad_signature": "the token's signature does not verify",
    "unknown_issuer": "the token's issuer is not trusted here",
    "bad_audience": "the token is not meant for this service (audience)",
    "alg_not_allowed": "the token's algorithm is not allowed for its issuer and key",
    "unknown_key": "the token's signing key is not one its issuer publishes",
    "malformed": "the bearer token is malformed",
    "jwks_unavailable": "the issuer's signing keys cannot be fetched right now",
}


class TokenRejected(Exception):
    """``reason`` is a short code (for the audit log); the message is safe to show the caller."""

    def __init__(self, reason: Reason, detail: str | None = None) -> None:
        message = _MESSAGES[reason] if detail is None else f"{_MESSAGES[reason]}: {detail}"
        super().__init__(message)
        self.reason: Reason = reason


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    sub: str
    issuer: str
    tenant: str | None
    roles: list[str]
    email: str | None
    expires_at: datetime
    claims: dict[str, Any] = field(repr=False)


def looks_like_jwt(value: str) -> bool:
    """Whether ``value`` has a compact JWS's shape (three base64url parts, a JSON header): tells a
    token from an API key without decoding anything."""
    return len(value) <= MAX_TOKEN_CHARS and _JWT_SHAPE.fullmatch(value) is not None


@dataclass(frozen=True)
class IssuerConfig:
    """One trusted issuer: what its tokens must say and where its keys are."""

    issuer: str
    audiences: tuple[str, ...]
    algorithms: frozenset[str]
    jwks_url: str | None = None
    jwks_headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    hmac_secret: bytes | None = field(default=None, repr=False)
    name: str = "generic"

    def __post_init__(self) -> None:
        label = f"issuer {self.issuer!r}"
        if not self.issuer:
            raise ValueError("an issuer needs its 'iss' value")
        if not self.audiences or not all(self.audiences):
            raise ValueError(f"{label} needs an audience: tokens meant for other services must not pass")
        if not self.algorithms:
            raise ValueError(f"{label} allows no algorithm")
        unsupported = sorted(self.algorithms - SUPPORTED_ALGORITHMS)
        if unsupported:
            raise ValueError(
                f"{label}: unsupported algorithm(s) {', '.join(unsupported)} "
                f"(supported: {', '.join(sorted(SUPPORTED_ALGORITHMS))}; never 'none')"
            )
        asymmetric = self.algorithms - _HMAC
        if asymmetric and not self.jwks_url:
            raise ValueError(f"{label} allows {', '.join(sorted(asymmetric))} but has no JWKS URL")
        if self.jwks_url and not asymmetric:
            raise ValueError(f"{label} has a JWKS URL but allows no asymmetric algorithm")
        if self.jwks_url and not self.jwks_url.startswith(("https://", "http://")):
            raise ValueError(f"{label}: the JWKS URL must be http(s)")
        if self.algorithms & _HMAC and self.hmac_secret is None:
            raise ValueError(f"{label} allows HS256 but has no secret")
        if self.hmac_secret is not None and not self.algorithms & _HMAC:
            raise ValueError(f"{label} has an HS256 secret but does not allow HS256")
        if self.hmac_secret is not None and len(self.hmac_secret) < MIN_HMAC_SECRET_BYTES:
            raise ValueError(f"{label}: the HS256 secret must be at least {MIN_HMAC_SECRET_BYTES} bytes")


def _comma_separated(value: object) -> object:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


class JwtSettings(BaseSettings):
    """Issuers of bearer tokens (``OMNI_SECURITY_*``; Supabase's variables without the prefix)."""

    # Errors must not quote the input: it holds the secrets.
    model_config = SettingsConfigDict(
        env_prefix="OMNI_SECURITY_", extra="ignore", env_ignore_empty=True, hide_input_in_errors=True
    )

    jwt_issuer: str | None = Field(default=None, description="The generic issuer's 'iss', exactly")
    jwt_audience: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="Audiences (comma-separated) the generic issuer's tokens may name"
    )
    jwks_url: str | None = Field(default=None, description="The generic issuer's JWKS document")
    jwt_algorithms: Annotated[tuple[str, ...], NoDecode] = Field(
        default=("RS256", "ES256"),
        description="Algorithms (comma-separated) the generic issuer's tokens may use; HS256 needs "
        "jwt_hs256_secret",
    )
    jwt_hs256_secret: SecretStr | None = Field(
        default=None, description="The generic issuer's HS256 secret (at least 32 bytes)"
    )
    jwt_leeway_s: float = Field(default=30.0, ge=0, le=300, description="Clock skew allowed on exp/nbf/iat")
    jwks_ttl_s: float = Field(default=600.0, gt=0, description="How long a fetched key set is used")
    jwks_refetch_interval_s: float = Field(
        default=30.0, gt=0, description="Fewest seconds between two fetches of one JWKS URL"
    )
    jwks_timeout_s: float = Field(default=5.0, gt=0, description="Timeout of a JWKS fetch")
    jwt_tenant_claim: Annotated[tuple[str, ...], NoDecode] = Field(
        default=("tenant", "app_metadata.tenant"),
        description="Claim paths (comma-separated, dotted) of the tenant; the first present wins",
    )
    jwt_roles_claim: Annotated[tuple[str, ...], NoDecode] = Field(
        default=("roles", "app_metadata.roles"),
        description="Claim paths (comma-separated, dotted) of the roles; the first present wins",
    )
    supabase_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("SUPABASE_URL", "supabase_url"),
        description="A Supabase project (https://<ref>.supabase.co): its users' tokens are accepted",
    )
    supabase_anon_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("SUPABASE_ANON_KEY", "supabase_anon_key"),
        description="Sent as 'apikey' when fetching the project's JWKS",
    )
    supabase_jwt_secret: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("SUPABASE_JWT_SECRET", "supabase_jwt_secret"),
        description="The project's legacy JWT secret: HS256 tokens signed with it are accepted too",
    )

    _split = field_validator(
        "jwt_audience", "jwt_algorithms", "jwt_tenant_claim", "jwt_roles_claim", mode="before"
    )(_comma_separated)

    @field_validator("jwt_algorithms")
    @classmethod
    def _upper(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(alg.upper() for alg in value)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.jwt_issuer is None and (self.jwks_url or self.jwt_hs256_secret or self.jwt_audience):
            raise ValueError("OMNI_SECURITY_JWKS_URL, _JWT_HS256_SECRET and _JWT_AUDIENCE need _JWT_ISSUER")
        if self.supabase_url is None and (self.supabase_anon_key or self.supabase_jwt_secret):
            raise ValueError("SUPABASE_ANON_KEY and SUPABASE_JWT_SECRET need SUPABASE_URL")
        names = [config.issuer for config in self.issuers()]  # raises on an inconsistent issuer
        if len(names) != len(set(names)):
            raise ValueError("OMNI_SECURITY_JWT_ISSUER is Supabase's issuer: configure it once")
        return self

    @property
    def configured(self) -> bool:
        return self.jwt_issuer is not None or self.supabase_url is not None

    @property
    def supabase_issuer(self) -> str | None:
        return None if self.supabase_url is None else f"{self.supabase_url.rstrip('/')}/auth/v1"

    def issuers(self) -> list[IssuerConfig]:
        configs: list[IssuerConfig] = []
        if self.jwt_issuer is not None:
            configs.append(
                IssuerConfig(
                    issuer=self.jwt_issuer,
                    audiences=self.jwt_audience,
                    algorithms=frozenset(self.jwt_algorithms),
                    jwks_url=self.jwks_url,
                    hmac_secret=_secret_bytes(self.jwt_hs256_secret),
                )
            )
        supabase_issuer = self.supabase_issuer
        if supabase_issuer is not None:
            secret = _secret_bytes(self.supabase_jwt_secret)
            configs.append(
                IssuerConfig(
                    issuer=supabase_issuer,
                    audiences=(SUPABASE_AUDIENCE,),
                    algorithms=frozenset(SUPABASE_ALGORITHMS)
                    | (_HMAC if secret is not None else frozenset()),
                    jwks_url=f"{supabase_issuer}/.well-known/jwks.json",
                    jwks_headers=(
                        {"apikey": self.supabase_anon_key.get_secret_value()}
                        if self.supabase_anon_key
                        else {}
                    ),
                    hmac_secret=secret,
                    name="supabase",
                )
            )
        return configs


def _secret_bytes(secret: SecretStr | None) -> bytes | None:
    # Supabase (and most IdPs) sign with the secret's text as is, not base64-decoded.
    return None if secret is None else secret.get_secret_value().encode()


def _fits(jwk: Mapping[str, Any], alg: str) -> bool:
    kty, curve = _ASYMMETRIC[alg]
    if jwk.get("kty") != kty or ("alg" in jwk and jwk["alg"] != alg):
        return False
    if curve is not None and jwk.get("crv") != curve:
        return False
    if "use" in jwk and jwk["use"] != "sig":
        return False
    key_ops = jwk.get("key_ops")
    return key_ops is None or (isinstance(key_ops, list) and "verify" in key_ops)


def _parse_jwks(document: object) -> list[dict[str, Any]]:
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document (no 'keys' list)")
    return [key for key in document["keys"] if isinstance(key, dict) and isinstance(key.get("kty"), str)]


class JwksCache:
    """The key set of one JWKS URL: cached, refreshed when stale or on an unknown kid, fetched at most
    once per ``refetch_interval_s``, one fetch at a time (see the module's invariants)."""

    def __init__(
        self,
        url: str,
        client: httpx.AsyncClient,
        *,
        headers: Mapping[str, str] | None = None,
        ttl_s: float = 600.0,
        refetch_interval_s: float = 30.0,
        timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._client = client
        self._headers = dict(headers or {})
        self._ttl_s = ttl_s
        self._refetch_interval_s = refetch_interval_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._keys: list[dict[str, Any]] | None = None
        self._loaded: dict[tuple[int, str], jwt.PyJWK] = {}
        self._fetched_at = 0.0
        self._attempted_at: float | None = None
        self._inflight: asyncio.Task[None] | None = None

    async def key(self, kid: str | None, alg: str) -> jwt.PyJWK:
        """The key for a token's ``kid`` and ``alg``; raises ``TokenRejected`` (``unknown_key``,
        ``alg_not_allowed``, ``jwks_unavailable``)."""
        if self._keys is None or self._clock() - self._fetched_at >= self._ttl_s:
            await self._refresh()
        found = self._find(kid, alg)
        if found is None:
            await self._refresh()  # perhaps rotated in since; rate-limited, so a flood costs nothing
            found = self._find(kid, alg)
        if found is None:
            if self._keys is None:
                raise TokenRejected("jwks_unavailable")
            raise TokenRejected("unknown_key")
        index, jwk = found
        loaded = self._loaded.get((index, alg))
        if loaded is None:
            try:
                loaded = jwt.PyJWK(jwk, algorithm=alg)
            except (jwt.PyJWTError, ValueError, KeyError, TypeError) as exc:
                log.warning("JWKS %s: key %r cannot be loaded for %s: %s", self.url, jwk.get("kid"), alg, exc)
                raise TokenRejected("unknown_key", "its key cannot be loaded") from None
            self._loaded[(index, alg)] = loaded
        return loaded

    def _find(self, kid: str | None, alg: str) -> tuple[int, dict[str, Any]] | None:
        keys = self._keys or []
        if kid is None:  # allowed only where the choice is unambiguous
            fitting = [(index, jwk) for index, jwk in enumerate(keys) if _fits(jwk, alg)]
            return fitting[0] if len(fitting) == 1 else None
        for index, jwk in enumerate(keys):
            if jwk.get("kid") == kid:
                if not _fits(jwk, alg):
                    raise TokenRejected("alg_not_allowed", "the algorithm does not fit the key")
                return index, jwk
        return None

    async def _refresh(self) -> None:
        """Join the fetch in flight, or start one unless the last began under the interval ago."""
        if self._inflight is None:
            now = self._clock()
            if self._attempted_at is not None and now - self._attempted_at < self._refetch_interval_s:
                return
            self._attempted_at = now
            task = asyncio.create_task(self._fetch(), name=f"jwks {self.url}")
            task.add_done_callback(self._fetch_done)
            self._inflight = task
        # Shielded: a caller that gives up must not cancel the fetch others are waiting on.
        await asyncio.shield(self._inflight)

    def _fetch_done(self, task: asyncio.Task[None]) -> None:
        if self._inflight is task:
            self._inflight = None
        if not task.cancelled() and task.exception() is not None:
            log.error("JWKS %s: the fetch failed unexpectedly", self.url, exc_info=task.exception())

    async def _fetch(self) -> None:
        kept = "none" if self._keys is None else f"the {len(self._keys)} cached"
        try:
            response = await self._client.get(self.url, headers=self._headers, timeout=self._timeout_s)
            if response.status_code != 200:
                log.warning("JWKS %s answered HTTP %d; keeping %s keys", self.url, response.status_code, kept)
                return
            keys = _parse_jwks(response.json())
        except (httpx.HTTPError, ValueError) as exc:  # ValueError: a body that is not JSON or not a JWKS
            log.warning("JWKS %s could not be fetched (%s); keeping %s keys", self.url, exc, kept)
            return
        if self._keys != keys:
            log.info("JWKS %s: %d keys (%s)", self.url, len(keys), ", ".join(str(k.get("kid")) for k in keys))
        self._keys = keys
        self._loaded.clear()
        self._fetched_at = self._clock()

    async def aclose(self) -> None:
        task = self._inflight
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def _claim_at(claims: Mapping[str, Any], path: str) -> object:
    value: object = claims
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _first_claim(claims: Mapping[str, Any], paths: Iterable[str]) -> tuple[str, object] | None:
    for path in paths:
        value = _claim_at(claims, path)
        if value is not None:
            return path, value
    return None


_PYJWT_REASONS: tuple[tuple[type[jwt.PyJWTError], Reason], ...] = (
    # Most specific first: InvalidSignatureError is a DecodeError.
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid"),
    (jwt.InvalidAudienceError, "bad_audience"),
    (jwt.InvalidIssuerError, "unknown_issuer"),
    (jwt.InvalidSignatureError, "bad_signature"),
    (jwt.InvalidAlgorithmError, "alg_not_allowed"),
    (jwt.InvalidKeyError, "unknown_key"),
)


class JwtVerifier:
    """Verifies bearer tokens of the configured issuers (see the module's invariants)."""

    def __init__(
        self,
        issuers: Iterable[IssuerConfig],
        client: httpx.AsyncClient | None = None,
        *,
        leeway_s: float = 30.0,
        jwks_ttl_s: float = 600.0,
        jwks_refetch_interval_s: float = 30.0,
        jwks_timeout_s: float = 5.0,
        tenant_claims: Iterable[str] = ("tenant", "app_metadata.tenant"),
        roles_claims: Iterable[str] = ("roles", "app_metadata.roles"),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._issuers: dict[str, IssuerConfig] = {}
        for config in issuers:
            if config.issuer in self._issuers:
                raise ValueError(f"issuer {config.issuer!r} is configured twice")
            self._issuers[config.issuer] = config
        if not self._issuers:
            raise ValueError("no issuer is configured")
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(timeout=jwks_timeout_s)
        self._leeway_s = leeway_s
        self._tenant_claims = tuple(tenant_claims)
        self._roles_claims = tuple(roles_claims)
        self._keys: dict[str, JwksCache] = {
            config.issuer: JwksCache(
                config.jwks_url,
                self._client,
                headers=config.jwks_headers,
                ttl_s=jwks_ttl_s,
                refetch_interval_s=jwks_refetch_interval_s,
                timeout_s=jwks_timeout_s,
                clock=clock,
            )
            for config in self._issuers.values()
            if config.jwks_url is not None
        }

    @classmethod
    def from_settings(
        cls,
        settings: JwtSettings,
        client: httpx.AsyncClient | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> JwtVerifier:
        """A verifier of the issuers ``settings`` configure; without ``client`` it makes (and owns)
        one. Raises ``ValueError`` when none is configured."""
        return cls(
            settings.issuers(),
            client,
            leeway_s=settings.jwt_leeway_s,
            jwks_ttl_s=settings.jwks_ttl_s,
            jwks_refetch_interval_s=settings.jwks_refetch_interval_s,
            jwks_timeout_s=settings.jwks_timeout_s,
            tenant_claims=settings.jwt_tenant_claim,
            roles_claims=settings.jwt_roles_claim,
            clock=clock,
        )

    @property
    def issuers(self) -> tuple[str, ...]:
        return tuple(self._issuers)

    async def aclose(self) -> None:
        for cache in self._keys.values():
            await cache.aclose()
        if self._owns_client:
            await self._client.aclose()

    async def verify(self, token: str) -> VerifiedToken:
        """The token's verified identity; raises ``TokenRejected``."""
        if not looks_like_jwt(token):
            raise TokenRejected("malformed", "not a JWT")
        try:
            unverified = jwt.decode_complete(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise TokenRejected("malformed", "its header or payload is not a JSON object") from None
        header: dict[str, Any] = unverified["header"]
        if "crit" in header:
            raise TokenRejected("malformed", "critical header extensions are not supported")
        iss = unverified["payload"].get("iss")
        config = self._issuers.get(iss) if isinstance(iss, str) else None
        if config is None:
            raise TokenRejected("unknown_issuer")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in config.algorithms:
            raise TokenRejected("alg_not_allowed")
        key: jwt.PyJWK | bytes
        if alg in _HMAC:
            if config.hmac_secret is None:  # IssuerConfig refuses this; kept as a hard stop
                raise TokenRejected("alg_not_allowed")
            key = config.hmac_secret  # never a key from the JWKS
        else:
            kid = header.get("kid")
            if kid is not None and not isinstance(kid, str):
                raise TokenRejected("malformed", "its kid is not a string")
            key = await self._keys[config.issuer].key(kid, alg)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=list(config.audiences),
                issuer=config.issuer,
                leeway=self._leeway_s,
                options={"require": ["exp", "iss", "aud", "sub"], "enforce_minimum_key_length": True},
            )
        except jwt.MissingRequiredClaimError as exc:
            if exc.claim == "aud":
                raise TokenRejected("bad_audience", "it names none") from None
            raise TokenRejected("malformed", f"it has no '{exc.claim}' claim") from None
        except jwt.PyJWTError as exc:
            reason: Reason = next((r for kind, r in _PYJWT_REASONS if isinstance(exc, kind)), "malformed")
            raise TokenRejected(reason) from None
        return self._identity(config, claims)

    def _identity(self, config: IssuerConfig, claims: dict[str, Any]) -> VerifiedToken:
        sub = claims["sub"]
        if not isinstance(sub, str) or not sub:
            raise TokenRejected("malformed", "its 'sub' claim is empty")
        tenant: str | None = None
        found = _first_claim(claims, self._tenant_claims)
        if found is not None:
            path, value = found
            if not isinstance(value, str) or not value:
                raise TokenRejected("malformed", f"its '{path}' claim is not a tenant name")
            tenant = value
        roles: list[str] = []
        found = _first_claim(claims, self._roles_claims)
        if found is not None:
            path, value = found
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(role, str) and role for role in value):
                raise TokenRejected("malformed", f"its '{path}' claim is not a list of role names")
            roles = list(dict.fromkeys(value))
        try:
            expires_at = datetime.fromtimestamp(int(claims["exp"]), UTC)
        except (OverflowError, OSError, ValueError):
            raise TokenRejected("malformed", "its 'exp' claim is out of range") from None
        email = claims.get("email")
        return VerifiedToken(
            sub=sub,
            issuer=config.issuer,
            tenant=tenant,
            roles=roles,
            email=email if isinstance(email, str) and email else None,
            expires_at=expires_at,
            claims=claims,
        )
