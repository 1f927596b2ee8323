"""Compare two results documents metric by metric and decide what is a regression.

A metric is *unchanged* when its headline moved by no more than its threshold (relative to
the old value). Past the threshold, the recorded repeated runs decide whether the move is
larger than the noise:

- both sides with at least 3 runs: a one-sided rank test in the direction of the move at
  ``alpha`` (default 0.05): the Wilcoxon signed-rank test on paired differences when both
  sides hold the same labelled replicates (the same seeds), at least 6 of them; otherwise the
  Mann–Whitney U test. With 3 runs a side the smallest possible U-test p is 1/20 = 0.05, so
  three rounds can show a change only when every new run lies beyond every old one;
- both sides with 2 or more runs (but fewer than 3 on one): the change of medians must exceed
  ``noise_k`` pooled standard deviations;
- otherwise there is nothing to judge noise by, and the threshold alone decides.

A change that passes is a *regression* or an *improvement* by the metric's direction; one that
does not is *within noise*. Metrics with no known direction are reported as *changed* and
never fail a comparison. Pass/fail flags (``met``, ``>=10x``) are better when true, and any
flip counts.
"""

from __future__ import annotations

import fnmatch
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dtecho.benchcompare._flatten import Metric, flatten_results, plan_of
from dtecho.benchcompare._rules import Direction, Rules

__all__ = [
    "BenchmarkFileError",
    "Comparison",
    "Evidence",
    "MetricComparison",
    "PlanMismatch",
    "compare_documents",
    "compare_metric",
    "load_results",
    "plan_differences",
]

Verdict = Literal["regression", "improvement", "within noise", "changed", "unchanged"]
VERDICT_ORDER: tuple[Verdict, ...] = (
    "regression",
    "improvement",
    "within noise",
    "changed",
    "unchanged",
)


class BenchmarkFileError(ValueError):
    """A file that cannot be read as a benchmark results document."""


class PlanMismatch(ValueError):
    """Two documents from different benchmarks, or from the same one run with other settings.

    ``differences`` lists each disagreement as ``(what, old value, new value)``.
    """

    def __init__(self, message: str, differences: Sequence[tuple[str, Any, Any]]) -> None:
        super().__init__(message)
        self.differences = list(differences)


@dataclass(frozen=True)
class Evidence:
    """How the noise was judged: ``method`` names the test, ``p`` its p-value (``None`` for
    the spread rule), ``significant`` the outcome (``None`` when there was no run data)."""

    method: str
    significant: bool | None
    p: float | None = None
    n_old: int = 0
    n_new: int = 0


@dataclass(frozen=True)
class MetricComparison:
    """The verdict on one metric present in both documents."""

    name: str
    old: float
    new: float
    change: float | None  # (new - old) / |old|; None when old is 0 and new is not
    direction: Direction
    threshold: float
    verdict: Verdict
    evidence: Evidence
    flag: bool = False

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return {
            "metric": self.name,
            "old": bool(self.old) if self.flag else self.old,
            "new": bool(self.new) if self.flag else self.new,
            "change": self.change,
            "direction": self.direction,
            "threshold": self.threshold,
            "verdict": self.verdict,
            "evidence": {
                "method": self.evidence.method,
                "p": self.evidence.p,
                "significant": self.evidence.significant,
                "n_old": self.evidence.n_old,
                "n_new": self.evidence.n_new,
            },
        }


@dataclass(frozen=True)
class Comparison:
    """Everything ``compare_documents`` found."""

    benchmark: str
    metrics: list[MetricComparison]
    only_old: list[str] = field(default_factory=list)
    only_new: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    plan_differences: list[tuple[str, Any, Any]] = field(default_factory=list)

    @property
    def regressions(self) -> list[MetricComparison]:
        """The metrics judged worse beyond both threshold and noise."""
        return [m for m in self.metrics if m.verdict == "regression"]

    def counts(self) -> dict[str, int]:
        """How many metrics got each verdict."""
        return {v: sum(m.verdict == v for m in self.metrics) for v in VERDICT_ORDER}


def load_results(path: str | Path) -> dict[str, Any]:
    """Read a results document; raise ``BenchmarkFileError`` with a one-line reason."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BenchmarkFileError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchmarkFileError(f"{path}: cannot read: {exc}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BenchmarkFileError(
            f"{path}: not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("benchmark"), str):
        raise BenchmarkFileError(
            f'{path}: not a benchmark result (expected a JSON object with a "benchmark" name, '
            "as the scripts in benchmarks/ write)"
        )
    return doc


def compare_documents(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    rules: Rules | None = None,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    force: bool = False,
) -> Comparison:
    """Compare two results documents (already parsed) metric by metric.

    ``include`` / ``exclude`` are globs on the dotted metric names (``include`` empty: all).
    Raises ``PlanMismatch`` when the documents come from different benchmarks or plans,
    unless ``force``; forced, the differences are kept in ``plan_differences``.
    """
    rules = rules or Rules()
    differences = plan_differences(old, new)
    notes: list[str] = []
    if differences and not force:
        raise PlanMismatch(_mismatch_message(old, new, differences), differences)
    if differences:
        notes.append("compared despite different plans (--force): " + _describe(differences))
    notes.extend(_context_notes(old, new))

    def wanted(name: str) -> bool:
        if include and not any(fnmatch.fnmatchcase(name, p) for p in include):
            return False
        return not any(fnmatch.fnmatchcase(name, p) for p in exclude)

    old_metrics = {k: v for k, v in flatten_results(old).items() if wanted(k)}
    new_metrics = {k: v for k, v in flatten_results(new).items() if wanted(k)}
    results = [
        compare_metric(old_metrics[name], new_metrics[name], rules)
        for name in old_metrics
        if name in new_metrics
    ]
    return Comparison(
        benchmark=str(new.get("benchmark")),
        metrics=results,
        only_old=[k for k in old_metrics if k not in new_metrics],
        only_new=[k for k in new_metrics if k not in old_metrics],
        notes=notes,
        plan_differences=differences,
    )


def plan_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(what, old, new)`` for each way the two documents' benchmark or plan disagree.

    Settings present on one side only are not counted (scripts gain descriptive entries over
    time); command-line options are compared as a whole, since an option given on one side
    only changes what was run.
    """
    if old.get("benchmark") != new.get("benchmark"):
        return [("benchmark", old.get("benchmark"), new.get("benchmark"))]
    old_plan, new_plan = plan_of(old), plan_of(new)
    return [
        (key, old_plan[key], new_plan[key])
        for key in old_plan
        if key in new_plan and old_plan[key] != new_plan[key]
    ]


def compare_metric(old: Metric, new: Metric, rules: Rules) -> MetricComparison:
    """The verdict on one metric, ``old`` and ``new`` being its two measurements."""
    name = new.name
    flag = old.flag and new.flag
    direction: Direction = rules.direction(name)
    if flag and not any(fnmatch.fnmatchcase(name, p) for p, _ in rules.directions):
        direction = "higher"  # a pass/fail flag is better when it passes
    threshold = rules.threshold_for(name)
    change = _relative_change(old.value, new.value)
    evidence = _evidence(old, new, rules)

    def result(verdict: Verdict) -> MetricComparison:
        return MetricComparison(
            name, old.value, new.value, change, direction, threshold, verdict, evidence, flag
        )

    if old.value == new.value:
        return result("unchanged")
    if flag:
        evidence = Evidence("flag flipped", True)
    elif change is not None and abs(change) <= threshold:
        return result("unchanged")
    if direction == "none":
        return result("changed")
    if evidence.significant is False:
        return result("within noise")
    worse = (new.value > old.value) == (direction == "lower")
    return result("regression" if worse else "improvement")


def _relative_change(old: float, new: float) -> float | None:
    if old == 0:
        return 0.0 if new == 0 else None
    return (new - old) / abs(old)


def _evidence(old: Metric, new: Metric, rules: Rules) -> Evidence:
    # Imported here: the dtecho parser imports this package for every command, and SciPy's
    # statistics module alone takes about half a second to load.
    from scipy import stats

    a, b = old.samples, new.samples
    n_old, n_new = len(a), len(b)
    if old.flag or n_old < 2 or n_new < 2:
        return Evidence("threshold only" if not (n_old or n_new) else "too few runs", None)
    greater = new.value > old.value
    alternative = "greater" if greater else "less"
    if n_old >= 3 and n_new >= 3:
        paired = _paired(old, new)
        if paired is not None and len(paired) >= 6:
            diffs = [y - x for x, y in paired]
            if all(d == 0 for d in diffs):
                return Evidence("paired Wilcoxon", False, 1.0, n_old, n_new)
            p = float(stats.wilcoxon(diffs, alternative=alternative).pvalue)
            return Evidence("paired Wilcoxon", p <= rules.alpha, p, n_old, n_new)
        p = float(stats.mannwhitneyu(b, a, alternative=alternative).pvalue)
        return Evidence("Mann-Whitney U", p <= rules.alpha, p, n_old, n_new)
    spread = math.sqrt(
        ((n_old - 1) * statistics.variance(a) + (n_new - 1) * statistics.variance(b))
        / (n_old + n_new - 2)
    )
    moved = abs(statistics.median(b) - statistics.median(a))
    return Evidence(
        f"{rules.noise_k:g}x pooled sd", moved > rules.noise_k * spread, None, n_old, n_new
    )


def _paired(old: Metric, new: Metric) -> list[tuple[float, float]] | None:
    if old.labels is None or new.labels is None or set(old.labels) != set(new.labels):
        return None
    by_label = dict(zip(new.labels, new.samples, strict=True))
    return [(x, by_label[label]) for label, x in zip(old.labels, old.samples, strict=True)]


def _describe(differences: Sequence[tuple[str, Any, Any]], limit: int = 3) -> str:
    shown = "; ".join(
        f"{what}: OLD {_short(a)}, NEW {_short(b)}" for what, a, b in differences[:limit]
    )
    more = len(differences) - limit
    return shown + (f" (and {more} more)" if more > 0 else "")


def _short(value: Any, width: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    if value == "":
        text = "(none)"
    return text if len(text) <= width else text[: width - 3] + "..."


def _mismatch_message(
    old: Mapping[str, Any], new: Mapping[str, Any], differences: Sequence[tuple[str, Any, Any]]
) -> str:
    if differences and differences[0][0] == "benchmark":
        return (
            f"OLD is a {old.get('benchmark')!r} result and NEW a {new.get('benchmark')!r} "
            "result; only results of the same benchmark can be compared"
        )
    return (
        f"OLD and NEW ran {new.get('benchmark')!r} with different settings ("
        + _describe(differences)
        + "); compare like with like, or pass --force"
    )


def _context_notes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    notes = []
    for key in ("cpu_model", "cpu", "cpus_online", "logical_cpus", "platform"):
        a = (old.get("machine") or {}).get(key)
        b = (new.get("machine") or {}).get(key)
        if a is not None and b is not None and a != b:
            notes.append(f"machines differ: {key} OLD {a!r}, NEW {b!r}")
    return notes
