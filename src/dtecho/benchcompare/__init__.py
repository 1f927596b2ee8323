"""Regression detection between two benchmark results documents (``dtecho bench compare``).

The scripts in ``benchmarks/`` each write one JSON document. This package flattens such a
document into named metrics (dotted paths to numbers), knows for each whether lower or higher
is better and how much it may move, and uses the repeated runs the document records (rounds,
runs, seeds) to tell a real change from noise. It imports nothing from the web stack.
"""

from __future__ import annotations

from dtecho.benchcompare._compare import (
    BenchmarkFileError,
    Comparison,
    Evidence,
    MetricComparison,
    PlanMismatch,
    compare_documents,
    compare_metric,
    load_results,
    plan_differences,
)
from dtecho.benchcompare._flatten import Metric, flatten_results, plan_of
from dtecho.benchcompare._rules import DEFAULT_THRESHOLD, Direction, Rules

__all__ = [
    "DEFAULT_THRESHOLD",
    "BenchmarkFileError",
    "Comparison",
    "Direction",
    "Evidence",
    "Metric",
    "MetricComparison",
    "PlanMismatch",
    "Rules",
    "compare_documents",
    "compare_metric",
    "flatten_results",
    "load_results",
    "plan_differences",
    "plan_of",
]
