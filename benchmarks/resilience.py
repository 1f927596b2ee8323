"""How dtecho's router (and LiteLLM's) serve one model over three misbehaving deployments.

Each deployment is a ``_fault_upstream.py`` process:

- ``kill``: healthy, then SIGKILLed halfway through each measured phase (and started again, on
  the same port, before the next configuration);
- ``tail``: a seeded 5% of its answers take 20 times the base latency;
- ``burst``: answers 503 (with ``retry-after: 1``, as the fault upstream does) for the first
  second of every five.

Every configuration (dtecho without hedging, with adaptive and with fixed-delay hedging, and
LiteLLM's proxy when ``--litellm PATH`` names its ``litellm`` command) gets a fresh proxy
process, a warm-up with the bursts switched off (so that breakers start closed and the
latency trackers full), then the same measured phase: an open loop at a fixed rate, latency
counted from each request's scheduled send time (no coordinated omission). Right before the
phase every upstream is reset (``POST /_reset``: counters zeroed, RNG reseeded, burst clock
restarted), so each configuration meets the same fault schedule. Two loads (``Plan``): the
issue's 100 req/s, where the targets are judged, and 20 req/s, which one LiteLLM worker
sustains on a small machine, for the comparison with LiteLLM.

For dtecho, ``/admin/upstreams`` is read before and after the phase (the router's counts:
hedges, hedges won and refused, retries, retry budget exhausted; per deployment: successes,
failures, cancelled attempts) and once a second during it (each deployment's p95 and breaker
state, and the model's adaptive hedge delay: its p95 pooled over the deployments).

Upstream requests are counted by the upstreams themselves (``/_stats``, chat completions of
any status, including those the proxy gave up on); the killed one's count is read just before
the kill, with its requests in flight. *Extra* is upstream requests / client requests - 1.

The load generator is this script run as its own process (``--loadgen``, spec on stdin): the
open loop of ``_loadgen.py`` with connections that also keep each answer's status, the
deployment that served it (``served by <name>`` in the content, or ``x-dtecho-deployment``)
and the body of every failure, so that a miss can be traced to the requests behind it.

    flock /tmp/dtecho-bench.lock .venv/bin/python benchmarks/resilience.py [--quick] \\
        [--litellm PATH/TO/litellm]

Writes ``benchmarks/results/resilience.json`` (``resilience_quick.json``) and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from _common import free_port, print_table, write_json
from _loadgen import _Connection, summarise_ms
from proxy_overhead import Server, _load_snapshot, _machine, _versions, tree_cpu_seconds

HERE = Path(__file__).resolve().parent
MODEL = "resilient"
UPSTREAM_MODEL = "fault-upstream"
CHAT_PATH = "/v1/chat/completions"
DEPLOYMENTS = ("kill", "tail", "burst")
MIN_FOR_P999 = 5000  # requests before a p99.9 (the 5 slowest) is worth printing
TARGETS = {"dtecho_failed": 0, "hedging_p99_ratio": 3.0, "hedging_extra_share": 0.05}


@dataclass(frozen=True)
class Faults:
    """What the three upstreams do (their command-line knobs)."""

    latency_ms: float = 20.0
    tail_share: float = 0.05  # on ``tail`` only
    tail_factor: float = 20.0
    burst_every_s: float = 5.0  # on ``burst`` only
    burst_length_s: float = 1.0
    error_status: int = 503
    seed: int = 7

    def knobs(self, name: str) -> dict[str, float]:
        knobs: dict[str, float] = {"latency_ms": self.latency_ms, "tail_share": 0.0}
        if name == "tail":
            knobs |= {"tail_share": self.tail_share, "tail_factor": self.tail_factor}
        if name == "burst":
            knobs |= {"burst_every_s": self.burst_every_s, "burst_length_s": self.burst_length_s}
            knobs["error_status"] = self.error_status
        return knobs


@dataclass(frozen=True)
class Load:
    """One open loop: ``rate`` requests/s for ``seconds``."""

    rate: float
    seconds: float


@dataclass(frozen=True)
class Plan:
    """The offered loads; ``--quick`` shrinks them.

    ``main`` is the issue's load, at which the targets are judged. One LiteLLM worker could
    not keep up with it on the 2-CPU machine these numbers come from (about 12 ms of CPU per
    request: above 40 req/s its queue, not its routing, decides its latency), so
    ``comparison`` runs dtecho and LiteLLM again at a rate LiteLLM sustains.
    """

    main: Load = Load(100.0, 60.0)
    comparison: Load = Load(20.0, 90.0)
    warmup_seconds: float = 10.0
    kill_at: float = 0.5  # share of the phase after which ``kill`` is SIGKILLed
    connections: int = 128


QUICK = Plan(main=Load(100.0, 15.0), comparison=Load(20.0, 30.0), warmup_seconds=4.0)


@dataclass(frozen=True)
class Configuration:
    name: str
    proxy: str  # "dtecho" or "litellm"
    routing: dict[str, Any] = field(default_factory=dict)  # dtecho's routing settings
    describe: str = ""
    loads: tuple[str, ...] = ("main", "comparison")  # which of the plan's loads it runs at


FIXED_HEDGE_DELAY_S = 0.05  # 2.5x the base latency, an eighth of the tail's
LITELLM_ROUTER = {
    "routing_strategy": "simple-shuffle",  # weighted random, as dtecho's "weighted"
    "num_retries": 2,  # 3 attempts in all, as dtecho's retries.attempts
    "allowed_fails": 9,  # cooled down at the 10th failure in a minute (dtecho: 10 of 20 calls)
    "cooldown_time": 10,  # as dtecho's breaker.wait_duration_open_seconds
}
CONFIGURATIONS = (
    Configuration(
        "dtecho",
        "dtecho",
        {},
        "default routing: weighted, 3 attempts with backoff/retry-after and a 10% budget, "
        "breakers (50% of 20 calls, 10 s open), no hedging",
    ),
    Configuration(
        "dtecho hedged (p95)",
        "dtecho",
        {"hedging": {"enabled": True, "delay_seconds": None, "budget_ratio": 0.05}},
        "as dtecho, plus hedging after the model's recent p95, budget 5%",
    ),
    Configuration(
        f"dtecho hedged ({FIXED_HEDGE_DELAY_S * 1e3:g} ms)",
        "dtecho",
        {"hedging": {"enabled": True, "delay_seconds": FIXED_HEDGE_DELAY_S, "budget_ratio": 0.05}},
        f"as dtecho, plus hedging after a fixed {FIXED_HEDGE_DELAY_S * 1e3:g} ms, budget 5%",
        ("main",),
    ),
    Configuration(
        "litellm",
        "litellm",
        {},
        "LiteLLM proxy, router_settings " + json.dumps(LITELLM_ROUTER) + "; no hedging exists "
        "there; it retries at once on another healthy deployment",
    ),
)


# --------------------------------------------------------------------------- upstreams


def http_json(port: int, method: str, path: str, body: Any = None, timeout: float = 5) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, data, {"content-type": "application/json"})
        response = conn.getresponse()
        payload = response.read()
        if response.status != 200:
            raise RuntimeError(f"{method} :{port}{path} -> {response.status}: {payload[:300]!r}")
        return json.loads(payload)
    finally:
        conn.close()


class Upstream:
    """One ``_fault_upstream.py`` process on a fixed port, which may be killed and restarted."""

    def __init__(self, name: str, knobs: dict[str, float], seed: int, log: Path, cpus: list[int]):
        self.name, self.knobs, self.seed, self.log, self.cpus = name, knobs, seed, log, cpus
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 15.0) -> None:
        argv = [sys.executable, str(HERE / "_fault_upstream.py"), "--port", str(self.port)]
        argv += ["--name", self.name, "--model", UPSTREAM_MODEL, "--seed", str(self.seed)]
        for knob, value in self.knobs.items():
            argv += ["--" + knob.replace("_", "-"), f"{value:g}"]
        pin = (lambda: os.sched_setaffinity(0, self.cpus)) if self.cpus else None
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, preexec_fn=pin, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if f"ready {self.port}" in self.log.read_text(errors="replace"):
                return
            time.sleep(0.05)
        raise RuntimeError(f"upstream {self.name} did not start:\n{self.log.read_text()[-2000:]}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def control(self, **knobs: float) -> None:
        http_json(self.port, "POST", "/_control", knobs)

    def reset(self) -> None:
        http_json(self.port, "POST", "/_reset", {})

    def stats(self) -> dict[str, Any]:
        return http_json(self.port, "GET", "/_stats")

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def completions(stats: dict[str, Any]) -> int:
    """Chat completion requests an upstream received (any status, answered or not)."""
    return sum(stats["requests"].get(CHAT_PATH, {}).values()) + stats.get("in_flight", 0)


# --------------------------------------------------------------------------- load generator


class _Recorder(_Connection):
    """A load-generator connection that also keeps who answered and what a failure said."""

    def on_message_begin(self) -> None:
        self.body: list[bytes] = []
        self.deployment: str | None = None

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"x-dtecho-deployment":
            self.deployment = value.decode()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def answer(self, status: int) -> str | None:
        """``served by <name>``'s name for a 200, else the start of the body."""
        body = b"".join(getattr(self, "body", []))
        if status == 200:
            _, found, rest = body.partition(b"served by ")
            return rest.split(None, 1)[0].strip(b'"\\,').decode() if found else self.deployment
        return body[:400].decode(errors="replace")


async def _open_loop(spec: dict[str, Any]) -> dict[str, Any]:
    """``_loadgen``'s open loop, recording each request: ``[scheduled offset s, latency s,
    status, served by or failure body]``. A connection idle for longer than ``stale_s`` is
    closed instead of reused, so that a server's keep-alive timeout never races a send."""
    body = spec["body"].encode()
    request = (
        f"POST {CHAT_PATH} HTTP/1.1\r\nhost: 127.0.0.1:{spec['port']}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode() + body
    loop = asyncio.get_running_loop()
    records: list[list[Any]] = []
    lags: list[float] = []
    idle: deque[_Recorder] = deque()
    backlog: deque[float] = deque()
    state = {"pending": 0, "sending": True, "reconnects": 0}
    done = loop.create_future()
    start = 0.0

    def send(conn: _Recorder, when: float) -> None:
        lags.append(time.perf_counter() - when)
        conn.send(request, when)

    async def free_connection() -> _Recorder | None:
        now = time.perf_counter()
        while idle:
            conn = idle.pop()
            if conn.open and now - conn.sent_at < spec["stale_s"]:
                return conn
            if conn.transport is not None:
                conn.transport.close()
            conn.open = False
        pool[:] = [c for c in pool if c.open]
        if len(pool) < spec["connections"]:
            _, conn = await loop.create_connection(
                lambda: _Recorder(on_response), "127.0.0.1", spec["port"]
            )
            pool.append(conn)
            state["reconnects"] += 1
            return conn
        return None

    def on_response(conn: _Recorder, status: int, now: float) -> None:
        records.append(
            [conn.scheduled_at - start, now - conn.scheduled_at, status, conn.answer(status)]
        )
        state["pending"] -= 1
        if status and backlog:
            send(conn, backlog.popleft())
        elif status:
            idle.append(conn)
        if not state["sending"] and state["pending"] == 0 and not done.done():
            done.set_result(None)

    pool: list[_Recorder] = []
    for _ in range(spec["connections"]):
        _, conn = await loop.create_connection(
            lambda: _Recorder(on_response), "127.0.0.1", spec["port"]
        )
        conn.sent_at = time.perf_counter()
        pool.append(conn)
    idle.extend(pool)
    lead = 0.5  # time for the caller to reset the upstreams before the first request
    start = time.perf_counter() + lead
    print(f"started {time.time() + lead:.6f}", file=sys.stderr, flush=True)
    period, total = 1.0 / spec["rate"], round(spec["rate"] * spec["seconds"])
    for index in range(total):
        when = start + index * period
        delay = when - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        state["pending"] += 1
        conn = await free_connection()
        if conn is not None:
            send(conn, when)
        else:
            backlog.append(when)
    state["sending"] = False
    if state["pending"]:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done, timeout=max(30.0, spec["seconds"]))
    return {
        "records": records,
        "send_lag": summarise_ms(lags),
        "sent": total,
        "unanswered": state["pending"],
        "reconnects": state["reconnects"],
    }


def loadgen_main() -> None:
    spec = json.load(sys.stdin)
    if spec.get("cpus"):
        os.sched_setaffinity(0, spec["cpus"])
    # select(2) takes microsecond timeouts; epoll rounds timers to milliseconds.
    loop = asyncio.SelectorEventLoop(selectors.SelectSelector())
    try:
        print(json.dumps(loop.run_until_complete(_open_loop(spec))))
    finally:
        loop.close()


def start_loadgen(spec: dict[str, Any]) -> tuple[subprocess.Popen[str], float]:
    """Start an open loop in its own process; returns it and the wall time of its first send."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--loadgen"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stderr is not None
    proc.stdin.write(json.dumps(spec))
    proc.stdin.close()
    line = proc.stderr.readline()
    if not line.startswith("started "):
        raise RuntimeError(f"load generator failed: {line}{proc.stderr.read()[-2000:]}")
    return proc, float(line.split()[1])


def finish_loadgen(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.read(), proc.stderr.read()  # stdin is closed: no communicate()
    proc.wait(timeout=900)
    if proc.returncode:
        raise RuntimeError(f"load generator failed ({proc.returncode}): {err[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])


# --------------------------------------------------------------------------- proxies


def request_body() -> bytes:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 16,
        "temperature": 0.7,
    }
    return json.dumps(body, separators=(",", ":")).encode()


def dtecho_server(
    index: int, config: Configuration, upstreams: Sequence[Upstream], work: Path, cpus: list[int]
) -> Server:
    model = {
        "name": MODEL,
        "engine": "openai",
        "deployments": [
            {"name": u.name, "base_url": u.base_url, "upstream_model": UPSTREAM_MODEL}
            for u in upstreams
        ],
        "routing": config.routing,
    }
    path = work / f"dtecho-{index}.yaml"
    path.write_text(json.dumps({"models": [model], "log_level": "warning"}))  # JSON is YAML
    port = free_port()
    argv = [sys.executable, "-m", "dtecho", "serve", "--port", str(port), "--workers", "1"]
    return Server(
        config.name,
        [*argv, "--config", str(path)],
        port,
        MODEL,
        work / f"{path.stem}.log",
        cpus,
        process="dtecho",
    )


def litellm_server(
    litellm: str, upstreams: Sequence[Upstream], work: Path, cpus: list[int]
) -> Server:
    lines = ["model_list:"]
    for u in upstreams:
        lines += [
            f"  - model_name: {MODEL}",
            "    litellm_params:",
            f"      model: openai/{UPSTREAM_MODEL}",
            f"      api_base: {u.base_url}",
            "      api_key: sk-benchmark",
        ]
    lines += ["router_settings:", *(f"  {k}: {v}" for k, v in LITELLM_ROUTER.items())]
    lines += [
        "litellm_settings:",
        "  telemetry: false",
        "general_settings:",
        # No auth on either proxy; LiteLLM refuses to start keyless without this.
        "  dangerously_permit_weak_or_unset_master_key: true",
    ]
    config = work / "litellm.yaml"
    config.write_text("\n".join(lines) + "\n")
    log_config = work / "litellm-logging.json"
    quiet = {"uvicorn.access": {"level": "WARNING"}}
    log_config.write_text(
        json.dumps({"version": 1, "disable_existing_loggers": False, "loggers": quiet})
    )
    port = free_port()
    argv = [litellm, "--config", str(config), "--log_config", str(log_config)]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
    return Server("litellm", argv, port, MODEL, work / "litellm.log", cpus, env, "litellm")


# --------------------------------------------------------------------------- one configuration


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _router_snapshot(port: int) -> dict[str, Any] | None:
    with contextlib.suppress(OSError, RuntimeError, ValueError):
        data = http_json(port, "GET", "/admin/upstreams")["data"]
        return next(m for m in data if m["model"] == MODEL)
    return None


def _counts_diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def measure(
    config: Configuration,
    server: Server,
    upstreams: dict[str, Upstream],
    plan: Plan,
    load: Load,
    loadgen_cpus: list[int],
) -> dict[str, Any]:
    """Warm up, reset the upstreams, run the phase with its kill, and collect every count."""
    for upstream in upstreams.values():
        if not upstream.alive():
            upstream.start()  # the one killed in the previous configuration, same port
    server.start()
    server.wait_ready(timeout=120 if config.proxy == "litellm" else 60)
    spec = {
        "port": server.port,
        "body": request_body().decode(),
        "rate": load.rate,
        "connections": plan.connections,
        "stale_s": 2.0,
        "cpus": loadgen_cpus,
    }
    try:
        _log(f"{config.name}: warm-up {plan.warmup_seconds:g} s, bursts off")
        upstreams["burst"].control(burst_every_s=0)
        proc, _ = start_loadgen({**spec, "seconds": plan.warmup_seconds})
        warm = finish_loadgen(proc)
        warm_statuses = Counter(str(r[2]) for r in warm["records"])
        before = _router_snapshot(server.port) if config.proxy == "dtecho" else None
        cpu_before = tree_cpu_seconds(server.pid)

        _log(f"{config.name}: {load.rate:g} req/s for {load.seconds:g} s")
        proc, first_send = start_loadgen({**spec, "seconds": load.seconds})
        for upstream in upstreams.values():
            upstream.reset()  # counters, RNG and the burst clock; bursts back on
        bursts_from = time.time() - first_send
        kill_wall = first_send + plan.kill_at * load.seconds
        timeline = []
        while time.time() < kill_wall:
            if config.proxy == "dtecho":
                timeline.append(_timeline_point(server.port, first_send))
            time.sleep(min(1.0, max(0.0, kill_wall - time.time())))
        killed_stats = upstreams["kill"].stats()
        upstreams["kill"].kill()
        killed_at = time.time() - first_send
        _log(f"{config.name}: killed 'kill' at {killed_at:.2f} s")
        # Not proc.poll(): the load generator blocks writing its result until it is read.
        while time.time() < first_send + load.seconds and proc.poll() is None:
            if config.proxy == "dtecho":
                timeline.append(_timeline_point(server.port, first_send))
            time.sleep(1.0)
        phase = finish_loadgen(proc)
        cpu = tree_cpu_seconds(server.pid) - cpu_before
        after = _router_snapshot(server.port) if config.proxy == "dtecho" else None
        stats = {"kill": killed_stats}
        stats |= {name: upstreams[name].stats() for name in ("tail", "burst")}
    finally:
        server.stop()
    return {
        "configuration": asdict(config),
        "warmup_statuses": dict(warm_statuses),
        "phase": phase,
        "killed_at_s": killed_at,
        "bursts_from_s": bursts_from,
        "proxy_cpu_s": cpu,
        "upstream_stats": stats,
        "router": _router_delta(before, after),
        "timeline": timeline,
    }


def _timeline_point(port: int, first_send: float) -> list[Any] | None:
    snap = _router_snapshot(port)
    if snap is None:
        return None
    deps = {
        d["name"]: [
            None if d["latency_p95_ms"] is None else round(d["latency_p95_ms"], 1),
            d["breaker"]["state"],
        ]
        for d in snap["deployments"]
    }
    delay = (snap.get("hedge_delay_ms") or {}).get("whole")
    return [
        round(time.time() - first_send, 2),
        deps,
        snap["counts"].get("hedge", 0),
        None if delay is None else round(delay, 1),
    ]


def _router_delta(before: dict | None, after: dict | None) -> dict[str, Any] | None:
    """The router's counts during the phase (after minus before) and its state at the end."""
    if before is None or after is None:
        return None
    old = {d["name"]: d for d in before["deployments"]}
    return {
        "counts": _counts_diff(after["counts"], before["counts"]),
        "deployments": {
            d["name"]: {
                "counts": _counts_diff(d["counts"], old[d["name"]]["counts"]),
                "p95_ms_before": old[d["name"]]["latency_p95_ms"],
                "p95_ms_after": d["latency_p95_ms"],
                "breaker_after": d["breaker"]["state"],
            }
            for d in after["deployments"]
        },
        "hedge_budget_after": after["hedge_budget"],
        "retry_budget_after": after["retry_budget"],
    }


# --------------------------------------------------------------------------- summaries


def summarise(raw: dict[str, Any], faults: Faults) -> dict[str, Any]:
    """Latency, failures, extra upstream requests and where the slow requests came from."""
    phase, records = raw["phase"], raw["phase"]["records"]
    sent = phase["sent"]
    statuses = Counter(str(r[2]) for r in records)
    failed = [r for r in records if r[2] != 200]
    latency = summarise_ms([r[1] for r in records])
    upstream = {name: completions(s) for name, s in raw["upstream_stats"].items()}
    total_upstream = sum(upstream.values())
    router = raw["router"] or {}
    counts = router.get("counts", {})

    def in_burst(offset: float) -> bool:
        t = offset - raw["bursts_from_s"]
        return t >= 0 and t % faults.burst_every_s < faults.burst_length_s + 0.1

    killed = raw["killed_at_s"]

    def cause(r: list[Any]) -> str:
        if r[2] != 200:
            return "failed"
        if in_burst(r[0]):
            return "sent in a 503 burst (+0.1 s)"
        if 0 <= r[0] - killed < 1.0:
            return "sent within 1 s after the kill"
        return f"served by {r[3]}, {'before' if r[0] < killed else 'after'} the kill"

    halves = {
        "before the kill": summarise_ms([r[1] for r in records if r[0] < killed]),
        "after the kill": summarise_ms([r[1] for r in records if r[0] >= killed]),
    }

    p99_s = latency["p99_ms"] / 1e3
    slowest = sorted((r for r in records if r[1] >= p99_s), key=lambda r: -r[1])
    edges = (0.05, 0.2, 0.5, 1.0)
    histogram = Counter(sum(r[1] >= edge for edge in edges) for r in records)
    labels = ["< 50 ms", "50-200 ms", "200-500 ms", "500-1000 ms", ">= 1000 ms"]
    return {
        "requests": sent,
        "answered": len(records),
        "failed": len(failed) + phase["unanswered"],
        "statuses": dict(statuses),
        "unanswered": phase["unanswered"],
        "failures": [
            {
                "at_s": round(r[0], 3),
                "latency_ms": round(r[1] * 1e3, 1),
                "status": r[2],
                "body": r[3],
            }
            for r in failed[:50]
        ],
        "latency_ms": latency,
        "latency_ms_by_half": halves,
        "latency_histogram": {label: histogram[i] for i, label in enumerate(labels)},
        "served_by": dict(Counter(r[3] for r in records if r[2] == 200)),
        "upstream_requests": upstream,
        "upstream_requests_total": total_upstream,
        "extra_upstream_share": total_upstream / sent - 1,
        "hedges": counts.get("hedge", 0) if router else None,
        "hedges_won": counts.get("hedge_won", 0) if router else None,
        "hedges_refused": counts.get("hedge_refused", 0) if router else None,
        "hedge_share": counts.get("hedge", 0) / sent if router else None,
        "retries": counts.get("retry", 0) if router else None,
        "router_attempts": None
        if not router
        else {
            name: sum(v for k, v in d["counts"].items() if not k.startswith("probe_"))
            for name, d in router["deployments"].items()
        },
        "slowest_1pct": {
            "n": len(slowest),
            "by_cause": dict(Counter(cause(r) for r in slowest)),
            "worst": [[round(r[0], 3), round(r[1] * 1e3, 1), r[2], r[3]] for r in slowest[:10]],
        },
        "proxy_cpu_ms_per_request": 1e3 * raw["proxy_cpu_s"] / sent,
        "send_lag_ms": {k: phase["send_lag"][k] for k in ("p50_ms", "p99_ms", "max_ms")},
        "killed_at_s": raw["killed_at_s"],
    }


def verdict(results: dict[str, dict[str, Any]], plan: Plan) -> dict[str, Any]:
    """The targets, judged at the main load (failures: at every load)."""
    out: dict[str, Any] = {}
    main = f" @ {plan.main.rate:g}/s"
    for name, r in results.items():
        if r["proxy"] == "dtecho":
            out[f"no failed request: {name}"] = {
                "value": r["failed"],
                "target": 0,
                "met": r["failed"] == 0,
            }
    base = results.get("dtecho" + main)
    for name, r in results.items():
        if not (name.startswith("dtecho hedged") and name.endswith(main)) or base is None:
            continue
        ratio = base["latency_ms"]["p99_ms"] / r["latency_ms"]["p99_ms"]
        out[f"p99 without / with hedging: {name}"] = {
            "value": ratio,
            "target": TARGETS["hedging_p99_ratio"],
            "met": ratio >= TARGETS["hedging_p99_ratio"],
        }
        extra = r["extra_upstream_share"]
        out[f"extra upstream requests: {name}"] = {
            "value": extra,
            "target": TARGETS["hedging_extra_share"],
            "met": extra <= TARGETS["hedging_extra_share"],
            "of_which_hedges": r["hedge_share"],
            "beyond_unhedged_dtecho": extra - base["extra_upstream_share"],
        }
    return out


# --------------------------------------------------------------------------- the run


def run(args: argparse.Namespace) -> dict[str, Any]:
    plan = QUICK if args.quick else Plan()
    faults = Faults()
    usable = sorted(os.sched_getaffinity(0))
    layout: dict[str, list[int]] = {"load generator": [], "upstreams": [], "proxy": []}
    if not args.no_pin and len(usable) >= 3:
        layout = {"load generator": usable[:1], "upstreams": usable[1:2], "proxy": usable[2:3]}
    elif not args.no_pin and len(usable) == 2:
        layout = {"load generator": usable[:1], "upstreams": usable[:1], "proxy": usable[1:2]}
    litellm = args.litellm or os.environ.get("DTECHO_BENCH_LITELLM") or None
    notes: list[str] = []
    if litellm and not (Path(litellm).is_file() and os.access(litellm, os.X_OK)):
        notes.append(f"LiteLLM skipped: {litellm} is not an executable file.")
        litellm = None
    elif not litellm:
        notes.append(
            "LiteLLM skipped: pass --litellm PATH (or set DTECHO_BENCH_LITELLM) to the `litellm` "
            "command of a separate venv with litellm[proxy] installed."
        )
    configurations = [c for c in CONFIGURATIONS if c.proxy == "dtecho" or litellm]
    if args.only:
        configurations = [c for c in configurations if c.name in args.only]
    load_before, started = _load_snapshot(), time.monotonic()
    raw: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="dtecho-resilience-") as tmp:
        work = Path(tmp)
        upstreams = {
            name: Upstream(
                name, faults.knobs(name), faults.seed + i, work / f"{name}.log", layout["upstreams"]
            )
            for i, name in enumerate(DEPLOYMENTS)
        }
        runs = [(key, c) for key in args.load or ("main", "comparison") for c in configurations]
        try:
            for index, (key, config) in enumerate(r for r in runs if r[0] in r[1].loads):
                load: Load = getattr(plan, key)
                if config.proxy == "dtecho":
                    server = dtecho_server(
                        index, config, list(upstreams.values()), work, layout["proxy"]
                    )
                else:
                    assert litellm is not None
                    server = litellm_server(
                        litellm, list(upstreams.values()), work, layout["proxy"]
                    )
                raw[f"{config.name} @ {load.rate:g}/s"] = {
                    **measure(config, server, upstreams, plan, load, layout["load generator"]),
                    "load": {"block": key, **asdict(load)},
                }
        finally:
            for upstream in upstreams.values():
                upstream.stop()
    results = {name: summarise(r, faults) for name, r in raw.items()}
    for name, r in results.items():
        busy = r["proxy_cpu_ms_per_request"] * raw[name]["load"]["rate"] / 1e3
        if r["send_lag_ms"]["p99_ms"] > 50 or busy > 0.9:
            notes.append(
                f"{name}: saturated, not a resilience result: its process used {busy:.2f} of a "
                f"core ({r['proxy_cpu_ms_per_request']:.1f} ms CPU per request) and the load "
                f"generator found no free connection for p99 {r['send_lag_ms']['p99_ms']:.0f} ms "
                f"({plan.connections} connections): its queue decides its latency."
            )
    for name, r in raw.items():
        results[name]["proxy"] = r["configuration"]["proxy"]
        results[name]["load"] = r["load"]
        results[name]["router"] = r["router"]
        results[name]["router_timeline"] = r["timeline"]
        results[name]["configuration"] = r["configuration"]["describe"]
    return {
        "quick": args.quick,
        "machine": _machine(),
        "versions": _versions(litellm),
        "settings": {
            "plan": asdict(plan),
            "faults": {
                "seed": faults.seed,
                **{
                    name: {
                        **faults.knobs(name),
                        "seed": faults.seed + i,
                        **({"SIGKILL at share of phase": plan.kill_at} if name == "kill" else {}),
                    }
                    for i, name in enumerate(DEPLOYMENTS)
                },
            },
            "cpu_layout": layout if layout["proxy"] else "not pinned",
            "dtecho": "one worker (dtecho serve --workers 1), log_level warning; a fresh process "
            "per configuration; routing as in each configuration, the rest default",
            "litellm": {"router_settings": LITELLM_ROUTER, "workers": 1} if litellm else None,
            "request_body": json.loads(request_body()),
            "router_timeline": "once a second: [s since the first send, {deployment: [p95 ms, "
            "breaker state]}, hedges since start-up, the hedge delay in ms (None: off)]",
            "slowest_1pct causes": "a request is put down to a burst when it was scheduled "
            "within a burst of 'burst' (+0.1 s), to the kill when within 1 s after it",
            "warmup": "each configuration: open loop at the same rate with bursts off (not "
            "recorded), then POST /_reset on every upstream right before the phase",
        },
        "load": {
            "before": load_before,
            "after": _load_snapshot(),
            "wall_seconds": round(time.monotonic() - started, 1),
        },
        "targets": TARGETS,
        "results": results,
        "verdict": verdict(results, plan),
        "notes": notes,
    }


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def render(report: dict[str, Any]) -> None:
    plan, machine = report["settings"]["plan"], report["machine"]
    kind = "quick" if report["quick"] else "full"
    loads = " and ".join(
        f"{plan[k]['rate']:g} req/s for {plan[k]['seconds']:g} s ({k})"
        for k in ("main", "comparison")
    )
    print(
        f"\nResilience ({kind} run): open loops of {loads}; 'kill' SIGKILLed at "
        f"{plan['kill_at']:.0%} of each phase"
    )
    print(
        f"machine: {machine['cpu_model']}, {machine['cpus_online']} CPUs; "
        f"CPU layout: {report['settings']['cpu_layout']}"
    )
    print(f"faults: {json.dumps(report['settings']['faults'])}")
    print(f"load before: {report['load']['before']['uptime']}")
    print(f"load after:  {report['load']['after']['uptime']}")
    rows = []
    for name, r in report["results"].items():
        lat = r["latency_ms"]
        hedges = "—" if r["hedges"] is None else f"{r['hedges']} ({r['hedges_won'] or 0} won)"
        rows.append(
            {
                "configuration": name,
                "requests": r["requests"],
                "failed": r["failed"],
                "p50": _ms(lat["p50_ms"]),
                "p99": _ms(lat["p99_ms"]),
                "p99.9": _ms(lat["p99.9_ms"]) if lat["n"] >= MIN_FOR_P999 else "—",
                "max": _ms(lat["max_ms"]),
                "p99 before/after kill": "/".join(
                    _ms(h["p99_ms"]) for h in r["latency_ms_by_half"].values()
                ),
                "extra upstream": f"{r['extra_upstream_share']:+.1%}",
                "hedges": hedges,
                "retries": "—" if r["retries"] is None else r["retries"],
            }
        )
    title = (
        "latency from each request's scheduled send, in ms (p99.9 shown from "
        f"{MIN_FOR_P999} requests); extra = upstream requests / client requests - 1"
    )
    print_table(rows, list(rows[0]), title=title)
    for name, r in report["results"].items():
        print(f"\n  {name}: {report['results'][name]['configuration']}")
        print(
            f"    statuses {r['statuses']}; served by {r['served_by']}; upstream requests "
            f"{r['upstream_requests']}; load generator late p99 {_ms(r['send_lag_ms']['p99_ms'])}"
            f" ms"
        )
        print(f"    slowest 1% ({r['slowest_1pct']['n']}): {r['slowest_1pct']['by_cause']}")
        for failure in r["failures"][:5]:
            print(f"    failed: {failure}")
    if report["results"]:
        print()
    for key, check in report["verdict"].items():
        print(
            f"target {key}: {check['value']:.3g} vs {check['target']:g} -> "
            f"{'met' if check['met'] else 'NOT met'}"
        )
    for note in report["notes"]:
        print(f"note: {note}")


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None and sys.argv[1:] == ["--loadgen"]:
        loadgen_main()
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--quick", action="store_true", help="15 s and 30 s phases (about 5 minutes)"
    )
    parser.add_argument(
        "--load",
        action="append",
        choices=("main", "comparison"),
        help="run only this load (repeat; default both)",
    )
    parser.add_argument("--litellm", help="the `litellm` command (env DTECHO_BENCH_LITELLM)")
    parser.add_argument("--only", action="append", help="run only this configuration (repeat)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--out", type=Path, help="JSON file (default results/resilience.json)")
    args = parser.parse_args(argv)
    report = run(args)
    render(report)
    write_json("resilience", report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
