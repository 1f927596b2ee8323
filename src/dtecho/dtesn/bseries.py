"""B-series order conditions of Runge–Kutta methods, and explicit Runge–Kutta stepping.

A Runge–Kutta method is given by its Butcher tableau (A, b, c). For a rooted tree
t = [t1 … tm] its stage vector is Φ_vec(t) = Π_k (A Φ_vec(tk)) (elementwise product), with
Φ_vec(τ) = 1 (all ones), and its elementary weight is Φ(t) = bᵀ Φ_vec(t). The method has
order p iff Φ(t) = 1/γ(t) for every tree with |t| <= p (1, 2, 4, 8, 17, 37, 85, 200
conditions up to p = 1 … 8). The conditions use A·1, not c, so they describe the method
applied to autonomous systems; all shipped tableaux satisfy c = A·1.

Rational tableaux are checked in exact ``Fraction`` arithmetic, so an order is proved, not
estimated; other tableaux are checked in float64 with an absolute tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from numbers import Rational, Real
from types import MappingProxyType
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from dtecho.dtesn.trees import RootedTree, enumerate_trees

__all__ = [
    "TABLEAUX",
    "ExactCoefficients",
    "OrderCondition",
    "Tableau",
    "elementary_weight",
    "error_coefficients",
    "get_tableau",
    "integrate",
    "order",
    "order_conditions",
    "residual",
    "rk_step",
]

Weight = Fraction | float
Weights = str | Sequence[Any] | NDArray[Any] | None
FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class ExactCoefficients:
    """The coefficients of a rational tableau as tuples of ``Fraction``."""

    A: tuple[tuple[Fraction, ...], ...]
    b: tuple[Fraction, ...]
    c: tuple[Fraction, ...]
    b_hat: tuple[Fraction, ...] | None = None


def _coerce(label: str, value: ArrayLike, ndim: int) -> tuple[FloatArray, tuple[Any, ...] | None]:
    """Validate one coefficient array; return it as float64 and, if rational, as Fractions.

    Entries may be int, Fraction, str such as "1/3" (all exact) or real floats (inexact).
    """
    obj = np.array(value, dtype=object)
    if obj.ndim != ndim:
        raise ValueError(f"{label} must be {ndim}-D, got shape {obj.shape}")
    flat: list[Any] = []
    exact = True
    for x in obj.flat:
        if isinstance(x, str):
            try:
                x = Fraction(x)
            except ValueError as exc:
                raise ValueError(f"{label}: cannot read {x!r} as a fraction") from exc
        elif isinstance(x, Rational):
            x = Fraction(x)
        elif isinstance(x, Real):
            exact = False
        else:
            raise TypeError(f"{label} entries must be real numbers, got {type(x).__name__}")
        flat.append(x)
    arr = np.array([float(x) for x in flat], dtype=np.float64).reshape(obj.shape)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{label} has non-finite entries")
    arr.setflags(write=False)
    if not exact:
        return arr, None
    if ndim == 1:
        return arr, tuple(flat)
    n = obj.shape[1]
    return arr, tuple(tuple(flat[i * n : (i + 1) * n]) for i in range(obj.shape[0]))


@dataclass(frozen=True, eq=False, init=False, repr=False)
class Tableau:
    """A Runge–Kutta method's Butcher tableau (immutable; arrays are read-only).

    Args: ``name``; ``A`` of shape (s, s); ``b`` of length s; optional ``c`` of length s
    (default: the row sums of A) and optional embedded weights ``b_hat`` of length s.
    Entries may be int, Fraction or "p/q" strings (the tableau is then rational and
    ``exact`` holds the same coefficients as Fractions) or floats (``exact`` is None).
    ``stages`` is s; ``explicit`` is True when A is strictly lower triangular. Shapes and
    finiteness are checked here. ``dataclasses.replace`` passes the float arrays back in,
    so its result is not rational; build from ``exact`` to stay exact.
    """

    name: str
    A: FloatArray
    b: FloatArray
    c: FloatArray
    b_hat: FloatArray | None
    exact: ExactCoefficients | None = field(init=False)
    stages: int = field(init=False)
    explicit: bool = field(init=False)
    # Φ_vec per tree, filled on demand; tied to this (immutable) tableau's lifetime.
    _stage_vectors: dict[RootedTree, Any] = field(init=False, repr=False)

    def __init__(
        self,
        name: str,
        A: ArrayLike,
        b: ArrayLike,
        c: ArrayLike | None = None,
        b_hat: ArrayLike | None = None,
    ) -> None:
        A_f, A_x = _coerce("A", A, 2)
        s = A_f.shape[0]
        if s < 1 or A_f.shape != (s, s):
            raise ValueError(f"A must be square with at least one stage, got shape {A_f.shape}")
        b_f, b_x = _coerce("b", b, 1)
        if b_f.shape != (s,):
            raise ValueError(f"b must have {s} entries to match A, got shape {b_f.shape}")
        if c is None:
            c_x = None if A_x is None else tuple(sum(row, Fraction(0)) for row in A_x)
            c_f = A_f.sum(axis=1) if c_x is None else np.array([float(x) for x in c_x])
            c_f.setflags(write=False)
        else:
            c_f, c_x = _coerce("c", c, 1)
            if c_f.shape != (s,):
                raise ValueError(f"c must have {s} entries to match A, got shape {c_f.shape}")
        bh_f = bh_x = None
        if b_hat is not None:
            bh_f, bh_x = _coerce("b_hat", b_hat, 1)
            if bh_f.shape != (s,):
                raise ValueError(f"b_hat must have {s} entries, got shape {bh_f.shape}")
        rational = A_x is not None and b_x is not None and c_x is not None
        exact = None
        if rational and (b_hat is None or bh_x is not None):
            exact = ExactCoefficients(A=A_x, b=b_x, c=c_x, b_hat=bh_x)
        setter = object.__setattr__
        setter(self, "name", str(name))
        setter(self, "A", A_f)
        setter(self, "b", b_f)
        setter(self, "c", c_f)
        setter(self, "b_hat", bh_f)
        setter(self, "exact", exact)
        setter(self, "stages", s)
        setter(self, "explicit", not np.triu(A_f).any())
        setter(self, "_stage_vectors", {})

    def __repr__(self) -> str:
        return (
            f"Tableau({self.name!r}, stages={self.stages}, explicit={self.explicit}, "
            f"exact={self.exact is not None}, embedded={self.b_hat is not None})"
        )


def _explicit(name: str, rows: Sequence[str], b: str, b_hat: str | None = None) -> Tableau:
    """A rational explicit tableau from the rows of A below the diagonal ("p/q" words)."""
    s = len(rows)
    A = [[Fraction(x) for x in row.split()] for row in rows]
    A = [row + [Fraction(0)] * (s - len(row)) for row in A]
    return Tableau(name, A, b.split(), b_hat=None if b_hat is None else b_hat.split())


TABLEAUX: Mapping[str, Tableau] = MappingProxyType(
    {
        t.name: t
        for t in (
            _explicit("euler", [""], "1"),
            _explicit("midpoint", ["", "1/2"], "0 1"),
            _explicit("heun", ["", "1"], "1/2 1/2"),
            _explicit("ralston", ["", "2/3"], "1/4 3/4"),
            _explicit("kutta3", ["", "1/2", "-1 2"], "1/6 2/3 1/6"),
            _explicit("rk4", ["", "1/2", "0 1/2", "0 0 1"], "1/6 1/3 1/3 1/6"),
            _explicit("rk38", ["", "1/3", "-1/3 1", "1 -1 1"], "1/8 3/8 3/8 1/8"),
            _explicit(
                "dopri5",
                [
                    "",
                    "1/5",
                    "3/40 9/40",
                    "44/45 -56/15 32/9",
                    "19372/6561 -25360/2187 64448/6561 -212/729",
                    "9017/3168 -355/33 46732/5247 49/176 -5103/18656",
                    "35/384 0 500/1113 125/192 -2187/6784 11/84",
                ],
                b="35/384 0 500/1113 125/192 -2187/6784 11/84 0",
                b_hat="5179/57600 0 7571/16695 393/640 -92097/339200 187/2100 1/40",
            ),
        )
    }
)
"""The shipped methods by name (read-only): Euler (1), explicit midpoint (2), Heun (2),
Ralston (2), Kutta's third order (3), classical RK4 (4), the 3/8 rule (4) and
Dormand–Prince 5(4) with its embedded fourth-order ``b_hat``."""


def get_tableau(name: str) -> Tableau:
    """The shipped tableau called ``name``; ValueError listing the known names otherwise."""
    try:
        return TABLEAUX[name]
    except KeyError:
        raise ValueError(f"unknown tableau {name!r}; known: {', '.join(TABLEAUX)}") from None


def _stage_vector(tableau: Tableau, tree: RootedTree) -> Any:
    """Φ_vec(tree): a tuple of Fractions for rational tableaux, else a float64 array."""
    cache = tableau._stage_vectors
    vec = cache.get(tree)
    if vec is not None:
        return vec
    if tableau.exact is not None:
        A = tableau.exact.A
        vec = (Fraction(1),) * tableau.stages
        for kid in tree.children:
            sub = _stage_vector(tableau, kid)
            A_sub = [sum((a * x for a, x in zip(row, sub, strict=True)), Fraction(0)) for row in A]
            vec = tuple(v * w for v, w in zip(vec, A_sub, strict=True))
    else:
        vec = np.ones(tableau.stages)
        for kid in tree.children:
            vec = vec * (tableau.A @ _stage_vector(tableau, kid))
        vec.setflags(write=False)
    cache[tree] = vec
    return vec


def _weights(tableau: Tableau, weights: Weights) -> tuple[Sequence[Any], bool]:
    """Resolve ``weights`` to (vector, exact?)."""
    ex = tableau.exact
    if weights is None or (isinstance(weights, str) and weights == "b"):
        return (ex.b, True) if ex is not None else (tableau.b, False)
    if isinstance(weights, str):
        if weights != "b_hat":
            raise ValueError(f"weights must be 'b', 'b_hat' or a vector, got {weights!r}")
        if tableau.b_hat is None:
            raise ValueError(f"tableau {tableau.name!r} has no embedded weights b_hat")
        return (ex.b_hat, True) if ex is not None else (tableau.b_hat, False)
    w_f, w_x = _coerce("weights", weights, 1)
    if w_f.shape != (tableau.stages,):
        raise ValueError(f"weights must have {tableau.stages} entries, got shape {w_f.shape}")
    if w_x is not None and ex is not None:
        return w_x, True
    return w_f, False


def _phi(tableau: Tableau, tree: RootedTree, w: Sequence[Any], exact: bool) -> Weight:
    vec = _stage_vector(tableau, tree)
    if exact:
        return sum((wi * vi for wi, vi in zip(w, vec, strict=True)), Fraction(0))
    return math.fsum(float(wi) * float(vi) for wi, vi in zip(w, vec, strict=True))


def _residual(tableau: Tableau, tree: RootedTree, w: Sequence[Any], exact: bool) -> Weight:
    phi = _phi(tableau, tree, w, exact)
    return phi - Fraction(1, tree.density) if exact else phi - 1.0 / tree.density


def elementary_weight(tableau: Tableau, tree: RootedTree, *, weights: Weights = None) -> Weight:
    """Φ(t) = wᵀ Φ_vec(t), with w = b by default.

    ``weights`` may be "b", "b_hat" or a length-s vector. The result is an exact Fraction
    when the tableau and the weights are rational, else a float.
    """
    w, exact = _weights(tableau, weights)
    return _phi(tableau, tree, w, exact)


def residual(tableau: Tableau, tree: RootedTree, *, weights: Weights = None) -> Weight:
    """Φ(t) − 1/γ(t): zero iff the method satisfies the order condition of tree t."""
    w, exact = _weights(tableau, weights)
    return _residual(tableau, tree, w, exact)


@dataclass(frozen=True)
class OrderCondition:
    """The condition Φ(t) = 1/γ(t) of one tree; calling it returns the residual."""

    tree: RootedTree

    def __call__(self, tableau: Tableau, *, weights: Weights = None) -> Weight:
        return residual(tableau, self.tree, weights=weights)

    def __str__(self) -> str:
        return f"Φ({self.tree.butcher}) = 1/{self.tree.density}"


def _check_p(p: int, label: str) -> int:
    if isinstance(p, bool) or not isinstance(p, int) or p < 0:
        raise ValueError(f"{label} must be a non-negative int, got {p!r}")
    return p


def order_conditions(p: int) -> list[tuple[RootedTree, OrderCondition]]:
    """(tree, residual) for every tree with |tree| <= p, by order and then tree order.

    ``residual(tableau, weights=None)`` returns Φ(t) − 1/γ(t). There are 1, 2, 4, 8, 17,
    37, 85, 200 conditions for p = 1 … 8.
    """
    _check_p(p, "p")
    return [(t, OrderCondition(t)) for q in range(1, p + 1) for t in enumerate_trees(q)]


def order(
    tableau: Tableau, max_order: int = 8, tol: float = 1e-12, *, weights: Weights = None
) -> int:
    """The highest p <= max_order such that every order condition up to p holds.

    Rational tableau with rational weights: exact check (residual == 0). Otherwise a
    condition holds when |residual| <= tol. ``weights`` as in :func:`elementary_weight`
    ("b_hat" gives the order of the embedded method). 0 means Σ w ≠ 1; max_order means
    "at least max_order".
    """
    _check_p(max_order, "max_order")
    w, exact = _weights(tableau, weights)
    for p in range(1, max_order + 1):
        for tree in enumerate_trees(p):
            r = _residual(tableau, tree, w, exact)
            if (r != 0) if exact else not abs(r) <= tol:
                return p - 1
    return max_order


def error_coefficients(
    tableau: Tableau, p: int, *, weights: Weights = None
) -> list[tuple[RootedTree, Weight]]:
    """(tree, (Φ(t) − 1/γ(t)) / σ(t)) for every tree with |t| == p, in tree order.

    For a method of order p − 1 these are the coefficients of the leading local error
    h^p Σ_t e(t) F(t)(y0), F(t) being the elementary differentials.
    """
    _check_p(p, "p")
    w, exact = _weights(tableau, weights)
    return [(t, _residual(tableau, t, w, exact) / t.symmetry) for t in enumerate_trees(p)]


def _as_tableau(tableau: Tableau | str) -> Tableau:
    return get_tableau(tableau) if isinstance(tableau, str) else tableau


def rk_step(
    f: Callable[[float, NDArray[Any]], ArrayLike],
    t: float,
    y: ArrayLike,
    h: float,
    tableau: Tableau | str,
) -> NDArray[Any]:
    """One explicit Runge–Kutta step for y' = f(t, y); returns y(t + h) as a new array.

    ``y`` may have any shape; ``f(t, y)`` must return the same shape. Integer input is
    promoted to float64; float32 and complex dtypes are kept. ``tableau`` is a Tableau or
    the name of a shipped one. Stages whose slope no later stage and no weight uses (the
    last stage of FSAL methods such as dopri5) are not evaluated.
    """
    tab = _as_tableau(tableau)
    if not tab.explicit:
        raise ValueError(f"rk_step needs an explicit tableau; {tab.name!r} is implicit")
    h = float(h)
    y0 = np.asarray(y)
    if not np.issubdtype(y0.dtype, np.inexact):
        y0 = y0.astype(np.float64)
    # Python floats keep float32 state float32 (NumPy scalars would promote it).
    A = tab.A.tolist()
    b = tab.b.tolist()
    c = tab.c.tolist()
    s = tab.stages
    needed = [b[i] != 0.0 or any(A[j][i] != 0.0 for j in range(i + 1, s)) for i in range(s)]
    k: list[NDArray[Any] | None] = [None] * s
    for i in range(s):
        if not needed[i]:
            continue
        yi = y0
        for j in range(i):
            if A[i][j] != 0.0:
                yi = yi + (h * A[i][j]) * k[j]
        ki = np.asarray(f(t + c[i] * h, yi))
        if ki.shape != y0.shape:
            raise ValueError(f"f returned shape {ki.shape}, expected {y0.shape}")
        k[i] = ki
    out = y0
    for i in range(s):
        if b[i] != 0.0:
            out = out + (h * b[i]) * k[i]
    return out if out is not y0 else y0.copy()


def integrate(
    f: Callable[[float, NDArray[Any]], ArrayLike],
    t0: float,
    y0: ArrayLike,
    t1: float,
    n_steps: int,
    tableau: Tableau | str,
) -> NDArray[Any]:
    """Integrate y' = f(t, y) from (t0, y0) to t1 in ``n_steps`` equal explicit steps.

    Returns y at t1 (same shape as y0). Step k starts at t0 + k·h, computed afresh so the
    time does not drift by accumulated rounding.
    """
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive int, got {n_steps!r}")
    tab = _as_tableau(tableau)
    h = (t1 - t0) / n_steps
    y = np.asarray(y0)
    for step in range(n_steps):
        y = rk_step(f, t0 + step * h, y, h, tab)
    return y
