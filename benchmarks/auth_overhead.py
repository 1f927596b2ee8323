"""What the auth and quota layer adds to a request: the same routes with it and without it.

Servers, each one ``dtecho serve --workers 1`` process with its own SQLite store:

- **none**: ``auth.mode: none`` (the default), no limits; requests carry no credential;
- **keys**: ``auth.mode: keys``; requests carry one API key whose ``rpm``, ``tpm`` and
  ``max_parallel`` limits are set far above what the run sends, so every request is
  authenticated, admitted, counted, settled and answered with ``x-ratelimit-*`` headers,
  and none is refused. Limits in process (no Redis);
- **keys+redis**: the same with limits (and key-change pub/sub) on Redis, when one answers
  (``--redis-url``, else ``REDIS_URL``, else ``redis://127.0.0.1:6379/0``).

Routes: ``GET /v1/models`` and ``POST /v1/chat/completions`` at temperature 0, which after the
first request is answered from memory by the cache fast path (inside the security layer), so
that the route itself costs little and the auth layer's share is as large as it gets.

The client is a separate process: one keep-alive connection, one request at a time (a closed
loop at concurrency 1), raw HTTP/1.1 parsed by httptools. A round runs, for each route, every
server in turn (the order rotates from round to round, to cancel drift), ``--requests``
timed requests each after untimed warm-up ones. Percentiles are the median over rounds of
each round's percentile; *added* is a server's percentile minus the **none** server's, per
round and route, also from each answer's ``Server-Timing`` (the time inside the server until
the answer starts: no network, no client). Last, to show where the time goes, one admit and
one settle of each limiter (and a Redis PING) are timed in this process, on the servers' CPU.

    .venv/bin/python benchmarks/auth_overhead.py [--quick] [--rounds N] [--requests N]

Writes ``benchmarks/results/auth_overhead.json`` (``auth_overhead_quick.json`` for --quick).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import free_port, print_table, write_json
from _loadgen import percentile, summarise_ms

HERE = Path(__file__).resolve().parent
ADMIN_KEY = "bench-admin-key-0123456789abcdef"
TARGET_P50_ADDED_MS = 0.2
MODELS_PATH = "/v1/models"
CHAT_PATH = "/v1/chat/completions"
CHAT_BODY = json.dumps(
    {
        "model": "dtesn-echo",
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 16,
        "temperature": 0,
    },
    separators=(",", ":"),
)
# Far above what any run sends (about 2,000 requests/s at most), so nothing is ever refused.
KEY_LIMITS = {"rpm": 100_000_000, "tpm": 100_000_000_000, "max_parallel": 1000}


# --------------------------------------------------------------------------- the client


def raw_request(method: str, path: str, port: int, body: str, key: str | None) -> bytes:
    """One HTTP/1.1 request; a body only for POST, a bearer key only when given."""
    head = f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
    if key:
        head += f"authorization: Bearer {key}\r\n"
    data = body.encode() if method == "POST" else b""
    if method == "POST":
        head += f"content-type: application/json\r\ncontent-length: {len(data)}\r\n"
    return (head + "\r\n").encode("ascii") + data


class _Answer:
    """httptools callbacks for one response at a time on a keep-alive connection."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.done = False
        self.server_ms = float("nan")
        self.cache = ""
        self.limited = False

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"server-timing":
            _, _, duration = value.partition(b";dur=")
            with contextlib.suppress(ValueError):
                self.server_ms = float(duration.split(b",")[0])
        elif name == b"x-cache":
            self.cache = value.decode()
        elif name == b"x-ratelimit-limit-requests":
            self.limited = True

    def on_message_complete(self) -> None:
        self.done = True


def client_main(spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``warmup`` then ``requests`` sequential requests; latencies of the timed ones."""
    import httptools

    if spec.get("cpus"):
        os.sched_setaffinity(0, spec["cpus"])
    request = raw_request(spec["method"], spec["path"], spec["port"], CHAT_BODY, spec["key"])
    answer = _Answer()
    parser = httptools.HttpResponseParser(answer)
    latencies: list[float] = []
    server_ms: list[float] = []
    statuses: Counter[int] = Counter()
    cache: Counter[str] = Counter()
    limited = 0
    with socket.create_connection(("127.0.0.1", spec["port"])) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for index in range(spec["warmup"] + spec["requests"]):
            answer.reset()
            started = time.perf_counter()
            sock.sendall(request)
            while not answer.done:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("the server closed the connection")
                parser.feed_data(data)
            elapsed = time.perf_counter() - started
            if index < spec["warmup"]:
                continue
            latencies.append(elapsed)
            server_ms.append(answer.server_ms)
            statuses[parser.get_status_code()] += 1
            cache[answer.cache or "none"] += 1
            limited += answer.limited
    return {
        "latencies_s": latencies,
        "server_ms": server_ms,
        "statuses": dict(statuses),
        "x_cache": dict(cache),
        "with_ratelimit_headers": limited,
    }


def run_client(spec: dict[str, Any]) -> dict[str, Any]:
    """``client_main`` in its own process (no shared interpreter with anything measured)."""
    argv = [sys.executable, __file__, "--client"]
    out = subprocess.run(
        argv, input=json.dumps(spec), check=True, capture_output=True, text=True, timeout=600
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- the servers


class Server:
    """One ``dtecho serve`` process (its own session, stopped with its process group)."""

    def __init__(self, name: str, work: Path, config: str, cpus: Sequence[int] | None) -> None:
        self.name, self.cpus = name, cpus
        self.port = free_port()
        self.dir = work / name
        self.dir.mkdir()
        (self.dir / "dtecho.yaml").write_text(f"data_dir: {self.dir / 'data'}\n{config}")
        self.key: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [sys.executable, "-m", "dtecho", "serve", "--port", str(self.port)]
        argv += ["--workers", "1", "--config", str(self.dir / "dtecho.yaml")]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DTECHO_", "DTESN_"))}
        env["DTECHO_BENCH_ADMIN_KEY"] = ADMIN_KEY
        cpus = self.cpus
        with (self.dir / "server.log").open("wb") as log:
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
            )

    def _call(self, method: str, path: str, body: str | None = None, key: str | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        headers = {"content-type": "application/json"}
        if key:
            headers["authorization"] = f"Bearer {key}"
        try:
            conn.request(method, path, body, headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def wait_ready(self, timeout: float = 60.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            with contextlib.suppress(OSError):
                if self._call("GET", "/health/live")[0] == 200:
                    return
            time.sleep(0.2)
        tail = (self.dir / "server.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{self.name} did not start on port {self.port}:\n{tail}")

    def issue_key(self) -> None:
        """A key with limits that never refuse; its requests then go through all of them."""
        status, body = self._call(
            "POST", "/admin/keys", json.dumps({"name": "bench", "limits": KEY_LIMITS}), ADMIN_KEY
        )
        if status != 201:
            raise RuntimeError(f"{self.name}: POST /admin/keys answered {status}: {body!r}")
        self.key = json.loads(body)["key"]

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _redis_answers(url: str) -> str | None:
    """None when Redis at ``url`` answers a PING, else why not."""
    try:
        import redis

        redis.Redis.from_url(url, socket_timeout=2).ping()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _configs(redis_url: str | None) -> dict[str, str]:
    quiet = "log_level: warning\n"
    keys = (
        "auth:\n  mode: keys\n  admin_key: env:DTECHO_BENCH_ADMIN_KEY\n"
        f"cache:\n  namespace: bench-auth-{uuid.uuid4().hex[:12]}\n{quiet}"
    )
    configs = {"none": quiet, "keys": keys}
    if redis_url:
        configs["keys+redis"] = keys + f"limits:\n  redis_url: {redis_url}\n"
    return configs


# --------------------------------------------------------------------------- limiter calls


async def _limiter_calls(redis_url: str | None, calls: int) -> dict[str, Any]:
    """Median time of one admit and one settle (the benchmark key's limits), in process:
    where the layer's time goes. With Redis also a bare PING through the same client."""
    import redis.asyncio as aioredis

    from dtecho.config import LimitProfile
    from dtecho.limits import LocalLimiter, RedisLimiter

    profile, unlimited = LimitProfile(**KEY_LIMITS), LimitProfile()
    limiters: dict[str, Any] = {"local": LocalLimiter()}
    client = None
    if redis_url:
        client = aioredis.Redis.from_url(redis_url, socket_timeout=0.5)
        namespace = f"bench-auth-probe-{uuid.uuid4().hex[:12]}"
        limiters["redis"] = RedisLimiter(client, namespace=namespace)
    out: dict[str, Any] = {}
    try:
        for name, limiter in limiters.items():
            admits, settles = [], []
            for _ in range(calls):
                t0 = time.perf_counter()
                decision = await limiter.admit("key:bench", None, profile, unlimited, 20)
                t1 = time.perf_counter()
                await limiter.settle(decision.ticket, 20)
                admits.append(t1 - t0)
                settles.append(time.perf_counter() - t1)
            skip = calls // 5  # warm-up: script loading, first connections
            out[name] = {
                "admit_p50_ms": 1e3 * _median(admits[skip:]),
                "settle_p50_ms": 1e3 * _median(settles[skip:]),
            }
        if client is not None:
            pings = []
            for _ in range(calls):
                t0 = time.perf_counter()
                await client.ping()
                pings.append(time.perf_counter() - t0)
            out["redis"]["ping_p50_ms"] = 1e3 * _median(pings[calls // 5 :])
    finally:
        if client is not None:
            await client.aclose()
    return out


# --------------------------------------------------------------------------- the run


ROUTES = {"GET /v1/models": ("GET", MODELS_PATH), "POST /v1/chat/completions": ("POST", CHAT_PATH)}


def _layout() -> tuple[list[int] | None, list[int] | None]:
    """Client on one CPU, the servers (one busy at a time) on another, when there are two."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return [cpus[0]], [cpus[1]]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    notes: list[str] = []
    redis_url = args.redis_url or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    if args.no_redis:
        redis_url = None
    elif why := _redis_answers(redis_url):
        notes.append(f"keys+redis skipped: Redis at {redis_url} does not answer ({why})")
        redis_url = None
    client_cpus, server_cpus = (None, None) if args.no_pin else _layout()
    rounds = args.rounds or (1 if args.quick else 5)
    requests = args.requests or (300 if args.quick else 2000)
    warmup = 50 if args.quick else 200
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
    started = time.monotonic()
    load_before = list(os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="dtecho-auth-bench-") as tmp:
        servers = [
            Server(name, Path(tmp), config, server_cpus)
            for name, config in _configs(redis_url).items()
        ]
        try:
            for server in servers:
                server.start()
            for server in servers:
                server.wait_ready()
                if server.name != "none":
                    server.issue_key()
            for index in range(rounds):
                order = servers[index % len(servers) :] + servers[: index % len(servers)]
                for route, (method, path) in ROUTES.items():
                    for server in order:
                        spec = {"port": server.port, "method": method, "path": path}
                        spec |= {"key": server.key, "warmup": warmup, "requests": requests}
                        spec["cpus"] = client_cpus
                        result = run_client(spec)
                        raw.setdefault(server.name, {}).setdefault(route, []).append(result)
                print(f"round {index + 1}/{rounds} done", file=sys.stderr)
        finally:
            for server in servers:
                server.stop()
    results = summarise(raw)
    if server_cpus:
        os.sched_setaffinity(0, server_cpus)  # where the servers ran
    calls = asyncio.run(_limiter_calls(redis_url, 500 if args.quick else 3000))
    return {
        "quick": args.quick,
        "machine": {
            "cpu_model": _cpu_model() or platform.processor(),
            "cpus_online": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "commit": _commit(),
        },
        "settings": {
            "rounds": rounds,
            "requests_per_run": requests,
            "warmup_per_run": warmup,
            "client": "separate process, one keep-alive connection, concurrency 1, httptools",
            "cpu_layout": {"client": client_cpus, "servers": server_cpus}
            if client_cpus
            else "not pinned",
            "servers": {
                "none": "auth.mode none (default), no limits, no credential sent",
                "keys": f"auth.mode keys, key limits {KEY_LIMITS}, in-process limiter; "
                "without Redis the key cache lives 1 s, so about one request a second looks "
                "the key up in the store",
                "keys+redis": "as keys, limits.redis_url set (ResilientLimiter on Redis)"
                if redis_url
                else None,
            },
            "chat_body": json.loads(CHAT_BODY),
            "added": "percentile(server) - percentile(none), per round and route; headline "
            "is the median over rounds",
        },
        "load": {
            "before": load_before,
            "after": list(os.getloadavg()),
            "wall_seconds": round(time.monotonic() - started, 1),
        },
        "target_p50_added_ms": TARGET_P50_ADDED_MS,
        "results": results,
        "verdict": {
            route: {
                "keys_p50_added_ms": r["p50_added_ms"],
                "target": TARGET_P50_ADDED_MS,
                "met": r["p50_added_ms"] <= TARGET_P50_ADDED_MS,
            }
            for route, r in results.get("keys", {}).items()
            if "p50_added_ms" in r
        },
        "limiter_calls_in_process": calls,
        "notes": notes,
    }


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


def _commit() -> str | None:
    git = ["git", "-C", str(HERE.parent)]
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run([*git, "status", "--porcelain", "src"], capture_output=True)
        return head.stdout.strip() + ("+dirty-src" if dirty.stdout.strip() else "")
    return None


def _median(values: list[float]) -> float:
    return percentile(sorted(values), 50)


def summarise(raw: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Per server and route: percentiles (median over rounds), and added over ``none``."""
    out: dict[str, Any] = {}
    for name, routes in raw.items():
        for route, runs in routes.items():
            per_round = [summarise_ms(run["latencies_s"]) for run in runs]
            server = [summarise_ms([ms / 1e3 for ms in run["server_ms"]]) for run in runs]
            entry: dict[str, Any] = {
                f"{q}_ms": _median([r[f"{q}_ms"] for r in per_round]) for q in ("p50", "p90", "p99")
            }
            entry["server_timing_p50_ms"] = _median([r["p50_ms"] for r in server])
            entry["rounds_p50_ms"] = [round(r["p50_ms"], 4) for r in per_round]
            entry["pooled"] = summarise_ms([x for run in runs for x in run["latencies_s"]])
            statuses: Counter[str] = Counter()
            cache: Counter[str] = Counter()
            for run in runs:
                statuses.update({str(k): v for k, v in run["statuses"].items()})
                cache.update(run["x_cache"])
            entry["statuses"] = dict(statuses)
            entry["x_cache"] = dict(cache)
            entry["with_ratelimit_headers"] = sum(run["with_ratelimit_headers"] for run in runs)
            entry["_per_round"] = per_round
            entry["_server_per_round"] = server
            out.setdefault(name, {})[route] = entry
    base = out.get("none", {})
    for name, routes in out.items():
        for route, entry in routes.items():
            reference = base.get(route)
            if name != "none" and reference is not None:
                for q in ("p50", "p99"):
                    diffs = [
                        ours[f"{q}_ms"] - theirs[f"{q}_ms"]
                        for ours, theirs in zip(
                            entry["_per_round"], reference["_per_round"], strict=True
                        )
                    ]
                    entry[f"{q}_added_ms"] = _median(diffs)
                    entry[f"{q}_added_rounds_ms"] = [round(d, 4) for d in diffs]
                diffs = [
                    ours["p50_ms"] - theirs["p50_ms"]
                    for ours, theirs in zip(
                        entry["_server_per_round"], reference["_server_per_round"], strict=True
                    )
                ]
                entry["server_timing_p50_added_ms"] = _median(diffs)
    for routes in out.values():
        for entry in routes.values():
            del entry["_per_round"], entry["_server_per_round"]
    return out


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def render(report: dict[str, Any]) -> None:
    settings = report["settings"]
    kind = "quick" if report["quick"] else "full"
    print(
        f"\nAuth overhead ({kind} run: {settings['rounds']} round(s) × "
        f"{settings['requests_per_run']} sequential requests per server and route)"
    )
    print(
        f"machine: {report['machine']['cpu_model']}, {report['machine']['cpus_online']} CPUs; "
        f"layout {settings['cpu_layout']}; load {report['load']['before']} -> "
        f"{report['load']['after']}"
    )
    rows = []
    for name, routes in report["results"].items():
        for route, r in routes.items():
            rows.append(
                {
                    "server": name,
                    "route": route,
                    "p50": _ms(r["p50_ms"]),
                    "p90": _ms(r["p90_ms"]),
                    "p99": _ms(r["p99_ms"]),
                    "+p50": _ms(r.get("p50_added_ms")),
                    "+p99": _ms(r.get("p99_added_ms")),
                    "server p50": _ms(r["server_timing_p50_ms"]),
                    "server +p50": _ms(r.get("server_timing_p50_added_ms")),
                    "statuses": ",".join(f"{k}:{v}" for k, v in r["statuses"].items()),
                    "x-cache": ",".join(f"{k}:{v}" for k, v in r["x_cache"].items()),
                }
            )
    rows.sort(key=lambda row: (row["route"], row["server"] != "none", row["server"]))
    print_table(
        rows,
        list(rows[0]),
        title="latency in ms (median over rounds of each round's percentile); + = added over "
        "'none' (same route, same round); server = the answer's Server-Timing",
    )
    for name, routes in report["results"].items():
        for route, r in routes.items():
            if "p50_added_ms" not in r:
                continue
            line = f"  {name} {route}: +p50 per round {r['p50_added_rounds_ms']} ms -> "
            if name == "keys":  # the target is for the layer with in-process limits
                met = "met" if r["p50_added_ms"] <= TARGET_P50_ADDED_MS else "NOT met"
                line += f"{r['p50_added_ms']:.3f} ms vs target {TARGET_P50_ADDED_MS} ({met})"
            else:
                line += f"{r['p50_added_ms']:.3f} ms (no target: Redis round trips per request)"
            print(line)
    for name, timings in report["limiter_calls_in_process"].items():
        parts = ", ".join(f"{k.removesuffix('_p50_ms')} {v:.3f} ms" for k, v in timings.items())
        print(f"  limiter calls in process, p50 ({name}): {parts}")
    for note in report["notes"]:
        print(f"note: {note}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="one short round")
    parser.add_argument("--rounds", type=int, help="rounds (default 5)")
    parser.add_argument("--requests", type=int, help="timed requests per run (default 2000)")
    parser.add_argument("--redis-url", help="Redis for keys+redis (default REDIS_URL, local)")
    parser.add_argument("--no-redis", action="store_true", help="skip the keys+redis server")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--out", type=Path, help="JSON file (default results/auth_overhead.json)")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:  # the load-generator process: spec on stdin, result on stdout
        print(json.dumps(client_main(json.load(sys.stdin))))
        return 0
    report = measure(args)
    render(report)
    write_json("auth_overhead", report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
