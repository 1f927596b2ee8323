"""Streaming change detectors for a model's error: Page–Hinkley and ADWIN.

Feed one number per scored prediction (a squared error, an absolute error, a 0/1 miss) to
``update(x)``; it returns True at the step a change is detected. Both keep O(1) or
O(log n) state, serialise to JSON-safe dicts and satisfy :class:`ChangeDetector`.

* :class:`PageHinkley` — Page (1954), "Continuous inspection schemes", Biometrika 41; in the
  form of Hinkley (1971) and Gama et al. (2013, "On evaluating stream learning
  algorithms", Machine Learning 90). Detects an *increase* of the mean, in the stream's own
  units (δ and λ are not scale-free).
* :class:`ADWIN` — Bifet & Gavaldà (2007), "Learning from time-changing data with adaptive
  windowing", SIAM SDM; ADWIN2, the exponential-histogram version. Keeps the longest
  recent window whose mean is consistent, so after a change ``mean`` and ``width`` describe
  the data since the change. Detects a change of the mean in either direction.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, runtime_checkable

__all__ = ["ADWIN", "ChangeDetector", "PageHinkley"]

_VERSION = 1


def _finite(x: float) -> float:
    value = float(x)
    if not math.isfinite(value):
        raise ValueError(f"a change detector takes finite numbers, got {value}")
    return value


def _check_kind(data: dict[str, Any], kind: str) -> None:
    if data.get("kind") != kind or data.get("version") != _VERSION:
        raise ValueError(
            f"not a version-{_VERSION} {kind} state: kind={data.get('kind')!r}, "
            f"version={data.get('version')!r}"
        )


@runtime_checkable
class ChangeDetector(Protocol):
    """What the lifecycle needs from a detector of change in a stream of numbers."""

    def update(self, x: float) -> bool: ...

    @property
    def mean(self) -> float: ...

    @property
    def width(self) -> int: ...

    def reset(self) -> None: ...

    def to_dict(self) -> dict[str, Any]: ...


class PageHinkley:
    """Page–Hinkley test for an increase of the mean of a stream.

    With x̄_t the running mean since the last reset, it accumulates
    m_t = Σ_{i≤t} (x_i − x̄_i − δ) and signals when m_t − min_{i≤t} m_i > λ, once at least
    ``min_instances`` values have been seen. A signal resets the test, so it then tracks
    the mean after the change and can signal again.

    ``delta`` (δ) is the size of increase tolerated (drift per step below which nothing
    accumulates) and ``threshold`` (λ) the evidence needed, both in the stream's units. A
    jump of the mean by μ > δ is detected after about λ / (μ − δ) steps; on a stationary
    stream of variance σ² the mean time to a false alarm grows like exp(2δλ/σ²). The
    defaults (δ = 0.005, λ = 50, 30 instances) are those of MOA and Gama et al. (2013) for
    errors of order 1; scale them with the error (e.g. λ ≈ 50 × the baseline mean).
    """

    def __init__(
        self, delta: float = 0.005, threshold: float = 50.0, *, min_instances: int = 30
    ) -> None:
        if not (math.isfinite(delta) and delta >= 0):
            raise ValueError(f"delta must be a finite number >= 0, got {delta}")
        if not (math.isfinite(threshold) and threshold > 0):
            raise ValueError(f"threshold must be a finite number > 0, got {threshold}")
        if min_instances < 1:
            raise ValueError(f"min_instances must be >= 1, got {min_instances}")
        self.delta = float(delta)
        self.threshold = float(threshold)
        self.min_instances = int(min_instances)
        self.detections = 0
        self.reset()

    def reset(self) -> None:
        """Forget the stream (``detections`` is kept: it counts signals since construction)."""
        self._n = 0
        self._mean = 0.0
        self._cumulative = 0.0
        self._minimum = 0.0

    def update(self, x: float) -> bool:
        """Add ``x``; True when the mean is found to have increased (the test then resets)."""
        value = _finite(x)
        self._n += 1
        self._mean += (value - self._mean) / self._n
        self._cumulative += value - self._mean - self.delta
        self._minimum = min(self._minimum, self._cumulative)
        if self._n >= self.min_instances and self.statistic > self.threshold:
            self.detections += 1
            self.reset()
            return True
        return False

    @property
    def mean(self) -> float:
        """Mean of the values since the last reset (0.0 before any)."""
        return self._mean

    @property
    def width(self) -> int:
        """Number of values since the last reset."""
        return self._n

    @property
    def statistic(self) -> float:
        """m_t − min m_i, compared with the threshold."""
        return self._cumulative - self._minimum

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe state: parameters and the running sums."""
        return {
            "kind": "page_hinkley",
            "version": _VERSION,
            "delta": self.delta,
            "threshold": self.threshold,
            "min_instances": self.min_instances,
            "detections": self.detections,
            "n": self._n,
            "mean": self._mean,
            "cumulative": self._cumulative,
            "minimum": self._minimum,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PageHinkley:
        """Rebuild a test written by :meth:`to_dict`; it continues where that one stopped."""
        _check_kind(data, "page_hinkley")
        test = cls(data["delta"], data["threshold"], min_instances=data["min_instances"])
        test.detections = int(data["detections"])
        test._n = int(data["n"])
        test._mean = float(data["mean"])
        test._cumulative = float(data["cumulative"])
        test._minimum = float(data["minimum"])
        return test

    def __repr__(self) -> str:
        return (
            f"PageHinkley(delta={self.delta}, threshold={self.threshold}, "
            f"min_instances={self.min_instances}, width={self._n})"
        )


class ADWIN:
    """ADWIN2: an adaptive window that drops its older part when the means differ.

    The window is stored as an exponential histogram: row i holds up to ``max_buckets``
    buckets of 2^i values each (their sum and sum of squared deviations), so a window of
    n values takes O(max_buckets · log n) memory. Every ``clock`` updates, each boundary
    between buckets splits the window into an older part W0 (n0 values) and a newer W1
    (n1); with 1/m = 1/n0 + 1/n1, σ² the window's variance and δ' = δ / ln n, the window
    is cut when

        |μ0 − μ1| > sqrt(2/m · σ² · ln(2/δ')) + 2/(3m) · ln(2/δ')

    (Bifet & Gavaldà 2007, §4; δ' = δ / ln n as in their MOA code, a union bound over the
    O(log n) boundaries checked). The oldest bucket is then dropped and the check repeated
    until no boundary cuts. Each side must hold at least ``min_window`` values.

    ``delta`` (δ) bounds the false-alarm probability of one check; the defaults (δ = 0.002,
    clock 32, 5 buckets a row, 5 values a side) are those of MOA and River. Unlike
    Page–Hinkley the test is scale-free (it uses the window's own variance).
    """

    def __init__(
        self,
        delta: float = 0.002,
        *,
        clock: int = 32,
        max_buckets: int = 5,
        min_window: int = 5,
    ) -> None:
        if not 0.0 < delta < 1.0:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        if clock < 1:
            raise ValueError(f"clock must be >= 1, got {clock}")
        if max_buckets < 2:
            raise ValueError(f"max_buckets must be >= 2, got {max_buckets}")
        if min_window < 1:
            raise ValueError(f"min_window must be >= 1, got {min_window}")
        self.delta = float(delta)
        self.clock = int(clock)
        self.max_buckets = int(max_buckets)
        self.min_window = int(min_window)
        self.detections = 0
        self.reset()

    def reset(self) -> None:
        """Empty the window (``detections`` is kept)."""
        # _rows[i] lists the buckets of 2^i values, oldest first, as [sum, m2] pairs; row
        # i + 1 is older than row i, so oldest → newest is rows high → low.
        self._rows: list[list[list[float]]] = []
        self._width = 0
        self._total = 0.0
        self._ticks = 0

    def update(self, x: float) -> bool:
        """Add ``x``; True when the window was cut (a change of the mean) at this step."""
        value = _finite(x)
        self._insert(value)
        self._ticks += 1
        if self._ticks % self.clock == 0 and self._width >= 2 * self.min_window:
            return self._detect()
        return False

    @property
    def mean(self) -> float:
        """Mean of the current window (0.0 when empty)."""
        return self._total / self._width if self._width else 0.0

    @property
    def width(self) -> int:
        """Number of values in the current window."""
        return self._width

    @property
    def variance(self) -> float:
        """Population variance of the current window (0.0 when empty)."""
        return self._moments()[2] / self._width if self._width else 0.0

    @property
    def n_buckets(self) -> int:
        """Buckets held (the memory used, O(max_buckets · log width))."""
        return sum(len(row) for row in self._rows)

    def _insert(self, value: float) -> None:
        if not self._rows:
            self._rows.append([])
        self._rows[0].append([value, 0.0])
        self._width += 1
        self._total += value
        level = 0
        while len(self._rows[level]) > self.max_buckets:
            (s1, v1), (s2, v2) = self._rows[level][0], self._rows[level][1]
            del self._rows[level][:2]
            size = 1 << level
            merged = [s1 + s2, v1 + v2 + (s1 - s2) ** 2 / (2 * size)]
            if level + 1 == len(self._rows):
                self._rows.append([])
            self._rows[level + 1].append(merged)
            level += 1

    def _buckets_oldest_first(self) -> list[tuple[int, float, float]]:
        return [
            (1 << level, s, v)
            for level in range(len(self._rows) - 1, -1, -1)
            for s, v in self._rows[level]
        ]

    def _moments(self) -> tuple[int, float, float]:
        """(count, mean, sum of squared deviations) of the window, combining the buckets
        (Chan, Golub & LeVeque's pairwise update)."""
        n, mean, m2 = 0, 0.0, 0.0
        for size, s, v in self._buckets_oldest_first():
            mu = s / size
            total = n + size
            m2 += v + (mu - mean) ** 2 * n * size / total
            mean += (mu - mean) * size / total
            n = total
        return n, mean, m2

    def _detect(self) -> bool:
        changed = False
        while self._width >= 2 * self.min_window:
            n, _, m2 = self._moments()
            variance = m2 / n
            log_term = math.log(2.0 * math.log(n) / self.delta)
            n0, s0 = 0, 0.0
            cut = False
            for size, s, _ in self._buckets_oldest_first()[:-1]:
                n0 += size
                s0 += s
                n1 = n - n0
                if n1 < self.min_window:
                    break
                if n0 < self.min_window:
                    continue
                inv_m = 1.0 / (n0 - self.min_window + 1) + 1.0 / (n1 - self.min_window + 1)
                epsilon = (
                    math.sqrt(2.0 * inv_m * variance * log_term) + 2.0 / 3.0 * inv_m * log_term
                )
                if abs(s0 / n0 - (self._total - s0) / n1) > epsilon:
                    cut = True
                    break
            if not cut:
                break
            self._drop_oldest()
            changed = True
        if changed:
            self.detections += 1
        return changed

    def _drop_oldest(self) -> None:
        top = len(self._rows) - 1
        del self._rows[top][0]
        while self._rows and not self._rows[-1]:
            self._rows.pop()
        # Re-summing the O(log n) buckets keeps the total free of cancellation error.
        self._width = sum(size for size, _, _ in self._buckets_oldest_first())
        self._total = sum(s for _, s, _ in self._buckets_oldest_first())

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe state: parameters, the buckets (row by row, oldest first) and the
        position in the clock."""
        return {
            "kind": "adwin",
            "version": _VERSION,
            "delta": self.delta,
            "clock": self.clock,
            "max_buckets": self.max_buckets,
            "min_window": self.min_window,
            "detections": self.detections,
            "ticks": self._ticks,
            "width": self._width,
            "total": self._total,
            "rows": [[list(bucket) for bucket in row] for row in self._rows],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ADWIN:
        """Rebuild a detector written by :meth:`to_dict`; it continues where that one
        stopped."""
        _check_kind(data, "adwin")
        detector = cls(
            data["delta"],
            clock=data["clock"],
            max_buckets=data["max_buckets"],
            min_window=data["min_window"],
        )
        rows = [[[float(s), float(v)] for s, v in row] for row in data["rows"]]
        if any(len(row) > detector.max_buckets for row in rows) or (rows and not rows[-1]):
            raise ValueError("adwin state: a row is empty or holds more than max_buckets buckets")
        detector._rows = rows
        detector._ticks = int(data["ticks"])
        detector.detections = int(data["detections"])
        detector._width = sum(size for size, _, _ in detector._buckets_oldest_first())
        if detector._width != int(data["width"]):
            raise ValueError("adwin state: the buckets do not add up to the width")
        detector._total = float(data["total"])
        return detector

    def __repr__(self) -> str:
        return f"ADWIN(delta={self.delta}, width={self._width}, mean={self.mean:.6g})"
