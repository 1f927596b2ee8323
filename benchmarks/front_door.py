"""What the front door adds: ``/{project}/{module}/v1/chat/completions`` against the plain
``/v1/chat/completions``, in one server process, to the same upstream, in one run.

Processes: a very fast OpenAI-compatible upstream (``_fast_upstream.py``), one ``dtecho
serve`` worker with a manifest directory, and the load generator (``_loadgen.py``). Targets,
all on that one server, each round in a rotating order:

- ``plain``: ``/v1/chat/completions``, model ``fast`` (relayed to the upstream);
- ``module``: ``/bench/chat/v1/chat/completions`` through an ``inference_openai`` module that
  exposes ``fast`` under its own name (routing, project policy, the module lease);
- ``module+defaults``: ``/bench/tuned/v1/chat/completions``, an alias with default fields, so
  the front door also parses and rewrites the body.

Phases: sequential (concurrency 1; p50/p99 latency, and the server's own time from
``Server-Timing``) and closed loop (N connections back to back; requests/s). Added latency is
the median over rounds of (module p50 − plain p50). The routing decision alone is timed in
process: the front door's middleware over an app that does nothing, for a project path and a
plain one.

    .venv/bin/python benchmarks/front_door.py [--quick]

Writes ``benchmarks/results/front_door.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import free_port, print_table, write_json
from _loadgen import run_loadgen
from proxy_overhead import UPSTREAM_MODEL, Server, request_body

HERE = Path(__file__).resolve().parent
TARGETS = {"p50_added_ms": 0.1, "rps_share": 0.95}
PATHS = {
    "plain": ("/v1/chat/completions", "fast"),
    "module": ("/bench/chat/v1/chat/completions", "fast"),
    "module+defaults": ("/bench/tuned/v1/chat/completions", "tuned"),
}
MANIFEST = {
    "schema_version": 1,
    "project": "bench",
    "modules": [
        {"name": "chat", "type": "inference_openai", "config": {"expose": ["fast"]}},
        {
            "name": "tuned",
            "type": "inference_openai",
            "config": {"aliases": {"tuned": "fast"}, "defaults": {"tuned": {"top_p": 0.9}}},
        },
    ],
}


def _servers(work: Path) -> tuple[Server, Server]:
    up_port, dt_port = free_port(), free_port()
    manifests = work / "manifests"
    manifests.mkdir()
    (manifests / "bench.json").write_text(json.dumps(MANIFEST))
    config = work / "dtecho.yaml"
    config.write_text(
        "models:\n  - name: fast\n    engine: openai\n"
        f"    base_url: http://127.0.0.1:{up_port}/v1\n    upstream_model: {UPSTREAM_MODEL}\n"
        f"modules:\n  manifest_dir: {manifests}\n"
        f"data_dir: {work / 'data'}\nlog_level: warning\n"
    )
    upstream = Server(
        "upstream",
        [sys.executable, str(HERE / "_fast_upstream.py"), "--port", str(up_port)],
        up_port,
        UPSTREAM_MODEL,
        work / "upstream.log",
        None,
    )
    argv = [sys.executable, "-m", "dtecho", "serve", "--port", str(dt_port), "--workers", "1"]
    dtecho = Server(
        "dtecho", [*argv, "--config", str(config)], dt_port, "fast", work / "dtecho.log", None
    )
    return upstream, dtecho


def _spec(port: int, target: str, **mode: Any) -> dict[str, Any]:
    path, model = PATHS[target]
    return {"port": port, "path": path, "body": request_body(model).decode(), **mode}


def _sequential(port: int, target: str, requests: int) -> dict[str, Any]:
    result = run_loadgen(_spec(port, target, mode="sequential", requests=requests))
    latencies = sorted(result["latencies_s"])
    server = sorted(result["server_ms"])
    ok = result["statuses"].get("200", 0)
    return {
        "p50_ms": 1e3 * latencies[len(latencies) // 2],
        "p99_ms": 1e3 * latencies[int(len(latencies) * 0.99)],
        "server_p50_ms": server[len(server) // 2],
        "errors": len(latencies) - ok,
    }


def _closed(port: int, target: str, concurrency: int, seconds: float) -> dict[str, Any]:
    result = run_loadgen(
        _spec(port, target, mode="closed", concurrency=concurrency, seconds=seconds)
    )
    ok = result["statuses"].get("200", 0)
    return {
        "rps": ok / result["elapsed_s"],
        "p50_ms": result["p50_ms"],
        "errors": result["completed"] - ok,
    }


def routing_cost(repeats: int = 200_000) -> dict[str, float]:
    """Microseconds the front door's routing takes per request, over an app that does
    nothing: a project path (catalog lookups, the rewritten scope) and a plain one."""
    from dtecho.config import ModulesSettings
    from dtecho.modules.base import installed_types
    from dtecho.modules.catalog import ManifestCatalog
    from dtecho.modules.manifest import parse_manifest
    from dtecho.modules.pool import ModulePool
    from dtecho.server.front_door import FrontDoor, FrontDoorMiddleware

    catalog = ManifestCatalog(installed_types())
    catalog.replace_source("dir", {"bench": catalog.validate(parse_manifest(MANIFEST, "b"), "b")})

    class _State:
        front_door = FrontDoor(catalog, ModulePool({}, lambda *_: None, ModulesSettings()))

    async def nothing(scope: Any, receive: Any, send: Any) -> None:
        return None

    middleware = FrontDoorMiddleware(nothing, state=_State())

    async def time_path(path: str) -> float:
        base = {"type": "http", "method": "POST", "headers": [], "root_path": ""}
        started = time.perf_counter()
        for _ in range(repeats):
            await middleware({**base, "path": path}, None, None)  # type: ignore[arg-type]
        return 1e6 * (time.perf_counter() - started) / repeats

    async def run() -> dict[str, float]:
        empty = await time_path("/nowhere")  # the loop and the scope copy alone
        return {
            "project_path_us": await time_path(PATHS["module"][0]) - empty,
            "plain_path_us": await time_path(PATHS["plain"][0]) - empty,
        }

    return asyncio.run(run())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    rounds, sequential, concurrency, seconds = (
        (1, 300, 32, 2.0) if args.quick else (5, 2000, 32, 5.0)
    )
    with tempfile.TemporaryDirectory() as tmp:
        upstream, dtecho = _servers(Path(tmp))
        upstream.start()
        dtecho.start()
        try:
            upstream.wait_ready(30)
            dtecho.wait_ready(60)
            for target in PATHS:  # warm every path (module instances start on first use)
                _sequential(dtecho.port, target, 200)
            raw: dict[str, dict[str, list[dict[str, Any]]]] = {
                t: {"sequential": [], "closed": []} for t in PATHS
            }
            names = list(PATHS)
            for index in range(rounds):
                order = names[index % len(names) :] + names[: index % len(names)]
                for target in order:
                    raw[target]["sequential"].append(_sequential(dtecho.port, target, sequential))
                for target in order:
                    raw[target]["closed"].append(_closed(dtecho.port, target, concurrency, seconds))
        finally:
            dtecho.stop()
            upstream.stop()
    rows, results = [], {}
    plain = raw["plain"]
    for target, phases in raw.items():
        added = [
            s["p50_ms"] - p["p50_ms"]
            for s, p in zip(phases["sequential"], plain["sequential"], strict=True)
        ]
        share = [
            c["rps"] / p["rps"] for c, p in zip(phases["closed"], plain["closed"], strict=True)
        ]
        summary = {
            "p50_ms": statistics.median(r["p50_ms"] for r in phases["sequential"]),
            "p99_ms": statistics.median(r["p99_ms"] for r in phases["sequential"]),
            "server_p50_ms": statistics.median(r["server_p50_ms"] for r in phases["sequential"]),
            "p50_added_ms": statistics.median(added),
            f"rps_c{concurrency}": statistics.median(r["rps"] for r in phases["closed"]),
            "rps_share": statistics.median(share),
            "errors": sum(r["errors"] for p in phases.values() for r in p),
        }
        results[target] = {"summary": summary, "rounds": phases}
        rows.append({"target": target, **summary})
    routing = routing_cost(20_000 if args.quick else 200_000)
    module = results["module"]["summary"]
    verdict = {
        "p50_added_ms": module["p50_added_ms"],
        "p50_added_ok": module["p50_added_ms"] <= TARGETS["p50_added_ms"],
        "rps_share": module["rps_share"],
        "rps_share_ok": module["rps_share"] >= TARGETS["rps_share"],
    }
    print_table(
        rows,
        ["target", "p50_ms", "p99_ms", "server_p50_ms", "p50_added_ms", f"rps_c{concurrency}",
         "rps_share", "errors"],
        title=f"front door vs plain route, one server, {rounds} rounds (median)",
    )  # fmt: skip
    print(f"\nrouting decision: {routing['project_path_us']:.2f} µs for a project path, "
          f"{routing['plain_path_us']:.2f} µs for a plain one")  # fmt: skip
    print(f"targets: {TARGETS}; verdict: {verdict}")
    write_json(
        "front_door",
        {
            "quick": args.quick,
            "targets": TARGETS,
            "verdict": verdict,
            "routing_us": routing,
            "plan": {"rounds": rounds, "sequential": sequential, "concurrency": concurrency,
                     "closed_seconds": seconds},
            "results": results,
        },
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
