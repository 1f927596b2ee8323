"""One sequence with its units split between threads that meet after every step.

Each thread computes its own rows exactly as one thread would compute them, and the
barrier makes every step see the whole previous state, so the states must be the same bit
for bit for any split; a missing or misplaced barrier shows as a difference here (a thread
reading a half-updated state). Two threads at most: these machines have two cores, and a
busy-waiting thread without a core of its own only slows the others down.
"""

import numpy as np
import pytest

from dtecho.dtesn import DTESN
from dtecho.dtesn import reservoir as reservoir_module

pytest.importorskip("numba")
from dtecho.dtesn import _kernels

RNG = np.random.default_rng(11)
U = RNG.uniform(-1, 1, size=(300, 2))

LAYOUTS = [
    pytest.param({"units": 100, "weights": "random"}, id="random"),
    pytest.param({"units": 203, "weights": "grouped", "leak_rate": 0.4}, id="grouped-odd-N"),
    pytest.param(
        {"units": 150, "depth": 3, "weights": "grouped", "tau_scaling": 2.0, "feedback": 0.3},
        id="grouped-tree",
        marks=pytest.mark.filterwarnings("ignore:weights='grouped'"),
    ),
    pytest.param({"units": 40, "weights": "orthogonal", "activation": "identity"}, id="dense"),
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kw", LAYOUTS)
def test_two_threads_give_the_states_of_one(kw, dtype):
    model = DTESN(seed=3, bias_scaling=0.3, backend="numba", dtype=dtype, **kw)
    model.run(U[:2])
    res = model.reservoir_
    P0 = res.project(U[None])[0]
    x0 = RNG.uniform(-0.5, 0.5, size=res.units).astype(dtype)
    a = res.leak.astype(res.dtype)
    tanh, leaky = res.activation == "tanh", not np.all(a == 1.0)
    for run, layout in [
        (_kernels.euler_grouped_single, res._row_groups()),
        (_kernels.euler_csr_single, res._csr_unsigned()),
    ]:
        states = {}
        for threads in (1, 2):
            P = P0.copy()
            run(*layout, P, x0, a, tanh, leaky, len(U), threads)
            states[threads] = P
        np.testing.assert_array_equal(states[2], states[1], err_msg=run.__name__)
        assert np.all(np.isfinite(states[1]))


def test_bounds_split_the_entries_evenly_at_aligned_units():
    ptr = np.concatenate([[0], np.cumsum(RNG.integers(0, 50, size=203))]).astype(np.uint64)
    for threads in (1, 2, 3, 7):
        bounds = _kernels._balanced(ptr, threads, 8)
        assert bounds[0] == 0 and bounds[-1] == 203 and len(bounds) == threads + 1
        assert all(b % 8 == 0 for b in bounds[1:-1]) and np.all(np.diff(bounds) > 0)
        shares = np.diff(ptr[bounds].astype(np.int64))
        assert shares.max() - shares.min() <= 2 * 8 * 50  # within two aligned blocks
    assert _kernels._balanced(ptr[:4], 5, 8) == [0, 3]  # fewer units than threads: one


@pytest.mark.parametrize("weights", ["grouped", "random"])
def test_model_with_n_jobs_splits_one_sequence_and_changes_nothing(weights, monkeypatch):
    """Through the public API: n_jobs=2 runs and predicts one long sequence with its units
    split between two threads (fit keeps one: its other thread forms the normal equations)."""
    calls = []
    for name in ("euler_grouped_single", "euler_csr_single"):
        original = getattr(_kernels, name)

        def spy(*args, _original=original):
            calls.append(args[-1])  # the thread count asked for
            return _original(*args)

        monkeypatch.setattr(_kernels, name, spy)
    X = RNG.uniform(-1, 1, size=(3000, 1))
    Y = np.roll(X, 1, axis=0)
    models = {
        n: DTESN(640, weights=weights, connectivity=0.1, ridge=1e-6, seed=2, n_jobs=n)
        for n in (1, 2)
    }
    runs = {n: m.run(X) for n, m in models.items()}
    np.testing.assert_array_equal(runs[2], runs[1])
    assert 2 in calls  # 640 units × 64 inputs: enough entries for two threads
    assert models[2].reservoir_.W.nnz >= 2 * reservoir_module._ROW_SHARE_ENTRIES
    predictions = {n: m.fit(X, Y, warmup=50).predict(X) for n, m in models.items()}
    np.testing.assert_array_equal(predictions[2], predictions[1])
    assert np.sqrt(np.mean((predictions[1][50:] - Y[50:]) ** 2)) < 0.1 * Y.std()


def test_a_thread_that_cannot_start_fails_the_call_without_leaving_others_waiting(monkeypatch):
    """Three shares, the second helper cannot start (as when the process is out of
    threads): the call raises, and the helper that did start is released, not left spinning
    on the barrier for ever."""
    import threading

    model = DTESN(203, weights="grouped", backend="numba", seed=3)
    model.run(U[:2])
    res = model.reservoir_
    P = res.project(U[None])[0]
    x0 = np.zeros(res.units)
    a = res.leak.astype(res.dtype)
    original, starts = threading.Thread.start, []

    def start(self):
        starts.append(self)
        if len(starts) == 2:
            raise RuntimeError("can't start new thread")
        original(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    with pytest.raises(RuntimeError, match="can't start"):
        _kernels.euler_grouped_single(*res._row_groups(), P, x0, a, True, False, len(U), 3)
    assert len(starts) == 2 and not starts[0].is_alive()
