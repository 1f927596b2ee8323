"""API keys, admin API, limits and accounting through real ``dtecho serve`` processes.

Every request goes over real HTTP; clients are the official ``openai`` SDK and httpx.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import httpx
import openai
import pytest

from support import RedisProcess, ServerProcess, wait_until

pytestmark = pytest.mark.e2e

ADMIN_KEY = "admin-test-key-0123456789"
CHAT = [{"role": "user", "content": "Return the value of"}]


def _config(**extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "auth": {"mode": "keys", "admin_key": "env:DTECHO_TEST_ADMIN_KEY"},
        "usage_flush_seconds": 0.2,
    }
    for section, values in extra.items():
        if isinstance(values, dict) and isinstance(config.get(section), dict):
            config[section] = {**config[section], **values}
        else:
            config[section] = values
    return config


def _env() -> dict[str, str]:
    return {"DTECHO_TEST_ADMIN_KEY": ADMIN_KEY}


def admin(server: ServerProcess) -> httpx.Client:
    return httpx.Client(
        base_url=server.base_url, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
    )


def create_key(server: ServerProcess, **fields: Any) -> dict[str, Any]:
    with admin(server) as client:
        response = client.post("/admin/keys", json=fields)
    assert response.status_code == 201, response.text
    return response.json()


def sdk(server: ServerProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0)


def chat(server: ServerProcess, key: str, **kwargs: Any) -> httpx.Response:
    body = {"model": "dtesn-echo", "messages": CHAT, "max_tokens": 8, "enable_caching": False}
    body.update(kwargs)
    return httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )


def assert_auth_error(response: httpx.Response, status: int = 401) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    if status == 401:
        assert error["type"] == "authentication_error"
        assert response.headers["www-authenticate"].startswith("Bearer")
    else:
        assert error["type"] == "permission_error"
    assert "Traceback" not in response.text
    return error


@pytest.fixture
def keyed(server_factory: Any) -> ServerProcess:
    return server_factory(_config(), env=_env())


# ---- credentials ----------------------------------------------------------------------------


def test_missing_malformed_and_unknown_credentials_get_401(keyed: ServerProcess) -> None:
    url = f"{keyed.base_url}/v1/models"
    assert_auth_error(httpx.get(url))
    assert_auth_error(httpx.get(url, headers={"authorization": "Basic Zm9vOmJhcg=="}))
    assert_auth_error(httpx.get(url, headers={"authorization": "Bearer sk-dte-short"}))
    unknown = "sk-dte-" + "A" * 43
    error = assert_auth_error(httpx.get(url, headers={"authorization": f"Bearer {unknown}"}))
    assert error["code"] == "invalid_api_key"
    assert unknown not in json.dumps(error)
    # Health and metrics stay public by default.
    assert httpx.get(f"{keyed.base_url}/health/live").status_code == 200
    assert httpx.get(f"{keyed.base_url}/metrics").status_code == 200


def test_admin_api_needs_the_admin_key(keyed: ServerProcess) -> None:
    key = create_key(keyed, name="plain")["key"]
    response = httpx.get(f"{keyed.base_url}/admin/keys", headers={"authorization": f"Bearer {key}"})
    assert_auth_error(response, 403)
    assert_auth_error(httpx.get(f"{keyed.base_url}/admin/keys"))
    with admin(keyed) as client:
        assert client.get("/admin/keys").status_code == 200


def test_key_lifecycle_with_the_openai_sdk(keyed: ServerProcess) -> None:
    issued = create_key(keyed, name="ci", metadata={"team": "echo"}, limits={"rpm": 1000})
    key = issued["key"]
    assert key.startswith("sk-dte-") and len(key) == len("sk-dte-") + 43
    assert issued["secrets"][0]["redacted_value"].endswith(key[-4:])
    client = sdk(keyed, key)
    completion = client.chat.completions.create(
        model="dtesn-echo", messages=CHAT, max_tokens=4, extra_body={"enable_caching": False}
    )
    assert completion.choices[0].message.content is not None
    raw = client.models.with_raw_response.list()
    assert raw.headers["x-ratelimit-limit-requests"] == "1000"
    assert int(raw.headers["x-ratelimit-remaining-requests"]) <= 998

    with admin(keyed) as api:
        listed = api.get("/admin/keys").json()["data"]
        assert [item["id"] for item in listed] == [issued["id"]]
        assert key not in json.dumps(listed)
        shown = api.get(f"/admin/keys/{issued['id']}").json()
        assert shown["metadata"] == {"team": "echo"} and shown["status"] == "active"
        assert api.post(f"/admin/keys/{issued['id']}/revoke").json()["status"] == "revoked"

    def refused() -> bool:
        try:
            client.models.list()
        except openai.AuthenticationError:
            return True
        return False

    wait_until(refused, timeout=1.5)


def test_rotation_keeps_the_old_secret_for_the_grace_period(keyed: ServerProcess) -> None:
    issued = create_key(keyed, name="rotating")
    with admin(keyed) as api:
        rotated = api.post(f"/admin/keys/{issued['id']}/rotate", json={"grace_seconds": 2}).json()
    old, new = issued["key"], rotated["key"]
    assert old != new and rotated["id"] == issued["id"]
    started = time.monotonic()
    assert chat(keyed, old).status_code == 200
    assert chat(keyed, new).status_code == 200
    assert time.monotonic() - started < 2, "the grace check above ran too late to mean much"
    wait_until(lambda: chat(keyed, old).status_code == 401, timeout=4)
    assert chat(keyed, new).status_code == 200


def test_expired_keys_are_refused(keyed: ServerProcess) -> None:
    key = create_key(keyed, expires_in_seconds=1)["key"]
    assert chat(keyed, key).status_code == 200
    wait_until(lambda: chat(keyed, key).status_code == 401, timeout=4)


def test_bad_admin_requests_name_the_field(keyed: ServerProcess) -> None:
    with admin(keyed) as api:
        response = api.post("/admin/keys", json={"limits": {"rpm": 0}})
        assert response.status_code == 400
        assert "rpm" in response.json()["error"]["param"]
        response = api.post("/admin/keys", json={"colour": "blue"})
        assert response.status_code == 400 and "colour" in response.json()["error"]["param"]
        assert api.get("/admin/keys/key_missing").status_code == 404
        assert api.post("/admin/keys/key_missing/rotate").status_code == 404


# ---- permissions ------------------------------------------------------------------------------


def test_model_allow_list(keyed: ServerProcess) -> None:
    key = create_key(keyed, allowed_models=["dtesn-echo"])["key"]
    assert chat(keyed, key).status_code == 200
    response = httpx.post(
        f"{keyed.base_url}/v1/embeddings",
        json={"model": "dtesn-embed", "input": "hello"},
        headers={"authorization": f"Bearer {key}"},
    )
    error = assert_auth_error(response, 403)
    assert error["param"] == "model" and error["code"] == "model_not_allowed"
    with pytest.raises(openai.PermissionDeniedError):
        sdk(keyed, key).embeddings.create(model="dtesn-embed", input="hello")
    assert [model.id for model in sdk(keyed, key).models.list()] == ["dtesn-echo"]


def test_keys_are_stored_only_as_digests(keyed: ServerProcess) -> None:
    issued = create_key(keyed, name="digest")
    database = keyed.config_path.parent / "data" / "dtecho.db"
    stored = b"".join(path.read_bytes() for path in database.parent.glob("dtecho.db*"))
    assert issued["id"].encode() in stored  # the store does hold the key's record …
    assert issued["key"].encode() not in stored  # … but never the key itself
    assert issued["key"][7:].encode() not in stored


def test_project_header_must_match_the_keys_project(keyed: ServerProcess) -> None:
    key = create_key(keyed, project="alpha")["key"]
    headers = {"authorization": f"Bearer {key}"}
    url = f"{keyed.base_url}/v1/models"
    assert httpx.get(url, headers={**headers, "openai-project": "alpha"}).status_code == 200
    response = httpx.get(url, headers={**headers, "openai-project": "beta"})
    assert assert_auth_error(response, 403)["code"] == "project_not_allowed"


# ---- limits -----------------------------------------------------------------------------------


def test_rpm_limit_refuses_with_openai_headers(keyed: ServerProcess) -> None:
    key = create_key(keyed, limits={"rpm": 3})["key"]
    answers = [chat(keyed, key) for _ in range(5)]
    assert [answer.status_code for answer in answers] == [200, 200, 200, 429, 429]
    for answer in answers:
        assert answer.headers["x-ratelimit-limit-requests"] == "3"
        assert "x-ratelimit-reset-requests" in answer.headers
    refusal = answers[3]
    assert refusal.headers["x-ratelimit-remaining-requests"] == "0"
    assert 1 <= int(refusal.headers["retry-after"]) <= 60
    error = refusal.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    with pytest.raises(openai.RateLimitError):
        sdk(keyed, key).models.list()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_tokens_are_settled_to_the_real_usage(keyed: ServerProcess, stream: bool) -> None:
    # tpm 3000 and max_tokens 2000: two reservations cannot both fit, so the second request is
    # admitted only if the first was settled down to its real (small) usage.
    key = create_key(keyed, limits={"tpm": 3000})["key"]
    body: dict[str, Any] = {"max_tokens": 2000, "stop": ["\n"], "seed": 1, "stream": stream}
    first = chat(keyed, key, **body)
    assert first.status_code == 200
    if stream:
        assert '"usage"' not in first.text, "the usage chunk was not asked for by the client"
        assert first.text.rstrip().endswith("data: [DONE]")
    second = chat(keyed, key, **body)
    assert second.status_code == 200, second.text
    remaining = int(second.headers["x-ratelimit-remaining-tokens"])
    assert remaining < 3000 - 2000  # this request's reservation is counted …
    third = chat(keyed, key, **{**body, "max_tokens": 2900})
    assert third.status_code == 429  # … and a reservation that does not fit is refused
    assert third.headers["x-ratelimit-limit-tokens"] == "3000"


def test_stream_usage_is_accounted_and_kept_when_asked_for(keyed: ServerProcess) -> None:
    issued = create_key(keyed, name="usage")
    key = issued["key"]
    plain = chat(keyed, key, seed=3, max_tokens=12).json()["usage"]
    streamed = chat(
        keyed, key, seed=3, max_tokens=12, stream=True, stream_options={"include_usage": True}
    )
    events = [
        json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")
    ]
    assert events[-1]["usage"] == plain
    chat(keyed, key, seed=3, max_tokens=12, stream=True)  # usage asked for on its behalf

    def recorded() -> dict[str, Any] | None:
        with admin(keyed) as api:
            totals = api.get("/admin/usage", params={"key_id": issued["id"]}).json()["totals"]
        return totals if totals["requests"] == 3 else None

    totals = wait_until(recorded, timeout=5)
    assert totals["prompt_tokens"] == 3 * plain["prompt_tokens"]
    assert totals["completion_tokens"] == 3 * plain["completion_tokens"]


def test_redis_killed_mid_test_falls_back_to_local_limits(server_factory: Any) -> None:
    redis = RedisProcess()
    redis.start()
    try:
        server = server_factory(_config(limits={"redis_url": redis.url}), env=_env())
        key = create_key(server, limits={"rpm": 4})["key"]
        assert [chat(server, key).status_code for _ in range(2)] == [200, 200]
        redis.kill()
        # Served under this replica's own limits: 4 more admitted locally, then refused.
        answers = [chat(server, key).status_code for _ in range(6)]
        assert answers == [200, 200, 200, 200, 429, 429]
        metrics = httpx.get(f"{server.base_url}/metrics").text
        assert 'dtecho_rate_limit_decisions_total{backend="redis",outcome="fallback"' in metrics
    finally:
        redis.kill()


def test_auth_off_on_a_public_interface_warns_loudly(server_factory: Any) -> None:
    server = server_factory({"host": "0.0.0.0"})
    assert "AUTH_DISABLED_ON_PUBLIC_INTERFACE" in server.logs()
    quiet = server_factory({})
    assert "AUTH_DISABLED_ON_PUBLIC_INTERFACE" not in quiet.logs()


# ---- audit and CLI ----------------------------------------------------------------------------


def test_audit_log_records_admin_operations_and_failures(keyed: ServerProcess) -> None:
    issued = create_key(keyed, name="audited")
    with admin(keyed) as api:
        api.post(f"/admin/keys/{issued['id']}/revoke")
    httpx.get(f"{keyed.base_url}/v1/models", headers={"authorization": "Bearer nope"})

    def events() -> list[dict[str, Any]] | None:
        with admin(keyed) as api:
            found = api.get("/admin/audit").json()["data"]
        return found if len(found) >= 3 else None

    found = wait_until(events, timeout=5)
    actions = [event["action"] for event in found]
    assert actions[:3] == ["auth.failure", "key.revoke", "key.create"]  # newest first
    assert found[1]["target"] == issued["id"] and found[1]["actor"] == "admin"
    assert found[0]["outcome"] == "failure" and found[0]["client_ip"] == "127.0.0.1"
    assert issued["key"] not in json.dumps(found) and ADMIN_KEY not in json.dumps(found)
    with admin(keyed) as api:
        only = api.get("/admin/audit", params={"action": "key.create"}).json()["data"]
        assert [event["action"] for event in only] == ["key.create"]
        page = api.get("/admin/audit", params={"limit": 1}).json()
        older = api.get("/admin/audit", params={"before_id": page["next_before_id"]}).json()
        assert older["data"][0]["id"] < page["data"][0]["id"]
    assert issued["key"] not in keyed.logs()


def test_keys_cli_issues_keys_the_server_accepts(keyed: ServerProcess) -> None:
    def cli(*args: str) -> dict[str, Any]:
        result = subprocess.run(
            [sys.executable, "-m", "dtecho", "keys", *args, "--config", str(keyed.config_path)],
            capture_output=True,
            text=True,
            env={**_cli_env(), **_env()},
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    issued = cli("create", "--name", "from-cli", "--rpm", "100", "--model", "dtesn-echo")
    assert issued["limits"] == {"rpm": 100}
    assert chat(keyed, issued["key"]).status_code == 200
    assert [item["id"] for item in cli("list")["data"]] == [issued["id"]]
    rotated = cli("rotate", issued["id"], "--grace", "0")
    wait_until(lambda: chat(keyed, issued["key"]).status_code == 401, timeout=2)
    assert chat(keyed, rotated["key"]).status_code == 200
    assert cli("revoke", issued["id"])["status"] == "revoked"
    wait_until(lambda: chat(keyed, rotated["key"]).status_code == 401, timeout=2)


def _cli_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("DTECHO_", "DTESN_CACHE_"))}
