"""The row-group layout of W and its compiled one-sequence kernel, and ``weights="grouped"``.

The layout stores, per aligned group of 16 rows, one sorted list of columns and a block of
values with zeros where a row has no entry. The kernel sums every row in column order
starting from the projected input, like the CSR kernels, and the stored zeros add nothing,
so its states must equal the CSR kernel's bit for bit, whatever W is.
"""

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sps

from dtecho.dtesn import DTESN
from dtecho.dtesn import model as model_module
from dtecho.dtesn.reservoir import ROW_GROUP, row_groups, spectral_radius

RNG = np.random.default_rng(5)
U = RNG.uniform(-1, 1, size=(400, 2))

LAYOUTS = [
    pytest.param({"units": 100, "weights": "random"}, id="random-padded-partial-group"),
    pytest.param({"units": 160, "weights": "grouped"}, id="grouped"),
    pytest.param({"units": 203, "weights": "grouped", "leak_rate": 0.4}, id="grouped-odd-N"),
    pytest.param(
        {"units": 150, "depth": 3, "weights": "grouped", "tau_scaling": 2.0, "feedback": 0.3},
        id="grouped-tree",  # small membranes: warns of rank loss (tested below)
        marks=pytest.mark.filterwarnings("ignore:weights='grouped'"),
    ),
    pytest.param({"units": 48, "weights": "orthogonal", "activation": "identity"}, id="dense"),
]


def _built(**kw) -> DTESN:
    model = DTESN(seed=3, bias_scaling=0.3, **kw)
    model.run(U[:2])
    return model


def _dense_from_groups(ptr, cols, vals, n: int, m: int | None = None) -> np.ndarray:
    out = np.zeros((-(-n // ROW_GROUP) * ROW_GROUP, n if m is None else m))
    for g in range(ptr.size - 1):
        for j in range(int(ptr[g]), int(ptr[g + 1])):
            out[g * ROW_GROUP : (g + 1) * ROW_GROUP, cols[j]] = vals[
                j * ROW_GROUP : (j + 1) * ROW_GROUP
            ]
    return out[:n]


@pytest.mark.parametrize("kw", LAYOUTS)
def test_layout_holds_exactly_w(kw):
    W = _built(**kw).reservoir_.W
    ptr, cols, vals = row_groups(W)
    assert ptr.dtype == np.uint64 and cols.dtype == np.uint32
    assert np.all(np.diff(ptr.astype(np.int64)) >= 0)
    for g in range(ptr.size - 1):  # each group's columns sorted and distinct
        assert np.all(np.diff(cols[int(ptr[g]) : int(ptr[g + 1])].astype(np.int64)) > 0)
    np.testing.assert_array_equal(_dense_from_groups(ptr, cols, vals, W.shape[0]), W.toarray())


def test_duplicate_entries_are_summed():
    W = sps.csr_array(
        (np.array([1.0, 2.0, 4.0]), np.array([3, 3, 0]), np.array([0, 2, 3, 3])), shape=(3, 5)
    )
    ptr, cols, vals = row_groups(W)
    dense = np.zeros((3, 5))
    dense[0, 3], dense[1, 0] = 3.0, 4.0
    np.testing.assert_array_equal(_dense_from_groups(ptr, cols, vals, 3, 5), dense)


def test_grouped_weights_share_columns_not_values():
    model = _built(units=128, weights="grouped", connectivity=0.25)
    W = model.reservoir_.W
    k = round(0.25 * 128)
    assert np.all(np.diff(W.indptr) == k)  # fixed in-degree, as for "random"
    for g in range(128 // ROW_GROUP):
        rows = [W.indices[W.indptr[i] : W.indptr[i + 1]] for i in range(g * 16, g * 16 + 16)]
        assert all(np.array_equal(rows[0], r) for r in rows)
        values = W.toarray()[g * 16 : g * 16 + 16][:, rows[0]]
        assert len(np.unique(values)) == values.size  # independent draws
    assert row_groups(W)[2].size == W.nnz  # no padding at all
    # the values are float32 numbers (see the next test): the radius is met to their precision
    assert spectral_radius(W) == pytest.approx(model.spectral_radius, rel=1e-6)
    other = _built(units=128, weights="random", connectivity=0.25).reservoir_.W
    assert row_groups(other)[2].size > 3 * other.nnz  # a random W pads heavily


@pytest.mark.parametrize("weights", ["grouped", "random"])
def test_float64_kernels_read_float32_numbers_as_float32_with_the_same_states(weights):
    """A grouped W is drawn as float32 numbers; a float64 run's compiled kernels then read
    its values as float32 (half the memory traffic), and widening is exact, so the states
    are those of float64 copies bit for bit. A random W keeps full float64 values."""
    pytest.importorskip("numba")
    from dtecho.dtesn import _kernels

    res = _built(units=160, weights=weights, backend="numba", leak_rate=0.7).reservoir_
    compact = weights == "grouped"
    assert np.array_equal(res.W.data.astype(np.float32), res.W.data) == compact
    value_dtype = np.float32 if compact else np.float64
    assert res._row_groups()[2].dtype == res._csr_unsigned()[2].dtype == value_dtype
    P0 = res.project(U[None])[0]
    x0 = RNG.uniform(-0.5, 0.5, size=res.units)
    a = res.leak.astype(res.dtype)
    gp, gc, gv = res._row_groups()
    ip, ix, data = res._csr_unsigned()
    runs = []
    for run, layout in [
        (_kernels.euler_grouped_single, (gp, gc, gv)),
        (_kernels.euler_grouped_single, (gp, gc, gv.astype(np.float64))),
        (_kernels.euler_csr_single, (ip, ix, data)),
        (_kernels.euler_csr_single, (ip, ix, data.astype(np.float64))),
    ]:
        P = P0.copy()
        run(*layout, P, x0.copy(), a, True, True, len(U))
        runs.append(P)
    for P in runs[1:]:
        np.testing.assert_array_equal(P, runs[0])
    np.testing.assert_allclose(
        runs[0],
        _built(units=160, weights=weights, backend="numpy", leak_rate=0.7).run(U, initial_state=x0),
        rtol=0,
        atol=1e-12,
    )


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kw", LAYOUTS)
def test_kernel_is_bit_identical_to_the_csr_kernel_and_close_to_scipy(kw, dtype):
    pytest.importorskip("numba")
    from dtecho.dtesn import _kernels

    res = _built(backend="numba", dtype=dtype, **kw).reservoir_
    P = res.project(U[None])[0]
    x0 = RNG.uniform(-0.5, 0.5, size=res.units).astype(dtype)
    a = res.leak.astype(res.dtype)
    tanh, leaky = res.activation == "tanh", not np.all(a == 1.0)
    grouped, csr = P.copy(), P.copy()
    _kernels.euler_grouped_single(*res._row_groups(), grouped, x0, a, tanh, leaky, len(U))
    _kernels.euler_csr_single(*res._csr_unsigned(), csr, x0, a, tanh, leaky, len(U))
    np.testing.assert_array_equal(grouped, csr)
    numpy_model = _built(backend="numpy", matrix_format="sparse", dtype=dtype, **kw)
    atol = 1e-12 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(grouped, numpy_model.run(U, initial_state=x0), rtol=0, atol=atol)


def test_auto_runs_grouped_weights_on_the_layout_and_batches_agree():
    pytest.importorskip("numba")
    model = DTESN(320, weights="grouped", leak_rate=0.6, seed=1)
    batch = RNG.uniform(-1, 1, size=(9, 120, 1))
    S = model.run(batch)
    res = model.reservoir_
    assert res._compiled() and res._use_groups(1) and res._use_groups(9)
    assert not res._use_dense(1, True) and not res._use_dense(9, True)
    for b in (0, 4, 8):
        np.testing.assert_array_equal(model.run(batch[b]), S[b])
    plain = DTESN(320, seed=1, weights="random").fit(batch[0], batch[0]).reservoir_
    assert not plain._use_groups(1) and not plain._use_groups(9)  # random W pads 7×


# Batches around the register tile of 16 sequences: one short of a tile, a tile and a bit,
# and lengths that end sequences inside a tile and across tile boundaries.
BATCH_LENGTHS = [
    pytest.param([90] * 15, id="15"),
    pytest.param([90] * 37, id="37"),
    pytest.param(
        [90, 90, 88, 80, 80, 61, 50, 50, 40, 33, 33, 33, 20, 17, 16, 9, 5, 1], id="ragged"
    ),
]


def _batched_kernels(res, U: np.ndarray, lengths, x0: np.ndarray):
    """States of the padded batch U from the row-group and the CSR batch kernels, each
    projecting the inputs itself (fused) and from given projections."""
    from dtecho.dtesn import _kernels

    a = res.leak.astype(res.dtype)
    tanh, leaky = res.activation == "tanh", not np.all(a == 1.0)
    steps = np.array([sum(t < L for L in lengths) for t in range(U.shape[1])], np.int64)
    WinT = np.ascontiguousarray(res.W_in.T, dtype=res.dtype)
    bias = res.bias.astype(res.dtype)
    fused = (U.astype(res.dtype), WinT, bias, True, bool(res.bias.any()))
    given = (np.zeros((len(U), 1, 1), res.dtype), np.zeros((1, 1), res.dtype), a, False, False)
    out = {}
    for name, layout, kernel in (
        ("grouped", res._row_groups(), _kernels.euler_grouped_batch),
        ("csr", res._csr_unsigned(), _kernels.euler_csr_batch),
    ):
        for how, inputs in (("fused", fused), ("given", given)):
            P = res.project(U)
            kernel(*layout, P, x0.copy(), a, tanh, leaky, steps, *inputs)
            out[name, how] = P
    return out


@pytest.mark.parametrize("lengths", BATCH_LENGTHS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kw", LAYOUTS)
def test_batched_row_group_kernel_is_bit_identical_to_csr_and_to_each_sequence_alone(
    kw, dtype, lengths
):
    pytest.importorskip("numba")
    from dtecho.dtesn import _kernels

    res = _built(backend="numba", dtype=dtype, **kw).reservoir_
    B, T = len(lengths), max(lengths)
    U = RNG.uniform(-1, 1, size=(B, T, 2))
    x0 = RNG.uniform(-0.5, 0.5, size=(B, res.units)).astype(dtype)
    out = _batched_kernels(res, U, lengths, x0)
    grouped = out["grouped", "fused"]
    for key, states in out.items():
        for b, L in enumerate(lengths):
            np.testing.assert_array_equal(states[b, :L], grouped[b, :L], err_msg=str(key))
    a = res.leak.astype(res.dtype)
    tanh, leaky = res.activation == "tanh", not np.all(a == 1.0)
    for b, L in enumerate(lengths):  # each sequence alone, through the one-sequence kernel
        alone = res.project(U[b : b + 1, :L])[0]
        _kernels.euler_csr_single(*res._csr_unsigned(), alone, x0[b].copy(), a, tanh, leaky, L)
        np.testing.assert_array_equal(alone, grouped[b, :L])
        assert np.all(np.isfinite(grouped[b, :L]))
    # the inner products ran as compiled with SLP (else they would be scalar, and slow)
    for function in (_kernels.grouped_tiles, _kernels._grouped_matvec_add, _kernels.csr_tiles):
        assert all((function, tuple(sig)) in _kernels._compiled for sig in function.signatures)
    numpy_model = _built(backend="numpy", matrix_format="sparse", dtype=dtype, **kw)
    atol = 1e-12 if dtype == "float64" else 1e-5
    b = len(lengths) - 1
    expected = numpy_model.run(U[b, : lengths[b]], initial_state=x0[b])
    np.testing.assert_allclose(grouped[b, : lengths[b]], expected, rtol=0, atol=atol)


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_model_batches_on_the_row_group_kernel_match_each_sequence_alone(n_jobs, monkeypatch):
    """Through the public API: a grouped W of 203 units (a partial last group), batches of
    40 (two tiles and 8 more) with ragged lengths, split over threads or not."""
    pytest.importorskip("numba")
    from dtecho.dtesn import _kernels

    # the cost model prices the row-group batch as on AVX-512 CPUs, where "auto" picks it
    # (with AVX2 it picks CSR): the row-group kernel then runs here on any CPU
    monkeypatch.setattr(_kernels, "WIDE_REGISTERS", True)
    model = DTESN(203, weights="grouped", leak_rate=0.5, bias_scaling=0.2, seed=4, n_jobs=n_jobs)
    seqs = [RNG.uniform(-1, 1, size=(L, 1)) for L in RNG.integers(1, 70, size=40)]
    out = model.run(seqs)
    assert model.reservoir_._use_groups(40 // n_jobs)
    for seq, states in zip(seqs, out, strict=True):
        np.testing.assert_array_equal(model.run(seq), states)
    csr = DTESN(
        203, weights="grouped", leak_rate=0.5, bias_scaling=0.2, seed=4, matrix_format="sparse"
    )
    for a, b in zip(csr.run(seqs), out, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_fit_and_predict_across_many_windows_match_one_run(monkeypatch, backend):
    """fit and predict integrate in windows (the next one on a second thread when compiled);
    a window that did not start from the previous one's last state would show here."""
    if backend == "numba":
        pytest.importorskip("numba")
    monkeypatch.setattr(model_module, "_CHUNK_BYTES", 64 * 8 * 37)  # 37-step windows
    X = RNG.uniform(-1, 1, size=(1000, 1))
    Y = np.roll(X, 2, axis=0)
    kw = {
        "weights": "grouped",
        "connectivity": 0.25,
        "seed": 2,
        "backend": backend,
        "leak_rate": 1.0,
        "input_scaling": 0.3,
    }
    model = DTESN(64, **kw).fit(X, Y, warmup=50)
    S = model.run(X)
    np.testing.assert_allclose(model.predict(X), model.readout_.predict([X, S]), rtol=0, atol=1e-12)
    whole = DTESN(64, **kw)
    monkeypatch.setattr(model_module, "_CHUNK_BYTES", 2**30)
    whole.fit(X, Y, warmup=50)
    # the same rows in other sums: equal to rounding (the coefficients themselves amplify
    # rounding by the conditioning of the normal equations)
    np.testing.assert_allclose(model.readout_.gram_, whole.readout_.gram_, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(model.predict(X), whole.predict(X), rtol=0, atol=1e-6)
    nrmse = np.sqrt(np.mean((model.predict(X)[50:] - Y[50:]) ** 2)) / Y.std()
    assert nrmse < 0.05  # recalls u(t−2)


def test_grouped_weights_with_fewer_inputs_than_a_group_lose_rank_and_warn():
    # 100 units at 10 %: every group of 16 rows spans the same 10 columns, so W has rank at
    # most 10 per group (7 groups: <= 70), and the model says so
    with pytest.warns(UserWarning, match="loses rank"):
        model = _built(units=100, weights="grouped")
    assert np.linalg.matrix_rank(model.reservoir_.W.toarray()) <= 70
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        big = _built(units=320, weights="grouped")  # 32 inputs per unit
    W = big.reservoir_.W
    assert np.linalg.matrix_rank(W.toarray()) == 320
    uses = np.bincount(W.indices, minlength=320) // ROW_GROUP  # groups feeding on a unit
    assert uses.min() == uses.max() == 2  # 20 groups × 32 columns over 320 units: balanced


def test_committed_tiles_are_what_the_generator_writes():
    pytest.importorskip("numba")
    from dtecho.dtesn import _tilegen, _tiles

    assert Path(_tiles.__file__).read_text(encoding="utf-8") == _tilegen.source()
    # kernels cached by Numba must see the tiles change (see _kernels.TILES_SHA256)
    from dtecho.dtesn import _kernels

    digest = hashlib.sha256(Path(_tiles.__file__).read_bytes()).hexdigest()
    assert digest == _kernels.TILES_SHA256, "update _kernels.TILES_SHA256"
