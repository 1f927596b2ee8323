"""Prediction latency of a trained model while its lifecycle runs: idle, during alias swaps,
during continuous learning, in one run against one server.

One ``dtecho serve`` worker and the load generator (``_loadgen.py``), each its own process.
A DTESN model (40 units) is trained, updated once (version 2, not promoted), then, in a
rotating order each round, the same sequential load of predictions for the bare model id
runs under three conditions:

- ``idle``: nothing else happens;
- ``swaps``: a thread moves ``production`` between versions 1 and 2 every 200 ms;
- ``learning``: continuous learning is on and a thread posts an observation of 100 rows
  every 100 ms (1,000 rows/s of ground truth), so a learning round (300 + 100 rows) runs in
  the background about every 0.4 s.

Each condition's p50/p99 is the median over rounds; the target is p99 during either at most
1.5× idle (issue 21).

    .venv/bin/python benchmarks/lifecycle.py [--quick]

Writes ``benchmarks/results/lifecycle.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from _common import free_port, print_table, write_json
from _loadgen import run_loadgen
from proxy_overhead import Server

TARGET_P99_RATIO = 1.5
SWAP_EVERY = 0.2  # seconds between alias moves
OBSERVE_EVERY = 0.1  # seconds between observations of 100 rows
SERIES = [[math.sin(0.3 * t)] for t in range(4000)]


def _spec(port: int, model: str, requests: int) -> dict[str, Any]:
    body = json.dumps({"inputs": SERIES[:20], "enable_caching": False})
    path = f"/v1/dtesn/models/{model}/predict"
    return {"port": port, "path": path, "body": body, "mode": "sequential", "requests": requests}


def _measure(port: int, model: str, requests: int) -> dict[str, float]:
    result = run_loadgen(_spec(port, model, requests))
    latencies = sorted(result["latencies_s"])
    ok = result["statuses"].get("200", 0)
    return {
        "p50_ms": 1e3 * latencies[len(latencies) // 2],
        "p99_ms": 1e3 * latencies[int(len(latencies) * 0.99)],
        "errors": len(latencies) - ok,
    }


class _Background(threading.Thread):
    """Runs ``step`` until stopped; counts the steps and their failures."""

    def __init__(self, step: Any) -> None:
        super().__init__(daemon=True)
        self.step, self.stop_event = step, threading.Event()
        self.steps = self.failures = 0

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.step()
                self.steps += 1
            except Exception:
                self.failures += 1

    def stop(self) -> None:
        self.stop_event.set()
        self.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    rounds, requests = (1, 300) if args.quick else (5, 2000)
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        config = Path(tmp) / "dtecho.yaml"
        config.write_text(f"data_dir: {Path(tmp) / 'data'}\nlog_level: warning\n")
        argv = [sys.executable, "-m", "dtecho", "serve", "--port", str(port), "--workers", "1"]
        server = Server("dtecho", [*argv, "--config", str(config)], port, "unused",
                        Path(tmp) / "dtecho.log", None)  # fmt: skip
        server.start()
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        try:
            for _ in range(300):
                try:
                    if client.get("/health/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            models = "/v1/dtesn/models"
            training = {"inputs": SERIES[:499], "targets": SERIES[1:500],
                        "config": {"units": 40}, "warmup": 20}  # fmt: skip
            model = client.post(models, json=training).json()["id"]
            update = {"inputs": SERIES[500:599], "targets": SERIES[501:600], "promote": False}
            client.post(f"{models}/{model}/update", json=update)
            flip = {"version": 1}

            def swap() -> None:
                flip["version"] = 3 - flip["version"]
                client.put(f"{models}/{model}/aliases/production", json=flip).raise_for_status()
                time.sleep(SWAP_EVERY)

            offset = {"start": 600}

            def observe() -> None:
                start = offset["start"] % 3800
                offset["start"] += 100
                client.post(f"{models}/{model}/observations", json={
                    "inputs": SERIES[start:start + 100],
                    "targets": SERIES[start + 1:start + 101]}).raise_for_status()  # fmt: skip
                time.sleep(OBSERVE_EVERY)

            _measure(port, model, 200)  # warm
            raw: dict[str, list[dict[str, Any]]] = {"idle": [], "swaps": [], "learning": []}
            names = list(raw)
            background: dict[str, int] = {"swaps": 0, "learning_rounds": 0}
            for index in range(rounds):
                for condition in names[index % 3 :] + names[: index % 3]:
                    worker = None
                    if condition == "swaps":
                        worker = _Background(swap)
                    elif condition == "learning":
                        client.put(f"{models}/{model}/learning",
                                   json={"batch_rows": 300, "holdout_rows": 100})  # fmt: skip
                        worker = _Background(observe)
                    if worker is not None:
                        worker.start()
                    raw[condition].append(_measure(port, model, requests))
                    if worker is not None:
                        worker.stop()
                        raw[condition][-1]["background_steps"] = worker.steps
                        raw[condition][-1]["background_failures"] = worker.failures
                    if condition == "swaps":
                        background["swaps"] += worker.steps if worker else 0
                    if condition == "learning":
                        client.put(f"{models}/{model}/learning", json={"enabled": False})
            record = client.get(f"{models}/{model}").json()
            background["learning_rounds"] = int((record.get("learning") or {}).get("rounds", 0))
        finally:
            client.close()
            server.stop()
    rows, summary = [], {}
    for condition, results in raw.items():
        entry = {
            "p50_ms": statistics.median(r["p50_ms"] for r in results),
            "p99_ms": statistics.median(r["p99_ms"] for r in results),
            "errors": sum(r["errors"] for r in results),
        }
        summary[condition] = entry
    idle = summary["idle"]["p99_ms"]
    for condition, entry in summary.items():
        entry["p99_vs_idle"] = entry["p99_ms"] / idle
        rows.append({"condition": condition, **entry})
    verdict = {c: summary[c]["p99_vs_idle"] <= TARGET_P99_RATIO for c in ("swaps", "learning")}
    title = f"predictions of one model, {rounds} rounds x {requests} (median)"
    print_table(rows, ["condition", "p50_ms", "p99_ms", "p99_vs_idle", "errors"], title=title)
    print(f"\nbackground: {background}; target p99 <= {TARGET_P99_RATIO}x idle: {verdict}")
    write_json("lifecycle", {"quick": args.quick, "target_p99_ratio": TARGET_P99_RATIO,
                             "verdict": verdict, "background": background,
                             "summary": summary, "rounds": raw})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
