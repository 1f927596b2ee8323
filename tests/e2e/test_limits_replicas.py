"""Two ``dtecho serve`` replicas sharing one store (PostgreSQL) and, where named, one Redis.

- Limits on Redis are exact across replicas: one key at ``rpm: 600`` loaded at four times
  that rate, alternating between the replicas, is admitted 600 times in a minute, and every
  other request is a well-formed 429.
- A key revoked through one replica is refused by the other within a second: pushed over
  Redis pub/sub, or, without Redis, through the 0.5 s lifetime of the in-process key cache.

The load comes from a separate process (``_rate_load.py``), so that its schedule does not
depend on the test's own process.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from support import ServerProcess, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

ADMIN_KEY = "admin-replica-key-0123456789"
KEY_SECRET = "replica-shared-hmac-secret-0123456789abcdef"
LOAD = Path(__file__).with_name("_rate_load.py")
ROUTE = "/v1/models"  # authenticated and counted, but cheap: the test is about the limiter
RPM = 600
RATE = 4 * RPM / 60  # 40 requests/s
# The limiter's window slides over the last 60 s (of Redis's clock): the first admission ages
# out 60 s after the first request. Sending stops half a second before that, so every request
# of the run falls in one window and exactly RPM should be admitted; more would mean that the
# replicas over-admitted, not that the window moved on. Half a second covers the difference
# between the client's clock and Redis's and the time a request takes to reach Redis.
SECONDS = 60.0 - 0.5
REVOCATION_BOUND_SECONDS = 1.0
POLL_SECONDS = 0.02


def _env() -> dict[str, str]:
    return {"DTECHO_TEST_ADMIN_KEY": ADMIN_KEY, "DTECHO_TEST_KEY_SECRET": KEY_SECRET}


def _replicas(
    server_factory: Any, database_url: str, redis_url: str | None
) -> tuple[ServerProcess, ServerProcess, str]:
    """Replicas A and B on one store (and one Redis for limits and key changes, if given),
    with the same HMAC secret; and the namespace their Redis keys and channel live under."""
    namespace = f"replicas-{uuid.uuid4().hex[:12]}"  # nothing shared with other tests' keys
    config: dict[str, Any] = {
        "auth": {
            "mode": "keys",
            "admin_key": "env:DTECHO_TEST_ADMIN_KEY",
            "key_secret": "env:DTECHO_TEST_KEY_SECRET",
        },
        "database_url": database_url,
        "cache": {"namespace": namespace},
        "usage_flush_seconds": 0.2,
        "log_level": "warning",
    }
    if redis_url is not None:
        config["limits"] = {"redis_url": redis_url}
    a = server_factory(config, env=_env(), name="replica-a")
    b = server_factory(config, env=_env(), name="replica-b")
    return a, b, namespace


def admin(server: ServerProcess) -> httpx.Client:
    return httpx.Client(
        base_url=server.base_url, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
    )


def create_key(server: ServerProcess, **fields: Any) -> dict[str, Any]:
    with admin(server) as client:
        response = client.post("/admin/keys", json=fields)
    assert response.status_code == 201, response.text
    return response.json()


def _key_cache_hits(server: ServerProcess) -> float:
    metrics = httpx.get(f"{server.base_url}/metrics").text
    found = re.search(r'^dtecho_auth_key_lookups_total\{event="cache_hit"\} (\S+)$', metrics, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.mark.slow
@pytest.mark.redis
def test_rpm_is_exact_across_two_replicas_sharing_redis(
    server_factory: Any, redis_url: str, postgres_database_url: str
) -> None:
    a, b, _ = _replicas(server_factory, postgres_database_url, redis_url)
    key = create_key(a, name="exact", limits={"rpm": RPM})["key"]
    spec = {"urls": [a.base_url, b.base_url], "path": ROUTE, "key": key}
    spec |= {"rate": RATE, "seconds": SECONDS, "limit": RPM}
    run = subprocess.run(
        [sys.executable, str(LOAD)],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        timeout=SECONDS + 60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    admitted, total = summary["admitted"], summary["sent"]
    per_server = [counts.get("200", 0) for counts in summary["by_server"]]
    print(
        f"admitted {admitted} of {total} requests (replica A {per_server[0]}, B {per_server[1]}) "
        f"sent at {RATE:g}/s for {summary['last_send_s']:.2f} s against rpm {RPM}; last "
        f"admission {summary['last_admitted_s']:.2f} s after the first request; statuses "
        f"{summary['statuses']}; send lag p99 {summary['send_lag_ms']['99']:.1f} ms, latency "
        f"p99 {summary['latency_ms']['99']:.1f} ms"
    )
    assert set(summary["statuses"]) <= {"200", "429"}, summary["statuses"]
    assert summary["malformed"] == [], summary["malformed"]
    assert summary["refused_well_formed"] == total - admitted
    assert all(per_server), "both replicas must have admitted some of the requests"
    assert RPM * 0.99 <= admitted <= RPM * 1.01


@pytest.mark.parametrize(
    "with_redis",
    [
        pytest.param(True, marks=pytest.mark.redis, id="redis-pubsub"),
        pytest.param(False, id="cache-ttl"),
    ],
)
def test_a_revocation_is_seen_by_the_other_replica_within_a_second(
    server_factory: Any,
    request: pytest.FixtureRequest,
    postgres_database_url: str,
    with_redis: bool,
) -> None:
    redis_url = request.getfixturevalue("redis_url") if with_redis else None
    a, b, namespace = _replicas(server_factory, postgres_database_url, redis_url)
    if redis_url is not None:
        # Both replicas listen for key changes: B then caches keys for 30 s, so only the
        # published revocation can make it refuse the key within a second.
        channel = f"{namespace}:keys:changed"
        client = redis.Redis.from_url(redis_url)

        def both_subscribed() -> bool:
            return dict(client.pubsub_numsub(channel)).get(channel.encode(), 0) == 2

        wait_until(both_subscribed, timeout=10)
        client.close()
    issued = create_key(a, name="revoked-soon")
    headers = {"authorization": f"Bearer {issued['key']}"}
    with httpx.Client(headers=headers, timeout=10) as user:
        assert user.get(f"{a.base_url}{ROUTE}").status_code == 200
        hits = _key_cache_hits(b)
        assert user.get(f"{b.base_url}{ROUTE}").status_code == 200  # B looks it up and caches it
        assert user.get(f"{b.base_url}{ROUTE}").status_code == 200
        assert _key_cache_hits(b) > hits, "B did not answer from its key cache"
        with admin(a) as api:
            revoked = api.post(f"/admin/keys/{issued['id']}/revoke")
        answered = time.monotonic()
        assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
        polls = 0
        while True:
            status = user.get(f"{b.base_url}{ROUTE}").status_code
            seen = time.monotonic() - answered
            polls += 1
            if status == 401:
                break
            assert status == 200, status
            if seen > 5 * REVOCATION_BOUND_SECONDS:
                pytest.fail(f"replica B still accepted the revoked key {seen:.1f} s later")
            time.sleep(POLL_SECONDS)
        assert user.get(f"{a.base_url}{ROUTE}").status_code == 401
    how = "Redis pub/sub" if with_redis else "the 0.5 s key cache, no Redis"
    print(
        f"revocation seen by replica B {1e3 * seen:.0f} ms after A answered the revoke "
        f"({how}; {polls} polls every {1e3 * POLL_SECONDS:.0f} ms)"
    )
    assert seen <= REVOCATION_BOUND_SECONDS
