"""Which way is better for a metric, and how large a change must be before it counts.

Both are decided from the metric's own name by ordered tables of glob patterns; the first
pattern that matches wins. The default tables look at the *short name*: the last component of
the dotted path, or the component above it when the last one is a bare ``value`` (as in
``verdict.p50_added_ms_sequential.value``). Overrides given by the user match the *whole*
dotted name and are tried before the defaults.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "DEFAULT_DIRECTIONS",
    "DEFAULT_THRESHOLD",
    "DEFAULT_THRESHOLD_SCALES",
    "Direction",
    "Rules",
    "short_name",
]

Direction = Literal["lower", "higher", "none"]

DEFAULT_THRESHOLD = 0.05

# Order matters: ratios and rates come before the generic time suffixes, because names such as
# ``Mupd_per_s``, ``rps_per_core_estimate`` or ``cpu_us_per_request`` end like times.
DEFAULT_DIRECTIONS: tuple[tuple[str, Direction], ...] = (
    # things that went wrong
    ("*fail*", "lower"),
    ("*error*", "lower"),
    ("*unanswered*", "lower"),
    ("*reconnect*", "lower"),
    ("*queued*", "lower"),
    ("retries", "lower"),
    ("extra*", "lower"),  # extra upstream requests per request (hedges, retries)
    # rates, ratios, shares and scores: higher is better
    ("*speedup*", "higher"),
    ("*without / with*", "higher"),  # resilience: p99 without hedging / p99 with it
    ("*share_of_best*", "higher"),
    ("*pct_of*", "higher"),
    ("*ratio*", "higher"),
    ("*_ms_*", "lower"),  # before "*rps*": p50_added_ms_at_200rps is a latency
    ("*rps*", "higher"),
    ("*throughput*", "higher"),
    ("*per_s", "higher"),
    ("*gflops*", "higher"),
    ("*capacity*", "higher"),
    ("*_mc", "higher"),
    ("*accuracy*", "higher"),
    ("*r2*", "higher"),
    ("*wins*", "higher"),
    ("answered", "higher"),
    # model error
    ("*nrmse*", "lower"),
    ("*mse*", "lower"),
    ("*loss*", "lower"),
    ("*_diff*", "lower"),
    # time and cost
    ("*latency*", "lower"),
    ("*cpu*", "lower"),
    ("*_ms", "lower"),
    ("*_us", "lower"),
    ("us_per_*", "lower"),
    ("*_s", "lower"),
    ("*seconds*", "lower"),
)

# Tails move more from run to run than medians, so they get a multiple of the base threshold.
DEFAULT_THRESHOLD_SCALES: tuple[tuple[str, float], ...] = (
    ("max_ms", 10.0),
    ("*p99.9*", 5.0),
    ("*p99*", 3.0),
    ("*p90*", 2.0),
)


def short_name(metric: str) -> str:
    """The name the default tables look at: the last path component, lower-cased (the one
    above it when the last is ``value``); a trailing ``[...]`` row label is kept."""
    parts = _split(metric)
    name = parts[-1]
    if name == "value" and len(parts) > 1:
        name = parts[-2]
    return name.lower()


def _split(metric: str) -> list[str]:
    # Row labels ("rows[lib=dtesn,units=100]") and keys such as "p99.9_ms" or "0.1" hold dots,
    # so a dot inside brackets or between two digits does not separate components.
    parts: list[str] = []
    depth, start = 0, 0
    for i, ch in enumerate(metric):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "." and depth == 0 and not _between_digits(metric, i):
            parts.append(metric[start:i])
            start = i + 1
    parts.append(metric[start:])
    return parts


def _between_digits(text: str, i: int) -> bool:
    return 0 < i < len(text) - 1 and text[i - 1].isdigit() and text[i + 1].isdigit()


@dataclass(frozen=True)
class Rules:
    """How metrics are judged.

    ``threshold`` is the base relative change (0.05 = 5%) below which a metric counts as
    unchanged; tails scale it by ``DEFAULT_THRESHOLD_SCALES``. ``directions`` and
    ``thresholds`` are user overrides, ``(glob, value)`` pairs matched against the whole
    dotted metric name before the defaults. ``alpha`` is the significance level of the rank
    tests; ``noise_k`` is how many pooled standard deviations a change of medians must exceed
    when only two runs per side are recorded.
    """

    threshold: float = DEFAULT_THRESHOLD
    directions: Sequence[tuple[str, Direction]] = field(default_factory=tuple)
    thresholds: Sequence[tuple[str, float]] = field(default_factory=tuple)
    alpha: float = 0.05
    noise_k: float = 2.0

    def __post_init__(self) -> None:
        if not 0 <= self.threshold < 10:
            raise ValueError(f"threshold must be a fraction such as 0.05, got {self.threshold}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must lie in (0, 1), got {self.alpha}")
        for _, direction in self.directions:
            if direction not in ("lower", "higher", "none"):
                raise ValueError(f"direction must be lower, higher or none, got {direction!r}")

    def direction(self, metric: str) -> Direction:
        """``"lower"`` or ``"higher"`` when that way is better; ``"none"`` when unknown."""
        for pattern, direction in self.directions:
            if fnmatch.fnmatchcase(metric, pattern):
                return direction
        name = short_name(metric)
        for pattern, direction in DEFAULT_DIRECTIONS:
            if fnmatch.fnmatchcase(name, pattern):
                return direction
        return "none"

    def threshold_for(self, metric: str) -> float:
        """The relative change (a fraction) ``metric`` must exceed to count as changed."""
        for pattern, value in self.thresholds:
            if fnmatch.fnmatchcase(metric, pattern):
                return value
        name = short_name(metric)
        for pattern, scale in DEFAULT_THRESHOLD_SCALES:
            if fnmatch.fnmatchcase(name, pattern):
                return self.threshold * scale
        return self.threshold
