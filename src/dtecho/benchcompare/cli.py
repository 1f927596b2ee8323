"""``dtecho bench compare OLD NEW``: flag regressions between two benchmark results files.

Exit status: 0 when no metric regressed, 1 when at least one did, 2 on bad input (a missing
or unreadable file, not JSON, not a benchmark result, or results of different benchmarks or
plans without ``--force``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

from dtecho.benchcompare._compare import (
    VERDICT_ORDER,
    BenchmarkFileError,
    Comparison,
    MetricComparison,
    PlanMismatch,
    compare_documents,
    load_results,
)
from dtecho.benchcompare._rules import DEFAULT_THRESHOLD, Rules

__all__ = ["add_bench_parser", "run_bench"]


def add_bench_parser(commands: Any) -> None:
    """Add ``bench`` and its actions to the ``dtecho`` sub-commands."""
    bench = commands.add_parser("bench", help="work with benchmark results")
    actions = bench.add_subparsers(dest="bench_command", metavar="ACTION")
    compare = actions.add_parser(
        "compare",
        help="report regressions between two results files of one benchmark",
        description=(
            "Compare two results files written by the scripts in benchmarks/ and report "
            "metrics that got worse by more than their threshold and more than the noise "
            "of the recorded runs. Exit 1 when any regressed, 2 on bad input."
        ),
    )
    compare.add_argument("old", metavar="OLD", help="the baseline results JSON")
    compare.add_argument("new", metavar="NEW", help="the results JSON to check")
    compare.add_argument(
        "--threshold",
        type=_fraction,
        default=DEFAULT_THRESHOLD,
        help="relative change below which a metric is unchanged (default 0.05; tails "
        "p90/p99/p99.9/max get 2/3/5/10 times this)",
    )
    compare.add_argument(
        "--metric",
        action="append",
        default=[],
        metavar="GLOB",
        help="compare only metrics whose dotted name matches (repeat)",
    )
    compare.add_argument(
        "--exclude", action="append", default=[], metavar="GLOB", help="leave out (repeat)"
    )
    compare.add_argument(
        "--direction",
        action="append",
        default=[],
        type=_direction_rule,
        metavar="GLOB=lower|higher|none",
        help="override which way is better for matching metrics (repeat)",
    )
    compare.add_argument(
        "--tolerance",
        action="append",
        default=[],
        type=_tolerance_rule,
        metavar="GLOB=FRACTION",
        help="override the threshold of matching metrics (repeat)",
    )
    compare.add_argument(
        "--alpha", type=float, default=0.05, help="significance level of the rank tests"
    )
    compare.add_argument("--force", action="store_true", help="compare even when the plans differ")
    compare.add_argument(
        "--all", action="store_true", help="list unchanged metrics too (table format)"
    )
    compare.add_argument("--format", choices=("table", "json"), default="table")


def run_bench(args: argparse.Namespace) -> int:
    """Run the ``bench`` action in ``args``; returns the exit status."""
    if args.bench_command != "compare":
        print("dtecho: bench needs an action: compare", file=sys.stderr)
        return 2
    try:
        rules = Rules(
            threshold=args.threshold,
            directions=tuple(args.direction),
            thresholds=tuple(args.tolerance),
            alpha=args.alpha,
        )
        old, new = load_results(args.old), load_results(args.new)
        result = compare_documents(
            old, new, rules, include=args.metric, exclude=args.exclude, force=args.force
        )
    except (BenchmarkFileError, PlanMismatch, ValueError) as exc:
        print(f"dtecho: {exc}", file=sys.stderr)
        return 2
    if not result.metrics:
        print("dtecho: no metric is present in both files (check --metric)", file=sys.stderr)
        return 2
    try:
        if args.format == "json":
            print(json.dumps(_as_json(result, args, old, new), indent=2))
        else:
            _print_table(result, args, old, new)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader (``| head``) left early: not an error of ours. Point stdout at devnull so
        # the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 1 if result.regressions else 0


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a fraction such as 0.05, got {text!r}"
        ) from None
    if not 0 <= value < 10:
        raise argparse.ArgumentTypeError(f"expected a fraction such as 0.05, got {text!r}")
    return value


def _direction_rule(text: str) -> tuple[str, str]:
    glob, eq, direction = text.rpartition("=")
    if not eq or not glob or direction not in ("lower", "higher", "none"):
        raise argparse.ArgumentTypeError(f"expected GLOB=lower|higher|none, got {text!r}")
    return glob, direction


def _tolerance_rule(text: str) -> tuple[str, float]:
    glob, eq, value = text.rpartition("=")
    if not eq or not glob:
        raise argparse.ArgumentTypeError(f"expected GLOB=FRACTION, got {text!r}")
    return glob, _fraction(value)


def _describe_doc(path: str, doc: dict[str, Any]) -> str:
    commit = (doc.get("versions") or {}).get("dtecho_git_commit") or (doc.get("machine") or {}).get(
        "commit"
    )
    parts = [path, str(doc.get("finished_utc", "?"))]
    if commit:
        parts.append(f"commit {str(commit)[:12]}")
    return ", ".join(parts)


def _number(value: float, flag: bool) -> str:
    if flag:
        return "yes" if value else "no"
    return f"{value:.4g}"


def _change(m: MetricComparison) -> str:
    if m.flag:
        return ""
    if m.change is None:
        return "from 0"
    if math.isinf(m.change):
        return "inf"
    return f"{m.change:+.1%}"


def _evidence(m: MetricComparison) -> str:
    e = m.evidence
    if e.method in ("threshold only", "too few runs", "flag flipped"):
        return e.method if m.verdict != "unchanged" else ""
    runs = f"{e.n_old} vs {e.n_new} runs"
    return f"{e.method}, p={e.p:.3g}, {runs}" if e.p is not None else f"{e.method}, {runs}"


def _print_table(result: Comparison, args: argparse.Namespace, old: dict, new: dict) -> None:
    print(f"benchmark {result.benchmark}")
    print(f"  OLD {_describe_doc(args.old, old)}")
    print(f"  NEW {_describe_doc(args.new, new)}")
    for note in result.notes:
        print(f"  note: {note}")
    shown = sorted(
        (m for m in result.metrics if args.all or m.verdict != "unchanged"),
        key=lambda m: VERDICT_ORDER.index(m.verdict),
    )
    if shown:
        header = ("metric", "old", "new", "change", "verdict", "evidence")
        rows = [
            (m.name, _number(m.old, m.flag), _number(m.new, m.flag), _change(m), m.verdict,
             _evidence(m))
            for m in shown
        ]  # fmt: skip
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        print()
        print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
        print("  ".join("-" * w for w in widths))
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    if result.only_old or result.only_new:
        print()
        for label, names in (("only in OLD", result.only_old), ("only in NEW", result.only_new)):
            if names:
                more = f" (and {len(names) - 5} more)" if len(names) > 5 else ""
                print(f"{label}: {len(names)} metrics: {', '.join(names[:5])}{more}")
    counts = result.counts()
    summary = ", ".join(f"{v} {n}" for v, n in counts.items())
    print(f"\n{len(result.metrics)} metrics compared: {summary}")
    if not args.all and counts["unchanged"]:
        print("(unchanged metrics not listed; --all lists them)")


def _as_json(result: Comparison, args: argparse.Namespace, old: dict, new: dict) -> dict:
    return {
        "benchmark": result.benchmark,
        "old": {"path": args.old, "finished_utc": old.get("finished_utc")},
        "new": {"path": args.new, "finished_utc": new.get("finished_utc")},
        "notes": result.notes,
        "plan_differences": [
            {"setting": what, "old": a, "new": b} for what, a, b in result.plan_differences
        ],
        "counts": result.counts(),
        "regressions": [m.name for m in result.regressions],
        "metrics": [m.as_dict() for m in result.metrics],
        "only_old": result.only_old,
        "only_new": result.only_new,
    }
