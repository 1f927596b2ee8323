"""The compiled Numba kernels (``backend="numba"``, the ``fast`` extra) against the NumPy loop.

The kernels sum every row of the CSR product in index order and compute tanh themselves, so
they agree with the NumPy/SciPy loop to rounding (a few ulp), and a sequence gets
bit-identical states alone, in a batch, in a padded variable-length batch and whatever
``n_jobs`` splits the batch.
"""

import numpy as np
import pytest

pytest.importorskip("numba")

from dtecho.dtesn import DTESN

RNG = np.random.default_rng(7)
U1 = RNG.uniform(-1, 1, size=(300, 2))
UB = RNG.uniform(-1, 1, size=(12, 150, 2))
CASES = [
    pytest.param({"units": 120, "leak_rate": 0.3, "bias_scaling": 0.4}, id="leaky"),
    pytest.param({"units": 97, "leak_rate": 1.0, "bias_scaling": 0.2}, id="leak1-odd-N"),
    pytest.param(
        {"units": 150, "depth": 3, "tau_scaling": 2.0, "leak_rate": 0.5, "feedback": 0.3},
        id="tree-per-unit-leak",
    ),
    pytest.param({"units": 64, "leak_rate": 0.7, "activation": "identity"}, id="linear"),
    pytest.param({"units": 80, "connectivity": 0.5, "input_scaling": 3.0}, id="saturating"),
]


def _model(backend: str, n_jobs: int = 1, **kw) -> DTESN:
    # matrix_format="sparse": the compiled kernels run the CSR path ("auto" may pick BLAS)
    return DTESN(seed=11, matrix_format="sparse", backend=backend, n_jobs=n_jobs, **kw)


def _compiled(model: DTESN, batch: int) -> bool:
    res = model.reservoir_
    return res._compiled() and not res._use_dense(batch, True)


@pytest.mark.parametrize("kw", CASES)
def test_single_sequence_matches_numpy(kw):
    fast, ref = _model("numba", **kw), _model("numpy", **kw)
    S = fast.run(U1)
    expected = ref.run(U1)
    assert _compiled(fast, 1)
    assert not ref.reservoir_._compiled()
    assert S.shape == expected.shape == (300, kw["units"])
    np.testing.assert_allclose(S, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kw", CASES)
def test_batch_matches_numpy(kw):
    fast, ref = _model("numba", **kw), _model("numpy", **kw)
    S = fast.run(UB)
    assert _compiled(fast, UB.shape[0])
    np.testing.assert_allclose(S, ref.run(UB), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kw", CASES)
def test_sequence_is_bit_identical_alone_and_in_a_batch(kw):
    model = _model("numba", **kw)
    S = model.run(UB)
    for b in (0, 5, UB.shape[0] - 1):
        np.testing.assert_array_equal(model.run(UB[b]), S[b])


@pytest.mark.parametrize("kw", CASES)
def test_variable_lengths_are_bit_identical_to_each_sequence_alone(kw):
    model = _model("numba", **kw)
    lengths = [150, 7, 90, 1, 150, 33, 120]
    seqs = [UB[i, :L] for i, L in enumerate(lengths)]
    out = model.run(seqs)
    assert [o.shape[0] for o in out] == lengths
    for seq, states in zip(seqs, out, strict=True):
        np.testing.assert_array_equal(model.run(seq), states)
    ref = _model("numpy", **kw).run(seqs)
    for a, b in zip(out, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("n_jobs", [2, 3])
def test_n_jobs_does_not_change_states(n_jobs):
    kw = {"units": 100, "leak_rate": 0.4, "bias_scaling": 0.3}
    U = RNG.uniform(-1, 1, size=(40, 60, 2))
    one = _model("numba", **kw).run(U)
    many = _model("numba", n_jobs=n_jobs, **kw).run(U)
    np.testing.assert_array_equal(many, one)
    lengths = [60, 60, 59, 41, 41, 30, 17, 9, 2, 1] * 4
    seqs = [U[i, :L] for i, L in enumerate(lengths)]
    for a, b in zip(
        _model("numba", n_jobs=n_jobs, **kw).run(seqs), _model("numba", **kw).run(seqs), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_initial_state_is_honoured():
    kw = {"units": 90, "leak_rate": 0.6}
    x0 = RNG.uniform(-0.5, 0.5, size=(UB.shape[0], 90))
    fast = _model("numba", **kw).run(UB, initial_state=x0)
    ref = _model("numpy", **kw).run(UB, initial_state=x0)
    np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-12)
    alone = _model("numba", **kw).run(UB[3], initial_state=x0[3])
    np.testing.assert_array_equal(alone, fast[3])


def test_float32_tracks_numpy_float32():
    kw = {"units": 120, "leak_rate": 0.3, "dtype": "float32"}
    fast, ref = _model("numba", **kw).run(UB), _model("numpy", **kw).run(UB)
    assert fast.dtype == ref.dtype == np.float32
    np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(_model("numba", **kw).run(UB[2]), fast[2])


def test_fit_and_predict_agree_across_backends():
    u = RNG.uniform(0, 0.5, size=1200)
    X, Y = u[:-1, None], np.roll(u, 3)[1:, None]
    kw = {"units": 150, "leak_rate": 1.0, "bias_scaling": 0.2, "ridge": 1e-8, "input_scaling": 1.0}
    preds = [_model(b, **kw).fit(X, Y, warmup=50).predict(X) for b in ("numba", "numpy")]
    np.testing.assert_allclose(preds[0], preds[1], rtol=0, atol=1e-9)


def test_auto_backend_uses_the_kernels_and_switching_keeps_the_readout():
    model = DTESN(200, seed=1, matrix_format="sparse").fit(U1, U1[:, :1], warmup=20)
    assert model.reservoir_._compiled()
    before = model.predict(U1)
    model.set_params(backend="numpy")
    np.testing.assert_allclose(model.predict(U1), before, rtol=0, atol=1e-12)


@pytest.mark.parametrize("scale", [1e-8, 1e-3, 0.3, 1.0, 5.0, 30.0])
def test_kernel_tanh_is_within_two_ulp_of_numpy(scale):
    from dtecho.dtesn import _kernels

    z = np.random.default_rng(3).standard_normal(20_000) * scale
    z = np.concatenate([z, [0.0, -0.0, 0.625, -0.625, 19.0625, -19.0625, 40.0, -40.0]])
    P = z[None, :].copy()
    # identity recurrence (empty W), no leak: the state is tanh of the projected input
    N = z.size
    indptr = np.zeros(N + 1, np.uint64)
    indices = np.zeros(0, np.uint32)
    data = np.zeros(0)
    _kernels.euler_csr_single(indptr, indices, data, P, np.zeros(N), np.ones(N), True, False, 1)
    ref = np.tanh(z)
    ulp = np.spacing(np.abs(ref))
    assert np.all(np.abs(P[0] - ref) <= 2 * ulp)
    assert np.all(np.signbit(P[0]) == np.signbit(ref))


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_precomputed_projections_take_the_same_path(n_jobs):
    # run() projects inside the batched kernel; run_projected() takes the projections as
    # given (e.g. the byte LM's lookup table). Both give the same states, bit for bit.
    model = _model("numba", n_jobs=n_jobs, units=100, leak_rate=0.5, bias_scaling=0.3)
    U = RNG.uniform(-1, 1, size=(24, 50, 3))
    S = model.run(U)
    res = model.reservoir_
    np.testing.assert_array_equal(res.run_projected(res.project(U)), S)
    lengths = np.array([50] * 5 + [30] * 10 + [1] * 9)
    ragged = res.run_projected(res.project(U), lengths=lengths)
    for b, L in enumerate(lengths):
        np.testing.assert_array_equal(ragged[b, :L], res.run(U[b : b + 1, :L])[0])


def test_wide_inputs_use_blas_projection_and_still_match_numpy():
    U = RNG.uniform(-1, 1, size=(10, 40, 20))  # d_in > 16: projected by one BLAS product
    kw = {"units": 90, "leak_rate": 0.5, "bias_scaling": 0.1, "input_scaling": 0.3}
    fast, ref = _model("numba", **kw).run(U), _model("numpy", **kw).run(U)
    np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-12)
