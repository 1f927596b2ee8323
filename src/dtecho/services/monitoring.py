"""Data quality and drift of what trained models are sent after training.

At a fit, the training rows' :class:`~dtecho.registry.reference.Reference` (per column
ranges, quantiles and a sample) is written beside the weights. Every observation (inputs
with their true targets) is then

1. **checked** against it (:func:`~dtecho.registry.quality.check_rows`: width, finite
   values, the training range widened by 1.5 × IQR): anomalous rows are *quarantined* —
   counted and reported, never scored or learned from;
2. **added to the model's window** of recent inputs, which is tested for **input drift**
   against the reference every ``DRIFT_EVERY`` rows (KS with a Bonferroni correction and the
   normalised Wasserstein distance, :class:`~dtecho.registry.drift.InputDrift`);
3. when the model's own predictions of them are scored, fed to ADWIN on their squared
   error (**error drift**).

The state is this process's, per model: ``dtecho_model_drift`` exports it, the model's record
and page show it. See docs/lifecycle-drift.md.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dtecho.registry.drift import InputDrift
from dtecho.registry.error_drift import ADWIN
from dtecho.registry.quality import Reference, check_rows
from dtecho.services.model_store import ModelStore, atomic_write

__all__ = ["DRIFT_EVERY", "WINDOW_ROWS", "ModelMonitor"]

REFERENCE_FILE = "reference.json"
WINDOW_ROWS = 2000  # recent inputs tested for drift
DRIFT_EVERY = 200  # new rows between drift tests
MIN_WINDOW = 200  # rows before the first test


@dataclass
class _ModelState:
    reference: Reference | None
    window: deque[np.ndarray] = field(default_factory=lambda: deque(maxlen=WINDOW_ROWS))
    since_check: int = 0
    accepted: int = 0
    quarantined: int = 0
    input_drift: dict[str, Any] | None = None
    error_detector: ADWIN = field(default_factory=ADWIN)
    error_drifts: int = 0


class ModelMonitor:
    """Quality and drift state of the models of one model store."""

    def __init__(self, store: ModelStore) -> None:
        self.store = store
        self._models: dict[str, _ModelState] = {}

    def learn_reference(self, model_id: str, inputs: np.ndarray, targets: np.ndarray) -> None:
        """Write the training rows' reference beside the model's weights."""
        reference = Reference.fit(inputs, targets)
        document = json.dumps(reference.to_dict(), allow_nan=False).encode()
        path = self.store.root / model_id / REFERENCE_FILE
        atomic_write(path, lambda tmp: tmp.write_bytes(document))
        self._models[model_id] = _ModelState(reference)

    def _state(self, model_id: str) -> _ModelState:
        state = self._models.get(model_id)
        if state is None:
            path = self.store.root / model_id / REFERENCE_FILE
            try:
                reference = Reference.from_dict(json.loads(path.read_bytes()))
            except FileNotFoundError:
                reference = None  # trained before references were kept: nothing to check
            state = self._models[model_id] = _ModelState(reference)
        return state

    def check(
        self, model_id: str, inputs: np.ndarray, targets: np.ndarray
    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """The mask of rows fit to learn from, and the quarantined rows with their reasons;
        the clean inputs join the drift window (tested every ``DRIFT_EVERY`` rows)."""
        state = self._state(model_id)
        if state.reference is None:
            state.accepted += len(inputs)
            return np.ones(len(inputs), dtype=bool), []
        report = check_rows(state.reference, inputs, targets)
        mask = report.clean_mask()
        quarantined = [{"row": row, "reasons": report.reasons(row)} for row in report.anomalous]
        state.accepted += int(mask.sum())
        state.quarantined += len(quarantined)
        for row in np.asarray(inputs, dtype=float)[mask]:
            state.window.append(row)
        state.since_check += int(mask.sum())
        if len(state.window) >= MIN_WINDOW and state.since_check >= DRIFT_EVERY:
            state.since_check = 0
            drift = InputDrift(state.reference).check(np.stack(list(state.window)))
            state.input_drift = drift.to_dict()
        return mask, quarantined

    def errors(self, model_id: str, squared_errors: np.ndarray) -> None:
        """Feed the model's own squared errors to its error-drift detector."""
        state = self._state(model_id)
        for value in np.asarray(squared_errors, dtype=float).ravel():
            if np.isfinite(value) and state.error_detector.update(float(value)):
                state.error_drifts += 1

    def status(self, model_id: str) -> dict[str, Any]:
        """What the model's record and page show."""
        state = self._state(model_id)
        drift = state.input_drift
        return {
            "reference": state.reference is not None,
            "accepted_rows": state.accepted,
            "quarantined_rows": state.quarantined,
            "input_drift": None
            if drift is None
            else {
                "drifted": drift["drifted"],
                "drifted_columns": drift["drifted_columns"],
                "window_rows": drift["n_window"],
            },
            "error_drift_detections": state.error_drifts,
            "error_window": state.error_detector.width,
        }

    def gauges(self) -> dict[tuple[str, str], float]:
        """``{(model, kind): value}``: input drift 0/1, error drift detections."""
        values: dict[tuple[str, str], float] = {}
        for model_id, state in self._models.items():
            drifted = bool(state.input_drift and state.input_drift["drifted"])
            values[(model_id, "input")] = 1.0 if drifted else 0.0
            values[(model_id, "error_detections")] = float(state.error_drifts)
        return values
