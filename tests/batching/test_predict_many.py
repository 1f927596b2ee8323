"""Batched DTESN model predictions: every sequence's numbers are independent of its batch."""

from __future__ import annotations

import numpy as np
import pytest

from dtecho.dtesn import DTESN, datasets
from dtecho.services.dtesn_models import batch_reservoir, predict_many

SERIES = datasets.mackey_glass(1600)


@pytest.mark.parametrize(
    "params",
    [
        {"units": 120},  # Euler (the compiled loop where Numba is installed)
        {"units": 60, "depth": 2, "integrator": "rk4"},  # the NumPy Runge-Kutta loop
        {"units": 80, "matrix_format": "dense"},  # pinned to CSR: agrees with BLAS to rounding
    ],
)
def test_batched_predictions_equal_each_sequence_alone(params: dict) -> None:
    model = DTESN(leak_rate=0.3, **params).fit(SERIES[:999, None], SERIES[1:1000, None], 100)
    reservoir = batch_reservoir(model)
    rng = np.random.default_rng(0)
    starts, lengths = rng.integers(0, 900, 24), rng.integers(1, 600, 24)
    inputs = [SERIES[a : a + n, None] for a, n in zip(starts, lengths, strict=True)]
    for horizon in (0, 5):
        together = predict_many(model, reservoir, inputs, horizon)
        for seq, (predicted, forecast) in zip(inputs, together, strict=True):
            ((alone, alone_forecast),) = predict_many(model, reservoir, [seq], horizon)
            np.testing.assert_array_equal(predicted, alone)
            assert predicted.shape == (len(seq), 1)
            np.testing.assert_allclose(predicted, model.predict(seq), rtol=1e-9, atol=1e-12)
            if horizon:
                np.testing.assert_array_equal(forecast, alone_forecast)
                expected = model.generate(horizon, warmup=seq)
                np.testing.assert_allclose(forecast, expected, rtol=1e-9, atol=1e-12)
            else:
                assert forecast is None
