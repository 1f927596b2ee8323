"""Always-valid comparison of a candidate model with the control, under continuous monitoring.

Look at the result after every batch, stop whenever it says so: the chance that an A/B test
with no real difference *ever* declares one stays at most ``alpha``, however often it is
looked at (a fixed-horizon t-test looked at after every batch declares false differences in
a large share of experiments).

The method
----------
The mixture sequential probability ratio test (mSPRT) of

    R. Johari, L. Pekelis, D. J. Walsh. "Always Valid Inference: Bringing Sequential
    Analysis to A/B Testing." arXiv:1512.04922 (2015; revised 2017). Later published with
    P. Koomen as "Always Valid Inference: Continuous Monitoring of A/B Tests", Operations
    Research (2022).

for the difference ``θ = mean(candidate) − mean(control)`` with a normal mixing distribution
``θ ~ N(0, τ²)`` over the alternatives (Robbins' normal mixture). With the estimate
``d = mean_t − mean_c``, its variance ``v = s_c²/n_c + s_t²/n_t`` (plug-in sample variances)
and ``r = τ²/v``, the mixture likelihood ratio against ``θ = θ0`` is::

    Λ(θ0) = (1 + r)^(−1/2) · exp( (d − θ0)²/(2v) · r/(1 + r) )

Under the null ``Λ(θ)`` is a nonnegative martingale with mean 1, so by Ville's inequality
``P(Λ ever ≥ 1/alpha) ≤ alpha``. That gives

* the always-valid p-value ``p = min(1, min over looks of 1/Λ(0))`` — it never increases, and
  ``P(p ever ≤ alpha) ≤ alpha`` under the null;
* the always-valid confidence interval ``{θ0 : Λ(θ0) < 1/alpha}``, i.e. ``d ± h`` with::

      h = sqrt( v · (1 + r)/r · (2·log(1/alpha) + log(1 + r)) )

  intersected over the looks (each look's interval covers ``θ`` at every look at once with
  probability ``≥ 1 − alpha``, so their running intersection does too).

The same boundary is the two-sided normal-mixture confidence sequence of S. R. Howard,
A. Ramdas, J. McAuliffe, J. Sekhon, "Time-uniform, nonparametric, nonasymptotic confidence
sequences", The Annals of Statistics 49(2):1055–1080 (2021), with intrinsic time ``1/v`` and
``ρ = 1/τ²``; their choice of ``ρ`` is where :func:`tau_for_sample_size` comes from.

JPW pair the two arms' observations (equal counts); this uses the unpaired form above, which
equals theirs for equal counts and, for a fixed traffic split, is again a Gaussian random walk
in ``1/v`` (so Ville's inequality applies). Like JPW's unknown-variance test it plugs in the
sample variances, so the guarantee is asymptotic: exact for normal data with known variance,
close for other finite-variance data once the central limit theorem holds for the means —
the simulations in ``tests/registry/test_sequential.py`` check normal, log-normal (latency-
like) and Bernoulli data at 70/30 and 50/50 splits.

τ, in units of the metric's standard deviation
----------------------------------------------
``tau`` is the mixing standard deviation as a standardised effect size: ``τ = tau · σ`` with
``σ² = v · n_c·n_t/(n_c + n_t)`` (the per-observation variance implied by ``v``; for equal
arm variances, the common one). So ``r = tau² · n_c·n_t/(n_c + n_t)`` depends on the counts
alone, the test is invariant to the metric's unit (milliseconds or seconds, scores of 1–5 or
0–100), and one default serves latency, squared error, feedback scores and error rates.
Equivalently, the mixture puts its weight on effects of about ``tau`` standard deviations.

The default ``tau = 0.1`` makes the interval narrowest (Howard et al.'s optimal ``ρ``) at
``n_c·n_t/(n_c + n_t) ≈ 821`` — about 1,640 observations per arm at a 50/50 split, or 2,740
control and 1,170 candidate at 70/30 — the size of a model experiment that runs for a day or
two; small standardised effects (0.1–0.3 σ) are what separates two versions of a model. The
boundary is only logarithmically sensitive to ``tau``: at ten times or a tenth of that size
the interval is about 7% and 26% wider than at its best. Use :func:`tau_for_sample_size` to
aim at another size. The price of always-valid inference at the best size is an interval
about 1.55 times as wide as a fixed-horizon 95% interval (3.03 vs 1.96 standard errors).

Proportions
-----------
``metric="proportion"`` takes 0/1 values (an error rate, a thumbs-up rate). The same test
with the Agresti–Caffo variance (A. Agresti, B. Caffo, "Simple and effective confidence
intervals for proportions and differences of proportions result from adding two successes
and two failures", The American Statistician 54(4):280–288, 2000): each arm's variance is
``p̃(1 − p̃)/(n + 2)`` with ``p̃ = (x + 1)/(n + 2)``, which is positive even when an arm has
seen no error yet. The reported difference is the raw ``x_t/n_t − x_c/n_c``.

Direction
---------
``difference`` is always ``candidate − control``. ``higher_is_better`` says which sign is
good: ``False`` for latency, squared error and error rates (a negative difference means the
candidate is better), ``True`` for feedback scores and accuracy. It is keyword-only and has
no default, because a wrong guess would swap "better" and "worse". The decision is taken at
the first look where ``p ≤ alpha``, in the direction of the difference at that look, and then
stays (the p-value never increases again).

Looks and state
---------------
Every call that adds values is a look, once both arms hold ``min_samples`` values; use
:meth:`SequentialComparison.add` to add both arms' batches as one look. Looking more often is
always allowed (that is the point) and never loosens the guarantee. The state is a few
numbers per arm (count, mean, sum of squared deviations, combined batch by batch with the
parallel update of Chan, Golub and LeVeque) plus the running p-value and interval;
:meth:`SequentialComparison.to_dict` / :meth:`SequentialComparison.from_dict` carry it as
JSON.

If a look's interval misses the running intersection entirely — possible only on the
``alpha`` event, or when the data drift (a candidate that starts failing halfway through) —
that look's interval, itself a member of the confidence sequence, replaces the running one,
and ``ComparisonResult.interval_resets`` counts it: the data contradict each other, and the
experiment deserves a look by a person.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from numbers import Integral, Real
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "DEFAULT_MIN_SAMPLES",
    "DEFAULT_TAU",
    "ComparisonResult",
    "Decision",
    "SequentialComparison",
    "confidence_half_width",
    "log_likelihood_ratio",
    "mixing_ratio",
    "tau_for_sample_size",
]

Decision = Literal["candidate_better", "candidate_worse", "no_difference_yet"]
Metric = Literal["mean", "proportion"]

DEFAULT_TAU = 0.1
"""Mixing standard deviation in metric standard deviations (see the module docstring)."""

DEFAULT_MIN_SAMPLES = 30
"""Values per arm before the first look: enough for the plug-in variance to mean something.

The mixture already makes early looks strict (at 30 per arm and ``tau=0.1`` a look needs
``|z| > 6.9``), so this mostly guards the variance estimate: with the default ``tau`` the
simulated type-I rate is the same for 10, 30 and 100; with ``tau=1`` on skewed (log-normal)
data at a 70/30 split it is 0.035, 0.026 and 0.014 (all under ``alpha = 0.05``).
"""

_STATE_VERSION = 1


def mixing_ratio(tau: float, n_control: ArrayLike, n_candidate: ArrayLike) -> NDArray[np.float64]:
    """``r = τ²/v = tau² · n_c·n_t/(n_c + n_t)`` for the standardised ``tau`` (vectorised)."""
    nc = np.asarray(n_control, dtype=np.float64)
    nt = np.asarray(n_candidate, dtype=np.float64)
    return tau * tau * (nc * nt / (nc + nt))


def log_likelihood_ratio(
    difference: ArrayLike, variance: ArrayLike, r: ArrayLike
) -> NDArray[np.float64]:
    """``log Λ`` of the mSPRT against ``θ = 0`` (vectorised).

    ``difference`` is ``d``, ``variance`` is ``v`` (the variance of ``d``), ``r = τ²/v``
    (:func:`mixing_ratio`). A zero variance with a zero difference gives ``z = 0``; with a
    nonzero difference, ``+inf`` (certain evidence, p-value 0).
    """
    d = np.asarray(difference, dtype=np.float64)
    v = np.asarray(variance, dtype=np.float64)
    rr = np.asarray(r, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        z2 = np.where(d == 0.0, 0.0, d * d / v)
    return -0.5 * np.log1p(rr) + 0.5 * z2 * (rr / (1.0 + rr))


def confidence_half_width(variance: ArrayLike, r: ArrayLike, alpha: float) -> NDArray[np.float64]:
    """Half-width ``h`` of one look's always-valid interval ``d ± h`` (vectorised)."""
    v = np.asarray(variance, dtype=np.float64)
    rr = np.asarray(r, dtype=np.float64)
    return np.sqrt(v * (1.0 + rr) / rr * (2.0 * math.log(1.0 / alpha) + np.log1p(rr)))


def tau_for_sample_size(n_control: float, n_candidate: float, alpha: float = 0.05) -> float:
    """The ``tau`` whose interval is narrowest when the arms hold these counts.

    Minimising ``h`` over ``r`` at fixed ``v`` gives ``r* = 2·log(1/alpha) + log(1 + r*)``
    (Howard et al.'s optimal ``ρ`` for a target intrinsic time), solved by fixed-point
    iteration; then ``tau = sqrt(r* · (n_c + n_t)/(n_c·n_t))``. For ``alpha = 0.05``,
    ``r* ≈ 8.21``.
    """
    _check_alpha(alpha)
    if not (n_control > 0 and n_candidate > 0):
        raise ValueError("n_control and n_candidate must be positive")
    target = 2.0 * math.log(1.0 / alpha)
    r = target
    for _ in range(100):  # a contraction (slope 1/(1+r) < 1): converges in a few steps
        r_next = target + math.log1p(r)
        if abs(r_next - r) < 1e-12:
            break
        r = r_next
    return math.sqrt(r * (n_control + n_candidate) / (n_control * n_candidate))


@dataclass(frozen=True, slots=True)
class ComparisonResult:
    """Where a comparison stands after the looks so far.

    ``difference`` is ``mean(candidate) − mean(control)`` (NaN while an arm is empty);
    ``ci_low``/``ci_high`` the running always-valid interval for it (``-inf``/``inf`` before
    the first look); ``p_value`` the always-valid p-value for "no difference" (1.0 before
    the first look); ``decision`` follows ``higher_is_better`` (module docstring);
    ``interval_resets`` counts the looks whose interval missed the running one (a sign of
    drift, module docstring).
    """

    n_control: int
    n_candidate: int
    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    decision: Decision
    interval_resets: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN and infinite numbers become ``None``."""
        return {k: _finite_or_none(v) for k, v in asdict(self).items()}


class _Arm:
    """Count, mean and sum of squared deviations of one arm, merged batch by batch."""

    __slots__ = ("m2", "mean", "n")

    def __init__(self, n: int = 0, mean: float = 0.0, m2: float = 0.0) -> None:
        self.n = n
        self.mean = mean
        self.m2 = m2

    def add(self, values: NDArray[np.float64]) -> None:
        k = int(values.size)
        if k == 0:
            return
        batch_mean = float(values.mean())
        batch_m2 = float(np.square(values - batch_mean).sum())
        n = self.n + k
        delta = batch_mean - self.mean
        # Chan, Golub & LeVeque's pairwise update: stable for large offsets (latencies).
        self.mean += delta * k / n
        self.m2 += batch_m2 + delta * delta * self.n * k / n
        self.n = n

    def to_dict(self) -> dict[str, float | int]:
        return {"n": self.n, "mean": self.mean, "m2": self.m2}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> _Arm:
        n, mean, m2 = int(data["n"]), float(data["mean"]), float(data["m2"])
        if n < 0 or m2 < 0 or not (math.isfinite(mean) and math.isfinite(m2)):
            raise ValueError("arm state must have n >= 0 and finite mean and m2 >= 0")
        return cls(n, mean, m2)


class SequentialComparison:
    """An mSPRT comparison of a candidate with the control (see the module docstring).

    ``alpha`` is the level (the bound on ever declaring a difference that is not there, and
    one minus the interval's coverage); ``tau`` the mixing standard deviation in metric
    standard deviations; ``min_samples`` the values each arm needs before the first look;
    ``higher_is_better`` the direction of the metric; ``metric`` ``"mean"`` for any real
    values or ``"proportion"`` for 0/1 values.
    """

    def __init__(
        self,
        alpha: float = 0.05,
        tau: float = DEFAULT_TAU,
        min_samples: int = DEFAULT_MIN_SAMPLES,
        *,
        higher_is_better: bool,
        metric: Metric = "mean",
    ) -> None:
        _check_alpha(alpha)
        if isinstance(tau, bool) or not (isinstance(tau, Real) and tau > 0):
            raise ValueError(f"tau must be a positive number, not {tau!r}")
        if not math.isfinite(tau):
            raise ValueError(f"tau must be finite, not {tau!r}")
        if (
            isinstance(min_samples, bool)
            or not isinstance(min_samples, Integral)
            or min_samples < 2
        ):
            raise ValueError(f"min_samples must be an integer >= 2, not {min_samples!r}")
        if not isinstance(higher_is_better, bool):
            raise ValueError("higher_is_better must be True or False")
        if metric not in ("mean", "proportion"):
            raise ValueError(f"metric must be 'mean' or 'proportion', not {metric!r}")
        self.alpha = float(alpha)
        self.tau = float(tau)
        self.min_samples = int(min_samples)
        self.higher_is_better = higher_is_better
        self.metric: Metric = metric
        self._control = _Arm()
        self._candidate = _Arm()
        self._p_value = 1.0
        self._ci_low = -math.inf
        self._ci_high = math.inf
        self._crossed = 0  # sign of the difference at the first look with p <= alpha
        self._resets = 0

    # -- adding data ---------------------------------------------------------------------

    def add_control(self, values: Iterable[float] | ArrayLike) -> ComparisonResult:
        """Add a batch of the control's values, look, and return the result."""
        return self.add(control=values)

    def add_candidate(self, values: Iterable[float] | ArrayLike) -> ComparisonResult:
        """Add a batch of the candidate's values, look, and return the result."""
        return self.add(candidate=values)

    def add(
        self,
        control: Iterable[float] | ArrayLike = (),
        candidate: Iterable[float] | ArrayLike = (),
    ) -> ComparisonResult:
        """Add a batch to each arm (either may be empty) as one look; return the result.

        Raises ``ValueError`` — adding nothing — for values that are not finite numbers or,
        for proportions, not 0 or 1.
        """
        c = self._values(control, "control")
        t = self._values(candidate, "candidate")
        self._control.add(c)
        self._candidate.add(t)
        if c.size or t.size:
            self._look()
        return self.result()

    def _values(self, values: Iterable[float] | ArrayLike, arm: str) -> NDArray[np.float64]:
        if isinstance(values, str | bytes):
            raise ValueError(f"{arm} values must be numbers, not text")
        if not isinstance(values, np.ndarray) and not hasattr(values, "__len__"):
            values = list(values)  # a generator
        try:
            a = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{arm} values must be numbers") from None
        a = a.reshape(-1) if a.ndim <= 1 else a
        if a.ndim != 1:
            raise ValueError(f"{arm} values must be a flat sequence, not shape {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError(f"{arm} values must be finite (no NaN or infinity)")
        if self.metric == "proportion" and not np.isin(a, (0.0, 1.0)).all():
            raise ValueError(f"{arm} values of a proportion must be 0 or 1")
        return a

    # -- the test ------------------------------------------------------------------------

    def _variance(self) -> float:
        arms = (self._control, self._candidate)
        if self.metric == "proportion":
            # Agresti–Caffo: one success and one failure added to each arm.
            total = 0.0
            for arm in arms:
                p = (arm.mean * arm.n + 1.0) / (arm.n + 2.0)
                total += p * (1.0 - p) / (arm.n + 2.0)
            return total
        return sum(max(arm.m2, 0.0) / (arm.n - 1) / arm.n for arm in arms)

    def _look(self) -> None:
        nc, nt = self._control.n, self._candidate.n
        if min(nc, nt) < self.min_samples:
            return
        d = self._candidate.mean - self._control.mean
        v = self._variance()
        r = float(mixing_ratio(self.tau, nc, nt))
        log_lr = float(log_likelihood_ratio(d, v, r))
        p = math.exp(-log_lr) if log_lr > 0 else 1.0
        if p < self._p_value:
            self._p_value = p
        if self._crossed == 0 and self._p_value <= self.alpha:
            self._crossed = 1 if d > 0 else -1
        h = float(confidence_half_width(v, r, self.alpha))
        low, high = max(self._ci_low, d - h), min(self._ci_high, d + h)
        if low > high:  # disjoint from the running interval: this look's replaces it
            low, high = d - h, d + h
            self._resets += 1
        self._ci_low, self._ci_high = low, high

    def result(self) -> ComparisonResult:
        """The counts, difference, running interval, p-value and decision; no side effects."""
        nc, nt = self._control.n, self._candidate.n
        difference = self._candidate.mean - self._control.mean if nc and nt else math.nan
        if self._crossed == 0:
            decision: Decision = "no_difference_yet"
        elif (self._crossed > 0) == self.higher_is_better:
            decision = "candidate_better"
        else:
            decision = "candidate_worse"
        return ComparisonResult(
            n_control=nc,
            n_candidate=nt,
            difference=difference,
            ci_low=self._ci_low,
            ci_high=self._ci_high,
            p_value=self._p_value,
            decision=decision,
            interval_resets=self._resets,
        )

    # -- state ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The whole state as JSON-ready values (an unbounded interval end is ``None``)."""
        return {
            "version": _STATE_VERSION,
            "alpha": self.alpha,
            "tau": self.tau,
            "min_samples": self.min_samples,
            "higher_is_better": self.higher_is_better,
            "metric": self.metric,
            "control": self._control.to_dict(),
            "candidate": self._candidate.to_dict(),
            "p_value": self._p_value,
            "ci_low": _finite_or_none(self._ci_low),
            "ci_high": _finite_or_none(self._ci_high),
            "crossed": self._crossed,
            "interval_resets": self._resets,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SequentialComparison:
        """Rebuild a comparison from :meth:`to_dict`; ``ValueError`` for a malformed state."""
        if not isinstance(data, Mapping):
            raise ValueError("state must be a mapping")
        if data.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported state version {data.get('version')!r}")
        try:
            comparison = cls(
                alpha=data["alpha"],
                tau=data["tau"],
                min_samples=data["min_samples"],
                higher_is_better=data["higher_is_better"],
                metric=data["metric"],
            )
            comparison._control = _Arm.from_dict(data["control"])
            comparison._candidate = _Arm.from_dict(data["candidate"])
            p_value = float(data["p_value"])
            low = -math.inf if data["ci_low"] is None else float(data["ci_low"])
            high = math.inf if data["ci_high"] is None else float(data["ci_high"])
            crossed = int(data["crossed"])
            resets = int(data["interval_resets"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed state: {exc!r}") from None
        if not 0.0 <= p_value <= 1.0 or crossed not in (-1, 0, 1) or low > high or resets < 0:
            raise ValueError("malformed state: p_value, interval or crossed out of range")
        if (crossed != 0) != (p_value <= comparison.alpha):
            raise ValueError("malformed state: crossed disagrees with p_value and alpha")
        comparison._p_value, comparison._ci_low, comparison._ci_high = p_value, low, high
        comparison._crossed, comparison._resets = crossed, resets
        return comparison


def _check_alpha(alpha: float) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, Real) or not 0 < alpha < 1:
        raise ValueError(f"alpha must be a number in (0, 1), not {alpha!r}")


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
