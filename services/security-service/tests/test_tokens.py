"""JWT verification against a local identity provider serving a real JWKS document: what passes, each
reason a token is refused for, how the key set is cached and refetched, and Supabase's settings."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from omni_security.tokens import (
    IssuerConfig,
    JwtSettings,
    JwtVerifier,
    TokenRejected,
    VerifiedToken,
    looks_like_jwt,
)
from omni_testkit import serving_app, wait_for
from pydantic import ValidationError

ISSUER = "https://idp.example.com/"
AUDIENCE = "omni-api"
SECRET = b"an-hs256-secret-of-at-least-32-bytes!"
TTL_S = 600.0
INTERVAL_S = 30.0


@dataclass
class Keys:
    rsa: RSAPrivateKey
    rsa_next: RSAPrivateKey
    rsa_forger: RSAPrivateKey
    ec: EllipticCurvePrivateKey


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(
        rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        rsa_next=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        rsa_forger=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec=ec.generate_private_key(ec.SECP256R1()),
    )


def rsa_jwk(key: RSAPrivateKey, kid: str) -> dict[str, Any]:
    return {**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, "alg": "RS256", "use": "sig"}


def ec_jwk(key: EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    # As Supabase publishes its ECC (P-256) keys: alg, crv, ext, key_ops, kid, kty, x, y.
    exported = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**exported, "kid": kid, "alg": "ES256", "ext": True, "key_ops": ["verify"]}


@dataclass
class FakeIdp:
    """An identity provider's JWKS endpoint that counts its fetches and can fail on demand."""

    keys: list[dict[str, Any]] = field(default_factory=list)
    fetches: int = 0
    apikeys: list[str | None] = field(default_factory=list)
    failure: str | None = None  # "http_503", "not_a_jwks" or "hangs"
    gate: asyncio.Event | None = None

    async def jwks(self, request: web.Request) -> web.StreamResponse:
        self.fetches += 1
        self.apikeys.append(request.headers.get("apikey"))
        if self.gate is not None:
            await self.gate.wait()
        if self.failure == "http_503":
            return web.Response(status=503, text="down for maintenance")
        if self.failure == "not_a_jwks":
            return web.Response(text="<html>login</html>", content_type="text/html")
        if self.failure == "hangs":
            await asyncio.Event().wait()
        return web.json_response({"keys": self.keys})


@dataclass
class Idp:
    fake: FakeIdp
    url: str


@pytest.fixture
async def idp(keys: Keys) -> AsyncIterator[Idp]:
    fake = FakeIdp(keys=[rsa_jwk(keys.rsa, "rsa-1"), ec_jwk(keys.ec, "ec-1")])
    app = web.Application()
    app.router.add_get("/jwks", fake.jwks)
    app.router.add_get("/auth/v1/.well-known/jwks.json", fake.jwks)
    async with serving_app(app) as url:
        yield Idp(fake, url)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read the environment: nothing from the machine running the tests leaks in."""
    for name in list(os.environ):
        if name.upper().startswith(("OMNI_SECURITY_", "SUPABASE_")):
            monkeypatch.delenv(name)


class Clock:
    """The verifier's monotonic clock, moved by hand: TTLs and intervals without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as http:
        yield http


VerifierFactory = Callable[..., JwtVerifier]


@pytest.fixture
async def make_verifier(idp: Idp, client: httpx.AsyncClient) -> AsyncIterator[VerifierFactory]:
    made: list[JwtVerifier] = []

    def make(
        *,
        algorithms: frozenset[str] = frozenset({"RS256", "ES256"}),
        hmac_secret: bytes | None = None,
        clock: Callable[[], float] = time.monotonic,
        timeout_s: float = 5.0,
    ) -> JwtVerifier:
        asymmetric = bool(algorithms - {"HS256"})
        verifier = JwtVerifier(
            [
                IssuerConfig(
                    issuer=ISSUER,
                    audiences=(AUDIENCE,),
                    algorithms=algorithms,
                    jwks_url=f"{idp.url}/jwks" if asymmetric else None,
                    hmac_secret=hmac_secret,
                )
            ],
            client,
            leeway_s=30.0,
            jwks_ttl_s=TTL_S,
            jwks_refetch_interval_s=INTERVAL_S,
            jwks_timeout_s=timeout_s,
            clock=clock,
        )
        made.append(verifier)
        return verifier

    yield make
    for verifier in made:
        await verifier.aclose()


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "iat": now, "exp": now + 300}
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not None}


def signed(key: Any, alg: str, kid: str | None, **overrides: Any) -> str:
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(claims(**overrides), key, algorithm=alg, headers=headers)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_by_hand(secret: bytes, header: dict[str, Any], payload: dict[str, Any]) -> str:
    """An HS256 token with any bytes as the secret (PyJWT refuses to sign with a PEM key)."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


async def rejected(verifier: JwtVerifier, token: str, reason: str) -> TokenRejected:
    with pytest.raises(TokenRejected) as caught:
        await verifier.verify(token)
    assert caught.value.reason == reason, str(caught.value)
    message = str(caught.value)
    assert all(part not in message for part in token.split(".") if len(part) > 8), "the token is echoed"
    return caught.value


# --- what passes -------------------------------------------------------------------------------


async def test_valid_rs256_and_es256_tokens_pass_with_one_fetch_of_the_key_set(
    keys: Keys, idp: Idp, make_verifier: VerifierFactory
) -> None:
    verifier = make_verifier()
    rs = await verifier.verify(
        signed(keys.rsa, "RS256", "rsa-1", email="ada@example.com", tenant="acme", roles=["developer"])
    )
    es = await verifier.verify(signed(keys.ec, "ES256", "ec-1", sub="user-2"))

    assert isinstance(rs, VerifiedToken)
    assert (rs.sub, rs.issuer, rs.tenant, rs.roles, rs.email) == (
        "user-1",
        ISSUER,
        "acme",
        ["developer"],
        "ada@example.com",
    )
    assert rs.expires_at.tzinfo is not None
    assert rs.expires_at.timestamp() == rs.claims["exp"]
    assert (es.sub, es.tenant, es.roles, es.email) == ("user-2", None, [], None)
    assert idp.fake.fetches == 1


async def test_a_token_expired_within_the_leeway_still_passes(
    keys: Keys, make_verifier: VerifierFactory
) -> None:
    verified = await make_verifier().verify(signed(keys.rsa, "RS256", "rsa-1", exp=int(time.time()) - 10))
    assert verified.sub == "user-1"


async def test_the_tenant_and_roles_fall_back_to_app_metadata_and_never_come_from_user_metadata(
    keys: Keys, make_verifier: VerifierFactory
) -> None:
    verifier = make_verifier()
    token = signed(
        keys.rsa,
        "RS256",
        "rsa-1",
        app_metadata={"tenant": "acme", "roles": "operator"},
        user_metadata={"tenant": "evil", "roles": ["admin"]},
    )
    verified = await verifier.verify(token)
    assert (verified.tenant, verified.roles) == ("acme", ["operator"])

    top_level = signed(keys.rsa, "RS256", "rsa-1", tenant="beta", app_metadata={"tenant": "acme"})
    assert (await verifier.verify(top_level)).tenant == "beta"


async def test_a_token_without_a_kid_uses_the_one_key_that_fits_its_algorithm(
    keys: Keys, make_verifier: VerifierFactory
) -> None:
    verified = await make_verifier().verify(signed(keys.rsa, "RS256", None))
    assert verified.sub == "user-1"


async def test_hs256_tokens_verify_with_the_configured_secret_only(make_verifier: VerifierFactory) -> None:
    verifier = make_verifier(algorithms=frozenset({"HS256"}), hmac_secret=SECRET)
    assert (await verifier.verify(signed(SECRET, "HS256", None))).sub == "user-1"
    await rejected(verifier, signed(b"another-secret-of-at-least-32-bytes!!", "HS256", None), "bad_signature")


# --- each reason -------------------------------------------------------------------------------


async def test_an_expired_token_is_refused(keys: Keys, make_verifier: VerifierFactory) -> None:
    await rejected(make_verifier(), signed(keys.rsa, "RS256", "rsa-1", exp=int(time.time()) - 60), "expired")


@pytest.mark.parametrize("claim", ["nbf", "iat"])
async def test_a_token_from_the_future_is_not_yet_valid(
    keys: Keys, make_verifier: VerifierFactory, claim: str
) -> None:
    token = signed(keys.rsa, "RS256", "rsa-1", **{claim: int(time.time()) + 120})
    await rejected(make_verifier(), token, "not_yet_valid")


async def test_a_signature_by_another_key_or_over_other_claims_is_refused(
    keys: Keys, make_verifier: VerifierFactory
) -> None:
    verifier = make_verifier()
    await rejected(verifier, signed(keys.rsa_forger, "RS256", "rsa-1"), "bad_signature")

    header, _, signature = signed(keys.rsa, "RS256", "rsa-1").split(".")
    tampered = b64url(json.dumps(claims(sub="admin")).encode())
    await rejected(verifier, f"{header}.{tampered}.{signature}", "bad_signature")


async def test_a_forged_token_is_refused_for_its_signature_before_its_claims_are_judged(
    keys: Keys, make_verifier: VerifierFactory
) -> None:
    forged = signed(keys.rsa_forger, "RS256", "rsa-1", exp=int(time.time()) - 3600, aud="elsewhere")
    await rejected(make_verifier(), forged, "bad_signature")


async def test_an_issuer_nobody_configured_is_refused_without_a_fetch(
    keys: Keys, idp: Idp, make_verifier: VerifierFactory
) -> None:
    verifier = make_verifier()
    await rejected(
        verifier, signed(keys.rsa, "RS256", "rsa-1", iss="https://evil.example.com/"), "unknown_issuer"
    )
    await rejected(verifier, signed(keys.rsa, "RS256", "rsa-1", iss=None), "unknown_issuer")
    assert idp.fake.fetches == 0


@pytest.mark.parametrize("aud", ["another-api", ["another-api", "a-third"], None])
async def test_a_token_meant_for_another_audience_is_refused(
    keys: Keys, make_verifier: VerifierFactory, aud: object
) -> None:
    await rejected(make_verifier(), signed(keys.rsa, "RS256", "rsa-1", aud=aud), "bad_audience")


async def test_one_of_several_audiences_is_enough(keys: Keys, make_verifier: VerifierFactory) -> None:
    token = signed(keys.rsa, "RS256", "rsa-1", aud=["another-api", AUDIENCE])
    assert (await make_verifier().verify(token)).sub == "user-1"


async def test_an_algorithm_the_issuer_does_not_allow_is_refused(
    keys: Keys, idp: Idp, make_verifier: VerifierFactory
) -> None:
    """Pinned per issuer, not only per key: this key's JWK names no algorithm, RS384 would verify."""
    unpinned = {name: value for name, value in rsa_jwk(keys.rsa_next, "rsa-any").items() if name != "alg"}
    idp.fake.keys.append(unpinned)
    verifier = make_verifier()
    await rejected(verifier, signed(keys.rsa_next, "RS384", "rsa-any"), "alg_not_allowed")
    await rejected(verifier, signed(keys.rsa, "RS384", "rsa-1"), "alg_not_allowed")
    assert (await verifier.verify(signed(keys.rsa_next, "RS256", "rsa-any"))).sub == "user-1"


async def test_the_none_algorithm_is_refused(make_verifier: VerifierFactory) -> None:
    unsigned = jwt.encode(claims(), "", algorithm="none")
    await rejected(make_verifier(), unsigned, "alg_not_allowed")
    hs_issuer = make_verifier(algorithms=frozenset({"HS256"}), hmac_secret=SECRET)
    await rejected(hs_issuer, unsigned, "alg_not_allowed")


async def test_an_algorithm_that_does_not_fit_the_named_key_is_refused(
    keys: Keys, make_verifier: VerifierFactory
) -> None:
    # An ES256 signature presented under the RSA key's kid.
    await rejected(make_verifier(), signed(keys.ec, "ES256", "rsa-1"), "alg_not_allowed")


async def test_hs256_signed_with_the_issuers_public_key_is_refused_when_the_issuer_is_rs256(
    keys: Keys, make_verifier: VerifierFactory
) -> None:
    """The classic confusion: the attacker signs HS256 with the RSA public key (which is public) as
    the secret, hoping the verifier feeds that same key to HMAC."""
    public_pem = keys.rsa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    forged = hs256_by_hand(public_pem, {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, claims(sub="admin"))
    await rejected(make_verifier(), forged, "alg_not_allowed")


async def test_hs256_signed_with_the_public_key_fails_even_where_hs256_is_allowed(
    keys: Keys, make_verifier: VerifierFactory
) -> None:
    """An issuer with both a JWKS and a secret (Supabase with its legacy secret): HS256 is verified
    with the secret, never with a key from the JWKS."""
    verifier = make_verifier(algorithms=frozenset({"RS256", "HS256"}), hmac_secret=SECRET)
    public_pem = keys.rsa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    jwk_json = json.dumps(rsa_jwk(keys.rsa, "rsa-1")).encode()
    for secret in (public_pem, jwk_json):
        forged = hs256_by_hand(secret, {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, claims(sub="admin"))
        await rejected(verifier, forged, "bad_signature")
    assert (await verifier.verify(signed(keys.rsa, "RS256", "rsa-1"))).sub == "user-1"


async def test_a_kid_the_issuer_does_not_publish_is_an_unknown_key(
    keys: Keys, make_verifier: VerifierFactory
) -> None:
    await rejected(make_verifier(), signed(keys.rsa_forger, "RS256", "no-such-kid"), "unknown_key")


@pytest.mark.parametrize(
    "token",
    [
        "not a token",
        "eyJub3QiOiJqc29uIn0",
        "eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln",
        "eyJhbGciOiJSUzI1NiJ9." + "A" * 20_000 + ".c2ln",
    ],
    ids=["text", "one_part", "payload_not_json", "oversized"],
)
async def test_what_is_not_a_jwt_is_malformed(make_verifier: VerifierFactory, token: str) -> None:
    await rejected(make_verifier(), token, "malformed")


@pytest.mark.parametrize(
    "overrides",
    [{"sub": None}, {"sub": ""}, {"sub": 42}, {"roles": [1, 2]}, {"roles": {"a": 1}}, {"tenant": ["a"]}],
    ids=[
        "no_sub",
        "empty_sub",
        "numeric_sub",
        "roles_not_strings",
        "roles_not_a_list",
        "tenant_not_a_string",
    ],
)
async def test_a_signed_token_with_unusable_identity_claims_is_malformed(
    keys: Keys, make_verifier: VerifierFactory, overrides: dict[str, Any]
) -> None:
    await rejected(make_verifier(), signed(keys.rsa, "RS256", "rsa-1", **overrides), "malformed")


async def test_a_token_with_critical_header_extensions_is_malformed(
    keys: Keys, make_verifier: VerifierFactory
) -> None:
    token = jwt.encode(claims(), keys.rsa, algorithm="RS256", headers={"kid": "rsa-1", "crit": ["exp"]})
    await rejected(make_verifier(), token, "malformed")


async def test_with_the_idp_down_from_the_start_keys_are_unavailable_and_it_is_asked_once_per_interval(
    keys: Keys, idp: Idp, make_verifier: VerifierFactory
) -> None:
    idp.fake.failure = "http_503"
    clock = Clock()
    verifier = make_verifier(clock=clock)
    token = signed(keys.rsa, "RS256", "rsa-1")
    for _ in range(5):
        await rejected(verifier, token, "jwks_unavailable")
    assert idp.fake.fetches == 1

    idp.fake.failure = None
    clock.advance(INTERVAL_S)
    assert (await verifier.verify(token)).sub == "user-1"
    assert idp.fake.fetches == 2


# --- the key set: cache, refetch, failures ------------------------------------------------------


async def test_concurrent_first_verifications_share_one_fetch(
    keys: Keys, idp: Idp, make_verifier: VerifierFactory
) -> None:
    idp.fake.gate = asyncio.Event()
    verifier = make_verifier()
    tokens = [signed(keys.rsa, "RS256", "rsa-1", sub=f"user-{n}") for n in range(20)]
    pending = asyncio.gather(*(verifier.verify(token) for token in tokens))
    await wait_for(lambda: idp.fake.fetches == 1, message="the JWKS was never fetched")
    idp.fake.gate.set()
    verified = await pending
    assert [v.sub for v in verified] == [f"user-{n}" for n in range(20)]
    assert idp.fake.fetches == 1


async def test_a_key_rotated_in_at_the_idp_is_picked_up_with_one_refetch(
    keys: Keys, idp: Idp, make_verifier: VerifierFactory
) -> None:
    clock = Clock()
    verifier = make_verifier(clock=clock)
    await verifier.verify(signed(keys.rsa, "RS256", "rsa-1"))
    assert idp.fake.fetches == 1

    idp.fake.keys.append(rsa_jwk(keys.rsa_next, "rsa-2"))
    clock.advance(INTERVAL_S)
    assert (await verifier.verify(signed(keys.rsa_next, "RS256", "rsa-2", sub="rotated"))).sub == "rotated"
    assert (await verifier.verify(signed(keys.rsa, "RS256", "rsa-1"))).sub == "user-1"
    assert (await verifier.verify(signed(keys.rsa_next, "RS256", "rsa-2"))).sub == "user-1"
    assert idp.fake.fetches == 2


async def test_a_flood_of_unknown_kids_costs_the_idp_at_most_one_fetch_per_interval(
    keys: Keys, idp: Idp, make_verifier: VerifierFactory
) -> None:
    clock = Clock()
    verifier = make_verifier(clock=clock)
    await verifier.verify(signed(keys.rsa, "RS256", "rsa-1"))
    clock.advance(INTERVAL_S)

    def random_kid() -> str:
        return signed(keys.rsa_forger, "RS256", uuid.uuid4().hex)

    async def refused(token: str) -> str:
        try:
            await verifier.verify(token)
        except TokenRejected as exc:
            return exc.reason
        return "accepted"

    reasons = await asyncio.gather(*(refused(random_kid()) for _ in range(50)))
    assert set(reasons) == {"unknown_key"}
    for _ in range(50):
        assert await refused(random_kid()) == "unknown_key"
    assert idp.fake.fetches == 2

    clock.advance(INTERVAL_S - 1)
    assert await refused(random_kid()) == "unknown_key"
    assert idp.fake.fetches == 2
    clock.advance(1)
    assert await refused(random_kid()) == "unknown_key"
    assert idp.fake.fetches == 3
    assert (await verifier.verify(signed(keys.rsa, "RS256", "rsa-1"))).sub == "user-1"


async def test_the_key_set_is_refreshed_after_its_ttl_and_a_key_removed_at_the_idp_stops_verifying(
    keys: Keys, idp: Idp, make_verifier: VerifierFactory
) -> None:
    clock = Clock()
    verifier = make_verifier(clock=clock)
    token = signed(keys.rsa, "RS256", "rsa-1")
    await verifier.verify(token)

    idp.fake.keys = [rsa_jwk(keys.rsa_next, "rsa-2")]
    clock.advance(TTL_S - 1)
    assert (await verifier.verify(token)).sub == "user-1"
    assert idp.fake.fetches == 1

    clock.advance(1)
    await rejected(verifier, token, "unknown_key")
    assert idp.fake.fetches == 2


@pytest.mark.parametrize("failure", ["http_503", "not_a_jwks", "hangs"])
async def test_with_the_idp_failing_after_the_first_fetch_the_cached_keys_still_verify(
    keys: Keys, idp: Idp, make_verifier: VerifierFactory, failure: str
) -> None:
    clock = Clock()
    verifier = make_verifier(clock=clock, timeout_s=0.2)
    rs, es = signed(keys.rsa, "RS256", "rsa-1"), signed(keys.ec, "ES256", "ec-1")
    await verifier.verify(rs)

    idp.fake.failure = failure
    clock.advance(TTL_S)
    assert (await verifier.verify(rs)).sub == "user-1"  # stale, refresh failed: the last good set
    assert (await verifier.verify(es)).sub == "user-1"
    assert idp.fake.fetches == 2

    idp.fake.failure = None
    clock.advance(INTERVAL_S)
    assert (await verifier.verify(rs)).sub == "user-1"
    assert idp.fake.fetches == 3


async def test_a_client_passed_in_is_left_open_and_an_own_client_is_closed(
    keys: Keys, idp: Idp, client: httpx.AsyncClient
) -> None:
    config = IssuerConfig(
        issuer=ISSUER, audiences=(AUDIENCE,), algorithms=frozenset({"RS256"}), jwks_url=f"{idp.url}/jwks"
    )
    borrowed = JwtVerifier([config], client)
    await borrowed.verify(signed(keys.rsa, "RS256", "rsa-1"))
    await borrowed.aclose()
    assert not client.is_closed

    owning = JwtVerifier([config])
    assert (await owning.verify(signed(keys.rsa, "RS256", "rsa-1"))).sub == "user-1"
    await owning.aclose()
    assert owning._client.is_closed


# --- settings and Supabase --------------------------------------------------------------------


def test_nothing_is_configured_by_default_and_the_defaults_are_the_documented_ones() -> None:
    settings = JwtSettings()
    assert not settings.configured
    assert settings.issuers() == []
    assert settings.jwt_algorithms == ("RS256", "ES256")
    assert settings.jwt_tenant_claim == ("tenant", "app_metadata.tenant")
    assert settings.jwt_roles_claim == ("roles", "app_metadata.roles")
    assert (settings.jwt_leeway_s, settings.jwks_ttl_s) == (30.0, 600.0)
    with pytest.raises(ValueError, match="no issuer"):
        JwtVerifier.from_settings(settings)


def test_the_generic_issuer_is_read_from_omni_security_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNI_SECURITY_JWT_ISSUER", ISSUER)
    monkeypatch.setenv("OMNI_SECURITY_JWT_AUDIENCE", "omni-api, omni-cli")
    monkeypatch.setenv("OMNI_SECURITY_JWKS_URL", "https://idp.example.com/.well-known/jwks.json")
    monkeypatch.setenv("OMNI_SECURITY_JWT_ALGORITHMS", "rs256,ES256,HS256")
    monkeypatch.setenv("OMNI_SECURITY_JWT_HS256_SECRET", SECRET.decode())
    monkeypatch.setenv("OMNI_SECURITY_JWT_TENANT_CLAIM", "org_id")
    settings = JwtSettings()
    assert settings.configured
    [config] = settings.issuers()
    assert config.issuer == ISSUER
    assert config.audiences == ("omni-api", "omni-cli")
    assert config.algorithms == {"RS256", "ES256", "HS256"}
    assert config.hmac_secret == SECRET
    assert settings.jwt_tenant_claim == ("org_id",)
    assert SECRET.decode() not in repr(settings) + repr(config)


@pytest.mark.parametrize(
    "env",
    [
        {"OMNI_SECURITY_JWT_ALGORITHMS": "none"},
        {"OMNI_SECURITY_JWT_ALGORITHMS": "RS256,HS256"},
        {"OMNI_SECURITY_JWT_HS256_SECRET": SECRET.decode()},
        {"OMNI_SECURITY_JWT_ALGORITHMS": "HS256", "OMNI_SECURITY_JWT_HS256_SECRET": "short-secret"},
        {"OMNI_SECURITY_JWT_AUDIENCE": ""},
        {"OMNI_SECURITY_JWKS_URL": ""},
    ],
    ids=["none", "hs256_without_secret", "secret_without_hs256", "short_secret", "no_audience", "no_jwks"],
)
def test_inconsistent_issuer_settings_are_refused_at_startup_without_quoting_secrets(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    monkeypatch.setenv("OMNI_SECURITY_JWT_ISSUER", ISSUER)
    monkeypatch.setenv("OMNI_SECURITY_JWT_AUDIENCE", AUDIENCE)
    monkeypatch.setenv("OMNI_SECURITY_JWKS_URL", "https://idp.example.com/jwks")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as caught:
        JwtSettings()
    assert "secret-of-at-least" not in str(caught.value)
    assert "short-secret" not in str(caught.value)


@pytest.mark.parametrize(
    "env",
    [
        {"OMNI_SECURITY_JWKS_URL": "https://idp.example.com/jwks"},
        {"SUPABASE_JWT_SECRET": SECRET.decode()},
        {
            "SUPABASE_URL": "https://p.supabase.co",
            "OMNI_SECURITY_JWT_ISSUER": "https://p.supabase.co/auth/v1",
            "OMNI_SECURITY_JWT_AUDIENCE": AUDIENCE,
            "OMNI_SECURITY_JWKS_URL": "https://p.supabase.co/auth/v1/.well-known/jwks.json",
        },
    ],
    ids=["jwks_without_issuer", "supabase_secret_without_url", "issuer_twice"],
)
def test_half_configured_issuers_are_refused(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        JwtSettings()


def test_supabase_variables_give_its_issuer_jwks_url_and_audience(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPABASE_URL", "https://abcdefghij.supabase.co/")
    monkeypatch.setenv("SUPABASE_ANON_KEY", "anon-key")
    settings = JwtSettings()
    assert settings.configured
    [config] = settings.issuers()
    assert config.issuer == "https://abcdefghij.supabase.co/auth/v1"
    assert config.jwks_url == "https://abcdefghij.supabase.co/auth/v1/.well-known/jwks.json"
    assert config.audiences == ("authenticated",)
    assert config.algorithms == {"ES256", "RS256"}
    assert dict(config.jwks_headers) == {"apikey": "anon-key"}
    assert config.hmac_secret is None

    monkeypatch.setenv("SUPABASE_JWT_SECRET", SECRET.decode())
    [legacy] = JwtSettings().issuers()
    assert legacy.algorithms == {"ES256", "RS256", "HS256"}
    assert legacy.hmac_secret == SECRET


def supabase_claims(issuer: str, **overrides: Any) -> dict[str, Any]:
    """An access token's claims as Supabase Auth issues them (see its JWT claims reference)."""
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": issuer,
        "sub": "8d7a3e52-0f43-4c1b-9a3e-5b0f6c2d1e77",
        "aud": "authenticated",
        "exp": now + 3600,
        "iat": now,
        "email": "ada@example.com",
        "phone": "",
        "app_metadata": {
            "provider": "email",
            "providers": ["email"],
            "tenant": "acme",
            "roles": ["developer"],
        },
        "user_metadata": {"email_verified": True, "tenant": "evil", "roles": ["admin"]},
        "role": "authenticated",
        "aal": "aal1",
        "amr": [{"method": "password", "timestamp": now - 5}],
        "session_id": "5f1e0c9a-7d4b-4e8f-8a21-3c6b9d0e4f12",
        "is_anonymous": False,
    }
    base.update(overrides)
    return base


async def test_a_supabase_token_verifies_with_the_anon_key_sent_to_the_jwks_endpoint(
    keys: Keys, idp: Idp, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    kid = "3f1c6b2e-9a0d-4c57-b8e4-2d7f0a9c1e35"
    idp.fake.keys = [ec_jwk(keys.ec, kid)]
    monkeypatch.setenv("SUPABASE_URL", idp.url)
    monkeypatch.setenv("SUPABASE_ANON_KEY", "sb-anon-key")
    monkeypatch.setenv("SUPABASE_JWT_SECRET", SECRET.decode())
    settings = JwtSettings()
    issuer = f"{idp.url}/auth/v1"
    verifier = JwtVerifier.from_settings(settings, client)
    try:
        token = jwt.encode(supabase_claims(issuer), keys.ec, algorithm="ES256", headers={"kid": kid})
        verified = await verifier.verify(token)
        assert (verified.sub, verified.issuer, verified.email) == (
            "8d7a3e52-0f43-4c1b-9a3e-5b0f6c2d1e77",
            issuer,
            "ada@example.com",
        )
        assert (verified.tenant, verified.roles) == ("acme", ["developer"])
        assert verified.claims["role"] == "authenticated"
        assert idp.fake.apikeys == ["sb-anon-key"]

        legacy = jwt.encode(supabase_claims(issuer, sub="legacy-user"), SECRET, algorithm="HS256")
        assert (await verifier.verify(legacy)).sub == "legacy-user"

        # The anon key itself is a JWT (iss "supabase", role anon, no sub): it is not a user's token.
        anon = jwt.encode({"iss": "supabase", "ref": "abcdefghij", "role": "anon", "exp": 2**31}, SECRET)
        await rejected(verifier, anon, "unknown_issuer")
        await rejected(verifier, jwt.encode(supabase_claims(issuer, aud="anon"), SECRET), "bad_audience")
    finally:
        await verifier.aclose()


# --- telling a token from a key ----------------------------------------------------------------


def test_looks_like_jwt_tells_a_token_from_an_api_key(keys: Keys) -> None:
    assert looks_like_jwt(signed(keys.rsa, "RS256", "rsa-1"))
    assert looks_like_jwt(signed(SECRET, "HS256", None))
    assert not looks_like_jwt("omni_abcd1234_" + "x" * 43)
    assert not looks_like_jwt("")
    assert not looks_like_jwt("a.b.c")
    assert not looks_like_jwt("eyJhbGciOiJIUzI1NiJ9")


async def test_every_refusal_names_its_reason_in_a_sentence_that_does_not_echo_the_token(
    keys: Keys, make_verifier: VerifierFactory
) -> None:
    verifier = make_verifier()
    token = signed(keys.rsa_forger, "RS256", "rsa-1", sub="someone-secret-ish")
    refusal = await rejected(verifier, token, "bad_signature")
    assert str(refusal) == "the token's signature does not verify"
    assert "someone-secret-ish" not in str(refusal)
