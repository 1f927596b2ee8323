"""Reservoir dynamics: the leaky-ESN identity, spectral radius, batching, integrators."""

import numpy as np
import pytest
import scipy.sparse as sps

from dtecho.dtesn import DTESN
from dtecho.dtesn.text import one_hot, project_bytes

RNG = np.random.default_rng(42)
U = RNG.uniform(-1, 1, size=(200, 2))


def _hand_leaky_esn(W, W_in, b, a, U):
    x = np.zeros(W.shape[0])
    out = []
    for u in U:
        x = (1 - a) * x + a * np.tanh(W @ x + W_in @ u + b)
        out.append(x)
    return np.array(out)


@pytest.mark.parametrize("matrix_format", ["dense", "sparse"])
def test_euler_is_exactly_the_leaky_esn(matrix_format):
    model = DTESN(80, leak_rate=0.3, bias_scaling=0.5, seed=3, matrix_format=matrix_format)
    S = model.run(U)
    res = model.reservoir_
    expected = _hand_leaky_esn(res.W.toarray(), res.W_in, res.bias, 0.3, U)
    np.testing.assert_allclose(S, expected, rtol=0, atol=1e-12)


def test_euler_matches_reservoirpy_with_the_same_weights():
    from reservoirpy.nodes import Reservoir as RPyReservoir

    model = DTESN(80, leak_rate=0.25, bias_scaling=0.3, seed=5)
    S = model.run(U)
    res = model.reservoir_
    node = RPyReservoir(W=res.W.toarray(), Win=res.W_in, bias=res.bias, lr=0.25)
    np.testing.assert_allclose(S, node.run(U), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("kw", "target"),
    [
        ({"units": 200}, 0.9),
        ({"units": 300, "depth": 3, "tau_scaling": 2.0}, 1.1),
        ({"units": 150, "depth": 3, "feedback": 0.5}, 0.8),
        ({"units": 60, "weights": "orthogonal", "depth": 2}, 0.95),
    ],
)
def test_spectral_radius_of_the_whole_matrix_is_the_target(kw, target):
    model = DTESN(spectral_radius=target, **kw)
    model.run(U[:2])
    W = model.reservoir_.W.toarray()
    assert np.abs(np.linalg.eigvals(W)).max() == pytest.approx(target, abs=1e-6)


def test_membrane_blocks_differ_and_coupling_runs_parent_to_child():
    model = DTESN(90, depth=3, coupling=1.0)  # membranes of 23, 23, 22, 22 units
    model.run(U[:2])
    W = model.reservoir_.W.toarray()
    m = model.membranes
    blocks = [W[x.start : x.stop, x.start : x.stop] for x in m]
    assert not np.array_equal(blocks[2], blocks[3])
    assert not np.array_equal(blocks[0], blocks[1])
    for x in m[1:]:
        p = m[x.parent]
        assert np.any(W[x.start : x.stop, p.start : p.stop])  # parent → child
        assert not np.any(W[p.start : p.stop, x.start : x.stop])  # no feedback by default
    # input reaches the skin only
    assert np.any(model.reservoir_.W_in[: m[0].stop]) and not np.any(
        model.reservoir_.W_in[m[0].stop :]
    )
    all_in = DTESN(90, depth=3, input_to="all")
    all_in.run(U[:2])
    assert all(np.any(all_in.reservoir_.W_in[x.start : x.stop]) for x in m)


def test_batched_equals_sequential():
    batch = RNG.uniform(-1, 1, size=(5, 60, 2))
    model = DTESN(70, depth=2, seed=1, bias_scaling=0.1)
    S = model.run(batch)
    assert S.shape == (5, 60, 70)
    for b in range(5):
        np.testing.assert_allclose(S[b], model.run(batch[b]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("integrator", ["euler", "rk4"])
def test_variable_lengths_equal_each_sequence_alone(integrator):
    seqs = [RNG.uniform(-1, 1, size=(n, 2)) for n in (30, 75, 1, 50, 75)]
    model = DTESN(40, seed=2, integrator=integrator)
    states = model.run(seqs)
    assert [s.shape for s in states] == [(n, 40) for n in (30, 75, 1, 50, 75)]
    for seq, s in zip(seqs, states, strict=True):
        np.testing.assert_allclose(s, model.run(seq), rtol=0, atol=1e-12)


def test_float32_tracks_float64():
    s64 = DTESN(100, seed=4).run(U)
    s32 = DTESN(100, seed=4, dtype="float32").run(U)
    assert s32.dtype == np.float32
    np.testing.assert_allclose(s32, s64, atol=1e-4)


def test_rk4_differs_from_euler_and_both_converge_to_the_ode_solution():
    u = U[:40]

    def states(integrator, dt):
        return DTESN(30, seed=6, leak_rate=0.5, integrator=integrator, dt=dt).run(u)

    reference = states("rk4", 1 / 64)
    assert not np.allclose(states("euler", 1.0), states("rk4", 1.0), atol=1e-3)
    e_euler = [np.abs(states("euler", dt) - reference).max() for dt in (1 / 4, 1 / 8, 1 / 16)]
    e_rk4 = [np.abs(states("rk4", dt) - reference).max() for dt in (1.0, 1 / 2, 1 / 4)]
    # Euler is first order (error halves with dt), RK4 fourth order (÷16)
    assert 1.6 < e_euler[0] / e_euler[1] < 2.4 and 1.6 < e_euler[1] / e_euler[2] < 2.4
    assert e_rk4[1] / e_rk4[2] > 10
    assert e_euler[2] < 1e-2 and e_rk4[2] < 1e-5


def test_linear_activation_is_a_linear_system():
    model = DTESN(50, activation="identity", bias_scaling=0.0, seed=7)  # no bias: linear
    a, b = model.run(U), model.run(2.0 * U)
    np.testing.assert_allclose(b, 2.0 * a, atol=1e-12)


def test_esp_check_reports_contraction():
    report = DTESN(100, spectral_radius=0.9).esp_check(n_steps=400)
    assert report.spectral_radius == pytest.approx(0.9, abs=1e-6)
    assert report.linearized_radius < 1 and report.holds


def test_byte_projection_is_a_column_lookup_equal_to_the_one_hot_product():
    W_in = RNG.standard_normal((32, 256))
    bias = RNG.standard_normal(32)
    text = "héllo, tree ✓"
    P = project_bytes(text, W_in, bias)
    assert P.shape == (len(text.encode()), 32)
    np.testing.assert_array_equal(P, one_hot(text) @ W_in.T + bias)


def test_sparse_matrix_is_stored_as_csr():
    model = DTESN(100)
    model.run(U[:2])
    assert sps.issparse(model.reservoir_.W) and model.reservoir_.W.format == "csr"


@pytest.mark.parametrize("d_in", [1, 2, 5, 16])
def test_projection_of_a_row_does_not_depend_on_the_batch(d_in):
    # a one-row BLAS product (gemv) rounds differently from a many-row one (gemm); narrow
    # inputs are projected column by column so that a length-1 sequence is bit-identical
    model = DTESN(50, seed=3, bias_scaling=0.2, backend="numpy", matrix_format="sparse")
    U = RNG.uniform(-1, 1, size=(9, 40, d_in))
    model.run(U[0, :1])
    res = model.reservoir_
    P = res.project(U)
    for b in range(9):
        np.testing.assert_array_equal(res.project(U[b : b + 1, :1])[0], P[b, :1])
        np.testing.assert_array_equal(res.project(U[b : b + 1])[0], P[b])
    seqs = [U[0], U[1, :1], U[2, :7]]
    for seq, s in zip(seqs, model.run(seqs), strict=True):
        np.testing.assert_array_equal(model.run(seq), s)
