"""What a request pays for going through ``dtecho`` (and LiteLLM) to an OpenAI-compatible upstream.

One run starts, each as its own process: a very fast upstream (``_fast_upstream.py``), one
``dtecho serve`` worker relaying to it, and LiteLLM's proxy against the same upstream when
``--litellm PATH`` (or ``DTECHO_BENCH_LITELLM``) names its ``litellm`` command. The load comes
from a separate process (``_loadgen.py``, or ``wrk`` for the closed loop). Each
phase runs the targets back to back, in a rotating order, under the same conditions:

- **sequential**: concurrency 1, the next request as soon as the previous answer is complete;
- **open loop**: a fixed offered rate (200 requests/s); requests leave on schedule whether or
  not earlier ones have finished, and latency counts from the *scheduled* send time, so a slow
  server cannot hide its queue (no coordinated omission);
- **closed loop**: N connections each sending back to back, for the maximum requests/s.

With ``--floor`` two reference relays join the run, each its own process served by this script:
``bare-asgi`` (a bare ASGI app) and ``bare-fastapi`` (one FastAPI route validating the body as
dtecho's ``ChatCompletionRequest``), both relaying with aiohttp under uvicorn (uvloop,
httptools) like dtecho: what any relay on this stack costs, with none of dtecho's work.

Added latency is a percentile of the proxied path minus the same percentile of the direct path
(each the median over rounds of that round's percentile). The server processes' CPU time per
request is read from ``/proc`` around each phase: it depends far less than latency or req/s on
what else the machine is doing (a shared machine still inflates it through caches).

    .venv/bin/python benchmarks/proxy_overhead.py [--quick] [--floor] [--litellm PATH/TO/litellm]

Writes ``benchmarks/results/proxy_overhead.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from _common import free_port, print_table, write_json
from _loadgen import percentile, run_loadgen, summarise_ms

HERE = Path(__file__).resolve().parent
UPSTREAM_MODEL = "fast-upstream"
PROXY_MODEL = "fast"
CHAT_PATH = "/v1/chat/completions"

TARGETS = {
    "p50_added_ms": 0.5,  # sequentially and at the open-loop rate
    "p99_added_ms": 5.0,  # at the open-loop rate
    "rps_per_worker": 3000.0,  # the best closed-loop concurrency
    "rps_flat_share": 0.9,  # the highest concurrency keeps this share of the best
}
ANCHORS = (
    "LiteLLM docs: median 2 ms / p99 13 ms added, four instances at about 290 requests/s each",
    "LiteLLM: about 4.3 ms added, sequential requests on localhost",
    "Portkey open-source gateway: about 2.4 ms added",
)


@dataclass(frozen=True)
class Plan:
    """How much load each phase sends; ``--quick`` shrinks it."""

    rounds: int = 3
    warmup_seconds: float = 2.0
    sequential_requests: int = 2000
    open_rate: float = 200.0
    open_seconds: float = 15.0
    open_connections: int = 32
    closed_concurrency: tuple[int, ...] = (8, 32, 128)
    closed_seconds: float = 5.0


QUICK = Plan(
    rounds=1,
    warmup_seconds=1.0,
    sequential_requests=300,
    open_seconds=5.0,
    closed_concurrency=(8, 32, 128),
    closed_seconds=3.0,
)


def request_body(model: str) -> bytes:
    """A small, typical chat request."""
    body = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Say hello."},
        ],
        "max_tokens": 16,
        "temperature": 0.7,
    }
    return json.dumps(body, separators=(",", ":")).encode()


# --------------------------------------------------------------------------- processes

_TICK = os.sysconf("SC_CLK_TCK")


def _proc_stats() -> dict[int, tuple[int, str, float]]:
    """``{pid: (ppid, command name, CPU seconds)}`` for every process we can read."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        stats[int(entry.name)] = (int(fields[1]), name, (int(fields[11]) + int(fields[12])) / _TICK)
    return stats


def _tree(root: int, stats: dict[int, tuple[int, str, float]]) -> set[int]:
    members, grew = {root}, True
    while grew:
        children = {pid for pid, (ppid, _, _) in stats.items() if ppid in members}
        grew = not children <= members
        members |= children
    return members


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds used so far by ``root`` and its descendants still alive."""
    stats = _proc_stats()
    return sum(stats[pid][2] for pid in _tree(root, stats) if pid in stats)


def _pinned(cpus: Sequence[int] | None) -> Callable[[], None] | None:
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


class Server:
    """A server process we start, wait for, measure and stop (with its process group)."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        port: int,
        model: str,
        log: Path,
        cpus: Sequence[int] | None,
        env: dict[str, str] | None = None,
        process: str | None = None,
    ) -> None:
        self.name, self.argv, self.port, self.model = name, argv, port, model
        self.process = process or name  # how its CPU time is labelled
        self.log, self.cpus, self.env = log, cpus, env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(self.env or {})},
                preexec_fn=_pinned(self.cpus),
                start_new_session=True,
            )

    def wait_ready(self, timeout: float) -> None:
        """Until a real chat completion comes back 200 (raises with the log's tail if not)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        body = request_body(self.model)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("POST", CHAT_PATH, body, {"content-type": "application/json"})
                status = conn.getresponse().status
                conn.close()
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        tail = self.log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{self.name} did not become ready on port {self.port}:\n{tail}")

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} is not started"
        return self.proc.pid

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.pid)

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


# --------------------------------------------------------------------------- phases

_WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK_JSON {{"requests": %d, "duration_us": %d, "connect": %d, ' ..
    '"read": %d, "write": %d, "status": %d, "timeout": %d, "p50_us": %.1f, "p99_us": %.1f}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


class Bench:
    """Runs phases against the servers from a separate load-generator process, and reads every
    server's CPU time around each phase."""

    def __init__(
        self, servers: Sequence[Server], loadgen_cpus: Sequence[int], wrk: str | None, work: Path
    ) -> None:
        self.servers = list(servers)
        self.loadgen_cpus = list(loadgen_cpus)
        self.wrk = wrk
        self.work = work

    def _measure(self, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        before = {s.process: s.cpu_seconds() for s in self.servers}
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = run()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        result["cpu_s"] = {s.process: s.cpu_seconds() - before[s.process] for s in self.servers}
        result["cpu_s"]["load generator"] = (after.ru_utime + after.ru_stime) - (
            children.ru_utime + children.ru_stime
        )
        self.settle()
        return result

    def settle(self, timeout: float = 60.0) -> None:
        """Wait until no server is still working off a backlog (under 5% of a core for 0.3 s)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            before = sum(s.cpu_seconds() for s in self.servers)
            time.sleep(0.3)
            if sum(s.cpu_seconds() for s in self.servers) - before < 0.015:
                return

    def _loadgen(self, target: Server, spec: dict[str, Any]) -> dict[str, Any]:
        spec = {**spec, "port": target.port, "body": request_body(target.model).decode()}
        spec["cpus"] = self.loadgen_cpus
        return run_loadgen({**spec, "path": CHAT_PATH})

    def sequential(self, target: Server, requests: int) -> dict[str, Any]:
        spec = {"mode": "sequential", "requests": requests}
        return self._measure(lambda: self._loadgen(target, spec))

    def open_loop(self, target: Server, plan: Plan) -> dict[str, Any]:
        spec = {"mode": "open", "rate": plan.open_rate, "seconds": plan.open_seconds}
        spec["connections"] = plan.open_connections
        return self._measure(lambda: self._loadgen(target, spec))

    def closed_loop(self, target: Server, concurrency: int, seconds: float) -> dict[str, Any]:
        if self.wrk:
            result = self._measure(lambda: self._wrk(target, concurrency, seconds))
        else:
            spec = {"mode": "closed", "concurrency": concurrency, "seconds": seconds}
            result = self._measure(lambda: self._loadgen(target, spec))
            result["rps"] = result["completed"] / result["elapsed_s"]
            result["errors"] = sum(n for code, n in result["statuses"].items() if code != "200")
        result["concurrency"] = concurrency
        return result

    def _wrk(self, target: Server, concurrency: int, seconds: float) -> dict[str, Any]:
        assert self.wrk is not None
        script = self.work / f"wrk-{target.name}.lua"
        script.write_text(_WRK_SCRIPT.format(body=request_body(target.model).decode()))
        argv = [self.wrk, "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--timeout", "10s"]
        argv += ["-s", str(script), f"http://127.0.0.1:{target.port}{CHAT_PATH}"]
        pin = _pinned(self.loadgen_cpus)
        out = subprocess.run(argv, check=True, capture_output=True, text=True, preexec_fn=pin)
        line = next(line for line in out.stdout.splitlines() if line.startswith("WRK_JSON "))
        raw = json.loads(line.removeprefix("WRK_JSON "))
        return {
            "completed": raw["requests"],
            "elapsed_s": raw["duration_us"] / 1e6,
            "rps": raw["requests"] / (raw["duration_us"] / 1e6),
            "errors": sum(raw[k] for k in ("connect", "read", "write", "status", "timeout")),
            "p50_ms": raw["p50_us"] / 1e3,
            "p99_ms": raw["p99_us"] / 1e3,
        }


# --------------------------------------------------------------------------- the run


def _versions(litellm: str | None) -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("dtecho", "uvicorn", "uvloop", "httptools", "httpx", "httpcore", "fastapi",
                 "starlette", "pydantic", "structlog", "prometheus-client"):  # fmt: skip
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    if litellm:
        code = "import importlib.metadata as m; print(m.version('litellm'))"
        with contextlib.suppress(OSError):
            out = subprocess.run(
                [str(Path(litellm).parent / "python"), "-c", code], capture_output=True, text=True
            )
            versions["litellm"] = out.stdout.strip() or None
    wrk = shutil.which("wrk")
    if wrk:  # `wrk -v` prints its version and exits 1
        out = subprocess.run([wrk, "-v"], capture_output=True, text=True)
        versions["wrk"] = (out.stdout or out.stderr).split("[", 1)[0].strip() or None
    git = ["git", "-C", str(HERE.parent)]
    with contextlib.suppress(OSError):
        commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
        status = [*git, "status", "--porcelain", "src"]
        dirty = subprocess.run(status, capture_output=True, text=True)
        versions["dtecho_git_commit"] = commit.stdout.strip() or None
        versions["dtecho_src_uncommitted_changes"] = "yes" if dirty.stdout.strip() else "no"
    return versions


def _machine() -> dict[str, Any]:
    model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu_model": model,
        "cpus_online": os.cpu_count(),
        "cpus_usable": sorted(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "platform": platform.platform(),
    }


def _load_snapshot() -> dict[str, Any]:
    uptime = shutil.which("uptime")
    line = subprocess.run([uptime], capture_output=True, text=True).stdout.strip() if uptime else ""
    return {"uptime": line, "loadavg": list(os.getloadavg())}


def _other_cpu(before: dict, after: dict, ours: set[int], wall: float) -> dict[str, Any]:
    """CPU used during the run by processes that are not part of this benchmark."""
    used: Counter[str] = Counter()
    for pid, (_, name, cpu) in after.items():
        if pid not in ours and cpu - before.get(pid, (0, name, 0.0))[2] > 0:
            used[f"{name} (pid {pid})"] += cpu - before.get(pid, (0, name, 0.0))[2]
    total = sum(used.values())
    return {
        "cpu_seconds": round(total, 2),
        "share_of_machine": round(total / (wall * (os.cpu_count() or 1)), 3),
        "top": {name: round(cpu, 2) for name, cpu in used.most_common(3)},
    }


def _build_servers(
    work: Path, litellm: str | None, layout: dict[str, list[int]] | None, floor: bool = False
) -> list[Server]:
    up_port, dt_port = free_port(), free_port()
    base_url = f"http://127.0.0.1:{up_port}/v1"
    dt_config = work / "dtecho.yaml"
    dt_config.write_text(
        "models:\n  - name: fast\n    engine: openai\n"
        f"    base_url: {base_url}\n    upstream_model: {UPSTREAM_MODEL}\n"
        "log_level: warning\n"
    )
    up_argv = [sys.executable, str(HERE / "_fast_upstream.py"), "--port", str(up_port)]
    dt_argv = [sys.executable, "-m", "dtecho", "serve", "--port", str(dt_port), "--workers", "1"]
    up_cpus = layout["upstream"] if layout else None
    proxy_cpus = layout["proxy"] if layout else None
    servers = [
        Server("direct", up_argv, up_port, UPSTREAM_MODEL, work / "upstream.log", up_cpus,
               process="upstream"),
        Server("dtecho", [*dt_argv, "--config", str(dt_config)], dt_port, PROXY_MODEL,
               work / "dtecho.log", proxy_cpus),
    ]  # fmt: skip
    for kind in ("asgi", "fastapi") if floor else ():
        port = free_port()
        argv = [sys.executable, str(Path(__file__).resolve()), "--serve-floor", kind]
        argv += ["--port", str(port), "--upstream-port", str(up_port)]
        servers.append(
            Server(f"bare-{kind}", argv, port, PROXY_MODEL, work / f"{kind}.log", proxy_cpus)
        )
    if litellm:
        ll_port = free_port()
        ll_config = work / "litellm.yaml"
        ll_config.write_text(
            "model_list:\n  - model_name: fast\n    litellm_params:\n"
            f"      model: openai/{UPSTREAM_MODEL}\n      api_base: {base_url}\n"
            "      api_key: sk-benchmark\n"
            "litellm_settings:\n  telemetry: false\n"
            # No auth on either proxy; LiteLLM refuses to start keyless without this.
            "general_settings:\n  dangerously_permit_weak_or_unset_master_key: true\n"
        )
        log_config = work / "litellm-logging.json"
        quiet_access = {"uvicorn.access": {"level": "WARNING"}}
        log_config.write_text(
            json.dumps({"version": 1, "disable_existing_loggers": False, "loggers": quiet_access})
        )
        ll_argv = [litellm, "--config", str(ll_config), "--log_config", str(log_config)]
        ll_argv += ["--host", "127.0.0.1", "--port", str(ll_port), "--num_workers", "1"]
        env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
        servers.append(
            Server("litellm", ll_argv, ll_port, PROXY_MODEL, work / "litellm.log", proxy_cpus, env)
        )
    return servers


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _measure_all(
    bench: Bench, plan: Plan, skip_open: set[str]
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Every phase, every round; in each phase the targets run back to back in a rotating
    order, so drifts in the machine's load fall on all of them alike."""
    servers = bench.servers
    raw: dict[str, dict[str, list[dict]]] = {
        s.name: {"sequential": [], "open": [], "closed": []} for s in servers
    }
    for index in range(plan.rounds):
        shift = index % len(servers)
        order = servers[shift:] + servers[:shift]
        tag = f"round {index + 1}/{plan.rounds}"
        for s in order:
            _log(f"{tag}: sequential x{plan.sequential_requests} -> {s.name}")
            raw[s.name]["sequential"].append(bench.sequential(s, plan.sequential_requests))
        for s in order:
            if s.name not in skip_open:
                _log(f"{tag}: open loop {plan.open_rate:g} req/s -> {s.name}")
                raw[s.name]["open"].append(bench.open_loop(s, plan))
        for s in order:
            for concurrency in plan.closed_concurrency:
                _log(f"{tag}: closed loop c={concurrency} -> {s.name}")
                result = bench.closed_loop(s, concurrency, plan.closed_seconds)
                raw[s.name]["closed"].append(result)
    return raw


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the servers, measure every phase, stop them; returns the report."""
    plan = QUICK if args.quick else Plan()
    if args.rounds:
        plan = replace(plan, rounds=args.rounds)
    usable = sorted(os.sched_getaffinity(0))
    layout = None
    if not args.no_pin and len(usable) >= 2:
        layout = {"load generator": usable[:1], "upstream": usable[:1], "proxy": usable[1:2]}
    wrk = None if args.no_wrk else (args.wrk or shutil.which("wrk"))
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

    stats_before, load_before, started = _proc_stats(), _load_snapshot(), time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dtecho-proxy-bench-") as tmp:
        servers = _build_servers(Path(tmp), litellm, layout, floor=args.floor)
        bench = Bench(servers, layout["load generator"] if layout else [], wrk, Path(tmp))
        try:
            for server in servers:
                server.start()
                server.wait_ready(timeout=120 if server.name == "litellm" else 60)
            ours = {os.getpid()}.union(*(_tree(s.pid, _proc_stats()) for s in servers))
            _log(f"ready: {', '.join(f'{s.name} on :{s.port}' for s in servers)}")
            skip_open = set()
            for server in servers:  # warm pools, caches and lazy imports; not recorded
                probe = bench.closed_loop(server, 8, plan.warmup_seconds)
                bench.sequential(server, 100)
                # dtecho (the subject) and the direct path are always measured; a comparison
                # proxy that cannot even sustain the offered rate would only show its queue grow.
                if server.name == "litellm" and probe["rps"] < plan.open_rate:
                    skip_open.add(server.name)
                    notes.append(
                        f"{server.name}: open loop at {plan.open_rate:g} req/s not run: its "
                        f"warm-up probe (c=8) reached only {probe['rps']:.0f} req/s, so it would "
                        "only measure an ever-growing queue."
                    )
            raw = _measure_all(bench, plan, skip_open)
            ours |= set().union(*(_tree(s.pid, _proc_stats()) for s in servers))
            stats_after = _proc_stats()
        finally:
            for server in reversed(servers):
                server.stop()
    wall = time.monotonic() - started

    results = {
        s.name: {"process": s.process, **_summarise(s.process, raw[s.name])} for s in servers
    }
    _add_differences(results)
    return {
        "quick": args.quick,
        "machine": _machine(),
        "versions": _versions(litellm),
        "settings": {
            "plan": asdict(plan),
            "cpu_layout": layout or "not pinned",
            "closed_loop_generator": f"wrk -t1 ({wrk})" if wrk else "python (uvloop, httptools)",
            "open_loop_generator": "python, asyncio select() loop (µs timers), httptools",
            "sequential_generator": "python, uvloop, httptools",
            "request_body": json.loads(request_body(PROXY_MODEL)),
            "added_latency": "percentile(proxied) - percentile(direct), same phase and run",
            "dtecho": "one worker (dtecho serve --workers 1), openai engine, log_level warning",
            "litellm": "one worker, no master key, uvicorn access log off, LITELLM_LOG=ERROR"
            if litellm
            else None,
        },
        "load": {
            "before": load_before,
            "after": _load_snapshot(),
            "wall_seconds": round(wall, 1),
            "other_processes": _other_cpu(stats_before, stats_after, ours, wall),
        },
        "targets": TARGETS,
        "anchors_not_measured_here": list(ANCHORS),
        "results": results,
        "verdict": _verdict(results, plan.open_rate),
        "notes": notes,
    }


def _cpu_us_per_request(results: list[dict], process: str, count: Callable[[dict], int]) -> float:
    total = sum(count(r) for r in results)
    return 1e6 * sum(r["cpu_s"][process] for r in results) / total if total else float("nan")


def _errors(results: list[dict]) -> int:
    bad = sum(n for r in results for code, n in r["statuses"].items() if code != "200")
    return bad + sum(r.get("unanswered", 0) for r in results)


def _latency(rounds: list[dict], key: str) -> dict[str, Any]:
    """Per-round percentiles of ``key`` samples; the headline is the median over rounds, so
    that one round spoilt by a stall elsewhere on the machine does not decide the result."""
    per_round = [summarise_ms(r[key]) for r in rounds]
    out: dict[str, Any] = {
        f"{q}_ms": percentile(sorted(x[f"{q}_ms"] for x in per_round), 50)
        for q in ("p50", "p90", "p99")
    }
    out["rounds"] = [{q: round(x[f"{q}_ms"], 3) for q in ("p50", "p99")} for x in per_round]
    out["pooled"] = summarise_ms([x for r in rounds for x in r[key]])
    return out


def _summarise(process: str, phases: dict[str, list[dict]]) -> dict[str, Any]:
    """Combine the rounds of one target; CPU per request is that of its own ``process``."""
    seq, opened, closed = phases["sequential"], phases["open"], phases["closed"]

    def answered(result: dict) -> int:
        return len(result["latencies_s"])

    out: dict[str, Any] = {
        "sequential": {
            **_latency(seq, "latencies_s"),
            "errors": _errors(seq),
            "cpu_us_per_request": _cpu_us_per_request(seq, process, answered),
        },
        "open_loop": None,
    }
    if opened:
        out["open_loop"] = {
            **_latency(opened, "latencies_s"),
            "service_time": _latency(opened, "service_s"),
            "send_lag": _latency(opened, "send_lag_s"),
            "queued_client_side": sum(r["queued_client_side"] for r in opened),
            "reconnects": sum(r["reconnects"] for r in opened),
            "errors": _errors(opened),
            "cpu_us_per_request": _cpu_us_per_request(opened, process, answered),
        }
    levels: dict[int, dict[str, Any]] = {}
    for concurrency in sorted({r["concurrency"] for r in closed}):
        runs = [r for r in closed if r["concurrency"] == concurrency]
        seconds = sum(r["elapsed_s"] for r in runs)
        levels[concurrency] = {
            "rps_median": percentile(sorted(r["rps"] for r in runs), 50),
            "rps_runs": [round(r["rps"], 1) for r in runs],
            "p50_ms_runs": [round(r["p50_ms"], 3) for r in runs],
            "p99_ms_runs": [round(r["p99_ms"], 3) for r in runs],
            "errors": sum(r["errors"] for r in runs),
            "cpu_us_per_request": _cpu_us_per_request(runs, process, lambda r: r["completed"]),
            "cpu_cores_busy": {
                name: round(sum(r["cpu_s"][name] for r in runs) / seconds, 3)
                for name in runs[0]["cpu_s"]
            },
        }
    best = max(levels, key=lambda c: levels[c]["rps_median"])
    out["closed_loop"] = {
        "by_concurrency": levels,
        "max_rps": levels[best]["rps_median"],
        "at_concurrency": best,
        # What one worker would do with a core to itself, from its CPU time per request;
        # an estimate, printed as such, for machines where other work takes CPU from it.
        "rps_per_core_estimate": 1e6 / levels[best]["cpu_us_per_request"],
    }
    return out


def _add_differences(results: dict[str, dict[str, Any]]) -> None:
    direct = results["direct"]
    for name, result in results.items():
        for phase in ("sequential", "open_loop"):
            if name == "direct" or not result[phase] or not direct[phase]:
                continue
            pairs = [(result[phase], direct[phase])]
            if phase == "open_loop":  # the same, from the actual send (load generator lag excluded)
                pairs.append((result[phase]["service_time"], direct[phase]["service_time"]))
            for ours, theirs in pairs:
                for q in ("p50", "p99"):
                    ours[f"{q}_added_ms"] = ours[f"{q}_ms"] - theirs[f"{q}_ms"]


def _verdict(results: dict[str, dict[str, Any]], rate: float) -> dict[str, Any]:
    """Each target with its measured value, and whether this run could resolve it."""
    dtecho, direct = results.get("dtecho"), results["direct"]
    if not dtecho:
        return {}
    verdict = {}
    value, target = dtecho["sequential"]["p50_added_ms"], TARGETS["p50_added_ms"]
    verdict["p50_added_ms_sequential"] = {
        "value": value, "target": target, "met": value <= target,
        "resolved": value >= 0,
        "why_not": "proxied faster than direct: noise" if value < 0 else None,
    }  # fmt: skip
    opened, reference = dtecho["open_loop"], direct["open_loop"]
    for q in ("p50", "p99"):
        value, target = opened[f"{q}_added_ms"], TARGETS[f"{q}_added_ms"]
        # The load generator's own lateness (a busy machine) lands in both paths' latencies;
        # a difference is only trusted when that lateness is small beside the target.
        lag = max(opened["send_lag"][f"{q}_ms"], reference["send_lag"][f"{q}_ms"])
        why = []
        if abs(value - target) <= lag:
            why.append(f"the load generator's own lateness ({q} {lag:.3g} ms) could flip it")
        if value < 0:
            why.append("proxied faster than direct: noise")
        verdict[f"{q}_added_ms_at_{rate:g}rps"] = {
            "value": value, "target": target, "met": value <= target,
            "resolved": not why, "why_not": "; ".join(why) or None,
        }  # fmt: skip
    closed = dtecho["closed_loop"]
    busy = closed["by_concurrency"][closed["at_concurrency"]]["cpu_cores_busy"]["dtecho"]
    value, target = closed["max_rps"], TARGETS["rps_per_worker"]
    # A miss is unresolved when dtecho lacked CPU and would have made it with a core of its own.
    starved = value < target and busy < 0.9 and closed["rps_per_core_estimate"] >= target
    verdict["max_rps_per_worker"] = {
        "value": value, "target": target, "met": value >= target, "resolved": not starved,
        "why_not": f"dtecho got only {busy:.2f} of a core (the rest went to other processes)"
        if starved else None,
    }  # fmt: skip
    levels = closed["by_concurrency"]
    highest = max(levels)
    value, target = levels[highest]["rps_median"] / closed["max_rps"], TARGETS["rps_flat_share"]
    verdict[f"rps_at_c{highest}_share_of_best"] = {
        "value": value, "target": target, "met": value >= target, "resolved": len(levels) > 1,
        "why_not": None if len(levels) > 1 else "only one concurrency was run",
    }  # fmt: skip
    return verdict


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def render(report: dict[str, Any]) -> None:
    """Print the table and the context needed to read it."""
    results, plan = report["results"], report["settings"]["plan"]
    load = report["load"]
    machine, kind = report["machine"], "quick" if report["quick"] else "full"
    print(f"\nProxy overhead ({kind} run, {plan['rounds']} round(s))")
    print(
        f"machine: {machine['cpu_model']}, {machine['cpus_online']} CPUs shared by upstream, "
        f"proxies, load generator and anything else running; "
        f"CPU layout: {report['settings']['cpu_layout']}"
    )
    print(f"load before: {load['before']['uptime']}")
    print(f"load after:  {load['after']['uptime']}")
    other = load["other_processes"]
    print(
        f"other processes used {other['share_of_machine']:.0%} of the machine's CPU time during "
        f"the run ({other['cpu_seconds']} CPU s over {load['wall_seconds']} s): {other['top']}"
    )
    rows = []
    for name, r in results.items():
        process = r["process"]
        seq, opened, closed = r["sequential"], r["open_loop"] or {}, r["closed_loop"]
        at_max = closed["by_concurrency"][closed["at_concurrency"]]
        rows.append(
            {
                "target": name,
                "c=1 p50": _ms(seq["p50_ms"]),
                "c=1 p99": _ms(seq["p99_ms"]),
                "c=1 +p50": _ms(seq.get("p50_added_ms")),
                "c=1 +p99": _ms(seq.get("p99_added_ms")),
                f"{plan['open_rate']:g}/s p50": _ms(opened.get("p50_ms")),
                f"{plan['open_rate']:g}/s p99": _ms(opened.get("p99_ms")),
                f"{plan['open_rate']:g}/s +p50": _ms(opened.get("p50_added_ms")),
                f"{plan['open_rate']:g}/s +p99": _ms(opened.get("p99_added_ms")),
                "max req/s": f"{closed['max_rps']:.0f}",
                "at conc": closed["at_concurrency"],
                "CPU µs/req": f"{at_max['cpu_us_per_request']:.0f}",
                "busy cores": f"{at_max['cpu_cores_busy'][process]:.2f}",
                "est. req/s per core": f"{closed['rps_per_core_estimate']:.0f}",
            }
        )
    print_table(rows, list(rows[0]), title=(
        "latency in ms, median over rounds of each round's percentile (+ = added over direct). "
        "At max req/s: CPU µs per request and cores kept busy by the target's own server "
        "process, and 1e6 / (CPU µs/req) = the req/s it would reach with a core to itself "
        "(an estimate, not a measurement)"))  # fmt: skip
    rate = f"{plan['open_rate']:g} req/s"
    for name, r in results.items():
        levels = r["closed_loop"]["by_concurrency"]
        per_level = ", ".join(f"c={c}: {v['rps_median']:.0f}" for c, v in levels.items())
        errors = r["sequential"]["errors"] + (r["open_loop"] or {}).get("errors", 0)
        errors += sum(v["errors"] for v in levels.values())
        print(
            f"\n  {name}: req/s by concurrency {per_level}" + (f"; {errors} FAILED" * bool(errors))
        )
        opened = r["open_loop"]
        if opened:
            lag, service = opened["send_lag"], opened["service_time"]
            line = (
                f"    {rate}: p50/p99 per round {[(x['p50'], x['p99']) for x in opened['rounds']]}"
            )
            print(
                line
                + f"; load generator late by p50 {_ms(lag['p50_ms'])} / p99 {_ms(lag['p99_ms'])}"
            )
            if "p50_added_ms" in service:
                print(
                    f"    {rate}, timed from the actual send: +p50 {_ms(service['p50_added_ms'])}, "
                    f"+p99 {_ms(service['p99_added_ms'])} (queued client-side: "
                    f"{opened['queued_client_side']})"
                )
    print()
    for key, check in report["verdict"].items():
        verdict = "met" if check["met"] else "NOT met"
        caveat = f" (not resolved by this run: {check['why_not']})" if not check["resolved"] else ""
        print(f"target {key}: {check['value']:.3g} vs {check['target']:g} -> {verdict}{caveat}")
    print("\nPublished anchors (NOT measured here; other hardware and set-ups):")
    for anchor in report["anchors_not_measured_here"]:
        print(f"  - {anchor}")
    for note in report["notes"]:
        print(f"note: {note}")


def serve_floor(kind: str, port: int, upstream_port: int) -> None:
    """Serve a reference relay (``--floor``): ``asgi`` or ``fastapi``, see the module docstring.

    It sets the garbage collector up as ``dtecho serve`` does (start-up heap frozen, a young
    generation of 10,000), so that the comparison is of the request path alone.
    """
    import gc
    from contextlib import asynccontextmanager

    import aiohttp
    import uvicorn

    url = f"http://127.0.0.1:{upstream_port}/v1/chat/completions"
    session: aiohttp.ClientSession | None = None

    async def relay(body: bytes) -> bytes:
        nonlocal session
        if session is None:
            connector = aiohttp.TCPConnector(limit=256)
            session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        payload = {**json.loads(body), "model": UPSTREAM_MODEL}
        headers = {"content-type": "application/json"}
        async with session.post(url, data=json.dumps(payload).encode(), headers=headers) as r:
            return await r.read()

    def started() -> None:
        gc.freeze()
        gc.set_threshold(10_000, *gc.get_threshold()[1:])

    app: Any
    if kind == "asgi":

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "lifespan":
                await receive()  # lifespan.startup
                started()
                await send({"type": "lifespan.startup.complete"})
                await receive()  # lifespan.shutdown
                await send({"type": "lifespan.shutdown.complete"})
                return
            chunks, more = [], True
            while more:
                message = await receive()
                chunks.append(message.get("body", b""))
                more = message.get("more_body", False)
            answer = await relay(b"".join(chunks))
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(answer)),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": answer})

    else:
        from fastapi import FastAPI, Response

        from dtecho.protocol.openai import ChatCompletionRequest

        @asynccontextmanager
        async def lifespan(_: FastAPI) -> Any:
            started()
            yield

        app = FastAPI(lifespan=lifespan)

        async def chat(body: ChatCompletionRequest) -> Response:
            answer = await relay(body.model_dump_json(exclude_unset=True).encode())
            return Response(answer, media_type="application/json")

        # This module's annotations are strings, and these names are local: resolve them here.
        chat.__annotations__ = {"body": ChatCompletionRequest, "return": Response}
        app.post(CHAT_PATH)(chat)

    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                log_config=None, access_log=False, server_header=False)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="one short round (about a minute)")
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument("--litellm", help="the `litellm` command (env DTECHO_BENCH_LITELLM)")
    parser.add_argument("--wrk", help="path to wrk for the closed loop (default: wrk on PATH)")
    parser.add_argument("--no-wrk", action="store_true", help="closed loop from the python client")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--out", type=Path, help="JSON file (default results/proxy_overhead.json)")
    parser.add_argument(
        "--floor", action="store_true", help="also measure two reference relays (no dtecho)"
    )
    parser.add_argument("--serve-floor", choices=("asgi", "fastapi"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--upstream-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_floor:
        serve_floor(args.serve_floor, args.port, args.upstream_port)
        return 0
    report = run(args)
    render(report)
    write_json("proxy_overhead", report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
