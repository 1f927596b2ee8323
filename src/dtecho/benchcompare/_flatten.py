"""Turn a results document from ``benchmarks/`` into named metrics and a plan fingerprint.

A document is the JSON object ``benchmarks/_common.write_json`` writes: ``benchmark`` (its
name), ``command``, ``quick``, then whatever the script measured. Three shapes recur and are
understood here:

- scalars in nested objects: ``results.dtecho.sequential.p50_ms``;
- repeated runs beside a headline: a numeric list named ``*_runs`` / ``*_rounds`` /
  ``rounds_*`` (``rps_runs`` beside ``rps_median``, ``rounds_p50_ms`` beside ``p50_ms``,
  ``p50_ms_runs`` on its own), or a list of objects named ``rounds`` / ``runs``
  (``rounds: [{p50, p99}, ...]`` beside ``p50_ms`` and ``p99_ms``). They become the samples
  of that metric, which is how noise is judged;
- tables: lists of row objects (``rows``, ``targets``). A row is named by its text fields
  (and a few known numeric keys such as ``units``); rows that differ only by a replicate key
  (``seed``, ``series``) are one metric whose samples are the replicates, labelled so the
  same seeds can be paired across files.

Everything that describes the run rather than measures it (machine, versions, load, plan,
tuned hyper-parameters, notes, timelines, failure bodies) is left out of the metrics; the plan
parts form the fingerprint two documents must share to be compared.
"""

from __future__ import annotations

import fnmatch
import math
import shlex
import statistics
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Metric", "flatten_results", "plan_of"]

# Keys that never hold a measurement of the product.
IGNORED_KEYS = frozenset(
    {
        "benchmark", "finished_utc", "command", "quick",
        "machine", "versions", "load", "settings", "protocol", "protocols", "setups",
        "chosen", "notes", "anchors_not_measured_here", "configuration", "process", "proxy",
        "router_timeline", "failures", "slowest_1pct", "cpu_cores_busy", "cpu_layout",
        "statuses", "x_cache", "served_by", "upstream_requests", "router", "router_attempts",
        "latency_histogram", "killed_at_s", "at_concurrency", "n", "runs", "requests",
        # pooled percentiles repeat the per-round headline without its spread
        "pooled",
        # the load generator's own lag and the machine's BLAS speed describe the harness
        "send_lag", "send_lag_ms", "gemm",
        # a target is a goal, not a measurement
        "target",
    }
)  # fmt: skip
# Spreads are read as noise, not compared as metrics; a state difference against the reference
# library is a round-off check near 1e-16 whose relative change means nothing.
IGNORED_PATTERNS = ("target_*", "*_std", "*_se", "*spread*", "loadavg*", "*_diff_vs_*")
REPLICATE_FIELDS = ("seed", "series", "round", "repeat", "run", "trial")
# Numeric row fields that name a row rather than measure it.
IDENTITY_NUMBERS = frozenset({"units", "threads", "n_jobs", "connectivity", "depth", "N", "B", "T"})
SAMPLE_LIST_TABLES = frozenset({"rounds", "runs"})


@dataclass(frozen=True)
class Metric:
    """One number (or pass/fail flag) of a results document.

    ``value`` is the headline the document reports (for a group of replicate rows, their
    median). ``samples`` are the repeated-run values behind it, if the document recorded
    them; ``labels`` name each sample's replicate (``"series=0,seed=10"``) when the runs are
    seeds that can be paired across documents, else ``None``. ``flag`` marks booleans, whose
    value is 1.0 for true.
    """

    name: str
    value: float
    samples: tuple[float, ...] = ()
    labels: tuple[str, ...] | None = None
    flag: bool = False


def flatten_results(doc: Mapping[str, Any]) -> dict[str, Metric]:
    """The metrics of a results document, keyed by dotted path, in document order."""
    out: dict[str, Metric] = {}
    _walk_object(doc, "", out)
    # Top-level scalars and the parameters beside a table are the plan (see plan_of).
    plan = plan_of(doc)
    return {name: metric for name, metric in out.items() if name not in plan}


def plan_of(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The settings two documents must share to be comparable, as ``{dotted path: value}``.

    Made of ``quick``, the command-line options (without ``--out`` and options whose value is
    a path, which name files rather than settings), every leaf under ``settings``,
    ``protocol``, ``protocols`` and ``setups``, the top-level scalars outside the envelope,
    and the scalar parameters beside a table (``batched.B`` next to ``batched.rows``).
    """
    plan: dict[str, Any] = {"quick": bool(doc.get("quick", False))}
    plan["command options"] = _options(str(doc.get("command", "")))
    for key in ("settings", "protocol", "protocols", "setups"):
        if key in doc:
            plan.update(_leaves(doc[key], key))
    for key, value in doc.items():
        if key in ("benchmark", "finished_utc", "command", "quick") or _ignored(key):
            continue
        if _is_scalar(value):
            plan[key] = value
        elif isinstance(value, dict) and any(_is_table(v) for v in value.values()):
            plan.update({f"{key}.{k}": v for k, v in value.items() if _is_scalar(v)})
    return plan


def _options(command: str) -> str:
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    script = next((i for i, w in enumerate(words) if w.endswith(".py")), None)
    words = words[script + 1 :] if script is not None else words[1:]
    kept: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        name, eq, inline = word.partition("=")
        value = inline if eq else None
        if value is None and i + 1 < len(words) and not words[i + 1].startswith("--"):
            value = words[i + 1]
            i += 1
        i += 1
        if name == "--out" or (value is not None and "/" in value):
            continue
        kept.append(name if value is None else f"{name} {value}")
    return " ".join(sorted(kept))


def _leaves(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, f"{path}.{key}")
    else:
        yield path, node


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _ignored(key: str) -> bool:
    return key in IGNORED_KEYS or any(fnmatch.fnmatchcase(key, p) for p in IGNORED_PATTERNS)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _is_number_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(_is_number(v) for v in value)


def _is_table(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _sample_base(key: str) -> str | None:
    """``rps_runs`` -> ``rps``, ``rounds_p50_ms`` -> ``p50_ms``, ``p50_added_rounds_ms`` ->
    ``p50_added_ms``; ``None`` when ``key`` does not name repeated runs."""
    parts = key.split("_")
    kept = [p for p in parts if p not in ("runs", "rounds")]
    return "_".join(kept) if kept and len(kept) < len(parts) else None


def _walk_object(node: Mapping[str, Any], path: str, out: dict[str, Metric]) -> None:
    samples: dict[str, tuple[float, ...]] = {}
    orphans: dict[str, tuple[float, ...]] = {}
    scalars = {k for k, v in node.items() if _is_number(v) and not _ignored(k)}
    for key, value in node.items():
        if _ignored(key):
            continue
        if _is_number_list(value) and (base := _sample_base(key)) is not None:
            target = next(
                (c for c in (base, f"{base}_median", f"{base}_mean") if c in scalars), None
            )
            (samples if target else orphans)[target or base] = tuple(float(v) for v in value)
        elif key in SAMPLE_LIST_TABLES and _is_table(value):
            for fieldname in dict.fromkeys(f for row in value for f in row):
                column = [row.get(fieldname) for row in value]
                if not all(_is_number(v) for v in column):
                    continue
                candidates = sorted(
                    (c for c in scalars if c == fieldname or c.startswith(f"{fieldname}_")),
                    key=len,
                )
                target = candidates[0] if candidates else None
                (samples if target else orphans)[target or fieldname] = tuple(map(float, column))
    for key, value in node.items():
        if _ignored(key):
            continue
        name = _join(path, key)
        if isinstance(value, bool):
            out[name] = Metric(name, float(value), flag=True)
        elif _is_number(value):
            out[name] = Metric(name, float(value), samples.get(key, ()))
        elif isinstance(value, dict):
            if key == "targets" and all(_is_scalar(v) for v in value.values()):
                continue  # the goals of the run (proxy_overhead), not measurements
            _walk_object(value, name, out)
        elif _is_table(value) and key not in SAMPLE_LIST_TABLES:
            _walk_table(value, name, out)
    for base, values in orphans.items():
        name = _join(path, base)
        if name not in out:
            out[name] = Metric(name, statistics.median(values), values)


def _walk_table(rows: list[dict[str, Any]], path: str, out: dict[str, Metric]) -> None:
    fields = list(dict.fromkeys(f for row in rows for f in row))
    replicates = [f for f in fields if f in REPLICATE_FIELDS]
    identity = [
        f
        for f in fields
        if f not in replicates
        and all(isinstance(r.get(f), str) or f in IDENTITY_NUMBERS for r in rows if f in r)
    ]
    groups = _minimal_grouping(rows, identity)
    for label, members in groups:
        prefix = f"{path}[{label}]"
        if len(members) == 1:
            _walk_row(members[0], prefix, set(identity) | set(replicates), out)
            continue
        # Replicates: one metric per numeric field, its samples the rows of the group.
        tags = [",".join(f"{f}={m.get(f)}" for f in replicates) for m in members]
        paired = bool(replicates) and len(set(tags)) == len(tags)
        for fieldname in fields:
            if fieldname in identity or fieldname in replicates or _ignored(fieldname):
                continue
            column = [(t, m[fieldname]) for t, m in zip(tags, members, strict=True)]
            column = [(t, v) for t, v in column if _is_number(v)]
            if not column:
                continue
            values = tuple(float(v) for _, v in column)
            name = f"{prefix}.{fieldname}"
            out[name] = Metric(
                name,
                statistics.median(values),
                values,
                tuple(t for t, _ in column) if paired else None,
            )


def _walk_row(row: Mapping[str, Any], prefix: str, skip: set[str], out: dict[str, Metric]) -> None:
    for key, value in row.items():
        if key in skip or _ignored(key):
            continue
        name = f"{prefix}.{key}"
        if isinstance(value, bool):
            out[name] = Metric(name, float(value), flag=True)
        elif _is_number(value):
            out[name] = Metric(name, float(value))


def _minimal_grouping(
    rows: list[dict[str, Any]], identity: list[str]
) -> list[tuple[str, list[dict[str, Any]]]]:
    """Group rows by their identity fields, naming each group by the shortest leading run of
    those fields that still tells the groups apart (short names; the same partition)."""

    def key(row: Mapping[str, Any], names: list[str]) -> tuple[Any, ...]:
        return tuple(row.get(n) for n in names)

    full = {key(r, identity) for r in rows}
    names = identity
    for n in range(len(identity) + 1):
        if len({key(r, identity[:n]) for r in rows}) == len(full):
            names = identity[:n]
            break
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(key(row, names), []).append(row)
    if not names and len(rows) > 1 and not any(f in rows[0] for f in REPLICATE_FIELDS):
        # Nothing names the rows and nothing marks them as replicates: name them by position.
        return [(str(i), [row]) for i, row in enumerate(rows)]
    labelled = []
    for values, members in groups.items():
        label = ",".join(f"{n}={v}" for n, v in zip(names, values, strict=True) if v is not None)
        labelled.append((label, members))
    return labelled
