"""Micro-batching on and off: ``/v1/dtesn/process`` served by a real ``dtecho serve`` worker.

For each setting (``DTECHO_BATCHING_ENABLED`` true, then false) one ``python -m dtecho serve``
process (one worker) is started, warmed up, and loaded from a separate process
(``_loadgen.py``: raw HTTP/1.1 over keep-alive connections, responses parsed by httptools, so
the client costs a few microseconds per request). At each concurrency level (1, 8, 64) a
fixed number of requests is sent in a closed loop: N connections, each sending its next
request as soon as its answer is complete. Every request carries its own 256-byte input
(``esn_size`` 512, depth 4, the response cache bypassed), so nothing is a cache hit.

    .venv/bin/python benchmarks/batching.py [--quick]

The two settings are measured in alternating order for ``--rounds`` rounds (3; 1 with
``--quick``) and each figure is the median over rounds. Reports requests/s and p50/p99
latency per level, on vs off and the ratio (batching's gain: no target), the server's CPU
time per request (all its threads, from ``/proc``), the load generator's, and the mean
batch size (from the server's ``/metrics``); checks the targets (≥ 1,500 requests/s at
concurrency 64 with batching on, issue 18; p50 at concurrency 1 within 10 % of off), writes
``benchmarks/results/batching.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import resource
import signal
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import free_port, machine_info, print_table, write_json
from _loadgen import percentile, run_loadgen

PATH = "/v1/dtesn/process"
LEVELS = (1, 8, 64)
INPUT_BYTES = 256
ESN_SIZE = 512
TARGETS = {"rps_on_at_64": 1500.0, "p50_ratio_at_1": 1.10}


def bodies(count: int, seed: int, size: int = INPUT_BYTES, esn_size: int = ESN_SIZE) -> list[str]:
    """``count`` distinct request bodies, each with its own ``size``-byte ASCII input."""
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits + " .,"
    out = []
    for _ in range(count):
        text = "".join(rng.choice(alphabet) for _ in range(size))
        body = {"input": text, "esn_size": esn_size, "enable_caching": False}
        out.append(json.dumps(body))
    return out


def run_load(port: int, concurrency: int, requests: int, seed: int) -> dict[str, Any]:
    """``requests`` distinct bodies over ``concurrency`` connections, from a separate process."""
    spec = {"mode": "fixed", "port": port, "path": PATH, "concurrency": concurrency}
    return run_loadgen({**spec, "bodies": bodies(requests, seed)}, timeout=600)


# --------------------------------------------------------------------------- server


@contextlib.contextmanager
def server(batching: bool, directory: Path):
    port = free_port()
    config = directory / f"dtecho-{batching}.yaml"
    config.write_text(f"data_dir: {directory / 'data'}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DTECHO_")}
    env["DTECHO_BATCHING_ENABLED"] = "true" if batching else "false"
    log = (directory / f"server-{batching}.log").open("wb")
    argv = [sys.executable, "-m", "dtecho", "serve", "--port", str(port), "--config", str(config)]
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
        yield port, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid``, all its threads (finished ones included)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def batch_counts(port: int) -> tuple[float, float]:
    """(requests, batches) the server's DTESN micro-batcher has run so far."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()

    def value(name: str) -> float:
        found = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
        return float(found.group(1)) if found else 0.0

    return value("dtecho_dtesn_batch_size_sum"), value("dtecho_dtesn_batch_size_count")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(batching: bool, plan: dict[int, int], directory: Path) -> list[dict[str, Any]]:
    rows = []
    with server(batching, directory) as (port, pid):
        run_load(port, 8, plan["warmup"], seed=999)  # builds the network, warms caches
        for level in LEVELS:
            cpu, client, batched = cpu_seconds(pid), children_cpu(), batch_counts(port)
            result = run_load(port, level, plan[level], seed=level)
            cpu, client = cpu_seconds(pid) - cpu, children_cpu() - client
            requests, batches = (b - a for a, b in zip(batched, batch_counts(port), strict=True))
            lat = sorted(result["latencies_s"])
            ok = result["statuses"].get("200", 0)
            rows.append(
                {
                    "batching": "on" if batching else "off",
                    "concurrency": level,
                    "requests": len(lat),
                    "ok": ok,
                    "rps": len(lat) / result["elapsed_s"],
                    "p50_ms": percentile(lat, 50) * 1000,
                    "p99_ms": percentile(lat, 99) * 1000,
                    "server_cpu_us": cpu / len(lat) * 1e6,  # per request, all threads
                    "client_cpu_us": client / len(lat) * 1e6,  # the load generator's process
                    "batch_size": requests / batches if batches else 1.0,
                }
            )
            print(rows[-1], flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="few requests per level")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default results/)")
    parser.add_argument("--rounds", type=int, default=None, help="on/off rounds (median)")
    args = parser.parse_args(argv)
    plan = (
        {"warmup": 32, 1: 40, 8: 80, 64: 192}
        if args.quick
        else {"warmup": 128, 1: 300, 8: 800, 64: 1920}
    )
    rounds = args.rounds or (1 if args.quick else 3)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(rounds):  # alternate the order: drift on a shared machine
            for batching in (True, False) if index % 2 == 0 else (False, True):
                for row in measure(batching, plan, Path(tmp)):
                    rows.append({"round": index, **row})

    def median_row(setting: str, level: int) -> dict[str, float]:
        picked = [r for r in rows if r["batching"] == setting and r["concurrency"] == level]
        keys = ("rps", "p50_ms", "p99_ms", "server_cpu_us", "client_cpu_us", "batch_size")
        return {k: statistics.median(r[k] for r in picked) for k in keys}

    summary = []
    for level in LEVELS:
        on, off = median_row("on", level), median_row("off", level)
        summary.append(
            {
                "concurrency": level,
                "rps_on": on["rps"],
                "rps_off": off["rps"],
                "rps_ratio": on["rps"] / off["rps"],
                "p50_on_ms": on["p50_ms"],
                "p50_off_ms": off["p50_ms"],
                "p99_on_ms": on["p99_ms"],
                "p99_off_ms": off["p99_ms"],
                "cpu_on_us": on["server_cpu_us"],
                "cpu_off_us": off["server_cpu_us"],
                "client_cpu_us": on["client_cpu_us"],
                "batch_size": on["batch_size"],
            }
        )
    s = {r["concurrency"]: r for r in summary}
    checks = {
        "rps_on_at_64": s[64]["rps_on"],
        "rps_on_at_64_met": s[64]["rps_on"] >= TARGETS["rps_on_at_64"],
        "rps_ratio_at_64": s[64]["rps_ratio"],
        "p50_ratio_at_1": s[1]["p50_on_ms"] / s[1]["p50_off_ms"],
        "p50_ratio_at_1_met": s[1]["p50_on_ms"] / s[1]["p50_off_ms"] <= TARGETS["p50_ratio_at_1"],
    }
    columns = ["concurrency", "rps_on", "rps_off", "rps_ratio"]
    columns += ["p50_on_ms", "p50_off_ms", "p99_on_ms", "p99_off_ms"]
    columns += ["cpu_on_us", "cpu_off_us", "client_cpu_us", "batch_size"]
    print_table(summary, columns, title=f"{PATH}, esn_size {ESN_SIZE}, {INPUT_BYTES}-byte inputs")
    title = "targets: ≥1,500 req/s at 64 with batching on; p50 at 1 within 10 %"
    print_table([checks], list(checks), title=title)
    write_json(
        "batching",
        {
            "quick": args.quick,
            "plan": {str(k): v for k, v in plan.items()},
            "rounds": rounds,
            "rows": rows,
            "summary": summary,
            "targets": TARGETS,
            "checks": checks,
            "machine": machine_info(int(os.environ.get("OPENBLAS_NUM_THREADS", "0") or 0)),
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
