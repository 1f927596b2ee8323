"""JwtVerifier against real keys and a real JWKS server on a local port."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, HMACAlgorithm, OKPAlgorithm, RSAAlgorithm

from dtecho.config import ConfigError, JwtIssuerSettings, LimitProfile
from dtecho.errors import AuthenticationFailed, PermissionDenied
from dtecho.security.jwt import JwtVerifier

ISSUER = "https://idp.test/"
AUDIENCE = "dtecho"
SECRET = "a-shared-secret-of-at-least-64-bytes-for-hs256-hs384-and-hs512-ok"
PROFILES = {"gold": LimitProfile(rpm=600), "bronze": LimitProfile(rpm=10)}
DEFAULT_LIMITS = LimitProfile(rpm=1)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rsa_key_2() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def public_pem(key: Any) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def public_jwk(key: Any, kid: str) -> dict[str, Any]:
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        data = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        data = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        data = OKPAlgorithm.to_jwk(public, as_dict=True)
    return {**data, "kid": kid, "use": "sig"}


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "user-1",
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 300,
    }
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not None}


def sign(key: Any, alg: str = "RS256", kid: str | None = "k1", **overrides: Any) -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims(**overrides), key, algorithm=alg, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_built(header: dict[str, Any], payload: dict[str, Any], secret: bytes | None) -> str:
    """A token built without PyJWT, which refuses to make the forgeries tested here."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = b""
    if secret is not None:
        signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


@dataclass
class JwksServer:
    """Serves ``jwks`` at ``url``; counts requests; answers 500 while ``failing``."""

    jwks: dict[str, Any] = field(default_factory=lambda: {"keys": []})
    failing: bool = False
    delay: float = 0.0
    requests: int = 0
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.failing:
            return web.Response(status=500, text="down")
        return web.json_response(self.jwks)


@pytest.fixture
async def jwks_server(rsa_key: rsa.RSAPrivateKey) -> AsyncIterator[JwksServer]:
    server = JwksServer(jwks={"keys": [public_jwk(rsa_key, "k1")]})
    app = web.Application()
    app.router.add_get("/jwks.json", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    server.url = f"http://{host}:{port}/jwks.json"
    try:
        yield server
    finally:
        await runner.cleanup()


def issuer(**settings: Any) -> JwtIssuerSettings:
    base: dict[str, Any] = {"issuer": ISSUER, "audience": [AUDIENCE], "leeway_seconds": 5}
    base.update(settings)
    return JwtIssuerSettings(**base)


@asynccontextmanager
async def running(*issuers: JwtIssuerSettings) -> AsyncIterator[JwtVerifier]:
    verifier = JwtVerifier(issuers, profiles=PROFILES, default_limits=DEFAULT_LIMITS)
    await verifier.start()
    try:
        yield verifier
    finally:
        await verifier.close()


async def rejected(verifier: JwtVerifier, token: str) -> AuthenticationFailed:
    with pytest.raises(AuthenticationFailed) as caught:
        await verifier.verify(token)
    return caught.value


# --- accepted tokens and the principal they map to ---


async def test_rs256_token_from_the_jwks_maps_every_claim(
    jwks_server: JwksServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    settings = issuer(
        jwks_url=jwks_server.url,
        models_claim="models",
        limits_claim="tier",
        default_roles=["user"],
    )
    token = sign(
        rsa_key,
        roles=["reader", "writer"],
        scope="chat:write embed",
        project="proj-7",
        models=["dtesn-echo", "gpt-x"],
        tier="gold",
    )
    async with running(settings) as verifier:
        principal = await verifier.verify(token)
    assert principal.id == f"jwt:{ISSUER}|user-1"
    assert principal.kind == "jwt"
    assert principal.subject == "user-1"
    assert principal.project == "proj-7"
    assert principal.roles == {"reader", "writer", "chat:write", "embed", "user"}
    assert principal.allowed_models == {"dtesn-echo", "gpt-x"}
    assert principal.limits == PROFILES["gold"]
    assert principal.metadata == {"issuer": ISSUER}


async def test_es256_token_from_a_static_jwk_reads_roles_from_a_string(
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    settings = issuer(keys=[json.dumps(public_jwk(ec_key, "ec1"))], algorithms=["ES256"])
    token = sign(ec_key, "ES256", kid="ec1", roles="admin auditor", scope=None)
    async with running(settings) as verifier:
        principal = await verifier.verify(token)
    assert principal.roles == {"admin", "auditor"}
    assert principal.is_admin
    assert principal.allowed_models is None  # no models claim configured: every model
    assert principal.project is None
    assert principal.limits == DEFAULT_LIMITS


async def test_eddsa_token_from_a_static_pem_without_kid(ed_key: ed25519.Ed25519PrivateKey) -> None:
    settings = issuer(keys=[public_pem(ed_key)], algorithms=["EdDSA"])
    async with running(settings) as verifier:
        principal = await verifier.verify(sign(ed_key, "EdDSA", kid=None, sub="svc"))
        # A kid the static key does not carry still finds it: static keys have none.
        also = await verifier.verify(sign(ed_key, "EdDSA", kid="whatever", sub="svc"))
    assert principal.id == also.id == f"jwt:{ISSUER}|svc"


async def test_hs256_token_with_the_static_secret_gets_the_issuer_default_limits() -> None:
    settings = issuer(keys=[SECRET], algorithms=["HS256"], default_limits=LimitProfile(rpm=42))
    async with running(settings) as verifier:
        principal = await verifier.verify(sign(SECRET, "HS256", kid=None))
    assert principal.limits == LimitProfile(rpm=42)


async def test_a_limits_claim_absent_from_the_token_falls_back_to_the_defaults() -> None:
    settings = issuer(keys=[SECRET], algorithms=["HS256"], limits_claim="tier")
    async with running(settings) as verifier:
        principal = await verifier.verify(sign(SECRET, "HS256", kid=None))
    assert principal.limits == DEFAULT_LIMITS


async def test_a_valid_token_naming_an_unknown_limits_profile_is_forbidden() -> None:
    settings = issuer(keys=[SECRET], algorithms=["HS256"], limits_claim="tier")
    async with running(settings) as verifier:
        with pytest.raises(PermissionDenied) as caught:
            await verifier.verify(sign(SECRET, "HS256", kid=None, tier="platinum"))
    assert caught.value.code == "unknown_limits_profile"
    assert caught.value.status_code == 403


async def test_a_token_without_its_subject_claim_is_rejected() -> None:
    settings = issuer(keys=[SECRET], algorithms=["HS256"], subject_claim="email")
    async with running(settings) as verifier:
        error = await rejected(verifier, sign(SECRET, "HS256", kid=None))
    assert error.code == "missing_claim"


# --- forged and invalid tokens ---


async def test_alg_none_is_rejected(jwks_server: JwksServer) -> None:
    token = hand_built({"alg": "none", "typ": "JWT"}, claims(), secret=None)
    async with running(issuer(jwks_url=jwks_server.url)) as verifier:
        assert verifier.looks_like_jwt(token)
        error = await rejected(verifier, token)
    assert error.code == "invalid_algorithm"
    assert error.status_code == 401


async def test_hs256_signed_with_the_rsa_public_key_fails_on_an_rs256_only_issuer(
    jwks_server: JwksServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    forged = hand_built({"alg": "HS256", "kid": "k1"}, claims(), public_pem(rsa_key).encode())
    settings = issuer(jwks_url=jwks_server.url, keys=[public_pem(rsa_key)], algorithms=["RS256"])
    async with running(settings) as verifier:
        error = await rejected(verifier, forged)
    assert error.code == "invalid_algorithm"


@pytest.mark.parametrize("pem_in_keys", [False, True])
async def test_hs256_signed_with_the_rsa_public_key_fails_where_hs256_is_allowed(
    jwks_server: JwksServer, rsa_key: rsa.RSAPrivateKey, pem_in_keys: bool
) -> None:
    pem = public_pem(rsa_key)
    keys = [SECRET, pem] if pem_in_keys else [SECRET]
    settings = issuer(jwks_url=jwks_server.url, keys=keys, algorithms=["RS256", "HS256"])
    async with running(settings) as verifier:
        # The issuer really accepts both algorithms ...
        await verifier.verify(sign(rsa_key, "RS256"))
        await verifier.verify(sign(SECRET, "HS256", kid=None))
        # ... but the public key is never an HMAC secret, with or without a kid.
        for kid in ("k1", None):
            header = {"alg": "HS256"} | ({"kid": kid} if kid else {})
            forged = hand_built(header, claims(), pem.encode())
            error = await rejected(verifier, forged)
            assert error.code in {"invalid_signature", "unknown_key"}


async def test_an_hmac_secret_published_in_a_jwks_is_never_used(jwks_server: JwksServer) -> None:
    published = "a-secret-anyone-can-read-because-it-sits-in-the-public-jwks-document"
    jwks_server.jwks = {
        "keys": [
            {"kty": "oct", "kid": "oct1", "k": b64(published.encode())},
            *jwks_server.jwks["keys"],
        ]
    }
    settings = issuer(jwks_url=jwks_server.url, keys=[SECRET], algorithms=["RS256", "HS256"])
    async with running(settings) as verifier:
        error = await rejected(verifier, sign(published, "HS256", kid="oct1"))
    assert error.code == "invalid_signature"  # tried against the configured secret only


async def test_a_tampered_payload_is_rejected(
    jwks_server: JwksServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    header, _, signature = sign(rsa_key, roles=["reader"]).split(".")
    payload = b64(json.dumps(claims(roles=["admin"])).encode())
    async with running(issuer(jwks_url=jwks_server.url)) as verifier:
        error = await rejected(verifier, f"{header}.{payload}.{signature}")
    assert error.code == "invalid_signature"


async def test_a_tampered_signature_is_rejected(
    jwks_server: JwksServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    header, payload, signature = sign(rsa_key).split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw[10] ^= 0x01
    async with running(issuer(jwks_url=jwks_server.url)) as verifier:
        error = await rejected(verifier, f"{header}.{payload}.{b64(bytes(raw))}")
    assert error.code == "invalid_signature"


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        # Times are offsets from when the test runs (not from collection, which may be minutes
        # earlier in a full run), beyond the 30 s leeway.
        ({"exp": -120}, "token_expired"),
        ({"nbf": 120}, "token_not_yet_valid"),
        ({"iat": 120}, "token_not_yet_valid"),
        ({"iss": "https://evil.test/"}, "invalid_issuer"),
        ({"iss": None}, "invalid_issuer"),
        ({"aud": "someone-else"}, "invalid_audience"),
        ({"aud": None}, "missing_claim"),
        ({"exp": None}, "missing_claim"),
        ({"sub": 12.5}, "invalid_token"),
    ],
)
async def test_an_invalid_claim_is_rejected_with_its_code(
    jwks_server: JwksServer, rsa_key: rsa.RSAPrivateKey, overrides: dict[str, Any], code: str
) -> None:
    now = int(time.time())
    overrides = {
        name: now + value if name in {"exp", "nbf", "iat"} and value is not None else value
        for name, value in overrides.items()
    }
    async with running(issuer(jwks_url=jwks_server.url)) as verifier:
        error = await rejected(verifier, sign(rsa_key, **overrides))
    assert error.code == code


async def test_without_a_configured_audience_any_aud_is_accepted(
    jwks_server: JwksServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    async with running(issuer(jwks_url=jwks_server.url, audience=[])) as verifier:
        assert (await verifier.verify(sign(rsa_key, aud="another-api"))).subject == "user-1"
        assert (await verifier.verify(sign(rsa_key, aud=None))).subject == "user-1"


async def test_expiry_within_the_leeway_is_accepted(
    jwks_server: JwksServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    token = sign(rsa_key, exp=int(time.time()) - 2)
    async with running(issuer(jwks_url=jwks_server.url, leeway_seconds=30)) as verifier:
        assert (await verifier.verify(token)).subject == "user-1"
    async with running(issuer(jwks_url=jwks_server.url, leeway_seconds=0)) as verifier:
        assert (await rejected(verifier, token)).code == "token_expired"


async def test_an_unknown_kid_is_rejected(
    jwks_server: JwksServer, rsa_key_2: rsa.RSAPrivateKey
) -> None:
    async with running(issuer(jwks_url=jwks_server.url)) as verifier:
        error = await rejected(verifier, sign(rsa_key_2, kid="nobody"))
    assert error.code == "unknown_key"


@pytest.mark.parametrize(
    "token",
    [
        "abc",
        "a.b.c",
        "!!!.@@@.###",
        "sk-dte-0123456789abcdef",
        f"{b64(b'not json')}.{b64(b'also not json')}.{b64(b'sig')}",
        f"{b64(json.dumps({'alg': 'RS256'}).encode())}.{b64(b'[1, 2]')}.{b64(b'sig')}",
        "",
    ],
)
async def test_malformed_strings_are_invalid_tokens(jwks_server: JwksServer, token: str) -> None:
    async with running(issuer(jwks_url=jwks_server.url)) as verifier:
        error = await rejected(verifier, token)
    assert error.code == "invalid_token"


async def test_rejections_carry_www_authenticate_and_never_echo_the_token(
    jwks_server: JwksServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    token = sign(rsa_key, exp=int(time.time()) - 600)
    async with running(issuer(jwks_url=jwks_server.url)) as verifier:
        error = await rejected(verifier, token)
    assert error.headers["www-authenticate"].startswith("Bearer")
    for part in token.split("."):
        assert part not in error.message


def test_looks_like_jwt_tells_a_jwt_from_an_api_key(rsa_key: rsa.RSAPrivateKey) -> None:
    assert JwtVerifier.looks_like_jwt(sign(rsa_key))
    assert not JwtVerifier.looks_like_jwt("sk-dte-0123456789abcdef")
    assert not JwtVerifier.looks_like_jwt("a.b")
    assert not JwtVerifier.looks_like_jwt("a.b.c.d")
    assert not JwtVerifier.looks_like_jwt("a+b.c.d")


# --- JWKS fetching and caching ---


async def test_cached_keys_verify_without_a_request(
    jwks_server: JwksServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    async with running(issuer(jwks_url=jwks_server.url)) as verifier:
        assert jwks_server.requests == 1  # the prefetch in start()
        for _ in range(10):
            await verifier.verify(sign(rsa_key))
        assert jwks_server.requests == 1
        assert verifier.counts()[("accepted",)] == 10
        assert verifier.counts()[("jwks_fetch",)] == 1


async def test_a_rotated_key_is_accepted_after_exactly_one_refetch(
    jwks_server: JwksServer, rsa_key: rsa.RSAPrivateKey, rsa_key_2: rsa.RSAPrivateKey
) -> None:
    async with running(issuer(jwks_url=jwks_server.url)) as verifier:
        await verifier.verify(sign(rsa_key, kid="k1"))
        jwks_server.jwks = {"keys": [public_jwk(rsa_key_2, "k2")]}
        principal = await verifier.verify(sign(rsa_key_2, kid="k2"))
        assert principal.subject == "user-1"
        assert jwks_server.requests == 2
        await verifier.verify(sign(rsa_key_2, kid="k2"))
        assert jwks_server.requests == 2


async def test_a_burst_of_unknown_kids_makes_at_most_one_fetch(
    jwks_server: JwksServer, rsa_key_2: rsa.RSAPrivateKey
) -> None:
    jwks_server.delay = 0.05  # the burst arrives while the one refetch is in flight
    async with running(issuer(jwks_url=jwks_server.url, jwks_refetch_interval_seconds=60)) as v:
        assert jwks_server.requests == 1
        tokens = [sign(rsa_key_2, kid=f"random-{n}") for n in range(20)]
        results = await asyncio.gather(*(v.verify(t) for t in tokens), return_exceptions=True)
        assert all(isinstance(r, AuthenticationFailed) and r.code == "unknown_key" for r in results)
        assert jwks_server.requests == 2
        for token in tokens[:5]:  # later ones within the interval make none either
            await rejected(v, token)
        assert jwks_server.requests == 2
        assert v.counts()[("rejected",)] == 25


async def test_an_unknown_kid_refetches_again_after_the_interval(
    jwks_server: JwksServer, rsa_key_2: rsa.RSAPrivateKey
) -> None:
    settings = issuer(jwks_url=jwks_server.url, jwks_refetch_interval_seconds=0.2)
    async with running(settings) as verifier:
        await rejected(verifier, sign(rsa_key_2, kid="k2"))
        await rejected(verifier, sign(rsa_key_2, kid="k2"))
        assert jwks_server.requests == 2
        jwks_server.jwks = {"keys": [public_jwk(rsa_key_2, "k2")]}
        await asyncio.sleep(0.25)
        assert (await verifier.verify(sign(rsa_key_2, kid="k2"))).subject == "user-1"
        assert jwks_server.requests == 3


async def test_a_failing_jwks_endpoint_keeps_the_cached_keys(
    jwks_server: JwksServer, rsa_key: rsa.RSAPrivateKey, rsa_key_2: rsa.RSAPrivateKey
) -> None:
    settings = issuer(jwks_url=jwks_server.url, jwks_cache_seconds=0.1)
    async with running(settings) as verifier:
        jwks_server.failing = True
        await asyncio.sleep(0.15)  # the cache is stale: the next verify refetches and fails
        assert (await verifier.verify(sign(rsa_key))).subject == "user-1"
        assert jwks_server.requests == 2
        for _ in range(3):  # while it fails, requests do not each wait for another attempt
            await verifier.verify(sign(rsa_key))
        assert jwks_server.requests == 2
        # An unknown kid's refetch fails too; the cached key still works afterwards.
        assert (await rejected(verifier, sign(rsa_key_2, kid="k2"))).code == "unknown_key"
        assert (await verifier.verify(sign(rsa_key))).subject == "user-1"
        counts = verifier.counts()
    assert counts[("jwks_fetch_error",)] >= 1
    assert counts[("jwks_fetch",)] == jwks_server.requests


async def test_an_emptied_jwks_keeps_the_cached_keys(
    jwks_server: JwksServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    settings = issuer(jwks_url=jwks_server.url, jwks_cache_seconds=0.1)
    async with running(settings) as verifier:
        jwks_server.jwks = {"keys": [{"kty": "oct", "k": b64(SECRET.encode())}]}  # none usable
        await asyncio.sleep(0.15)
        assert (await verifier.verify(sign(rsa_key))).subject == "user-1"
        assert jwks_server.requests == 2
        assert verifier.counts()[("jwks_fetch_error",)] == 1


async def test_verifying_with_a_jwks_url_before_start_is_a_programming_error(
    jwks_server: JwksServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    verifier = JwtVerifier(
        [issuer(jwks_url=jwks_server.url)], profiles={}, default_limits=DEFAULT_LIMITS
    )
    with pytest.raises(RuntimeError, match="start"):
        await verifier.verify(sign(rsa_key))
    await verifier.close()


async def test_a_failed_prefetch_is_not_fatal_and_is_retried(
    jwks_server: JwksServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    jwks_server.failing = True
    settings = issuer(jwks_url=jwks_server.url, jwks_refetch_interval_seconds=0)
    async with running(settings) as verifier:
        assert verifier.counts()[("jwks_fetch_error",)] == 1
        assert (await rejected(verifier, sign(rsa_key))).code == "unknown_key"
        jwks_server.failing = False
        assert (await verifier.verify(sign(rsa_key))).subject == "user-1"


async def test_an_unreachable_jwks_url_is_not_fatal(rsa_key: rsa.RSAPrivateKey) -> None:
    settings = issuer(jwks_url="http://127.0.0.1:9/jwks.json", keys=[public_pem(rsa_key)])
    async with running(settings) as verifier:
        assert verifier.counts()[("jwks_fetch_error",)] == 1
        assert (await verifier.verify(sign(rsa_key, kid=None))).subject == "user-1"


# --- configuration ---


def test_a_key_that_looks_like_json_but_is_broken_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"keys\[0\]"):
        JwtVerifier(
            [issuer(keys=['{"kty": "RSA", "n": '])], profiles={}, default_limits=DEFAULT_LIMITS
        )


def test_a_broken_pem_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="PEM"):
        JwtVerifier(
            [issuer(keys=["-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----"])],
            profiles={},
            default_limits=DEFAULT_LIMITS,
        )


def test_an_issuer_listed_twice_is_a_config_error() -> None:
    settings = issuer(keys=[SECRET], algorithms=["HS256"])
    with pytest.raises(ConfigError, match="repeated"):
        JwtVerifier([settings, settings], profiles={}, default_limits=DEFAULT_LIMITS)


async def test_a_static_jwks_with_an_hmac_key_and_its_kid_is_used() -> None:
    jwks = {"keys": [json.loads(HMACAlgorithm.to_jwk(SECRET.encode())) | {"kid": "h1"}]}
    settings = issuer(keys=[json.dumps(jwks)], algorithms=["HS256"])
    async with running(settings) as verifier:
        assert (await verifier.verify(sign(SECRET, "HS256", kid="h1"))).subject == "user-1"
        assert (await rejected(verifier, sign(SECRET, "HS256", kid="h2"))).code == "unknown_key"
