"""Secret references (``env:``, ``file:``, ``vault:``) and that no secret value ever leaks.

A Vault server cannot run here, so :class:`FakeVault` stands in for it: a small HTTP server in
a thread that implements exactly the two KV-v2 and AppRole endpoints ``hvac`` calls
(``GET /v1/<mount>/data/<path>`` and ``POST /v1/auth/approle/login``) with Vault's status
codes and JSON bodies. Everything else (hvac, the settings, the CLI, the engine) is real.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from dtecho.config import ConfigError, OpenAIModelSpec, load_settings
from dtecho.engines.openai_upstream import OpenAIUpstreamEngine
from dtecho.security.secrets import (
    SecretError,
    clear_vault_clients,
    is_reference,
    resolve_secret,
)
from support import free_port

TOKEN = "s.root-token-7f3a9c"
ROLE_ID = "role-4d1b"
SECRET_ID = "secret-id-88e2"
APPROLE_TOKEN = "s.approle-token-2c6d"
ADMIN_VALUE = "adm1n-v4lue-from-vault"
DB_PASSWORD = "db-pa55word"


class FakeVault:
    """Vault's KV v2 read and AppRole login over HTTP, on a free port of 127.0.0.1."""

    def __init__(self, secrets: dict[str, dict[str, Any]]) -> None:
        self.secrets = secrets  # "mount/path" -> the secret's data
        self.tokens = {TOKEN, APPROLE_TOKEN}
        self.logins = 0
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # method, path, headers
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeVault:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        vault = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep pytest's output clean

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:
                vault.requests.append(("GET", self.path, dict(self.headers)))
                if self.headers.get("X-Vault-Token") not in vault.tokens:
                    return self._answer(403, {"errors": ["permission denied"]})
                mount, sep, path = self.path.removeprefix("/v1/").partition("/data/")
                data = vault.secrets.get(f"{mount}/{path}") if sep else None
                if data is None:
                    return self._answer(404, {"errors": []})
                metadata = {"version": 1, "deletion_time": "", "destroyed": False}
                return self._answer(200, {"data": {"data": data, "metadata": metadata}})

            def do_POST(self) -> None:
                vault.requests.append(("POST", self.path, dict(self.headers)))
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path != "/v1/auth/approle/login":
                    return self._answer(404, {"errors": []})
                if body.get("role_id") != ROLE_ID or body.get("secret_id") != SECRET_ID:
                    return self._answer(400, {"errors": ["invalid role or secret ID"]})
                vault.logins += 1
                auth = {"client_token": APPROLE_TOKEN, "lease_duration": 3600, "renewable": True}
                return self._answer(200, {"auth": {**auth, "policies": ["dtecho"]}})

        return Handler


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No Vault settings or cached clients from the outside or from another test."""
    for name in ("VAULT_ADDR", "VAULT_TOKEN", "VAULT_ROLE_ID", "VAULT_SECRET_ID"):
        monkeypatch.delenv(name, raising=False)
    for name in ("VAULT_NAMESPACE", "VAULT_CACERT", "DTECHO_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    clear_vault_clients()
    yield
    clear_vault_clients()


@pytest.fixture
def vault() -> Iterator[FakeVault]:
    secrets = {
        "secret/dtecho": {"admin": ADMIN_VALUE, "hmac": "hmac-v4lue", "port": 5432},
        "secret/dtecho/db": {"url": f"postgresql+asyncpg://app:{DB_PASSWORD}@db/dtecho"},
    }
    with FakeVault(secrets) as server:
        yield server


def _use_token(monkeypatch: pytest.MonkeyPatch, vault: FakeVault, token: str = TOKEN) -> None:
    monkeypatch.setenv("VAULT_ADDR", vault.url)
    monkeypatch.setenv("VAULT_TOKEN", token)


def _use_approle(monkeypatch: pytest.MonkeyPatch, vault: FakeVault) -> None:
    monkeypatch.setenv("VAULT_ADDR", vault.url)
    monkeypatch.setenv("VAULT_ROLE_ID", ROLE_ID)
    monkeypatch.setenv("VAULT_SECRET_ID", SECRET_ID)


# --- env: and file: and literals ---------------------------------------------------------


def test_env_reference_reads_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DTECHO_TEST_SECRET", " spaced value ")
    assert resolve_secret("env:DTECHO_TEST_SECRET") == " spaced value "


def test_missing_env_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DTECHO_TEST_ABSENT", raising=False)
    with pytest.raises(SecretError, match="DTECHO_TEST_ABSENT is not set"):
        resolve_secret("env:DTECHO_TEST_ABSENT")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"s3cret\n", "s3cret"),
        (b"s3cret", "s3cret"),
        (b"s3cret\r\n", "s3cret"),
        (b"s3cret\n\n", "s3cret\n"),  # only one newline is the file's ending
        (b"  s3cret \t\n", "  s3cret \t"),  # other whitespace belongs to the secret
        (b"line1\r\nline2\n", "line1\r\nline2"),  # no newline translation inside
    ],
)
def test_file_reference_strips_one_trailing_newline_only(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    path = tmp_path / "secret.txt"
    path.write_bytes(content)
    assert resolve_secret(f"file:{path}") == expected


def test_unreadable_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.txt"
    with pytest.raises(SecretError, match=str(path)):
        resolve_secret(f"file:{path}")


@pytest.mark.parametrize("literal", ["plain-key", "", "http://x:y@z", "Env:X", "sk-env:abc"])
def test_literals_pass_through(literal: str) -> None:
    assert not is_reference(literal)
    assert resolve_secret(literal) == literal


@pytest.mark.parametrize("reference", ["env:X", "file:/run/x", "vault:secret/a#b"])
def test_references_are_recognised(reference: str) -> None:
    assert is_reference(reference)


@pytest.mark.parametrize(
    "reference",
    ["env:", "file:", "vault:secret/dtecho", "vault:secret/dtecho#", "vault:secret#admin",
     "vault:#admin", "vault:"],
)  # fmt: skip
def test_malformed_references_are_refused(reference: str) -> None:
    with pytest.raises(SecretError):
        resolve_secret(reference)


# --- vault: ------------------------------------------------------------------------------


def test_vault_reference_with_token(monkeypatch: pytest.MonkeyPatch, vault: FakeVault) -> None:
    _use_token(monkeypatch, vault)
    assert resolve_secret("vault:secret/dtecho#admin") == ADMIN_VALUE
    assert resolve_secret("vault:secret/dtecho/db#url").endswith(f"{DB_PASSWORD}@db/dtecho")
    assert resolve_secret("vault:secret/dtecho#port") == "5432"  # JSON values as JSON text
    assert [path for _, path, _ in vault.requests] == [
        "/v1/secret/data/dtecho",
        "/v1/secret/data/dtecho/db",
        "/v1/secret/data/dtecho",
    ]
    assert vault.logins == 0


def test_vault_namespace_is_sent(monkeypatch: pytest.MonkeyPatch, vault: FakeVault) -> None:
    _use_token(monkeypatch, vault)
    monkeypatch.setenv("VAULT_NAMESPACE", "team-a")
    assert resolve_secret("vault:secret/dtecho#admin") == ADMIN_VALUE
    assert vault.requests[-1][2].get("X-Vault-Namespace") == "team-a"


def test_vault_approle_logs_in_once_for_two_secrets(
    monkeypatch: pytest.MonkeyPatch, vault: FakeVault
) -> None:
    _use_approle(monkeypatch, vault)
    assert resolve_secret("vault:secret/dtecho#admin") == ADMIN_VALUE
    assert resolve_secret("vault:secret/dtecho#hmac") == "hmac-v4lue"
    assert vault.logins == 1
    reads = [headers for method, _, headers in vault.requests if method == "GET"]
    assert [headers.get("X-Vault-Token") for headers in reads] == [APPROLE_TOKEN] * 2


def test_vault_approle_with_wrong_secret_id(
    monkeypatch: pytest.MonkeyPatch, vault: FakeVault
) -> None:
    _use_approle(monkeypatch, vault)
    monkeypatch.setenv("VAULT_SECRET_ID", "wrong-secret-id")
    with pytest.raises(SecretError) as caught:
        resolve_secret("vault:secret/dtecho#admin")
    message = str(caught.value)
    assert message.startswith("vault:secret/dtecho#admin: AppRole login")
    assert "invalid role or secret ID" in message
    assert "wrong-secret-id" not in message and ROLE_ID not in message


@pytest.mark.parametrize(
    ("reference", "token", "problem"),
    [
        ("vault:secret/dtecho#admin", "s.wrong-token-1234", "permission denied"),
        ("vault:secret/nothing/here#admin", TOKEN, "no secret at this path"),
        ("vault:secret/dtecho#nofield", TOKEN, "no field 'nofield'"),
    ],
)
def test_vault_errors_name_the_reference_and_hide_token_and_value(
    monkeypatch: pytest.MonkeyPatch, vault: FakeVault, reference: str, token: str, problem: str
) -> None:
    _use_token(monkeypatch, vault, token)
    with pytest.raises(SecretError) as caught:
        resolve_secret(reference)
    message = str(caught.value)
    assert message.startswith(f"{reference}: ")
    assert problem in message
    assert "\n" not in message
    for hidden in (token, TOKEN, ADMIN_VALUE, "hmac-v4lue"):
        assert hidden not in message


def test_unreachable_vault_names_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    address = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("VAULT_ADDR", address)
    monkeypatch.setenv("VAULT_TOKEN", TOKEN)
    with pytest.raises(SecretError) as caught:
        resolve_secret("vault:secret/dtecho#admin")
    message = str(caught.value)
    assert message.startswith("vault:secret/dtecho#admin: cannot reach Vault at " + address)
    assert TOKEN not in message


def test_vault_without_address_or_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SecretError, match="VAULT_ADDR is not set"):
        resolve_secret("vault:secret/dtecho#admin")
    monkeypatch.setenv("VAULT_ADDR", "http://127.0.0.1:1")
    with pytest.raises(SecretError, match="set VAULT_TOKEN, or VAULT_ROLE_ID"):
        resolve_secret("vault:secret/dtecho#admin")


# --- settings and `dtecho config show` ---------------------------------------------------


def _write_config(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "dtecho.yaml"
    path.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), **config}), "utf-8")
    return path


VAULT_CONFIG: dict[str, Any] = {
    "auth": {
        "mode": "keys+jwt",
        "admin_key": "vault:secret/dtecho#admin",
        "key_secret": "vault:secret/dtecho#hmac",
        "issuers": [{"issuer": "i", "keys": ["vault:secret/dtecho#hmac"], "algorithms": ["HS256"]}],
    },
    "database_url": "vault:secret/dtecho/db#url",
    "models": [
        {"name": "up", "engine": "openai", "base_url": "http://127.0.0.1:1/v1",
         "api_key": "vault:secret/dtecho#admin"},
    ],
}  # fmt: skip


def test_settings_resolve_vault_references_and_redact_them(
    monkeypatch: pytest.MonkeyPatch, vault: FakeVault, tmp_path: Path
) -> None:
    _use_approle(monkeypatch, vault)
    settings = load_settings(_write_config(tmp_path, VAULT_CONFIG))
    assert settings.auth.admin_key is not None
    assert settings.auth.admin_key.get_secret_value() == ADMIN_VALUE
    assert settings.store_url == f"postgresql+asyncpg://app:{DB_PASSWORD}@db/dtecho"
    assert vault.logins == 1  # four secrets, one login

    shown = settings.redacted()
    text = json.dumps(shown) + repr(settings) + str(settings)
    for hidden in (ADMIN_VALUE, "hmac-v4lue", DB_PASSWORD, APPROLE_TOKEN):
        assert hidden not in text
    assert shown["auth"]["admin_key"] == "**********"
    assert shown["auth"]["key_secret"] == "**********"
    assert shown["auth"]["issuers"][0]["keys"] == ["**********"]
    assert shown["models"][0]["api_key"] == "**********"
    assert shown["database_url"] == "**********"
    assert shown["store_url"] == "postgresql+asyncpg://app:***@db/dtecho"


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    child_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("DTECHO_", "DTESN_", "VAULT_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "dtecho", *args],
        capture_output=True,
        text=True,
        env={**child_env, **env},
        timeout=60,
    )


@pytest.mark.parametrize("output_format", ["json", "yaml"])
def test_config_show_never_prints_a_secret(
    vault: FakeVault, tmp_path: Path, output_format: str
) -> None:
    config = _write_config(tmp_path, VAULT_CONFIG)
    env = {"VAULT_ADDR": vault.url, "VAULT_TOKEN": TOKEN}
    result = run_cli("config", "show", "--config", str(config), "--format", output_format, env=env)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    for hidden in (ADMIN_VALUE, "hmac-v4lue", DB_PASSWORD, TOKEN):
        assert hidden not in output
    shown = json.loads(result.stdout) if output_format == "json" else yaml.safe_load(result.stdout)
    assert shown["auth"]["admin_key"] == "**********"
    assert shown["auth"]["issuers"][0]["keys"] == ["**********"]
    assert shown["models"][0]["api_key"] == "**********"
    assert shown["database_url"] == "**********"
    assert any(method == "GET" for method, _, _ in vault.requests)  # it did read from Vault


def test_unresolvable_reference_stops_config_show_with_one_line(
    vault: FakeVault, tmp_path: Path
) -> None:
    config = _write_config(tmp_path, {"auth": {"admin_key": "vault:secret/dtecho#missing"}})
    env = {"VAULT_ADDR": vault.url, "VAULT_TOKEN": TOKEN}
    result = run_cli("config", "show", "--config", str(config), env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dtecho: invalid setting auth.admin_key: ")
    assert "vault:secret/dtecho#missing: the secret has no field 'missing'" in lines[0]
    assert TOKEN not in result.stderr and ADMIN_VALUE not in result.stderr
    assert result.stdout == ""


def test_unresolvable_env_reference_names_field_and_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DTECHO_TEST_ABSENT", raising=False)
    spec = {"name": "up", "engine": "openai", "base_url": "http://h"}
    spec["api_key"] = "env:DTECHO_TEST_ABSENT"
    with pytest.raises(ConfigError) as caught:
        load_settings(models=[spec])
    assert str(caught.value) == (
        "invalid setting models.0.openai.api_key: "
        "Value error, environment variable DTECHO_TEST_ABSENT is not set"
    )


@pytest.mark.parametrize(
    "config",
    [
        {"auth": {"mode": "jwt", "admin_key": "literal-admin-secret"}},  # auth's own check
        {"models": [{"name": "a", "engine": "nope", "api_key": "literal-admin-secret"}]},
        {"models": [{"name": "a", "engine": "openai", "base_url": "http://h", "api_key": k}
                    for k in ("literal-admin-secret", "x")]},  # duplicate names
    ],
)  # fmt: skip
def test_section_errors_do_not_show_nested_secret_literals(config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(**config)
    assert "literal-admin-secret" not in str(caught.value)
    assert str(caught.value).startswith(f"invalid setting {next(iter(config))}")


def test_store_url_hides_a_password_holding_a_slash() -> None:
    settings = load_settings(database_url="postgresql+asyncpg://app:pa/ss@db/dtecho")
    assert settings.redacted()["store_url"] == "postgresql+asyncpg://app:***@db/dtecho"


# --- the OpenAI upstream engine ----------------------------------------------------------


class FakeUpstream:
    """An OpenAI-compatible ``/v1/chat/completions`` that records the headers it was sent."""

    def __init__(self) -> None:
        self.authorizations: list[str | None] = []
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    async def _chat(self, request: web.Request) -> web.Response:
        self.authorizations.append(request.headers.get("Authorization"))
        body = await request.json()
        return web.json_response({"object": "chat.completion", "model": body["model"]})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.mark.parametrize("with_legacy_env", [False, True])
async def test_engine_sends_the_resolved_api_key(
    monkeypatch: pytest.MonkeyPatch, with_legacy_env: bool
) -> None:
    monkeypatch.setenv("DTECHO_TEST_UPSTREAM_KEY", "sk-upstream-value")
    monkeypatch.setenv("DTECHO_TEST_LEGACY_KEY", "sk-legacy-value")
    upstream = FakeUpstream()
    await upstream.start()
    try:
        spec = OpenAIModelSpec(
            name="up",
            engine="openai",
            base_url=f"http://127.0.0.1:{upstream.port}/v1",
            upstream_model="real-model",
            api_key="env:DTECHO_TEST_UPSTREAM_KEY",
            api_key_env="DTECHO_TEST_LEGACY_KEY" if with_legacy_env else None,
        )
        assert "sk-upstream-value" not in repr(spec)
        engine = OpenAIUpstreamEngine(spec)
        await engine.start()
        try:
            answer = await engine.relay("chat/completions", {"messages": []}, stream=False)
        finally:
            await engine.close()
    finally:
        await upstream.stop()
    assert answer.status == 200
    assert answer.body is not None and json.loads(answer.body)["model"] == "real-model"
    # api_key wins over the older api_key_env when both are set.
    assert upstream.authorizations == ["Bearer sk-upstream-value"]


async def test_engine_falls_back_to_api_key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DTECHO_TEST_LEGACY_KEY", "sk-legacy-value")
    upstream = FakeUpstream()
    await upstream.start()
    try:
        spec = OpenAIModelSpec(
            name="up",
            engine="openai",
            base_url=f"http://127.0.0.1:{upstream.port}/v1",
            api_key_env="DTECHO_TEST_LEGACY_KEY",
        )
        engine = OpenAIUpstreamEngine(spec)
        await engine.start()
        try:
            await engine.relay("chat/completions", {"messages": []}, stream=False)
        finally:
            await engine.close()
    finally:
        await upstream.stop()
    assert upstream.authorizations == ["Bearer sk-legacy-value"]
