"""Experiments on a trained model: a control and a candidate version, split or shadowed.

* **Assignment** is sticky per unit (the ``x-dtecho-unit`` header, else the principal) by the
  GrowthBook-compatible FNV-1a hash of :mod:`dtecho.registry.assignment`, keyed by the
  experiment's id: every replica puts a unit in the same arm, and no Python ``hash()`` is
  involved.
* **Split**: the candidate answers ``candidate_share`` of the units. **Shadow**: the control
  answers everyone; a ``candidate_share`` of units is mirrored to the candidate, whose answers
  are recorded and never returned.
* **Per arm**: requests, errors, latency, and squared error against ground truth (an
  observation naming the request it answers, or inputs and targets scored on both arms).
* **Analysis** every ``interval_seconds``: a check fails when the candidate's error rate or
  squared error is worse by the always-valid mSPRT of :mod:`dtecho.registry.sequential`
  (Johari, Pekelis & Walsh: peeking after every batch cannot fake a difference), or its mean
  latency is above ``max_latency_ratio`` times the control's. After ``max_failed_checks``
  failed checks in a row the experiment rolls back: it ends ``rolled_back`` and every unit
  goes to the control.

This module holds one process's view of a running experiment; the store holds its
definition and status (:mod:`dtecho.store.experiments`).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from dtecho.registry.assignment import assign, in_sample
from dtecho.registry.sequential import SequentialComparison

__all__ = ["Arm", "ArmStats", "RunningExperiment"]

Arm = Literal["control", "candidate"]
RECENT_REQUESTS = 20_000  # predictions kept for ground truth that arrives later
HISTORY_POINTS = 720  # analyses kept in memory for the page's charts
STORED_HISTORY = 120  # of which the store keeps the last (the page of an ended experiment)


@dataclass
class ArmStats:
    """What one arm did."""

    requests: int = 0
    errors: int = 0
    latency_sum_ms: float = 0.0
    squared_error_sum: float = 0.0
    scored: int = 0  # values with ground truth
    feedback_sum: float = 0.0
    feedback: int = 0  # client scores (POST /v1/feedback)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.errors / self.requests if self.requests else None,
            "mean_latency_ms": self.latency_sum_ms / max(self.requests - self.errors, 1)
            if self.requests
            else None,
            "scored": self.scored,
            "mse": self.squared_error_sum / self.scored if self.scored else None,
            "feedback": self.feedback,
            "mean_feedback": self.feedback_sum / self.feedback if self.feedback else None,
        }


@dataclass
class RunningExperiment:
    """One running experiment in this process (see the module docstring)."""

    id: str
    model_id: str
    spec: dict[str, Any]
    control_version: int
    candidate_version: int
    stats: dict[str, ArmStats] = field(
        default_factory=lambda: {"control": ArmStats(), "candidate": ArmStats()}
    )
    failed_checks: int = 0
    last_analysis: float = field(default_factory=time.monotonic)
    history: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=HISTORY_POINTS))
    recent: OrderedDict[str, list[tuple[Arm, np.ndarray]]] = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        analysis = self.spec["analysis"]
        alpha, minimum = analysis["alpha"], analysis["min_samples"]
        self.errors = SequentialComparison(
            alpha, min_samples=minimum, higher_is_better=False, metric="proportion"
        )
        self.quality = SequentialComparison(alpha, min_samples=minimum, higher_is_better=False)
        self.scores = SequentialComparison(alpha, min_samples=minimum, higher_is_better=True)
        self._pending_errors: dict[str, list[float]] = {"control": [], "candidate": []}
        self._pending_quality: dict[str, list[float]] = {"control": [], "candidate": []}
        self._pending_scores: dict[str, list[float]] = {"control": [], "candidate": []}

    @property
    def mode(self) -> str:
        return str(self.spec["mode"])

    @property
    def share(self) -> float:
        return float(self.spec["candidate_share"])

    def version_of(self, arm: Arm) -> int:
        return self.control_version if arm == "control" else self.candidate_version

    def choose(self, unit: str) -> Arm:
        """The arm that answers ``unit`` (always the control in shadow mode)."""
        if self.mode == "shadow" or self.share <= 0:
            return "control"
        if self.share >= 1:
            return "candidate"
        arm = assign(self.id, unit, [("control", 1.0 - self.share), ("candidate", self.share)])
        return "candidate" if arm == "candidate" else "control"

    def mirrored(self, unit: str) -> bool:
        """Whether ``unit``'s requests are also sent to the candidate (shadow mode)."""
        return self.mode == "shadow" and in_sample(self.id, unit, self.share)

    # -- recording -------------------------------------------------------------------------

    def record(self, arm: Arm, latency_ms: float, failed: bool) -> None:
        stats = self.stats[arm]
        stats.requests += 1
        if failed:
            stats.errors += 1
        else:
            stats.latency_sum_ms += latency_ms
        self._pending_errors[arm].append(1.0 if failed else 0.0)

    def remember(self, request_id: str, arm: Arm, predictions: np.ndarray) -> None:
        """Keep a prediction for ground truth sent later under ``request_id``."""
        if not request_id:
            return
        self.recent.setdefault(request_id, []).append((arm, predictions))
        self.recent.move_to_end(request_id)
        while len(self.recent) > RECENT_REQUESTS:
            self.recent.popitem(last=False)

    def score(self, arm: Arm, predictions: np.ndarray, targets: np.ndarray) -> float:
        """Record the squared error of ``predictions`` (one value per row) against ``targets``;
        returns its mean."""
        rows = min(len(predictions), len(targets))
        errors = np.mean((np.asarray(predictions[:rows]) - targets[:rows]) ** 2, axis=1)
        stats = self.stats[arm]
        stats.squared_error_sum += float(errors.sum())
        stats.scored += int(errors.size)
        self._pending_quality[arm].extend(float(e) for e in errors)
        return float(errors.mean()) if errors.size else math.nan

    def arm_of(self, request_id: str) -> Arm | None:
        """The arm that answered ``request_id`` (not its shadow), if it is still known."""
        for arm, _ in self.recent.get(request_id, []):
            if self.mode != "shadow" or arm == "control":
                return arm
        return None

    def rate(self, arm: Arm, score: float) -> None:
        """A client's score of an answer of ``arm``."""
        stats = self.stats[arm]
        stats.feedback_sum += score
        stats.feedback += 1
        self._pending_scores[arm].append(score)

    def score_request(self, request_id: str, targets: np.ndarray) -> list[Arm]:
        """Score what answered ``request_id`` (and its shadow); the arms scored."""
        answered = self.recent.pop(request_id, [])
        for arm, predictions in answered:
            self.score(arm, predictions, targets)
        return [arm for arm, _ in answered]

    # -- analysis --------------------------------------------------------------------------

    def due(self) -> bool:
        return time.monotonic() - self.last_analysis >= self.spec["analysis"]["interval_seconds"]

    def analyse(self) -> dict[str, Any]:
        """One check (see the module docstring): the snapshot, with ``failed`` and the
        reasons, and ``rollback`` when the failed checks in a row reached the limit."""
        self.last_analysis = time.monotonic()
        errors = self.errors.add(
            control=self._pending_errors["control"], candidate=self._pending_errors["candidate"]
        )
        quality = self.quality.add(
            control=self._pending_quality["control"], candidate=self._pending_quality["candidate"]
        )
        scores = self.scores.add(
            control=self._pending_scores["control"], candidate=self._pending_scores["candidate"]
        )
        for pending in (self._pending_errors, self._pending_quality, self._pending_scores):
            pending["control"].clear()
            pending["candidate"].clear()
        analysis = self.spec["analysis"]
        reasons = []
        if errors.decision == "candidate_worse":
            reasons.append(f"error rate worse (p={errors.p_value:.3g})")
        if quality.decision == "candidate_worse":
            reasons.append(f"squared error worse (p={quality.p_value:.3g})")
        if scores.decision == "candidate_worse":
            reasons.append(f"feedback worse (p={scores.p_value:.3g})")
        control, candidate = self.stats["control"], self.stats["candidate"]
        served = candidate.requests - candidate.errors
        if served >= analysis["min_samples"] and control.requests - control.errors > 0:
            ratio = (candidate.latency_sum_ms / served) / max(
                control.latency_sum_ms / (control.requests - control.errors), 1e-9
            )
            if ratio > analysis["max_latency_ratio"]:
                reasons.append(f"latency {ratio:.2f}x the control's")
        self.failed_checks = self.failed_checks + 1 if reasons else 0
        snapshot = {
            "at": time.time(),
            "arms": {arm: stats.as_dict() for arm, stats in self.stats.items()},
            "error_rate": errors.to_dict(),
            "squared_error": quality.to_dict(),
            "feedback": scores.to_dict(),
            "failed": bool(reasons),
            "reasons": reasons,
            "failed_checks": self.failed_checks,
            "rollback": self.failed_checks >= analysis["max_failed_checks"],
        }
        self.history.append({"at": snapshot["at"], "arms": snapshot["arms"]})
        return {**snapshot, "history": list(self.history)[-STORED_HISTORY:]}

    def as_dict(self) -> dict[str, Any]:
        return {
            "control_version": self.control_version,
            "candidate_version": self.candidate_version,
            "arms": {arm: stats.as_dict() for arm, stats in self.stats.items()},
            "failed_checks": self.failed_checks,
            "history": list(self.history),
        }
