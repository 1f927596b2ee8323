"""What the response cache buys on ``/v1/dtesn/process`` (esn_size 512, 1 KB input).

One run starts, each as its own process pinned to the server core: two ``dtecho serve``
workers (A and B) sharing one Redis under a fresh namespace, and a bare FastAPI endpoint
(``_bare_app.py``) that answers the same response bytes. Load comes from this process
(sequential phases) or from a separate load-generator process (``_loadgen.py``) on the
other core.

- **miss**: N distinct inputs posted to A, each computed (``X-Cache: MISS``);
- **L3 hit**: the same N inputs posted to B, each found in Redis (``HIT-L3``);
- **L1 hit**: one input posted to A over and over (``HIT-L1``), from the load generator,
  answered by the fast path (``dtecho.server.fast_path``) before routing; and **L1 hit,
  routed**: the same with an ``Accept`` the fast path leaves to the route (full routing,
  validation and key derivation, then the same L1 entry);
- **throughput**: closed loop (16 connections) against A's L1 hits (both ways) and against
  the bare endpoint, alternating rounds; the ratio is the fast path's share of the bare rate.

Latency is reported twice: as the client sees it, and as server time (``Server-Timing``,
from the request reaching the app to the response starting).

    .venv/bin/python benchmarks/cache.py [--quick] [--redis URL]

Writes ``benchmarks/results/cache.json`` and prints a table. Targets (issue #6): L1 hit p50
under 1 ms server time; L1-hit throughput at least 70% of the bare endpoint's.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import string
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import arg_parser, free_port, print_table, write_json
from _loadgen import percentile, run_loadgen, summarise_ms

HERE = Path(__file__).resolve().parent
PATH = "/v1/dtesn/process"
SERVER_CPUS = [0]
LOADGEN_CPUS = [1]
ROUTED_HEADERS = {"accept": "application/json, */*;q=0.5"}
TARGETS = {"l1_server_p50_ms": 1.0, "l1_throughput_ratio": 0.70}


def one_kb_input(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_letters + " .,") for _ in range(1024))


def body(text: str) -> str:
    return json.dumps({"input": text, "esn_size": 512}, separators=(",", ":"))


class Process:
    """A server process pinned to the server core, stopped with its process group."""

    def __init__(self, argv: list[str], port: int, log: Path, env: dict[str, str]) -> None:
        self.port = port
        cpus = SERVER_CPUS if len(os.sched_getaffinity(0)) > 1 else None
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
                start_new_session=True,
            )
        self.log = log

    def wait_live(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(OSError):
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/health/live")
                if conn.getresponse().status == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"server on {self.port} did not start:\n{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 15)
            self.proc.wait(15)


def dtecho(work: Path, name: str, redis_url: str | None, namespace: str) -> Process:
    config = {"data_dir": str(work / name), "log_level": "warning",
              "cache": {"namespace": namespace, "redis_url": redis_url}}  # fmt: skip
    path = work / f"{name}.json"  # JSON is YAML
    path.write_text(json.dumps(config))
    port = free_port()
    argv = [sys.executable, "-m", "dtecho", "serve", "--port", str(port), "--config", str(path)]
    return Process(argv, port, work / f"{name}.log", {})


def post(conn: http.client.HTTPConnection, payload: str) -> tuple[float, float, str, bytes]:
    """(client seconds, server ms, X-Cache, body) of one request on a keep-alive connection."""
    started = time.perf_counter()
    conn.request("POST", PATH, payload, {"content-type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    elapsed = time.perf_counter() - started
    if response.status != 200:
        raise RuntimeError(f"{response.status}: {data[:300]!r}")
    timing = response.getheader("server-timing", "app;dur=nan")
    return elapsed, float(timing.partition(";dur=")[2]), response.getheader("x-cache", ""), data


def distinct_phase(port: int, payloads: Sequence[str], expect: str) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    client, server, tiers = [], [], []
    for payload in payloads:
        seconds, server_ms, tier, _ = post(conn, payload)
        client.append(seconds)
        server.append(server_ms / 1000)
        tiers.append(tier)
    conn.close()
    return summary(client, server, tiers, expect)


def summary(client: list[float], server_s: list[float], tiers: list[str], expect: str) -> dict:
    wrong = sum(tier != expect for tier in tiers)
    return {"client": summarise_ms(client), "server": summarise_ms(server_s),
            "expected_tier": expect, "unexpected_tiers": wrong}  # fmt: skip


def closed_rounds(
    targets: dict[str, tuple[int, dict[str, str]]],
    payload: str,
    rounds: int,
    seconds: float,
    concurrency: int,
) -> dict[str, Any]:
    """Closed-loop requests/s per target (port, extra headers), median over rounds whose
    order alternates so that no target always runs first."""
    runs: dict[str, list[float]] = {name: [] for name in targets}
    for index in range(rounds):
        order = list(targets) if index % 2 == 0 else list(reversed(targets))
        for name in order:
            port, headers = targets[name]
            spec = {"mode": "closed", "port": port, "path": PATH, "body": payload,
                    "headers": headers, "concurrency": concurrency, "seconds": seconds,
                    "cpus": LOADGEN_CPUS}  # fmt: skip
            result = run_loadgen(spec)
            bad = sum(n for status, n in result["statuses"].items() if status != "200")
            if bad:
                raise RuntimeError(f"{name}: {bad} failed requests in the closed loop")
            runs[name].append(result["completed"] / result["elapsed_s"])
    return {name: {"rps_median": percentile(sorted(v), 50), "rps_rounds": v}
            for name, v in runs.items()}  # fmt: skip


def redis_available(url: str) -> bool:
    import redis

    try:
        redis.Redis.from_url(url, socket_timeout=1).ping()
    except redis.RedisError:
        return False
    return True


def delete_namespace(url: str, namespace: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
    if keys:
        client.unlink(*keys)


def run(quick: bool, redis_url: str) -> dict[str, Any]:
    distinct = 40 if quick else 200
    l1_requests = 500 if quick else 5000
    rounds, seconds = (1, 2.0) if quick else (3, 5.0)
    rng = random.Random(0)
    payloads = [body(one_kb_input(rng)) for _ in range(distinct)]
    with_redis = redis_available(redis_url)
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    work = Path(tempfile.mkdtemp(prefix="dtecho-cache-bench-"))
    url = redis_url if with_redis else None
    a, b = dtecho(work, "a", url, namespace), dtecho(work, "b", url, namespace)
    started: list[Process] = [a, b]
    try:
        a.wait_live(), b.wait_live()
        warm = http.client.HTTPConnection("127.0.0.1", a.port, timeout=60)
        for _ in range(3):  # the first request builds and caches the network
            post(warm, body(one_kb_input(rng)))
        results: dict[str, Any] = {"miss": distinct_phase(a.port, payloads, "MISS")}
        if with_redis:
            results["l3_hit"] = distinct_phase(b.port, payloads, "HIT-L3")
        _, _, tier, cached = post(warm, payloads[0])
        assert tier == "HIT-L1", tier
        l1 = run_loadgen({"mode": "sequential", "port": a.port, "path": PATH,
                          "body": payloads[0], "requests": l1_requests,
                          "cpus": LOADGEN_CPUS})  # fmt: skip
        server_s = [ms / 1000 for ms in l1["server_ms"]]
        tiers = ["HIT-L1"] * len(server_s)  # one body: checked above, and by the hit counts
        results["l1_hit"] = summary(l1["latencies_s"], server_s, tiers, "HIT-L1")
        # The same hits through routing and validation: an Accept the fast path leaves alone.
        routed = run_loadgen({"mode": "sequential", "port": a.port, "path": PATH,
                              "body": payloads[0], "requests": l1_requests,
                              "headers": ROUTED_HEADERS, "cpus": LOADGEN_CPUS})  # fmt: skip
        server_s = [ms / 1000 for ms in routed["server_ms"]]
        results["l1_hit_routed"] = summary(routed["latencies_s"], server_s, tiers, "HIT-L1")
        body_file = work / "cached-response.json"
        body_file.write_bytes(cached)
        bare_port = free_port()
        bare = Process([sys.executable, str(HERE / "_bare_app.py"), str(bare_port)], bare_port,
                       work / "bare.log", {"DTECHO_BENCH_BODY": str(body_file)})  # fmt: skip
        started.append(bare)
        bare.wait_live()
        bare_seq = run_loadgen({"mode": "sequential", "port": bare_port, "path": PATH,
                                "body": payloads[0], "requests": l1_requests,
                                "cpus": LOADGEN_CPUS})  # fmt: skip
        results["bare"] = {"client": summarise_ms(bare_seq["latencies_s"])}
        throughput = closed_rounds(
            {"l1_hit": (a.port, {}), "l1_hit_routed": (a.port, ROUTED_HEADERS),
             "bare": (bare_port, {})}, payloads[0], rounds, seconds, concurrency=16,
        )  # fmt: skip
        metrics_conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=10)
        metrics_conn.request("GET", "/v1/dtesn/cache/metrics")
        cache_metrics = json.loads(metrics_conn.getresponse().read())
    finally:
        for process in started:
            process.stop()
        if with_redis:
            delete_namespace(redis_url, namespace)
    bare_rps = throughput["bare"]["rps_median"]
    ratio = throughput["l1_hit"]["rps_median"] / bare_rps
    routed_ratio = throughput["l1_hit_routed"]["rps_median"] / bare_rps
    l1_server_p50 = results["l1_hit"]["server"]["p50_ms"]
    return {
        "quick": quick,
        "setup": {
            "esn_size": 512,
            "input_bytes": 1024,
            "response_bytes": len(cached),
            "distinct_inputs": distinct,
            "l1_requests": l1_requests,
            "closed_loop": {"concurrency": 16, "seconds": seconds, "rounds": rounds},
            "redis": with_redis,
            "server_cpus": SERVER_CPUS,
            "loadgen_cpus": LOADGEN_CPUS,
        },
        "latency": results,
        "throughput": throughput,
        "l1_throughput_ratio": ratio,
        "l1_routed_throughput_ratio": routed_ratio,
        "cache_metrics_a": cache_metrics,
        "targets": TARGETS,
        "verdict": {
            "l1_server_p50_under_1ms": l1_server_p50 < TARGETS["l1_server_p50_ms"],
            "l1_throughput_at_least_70pct_of_bare": ratio >= TARGETS["l1_throughput_ratio"],
        },
    }


def render(report: dict[str, Any]) -> None:
    rows = []
    labels = [("miss", "miss (computed)"), ("l3_hit", "L3 hit (Redis)"),
              ("l1_hit", "L1 hit (memory, fast path)"),
              ("l1_hit_routed", "L1 hit (memory, routed)"),
              ("bare", "bare FastAPI endpoint")]  # fmt: skip
    for name, label in labels:
        phase = report["latency"].get(name)
        if phase is None:
            continue
        server = phase.get("server", {})
        rows.append({
            "path": label,
            "client p50 ms": f"{phase['client']['p50_ms']:.3f}",
            "client p99 ms": f"{phase['client']['p99_ms']:.3f}",
            "server p50 ms": f"{server['p50_ms']:.3f}" if server else "-",
            "server p99 ms": f"{server['p99_ms']:.3f}" if server else "-",
            "req/s (c=16)": f"{report['throughput'][name]['rps_median']:.0f}"
            if name in report["throughput"] else "-",
        })  # fmt: skip
    print_table(rows, list(rows[0]), title="/v1/dtesn/process, esn_size 512, 1 KB input")
    print(
        f"L1-hit throughput / bare endpoint: {report['l1_throughput_ratio']:.1%} "
        f"(routed: {report['l1_routed_throughput_ratio']:.1%})"
    )
    print("verdict:", json.dumps(report["verdict"]))


def main(argv: Sequence[str] | None = None) -> int:
    parser = arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = parser.parse_args(argv)
    report = run(args.quick, args.redis)
    render(report)
    write_json("cache", report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
