"""B-series: elementary weights, order conditions, orders of the shipped tableaux, stepping."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import scipy.linalg
from scipy.integrate import solve_ivp

from dtecho.dtesn import bseries, trees
from dtecho.dtesn.bseries import TABLEAUX, Tableau

F = Fraction
ORDERS = {
    "euler": 1,
    "midpoint": 2,
    "heun": 2,
    "ralston": 2,
    "kutta3": 3,
    "rk4": 4,
    "rk38": 4,
    "dopri5": 5,
}


def random_tableau(stages: int, seed: int) -> Tableau:
    """A full (implicit) float tableau: every entry of A and b plays a part."""
    rng = np.random.default_rng(seed)
    return Tableau("random", rng.normal(size=(stages, stages)), rng.normal(size=stages))


def phi_by_labellings(tableau: Tableau, tree: trees.RootedTree) -> float:
    """Φ(t) from its definition as a sum over stage labellings of the nodes:
    Σ b_{root} Π_{edges parent→child} a_{parent, child}."""
    nodes = list(tree.nodes())
    index = {node.path: i for i, node in enumerate(nodes)}
    edges = [(index[node.parent], i) for i, node in enumerate(nodes) if node.parent is not None]
    A, b = tableau.A, tableau.b
    total = 0.0
    for label in itertools.product(range(tableau.stages), repeat=len(nodes)):
        term = b[label[0]]
        for parent, child in edges:
            term *= A[label[parent], label[child]]
        total += term
    return total


# -- order conditions ---------------------------------------------------------------------


def test_order_conditions_count_1_2_4_8_17_37_85_200() -> None:
    assert [len(bseries.order_conditions(p)) for p in range(9)] == [
        0, 1, 2, 4, 8, 17, 37, 85, 200,
    ]  # fmt: skip


def test_order_conditions_follow_enumeration_order() -> None:
    conditions = bseries.order_conditions(5)
    expected = [t for q in range(1, 6) for t in trees.enumerate(q)]
    assert [tree for tree, _ in conditions] == expected
    assert all(cond.tree == tree for tree, cond in conditions)
    assert str(conditions[3][1]) == "Φ([[τ]]) = 1/6"


def test_elementary_weights_match_the_textbook_conditions_up_to_order_four() -> None:
    tab = random_tableau(4, seed=1)
    A, b = tab.A, tab.b
    c = A.sum(axis=1)
    textbook = {
        "()": b.sum(),
        "(())": b @ c,
        "(()())": b @ c**2,
        "((()))": b @ A @ c,
        "(()()())": b @ c**3,
        "(()(()))": b @ (c * (A @ c)),
        "((()()))": b @ A @ c**2,
        "(((())))": b @ A @ A @ c,
    }
    for text, value in textbook.items():
        got = bseries.elementary_weight(tab, trees.parse(text))
        assert got == pytest.approx(value, rel=1e-12, abs=1e-12), text


@pytest.mark.parametrize("order", range(1, 7))
def test_elementary_weights_match_a_sum_over_labellings(order: int) -> None:
    tab = random_tableau(3, seed=order)
    for tree in trees.enumerate(order):
        expected = phi_by_labellings(tab, tree)
        got = bseries.elementary_weight(tab, tree)
        assert got == pytest.approx(expected, rel=1e-10, abs=1e-10), str(tree)


def test_rk4_weights_are_exact_fractions_equal_to_one_over_gamma() -> None:
    rk4 = TABLEAUX["rk4"]
    for tree, condition in bseries.order_conditions(4):
        phi = bseries.elementary_weight(rk4, tree)
        assert isinstance(phi, Fraction)
        assert phi == F(1, tree.density)
        assert condition(rk4) == 0
    assert bseries.elementary_weight(rk4, trees.parse("(()())")) == F(1, 3)
    assert bseries.elementary_weight(rk4, trees.parse("((()))")) == F(1, 6)


def test_kutta3_order_four_weights_match_a_hand_computation() -> None:
    kutta3 = TABLEAUX["kutta3"]
    # c = (0, 1/2, 1), b = (1/6, 2/3, 1/6), A c = (0, 0, 1), A c² = (0, 0, 1/2), A A c = 0.
    # Two of the four order-4 conditions hold by accident, two fail: order exactly 3.
    by_hand = {
        "(()()())": (F(1, 4), True),  # Σ b c³ = 1/4
        "(()(()))": (F(1, 6), False),  # Σ b c·Ac = 1/6, needs 1/8
        "((()()))": (F(1, 12), True),  # Σ b A c² = 1/12
        "(((())))": (F(0), False),  # Σ b A A c = 0, needs 1/24
    }
    for text, (phi, holds) in by_hand.items():
        tree = trees.parse(text)
        assert bseries.elementary_weight(kutta3, tree) == phi, text
        assert (phi == F(1, tree.density)) is holds, text


# -- orders of tableaux -------------------------------------------------------------------


@pytest.mark.parametrize(("name", "expected"), ORDERS.items())
def test_shipped_tableaux_have_their_textbook_order(name: str, expected: int) -> None:
    assert bseries.order(TABLEAUX[name]) == expected


@pytest.mark.parametrize(("name", "expected"), ORDERS.items())
def test_float_copies_have_the_same_order_within_tolerance(name: str, expected: int) -> None:
    tab = TABLEAUX[name]
    copy = Tableau(name, tab.A, tab.b)
    assert copy.exact is None
    assert bseries.order(copy) == expected


def test_dopri5_embedded_weights_have_order_four() -> None:
    dopri5 = TABLEAUX["dopri5"]
    assert bseries.order(dopri5, weights="b_hat") == 4
    assert bseries.order(dopri5, weights=dopri5.exact.b_hat) == 4
    assert bseries.order(dopri5, weights=dopri5.b_hat) == 4  # floats, tolerance check


def test_rk4_perturbed_by_a_tiny_rational_loses_its_order() -> None:
    ex = TABLEAUX["rk4"].exact
    eps = F(1, 10**30)
    b = list(ex.b)
    b[0] += eps
    b[3] -= eps  # Σ b still 1, Σ b c changes by −ε
    assert bseries.order(Tableau("rk4-b", ex.A, b)) == 1
    A = [list(row) for row in ex.A]
    A[3][2] += eps
    A[3][0] -= eps  # c unchanged; Σ b A c changes by ε/12
    assert bseries.order(Tableau("rk4-a", A, ex.b)) == 2


def test_irrational_implicit_gauss_legendre_has_order_four() -> None:
    r = math.sqrt(3) / 6
    gauss = Tableau("gauss2", [[0.25, 0.25 - r], [0.25 + r, 0.25]], [0.5, 0.5])
    assert not gauss.explicit
    assert bseries.order(gauss) == 4
    assert bseries.order(Tableau("implicit-midpoint", [["1/2"]], [1])) == 2


def test_order_is_capped_at_max_order() -> None:
    assert bseries.order(TABLEAUX["dopri5"], max_order=3) == 3


# -- error coefficients -------------------------------------------------------------------


def test_rk4_error_coefficients_at_order_five_are_nonzero_and_known() -> None:
    coefficients = dict(bseries.error_coefficients(TABLEAUX["rk4"], 5))
    assert len(coefficients) == 9
    assert all(e != 0 for e in coefficients.values())
    # By hand: bushy Σ b c⁴ = 5/24, γ = 5, σ = 4!  → (5/24 − 1/5)/24 = 1/2880.
    assert coefficients[trees.parse("(()()()())")] == F(1, 2880)
    # Tall: A⁴ = 0 for four explicit stages, γ = 5!, σ = 1 → −1/120.
    assert coefficients[trees.parse("((((()))))")] == F(-1, 120)
    # [τ [[τ]]]: Σ b c (A A c) = b4·1·(1/4) = 1/24, γ = 30, σ = 1 → 1/120.
    assert coefficients[trees.parse("(()((())))")] == F(1, 120)
    assert all(e == 0 for _, e in bseries.error_coefficients(TABLEAUX["rk4"], 4))


def test_rk4_local_error_on_exponential_growth_matches_the_tall_tree_coefficient() -> None:
    # For y' = y only the tall tree's elementary differential is nonzero (F = y), so the
    # local error is e([[[[τ]]]]) h⁵ + O(h⁶) = −h⁵/120.
    h = 0.02
    y1 = bseries.rk_step(lambda t, y: y, 0.0, np.array([1.0]), h, "rk4")
    assert (y1[0] - math.exp(h)) / h**5 == pytest.approx(-1 / 120, rel=1e-2)


# -- stepping and convergence -------------------------------------------------------------


def _slope(name: str, f, y0: list[float], reference: np.ndarray) -> float:
    """Least-squares slope of log(error at t = 1) against log(h)."""
    # dopri5 reaches round-off at 128 steps on these problems, so it uses coarser grids.
    steps = [4, 8, 16, 32] if name == "dopri5" else [16, 32, 64, 128]
    errors = [
        np.linalg.norm(bseries.integrate(f, 0.0, np.array(y0), 1.0, n, name) - reference)
        for n in steps
    ]
    return float(np.polyfit(np.log([1.0 / n for n in steps]), np.log(errors), 1)[0])


@pytest.mark.parametrize(("name", "expected"), ORDERS.items())
def test_convergence_on_linear_decay_matches_the_order(name: str, expected: int) -> None:
    slope = _slope(name, lambda t, y: -y, [1.0], np.array([math.exp(-1.0)]))
    assert abs(slope - expected) <= 0.3


def _duffing(t: float, y: np.ndarray) -> np.ndarray:
    return np.array([y[1], -y[0] - y[0] ** 3 + np.cos(2.0 * t)])


@pytest.fixture(scope="module")
def duffing_reference() -> np.ndarray:
    solution = solve_ivp(_duffing, (0.0, 1.0), [1.0, 0.0], "DOP853", rtol=1e-13, atol=1e-13)
    return solution.y[:, -1]


@pytest.mark.parametrize(("name", "expected"), ORDERS.items())
def test_convergence_on_a_forced_nonlinear_oscillator(
    name: str, expected: int, duffing_reference: np.ndarray
) -> None:
    # x'' = −x − x³ + cos 2t is nonlinear and time-dependent, so it exercises c and the
    # non-tall trees, which y' = −y cannot see (its only nonzero differential is the tall one).
    slope = _slope(name, _duffing, [1.0, 0.0], duffing_reference)
    assert abs(slope - expected) <= 0.3


def test_integrate_handles_matrix_valued_state() -> None:
    m = np.array([[0.0, 1.0], [-1.0, -0.1]])
    y0 = np.array([[1.0, 0.0], [0.0, 1.0]])
    y1 = bseries.integrate(lambda t, y: m @ y, 0.0, y0, 1.0, 64, TABLEAUX["rk4"])
    assert y1.shape == (2, 2)
    np.testing.assert_allclose(y1, scipy.linalg.expm(m), atol=1e-8)
    np.testing.assert_array_equal(y0, np.eye(2))  # input untouched


def test_rk_step_keeps_float32_and_promotes_integers() -> None:
    y32 = bseries.rk_step(lambda t, y: -y, 0.0, np.ones(3, dtype=np.float32), 0.1, "heun")
    assert y32.dtype == np.float32
    assert bseries.rk_step(lambda t, y: -y, 0.0, [1, 2], 0.1, "euler").dtype == np.float64


def test_dopri5_step_skips_its_unused_last_stage() -> None:
    calls = []
    bseries.rk_step(lambda t, y: calls.append(t) or -y, 0.0, np.ones(1), 0.1, "dopri5")
    assert len(calls) == 6


def test_rk_step_rejects_implicit_tableaux_and_wrong_shapes() -> None:
    with pytest.raises(ValueError, match="explicit"):
        bseries.rk_step(lambda t, y: y, 0.0, np.ones(1), 0.1, Tableau("im", [["1/2"]], [1]))
    with pytest.raises(ValueError, match="shape"):
        bseries.rk_step(lambda t, y: np.ones(3), 0.0, np.ones(2), 0.1, "rk4")
    with pytest.raises(ValueError, match="n_steps"):
        bseries.integrate(lambda t, y: y, 0.0, np.ones(1), 1.0, 0, "rk4")


# -- tableaux -----------------------------------------------------------------------------


def test_tableaux_are_rational_explicit_and_consistent() -> None:
    assert set(TABLEAUX) == set(ORDERS)
    for name, tab in TABLEAUX.items():
        assert tab.name == name
        assert tab.explicit
        assert tab.exact is not None
        assert tab.stages == len(tab.b) == len(tab.exact.b)
        assert tab.exact.c == tuple(sum(row, F(0)) for row in tab.exact.A)
        assert tab.c.tolist() == [float(x) for x in tab.exact.c]  # correctly rounded
        assert not tab.A.flags.writeable
    assert TABLEAUX["ralston"].exact.A[1][0] == F(2, 3)
    assert TABLEAUX["ralston"].exact.b == (F(1, 4), F(3, 4))
    assert TABLEAUX["dopri5"].b_hat is not None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"A": [[0, 0]], "b": [1]}, "square"),
        ({"A": [0], "b": [1]}, "2-D"),
        ({"A": [[0, 0], [1, 0]], "b": [1]}, "b must have 2"),
        ({"A": [[0]], "b": [1], "c": [0, 1]}, "c must have 1"),
        ({"A": [[0]], "b": [1], "b_hat": [1, 0]}, "b_hat must have 1"),
        ({"A": [[float("nan")]], "b": [1]}, "non-finite"),
        ({"A": [["x"]], "b": [1]}, "fraction"),
    ],
)
def test_tableau_rejects_bad_shapes_and_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Tableau("bad", **kwargs)


def test_weights_are_validated() -> None:
    with pytest.raises(ValueError, match="b_hat"):
        bseries.order(TABLEAUX["rk4"], weights="b_hat")
    with pytest.raises(ValueError, match="4 entries"):
        bseries.order(TABLEAUX["rk4"], weights=[1, 0])
    with pytest.raises(ValueError, match="unknown tableau"):
        bseries.get_tableau("rk5")
