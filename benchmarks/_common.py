"""Shared helpers for the benchmarks: BLAS thread pinning, timing, tables, JSON, machine info.

Every benchmark script calls ``pin_threads()`` before it imports NumPy: OpenBLAS reads its
thread count once, when it is loaded. Nothing here imports NumPy at module level.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
_THREAD_VARS = (
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "NUMBA_NUM_THREADS",
)


def pin_threads(argv: Sequence[str] | None = None) -> int:
    """Set the BLAS/OpenMP thread count from ``--threads N`` (default 1) before NumPy loads.

    One thread by default: every library in a comparison then gets one core, and timings do
    not depend on what else the (shared) machine is doing with its other cores.
    """
    if "numpy" in sys.modules:
        raise RuntimeError("pin_threads() must run before NumPy is imported")
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--threads", type=int, default=1)
    threads = parser.parse_known_args(argv)[0].threads
    for var in _THREAD_VARS:
        os.environ[var] = str(threads)
    return threads


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def arg_parser(description: str) -> argparse.ArgumentParser:
    """The common command line: --quick, --threads, --repeats, --out."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="short smoke run (small sizes)")
    p.add_argument("--threads", type=int, default=1, help="BLAS threads (default 1)")
    p.add_argument("--repeats", type=int, default=None, help="timed repetitions")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default results/)")
    return p


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> dict[str, Any]:
    """Run ``fn`` ``warmup`` times untimed (compilation, first touch of memory), then
    ``repeats`` times timed; returns best, median and all wall times in seconds, plus the
    last result."""
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return {
        "best_s": min(times),
        "median_s": statistics.median(times),
        "times_s": times,
        "result": result,
    }


def warm_memory(nbytes: int, rounds: int = 2) -> None:
    """Write ``nbytes`` of fresh memory ``rounds`` times and free it, before timing runs that
    allocate large outputs. On these VMs the first touches of memory the process has never
    used were measured 2-4× slower than later ones (run times of 2.2 s against 0.45 s for
    the same call), which penalised whichever library was timed first."""
    import numpy as np

    for _ in range(rounds):
        block = np.empty(nbytes // 8)
        block.fill(1.0)
        del block


def dgemm_gflops(n: int = 2000, dtype: str = "float64", repeats: int = 5) -> float:
    """Best GFLOP/s of an n×n by n×n matrix product (2n³ flops) at the pinned thread count."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    c = np.empty((n, n), dtype)
    t = timed(lambda: np.matmul(a, b, out=c), repeats)
    return 2.0 * n**3 / t["best_s"] / 1e9


def _cpuinfo(field: str) -> str | None:
    """The first ``field`` line's value in ``/proc/cpuinfo`` (None where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def _cpu_arch() -> str | None:
    """LLVM's name for the host CPU (e.g. ``znver4``, ``sapphirerapids``): what the compiled
    kernels were built for, and a finer name than the model string, which VMs often trim."""
    try:
        import llvmlite.binding as llvm
    except ImportError:
        return None
    return llvm.get_host_cpu_name()


def _simd() -> list[str]:
    """The vector extensions that decide which kernel paths are fast (``/proc/cpuinfo``)."""
    flags = (_cpuinfo("flags") or "").split()
    return [x for x in ("avx2", "fma", "avx512f") if x in flags]


def _git_commit() -> str | None:
    """The commit measured, with ``+dirty`` when the working tree has changes."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def _blas() -> dict[str, Any]:
    import numpy as np

    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        return {k: blas.get(k) for k in ("name", "version", "openblas configuration")}
    except Exception as exc:  # show_config's layout is not a stable API
        return {"error": repr(exc)}


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def machine_info(threads: int) -> dict[str, Any]:
    """CPU (model, LLVM's architecture name, vector extensions), cores, load, BLAS build,
    library versions, the commit measured and the pinned thread count."""
    return {
        "cpu": _cpu_model(),
        "cpu_arch": _cpu_arch(),
        "simd": _simd(),
        "commit": _git_commit(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "loadavg_1_5_15": list(os.getloadavg()),
        "threads": threads,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "blas": _blas(),
        "versions": {m: _version(m) for m in ("numpy", "scipy", "reservoirpy", "numba", "dtecho")},
    }


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str = "") -> None:
    """A plain fixed-width table of ``rows`` (dicts), columns in the given order."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, bool):
            return "yes" if v else "NO"
        return "" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    if title:
        print(f"\n{title}")
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items() if k != "result"}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):  # NumPy scalars and arrays
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(name: str, payload: dict[str, Any], path: Path | None = None) -> Path:
    """Write ``payload`` (plus a timestamp and the command line) to results/<name>.json, or
    results/<name>_quick.json for a --quick run (so a smoke run never replaces real results)."""
    path = path or RESULTS / f"{name}{'_quick' if payload.get('quick') else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": name,
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        **payload,
    }
    path.write_text(json.dumps(_jsonable(doc), indent=2) + "\n")
    print(f"\nwrote {path}")
    return path
