"""Open-loop load across replicas for the rate-limit tests, run as its own process.

``python tests/e2e/_rate_load.py`` reads a JSON spec on stdin and prints one JSON summary::

    {"urls": ["http://127.0.0.1:8001", "http://127.0.0.1:8002"], "path": "/v1/models",
     "key": "sk-dte-…", "rate": 40, "seconds": 59.5, "limit": 600}

Request ``i`` leaves at ``start + i / rate`` whether or not earlier answers have come back
(open loop: a slow answer never delays the schedule) and goes to ``urls[i % len(urls)]``;
the clock starts at the first request. Every answer that is not a 200 is checked for being a
well-formed refusal: a 429 with OpenAI's error body (type ``rate_limit_error``), a
``retry-after`` and the ``x-ratelimit-*-requests`` headers for ``limit``.

The load runs in a process of its own so that it never shares an event loop (or a GIL) with
the test, and its pacing does not depend on what pytest does meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import sys
import time
from collections import Counter
from typing import Any

import httpx

_DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?s|\d+ms)$")  # OpenAI's "1m2.5s", "20ms"


def refusal_problems(response: httpx.Response, limit: int) -> list[str]:
    """What is wrong with ``response`` as a 429 for a ``limit`` rpm limit (empty: nothing)."""
    problems = []
    if response.status_code != 429:
        problems.append(f"status {response.status_code}")
    try:
        error = response.json()["error"]
        if error.get("type") != "rate_limit_error":
            problems.append(f"error type {error.get('type')!r}")
        if not isinstance(error.get("message"), str) or not error["message"]:
            problems.append("no error message")
    except (ValueError, KeyError, TypeError, AttributeError):
        problems.append(f"not an OpenAI error body: {response.text[:200]!r}")
    headers = response.headers
    retry_after = headers.get("retry-after", "")
    if not (retry_after.isdigit() and int(retry_after) >= 1):
        problems.append(f"retry-after {retry_after!r}")
    if headers.get("x-ratelimit-limit-requests") != str(limit):
        problems.append(f"x-ratelimit-limit-requests {headers.get('x-ratelimit-limit-requests')!r}")
    remaining = headers.get("x-ratelimit-remaining-requests", "")
    if not remaining.isdigit():
        problems.append(f"x-ratelimit-remaining-requests {remaining!r}")
    reset = headers.get("x-ratelimit-reset-requests", "")
    if not _DURATION.match(reset):
        problems.append(f"x-ratelimit-reset-requests {reset!r}")
    return problems


def _percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, round((len(ordered) - 1) * q / 100))]


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    urls: list[str] = spec["urls"]
    rate, seconds, limit = float(spec["rate"]), float(spec["seconds"]), int(spec["limit"])
    headers = {"authorization": f"Bearer {spec['key']}"}
    pool = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    clients = [
        httpx.AsyncClient(base_url=url, headers=headers, timeout=10.0, limits=pool) for url in urls
    ]
    statuses: Counter[str] = Counter()
    by_server: list[Counter[str]] = [Counter() for _ in urls]
    malformed: list[dict[str, Any]] = []
    admitted_at: list[float] = []
    latencies: list[float] = []
    lags: list[float] = []
    well_formed = 0

    async def one(index: int, sent_at: float) -> None:
        nonlocal well_formed
        server = index % len(urls)
        try:
            response = await clients[server].get(spec["path"])
        except httpx.HTTPError as exc:
            statuses[f"transport error {type(exc).__name__}"] += 1
            by_server[server]["error"] += 1
            return
        now = time.perf_counter()
        latencies.append(now - sent_at)
        statuses[str(response.status_code)] += 1
        by_server[server][str(response.status_code)] += 1
        if response.status_code == 200:
            admitted_at.append(sent_at - start)
            return
        problems = refusal_problems(response, limit)
        if problems:
            if len(malformed) < 10:
                malformed.append({"index": index, "server": server, "problems": problems})
        else:
            well_formed += 1

    try:
        for client in clients:  # open the connections on a public path: not counted
            (await client.get("/health/live")).raise_for_status()
        period = 1.0 / rate
        total = math.ceil(seconds * rate - 1e-9)  # the last one leaves before `seconds`
        tasks = []
        start = time.perf_counter()
        for index in range(total):
            when = start + index * period
            delay = when - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.perf_counter()
            lags.append(now - when)
            tasks.append(asyncio.create_task(one(index, now)))
        last_send = time.perf_counter() - start
        await asyncio.gather(*tasks)
    finally:
        for client in clients:
            await client.aclose()
    latencies.sort()
    lags.sort()
    return {
        "sent": total,
        "statuses": dict(statuses),
        "by_server": [dict(counts) for counts in by_server],
        "admitted": statuses["200"],
        "refused_well_formed": well_formed,
        "malformed": malformed,
        "first_admitted_s": min(admitted_at, default=None),
        "last_admitted_s": max(admitted_at, default=None),
        "last_send_s": last_send,
        "latency_ms": {q: 1e3 * (_percentile(latencies, q) or 0) for q in (50, 99, 100)},
        "send_lag_ms": {q: 1e3 * (_percentile(lags, q) or 0) for q in (50, 99, 100)},
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run(json.load(sys.stdin)))))
