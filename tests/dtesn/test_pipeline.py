"""``_pipeline.overlapped``: a chain produced in order on a helper thread, per-window work on
whichever thread is free, results in order, failures and early exits handled.

The work functions sleep (which releases the GIL, as the real kernels and BLAS do) so that
the helper is certain to run ahead and take some of the work; nothing here is timed.
"""

import threading
import time

import numpy as np
import pytest

from dtecho.dtesn import DTESN
from dtecho.dtesn._pipeline import overlapped


def test_results_come_in_order_and_the_helper_takes_work_when_ahead():
    produced, ran_on, alive, peak = [], {}, set(), [0]
    lock = threading.Lock()

    def produce(i):
        produced.append(i)  # only the helper calls produce, so in order
        with lock:
            alive.add(i)
            peak[0] = max(peak[0], len(alive))
        return i * i

    def work(item):
        time.sleep(0.005)
        i = round(item**0.5)
        ran_on[i] = threading.current_thread().name
        with lock:
            alive.discard(i)
        return item + 1

    results = list(overlapped(produce, 40, work, ahead=3))
    assert results == [i * i + 1 for i in range(40)]
    assert produced == list(range(40))
    assert set(ran_on) == set(range(40))
    threads = set(ran_on.values())
    assert threading.current_thread().name in threads and "dtesn-windows" in threads
    assert peak[0] <= 3 + 2  # memory stays bounded: at most ahead + 2 windows alive


@pytest.mark.parametrize("where", ["produce", "work"])
def test_a_failure_on_either_thread_reaches_the_caller(where):
    def produce(i):
        if where == "produce" and i == 5:
            raise ValueError("bad window 5")
        return i

    def work(i):
        time.sleep(0.001)
        if where == "work" and i == 7:
            raise ValueError("bad window 7")
        return i

    seen = []
    with pytest.raises(ValueError, match="bad window"):
        for r in overlapped(produce, 30, work, ahead=2):
            seen.append(r)
    assert seen == list(range(len(seen))) and len(seen) <= 7
    assert all(t.name != "dtesn-windows" for t in threading.enumerate())


def test_closing_early_stops_the_helper():
    produced = []

    def produce(i):
        produced.append(i)
        return i

    it = overlapped(produce, 1000, lambda i: (time.sleep(0.001), i)[1], ahead=2)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()
    assert all(t.name != "dtesn-windows" for t in threading.enumerate())
    assert len(produced) < 1000


def test_fit_over_many_windows_is_deterministic_and_matches_one_ridge_solve():
    """fit splits a long sequence into windows whose normal equations may be formed on
    either thread; the sums are reduced in window order, so two fits agree bit for bit,
    and they fit like a ridge solve on the states of one ``run``, to rounding."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, size=(9000, 1))
    Y = np.roll(X, 2, axis=0)
    model = DTESN(500, connectivity=0.1, weights="grouped", ridge=1e-6, backend="numba")
    # 500 units: windows of ~4000 steps, so 9000 steps take three
    first = model.fit(X, Y, warmup=50).readout_.coef_.copy()
    second = model.fit(X, Y, warmup=50).readout_.coef_
    np.testing.assert_array_equal(first, second)
    S = model.run(X)[50:]
    features = np.hstack([np.ones((len(S), 1)), X[50:], S])
    G = features.T @ features + 1e-6 * np.diag([0.0] + [1.0] * (features.shape[1] - 1))
    expected = np.linalg.solve(G, features.T @ Y[50:])
    # the coefficients are ill-conditioned (rounding moves them ~1e-5); the fit is not
    np.testing.assert_allclose(features @ first, features @ expected, rtol=0, atol=1e-6)
    prediction = model.predict(X)
    np.testing.assert_allclose(prediction[50:], features @ first, rtol=0, atol=1e-10)
