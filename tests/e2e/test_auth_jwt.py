"""JWT auth through a real ``dtecho serve`` process whose issuer publishes a JWKS over HTTP.

The JWKS endpoint is a small HTTP server in this test process (the identity provider); the
server fetches it exactly as it would fetch Auth0's or Keycloak's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import openai
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from support import ServerProcess

pytestmark = pytest.mark.e2e

ISSUER = "https://id.example.test/"
AUDIENCE = "dtecho"


class IdentityProvider:
    """Serves a mutable JWKS; counts fetches."""

    def __init__(self) -> None:
        self.jwks: dict[str, Any] = {"keys": []}
        self.fetches = 0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.fetches += 1
                body = json.dumps(provider.jwks).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/.well-known/jwks.json"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def publish(self, key: rsa.RSAPrivateKey, kid: str) -> None:
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        self.jwks["keys"].append({**public, "kid": kid, "alg": "RS256", "use": "sig"})


@pytest.fixture(scope="module")
def signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def provider(signing_key: rsa.RSAPrivateKey) -> Iterator[IdentityProvider]:
    idp = IdentityProvider()
    idp.publish(signing_key, "k1")
    yield idp
    idp.http.shutdown()


@pytest.fixture(scope="module")
def jwt_server(provider: IdentityProvider, tmp_path_factory: pytest.TempPathFactory):
    from support import start_server

    config = {
        "auth": {
            "mode": "keys+jwt",
            "issuers": [
                {
                    "issuer": ISSUER,
                    "audience": AUDIENCE,
                    "jwks_url": provider.url,
                    "jwks_refetch_interval_seconds": 0.5,
                    "models_claim": "models",
                    "limits_claim": "tier",
                    "leeway_seconds": 5,
                }
            ],
        },
        "limits": {"profiles": {"free": {"rpm": 2}}},
    }
    server = start_server(tmp_path_factory.mktemp("jwt-server"), config)
    yield server
    server.stop()


def token(key: Any, alg: str = "RS256", kid: str | None = "k1", **claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "iat": now, "exp": now + 300}
    payload.update(claims)
    payload = {name: value for name, value in payload.items() if value is not None}
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid} if kid else None)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def get_models(server: ServerProcess, bearer: str) -> httpx.Response:
    return httpx.get(f"{server.base_url}/v1/models", headers={"authorization": f"Bearer {bearer}"})


def assert_401(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"]["type"] == "authentication_error"
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_a_valid_token_works_with_the_openai_sdk(
    jwt_server: ServerProcess, signing_key: rsa.RSAPrivateKey
) -> None:
    client = openai.OpenAI(
        base_url=f"{jwt_server.base_url}/v1", api_key=token(signing_key), max_retries=0
    )
    completion = client.chat.completions.create(
        model="dtesn-echo",
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=4,
        extra_body={"enable_caching": False},
    )
    assert completion.choices[0].message.content is not None


def test_attacks_are_rejected(jwt_server: ServerProcess, signing_key: rsa.RSAPrivateKey) -> None:
    header = b64(json.dumps({"alg": "none", "typ": "JWT", "kid": "k1"}).encode())
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "iat": now, "exp": now + 300}
    assert_401(get_models(jwt_server, f"{header}.{b64(json.dumps(body).encode())}."))

    # HS256 "signed" with the issuer's public key as the HMAC secret (key confusion).
    public_pem = signing_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
    signing_input = f"{head}.{b64(json.dumps(body).encode())}"
    forged = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    assert_401(get_models(jwt_server, f"{signing_input}.{b64(forged)}"))

    valid = token(signing_key)
    head, payload, signature = valid.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    tampered = b64(json.dumps({**claims, "sub": "admin"}).encode())
    assert_401(get_models(jwt_server, f"{head}.{tampered}.{signature}"))
    assert_401(get_models(jwt_server, token(signing_key, exp=now - 60, iat=now - 120)))
    assert_401(get_models(jwt_server, token(signing_key, nbf=now + 600)))
    assert_401(get_models(jwt_server, token(signing_key, aud="someone-else")))
    assert_401(get_models(jwt_server, token(signing_key, iss="https://evil.example/")))
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert_401(get_models(jwt_server, token(other)))  # right kid, wrong key
    assert get_models(jwt_server, valid).status_code == 200


def test_claims_map_to_models_roles_and_limits(
    jwt_server: ServerProcess, signing_key: rsa.RSAPrivateKey
) -> None:
    limited = token(signing_key, sub="user-free", tier="free", models=["dtesn-echo"])
    response = httpx.post(
        f"{jwt_server.base_url}/v1/embeddings",
        json={"model": "dtesn-embed", "input": "hi"},
        headers={"authorization": f"Bearer {limited}"},
    )
    assert response.status_code == 403 and response.json()["error"]["param"] == "model"
    # The "free" profile: 2 requests per minute (the refused 403 above was not admitted).
    answers = [get_models(jwt_server, limited) for _ in range(3)]
    assert [answer.status_code for answer in answers] == [200, 200, 429]
    assert answers[2].headers["x-ratelimit-limit-requests"] == "2"

    assert get_models(jwt_server, token(signing_key)).status_code == 200
    admin = httpx.get(
        f"{jwt_server.base_url}/admin/keys",
        headers={"authorization": f"Bearer {token(signing_key, roles=['admin'])}"},
    )
    assert admin.status_code == 200
    plain = httpx.get(
        f"{jwt_server.base_url}/admin/keys",
        headers={"authorization": f"Bearer {token(signing_key)}"},
    )
    assert plain.status_code == 403


def test_jwks_rotation_is_picked_up(
    jwt_server: ServerProcess, provider: IdentityProvider, signing_key: rsa.RSAPrivateKey
) -> None:
    assert get_models(jwt_server, token(signing_key)).status_code == 200
    rotated = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    fresh = token(rotated, kid="k2")
    time.sleep(0.6)  # past the refetch interval since any earlier unknown-kid refetch
    provider.publish(rotated, "k2")
    before = provider.fetches
    assert get_models(jwt_server, fresh).status_code == 200
    assert provider.fetches == before + 1  # one refetch for the unknown kid
    assert get_models(jwt_server, fresh).status_code == 200
    assert provider.fetches == before + 1  # and cached from then on
