"""The metrics of a run, as plain functions of one item's answer.

Prompt items (chat or completions models):

* ``exact_match`` — 1.0 when the answer equals the expected text (or one of the expected
  texts) after :func:`normalise` (surrounding whitespace stripped, case folded), else 0.0;
  no value for an item without ``expected``.
* ``latency_ms`` — wall time of the model call, milliseconds, as this server saw it (the
  call's queueing inside the engine included; calls of one run overlap up to its
  concurrency).
* ``prompt_tokens``, ``completion_tokens`` — the usage the model reported: the cost in tokens.

Series items (trained DTESN models):

* ``nrmse`` — :func:`nrmse`: the root of the mean squared error over every predicted value
  (all steps, all columns), divided by the population standard deviation of the targets (all
  steps, all columns). 0 is a perfect prediction; predicting the targets' mean scores 1.
  Undefined (no value) when the targets are constant.
* ``latency_ms`` as above.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "HIGHER_IS_BETTER",
    "METRICS",
    "better",
    "exact_match",
    "normalise",
    "nrmse",
]

METRICS: dict[str, tuple[str, ...]] = {
    "prompts": ("exact_match", "latency_ms", "prompt_tokens", "completion_tokens"),
    "series": ("nrmse", "latency_ms"),
}
HIGHER_IS_BETTER = frozenset({"exact_match"})  # every other metric is a cost: lower is better


def normalise(text: str) -> str:
    """The form answers are compared in: surrounding whitespace stripped, case folded."""
    return text.strip().casefold()


def exact_match(answer: str, expected: str | Sequence[str]) -> float:
    """1.0 if ``answer`` equals ``expected`` (or any of a list of them) after
    :func:`normalise`, else 0.0."""
    candidates = [expected] if isinstance(expected, str) else list(expected)
    return 1.0 if normalise(answer) in {normalise(c) for c in candidates} else 0.0


def nrmse(
    predicted: np.ndarray | Sequence[float], target: np.ndarray | Sequence[float]
) -> float | None:
    """Root-mean-square error over all values, divided by the targets' standard deviation.

    Both arrays must have the same shape. Returns None when the targets are constant (the
    ratio is undefined; reporting the raw error instead would mix units into a mean).
    """
    p = np.asarray(predicted, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    if p.shape != t.shape:
        raise ValueError(f"predicted has shape {p.shape}, target {t.shape}")
    if t.size == 0:
        raise ValueError("nothing to compare")
    spread = float(np.std(t))
    if spread == 0.0 or not math.isfinite(spread):
        return None
    return float(np.sqrt(np.mean(np.square(p - t)))) / spread


def better(metric: str, a: float, b: float) -> bool:
    """Whether ``a`` is a strictly better value of ``metric`` than ``b``."""
    return a > b if metric in HIGHER_IS_BETTER else a < b
