"""Benchmark signals for reservoir computing: Mackey–Glass, NARMA, Lorenz, Rössler, memory
capacity.

Every generator is deterministic (a pure function of its arguments) and returns float64
NumPy arrays. Times are in the equation's own time units; "samples" are the returned rows.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = [
    "NARMA30_COEFFICIENTS",
    "lorenz",
    "mackey_glass",
    "memory_capacity_task",
    "narma",
    "rossler",
]


def _steps_per(length: float, h: float, what: str) -> int:
    """How many steps of size h make up ``length``; ValueError unless that is an integer."""
    k = round(length / h)
    if k < 1 or abs(k * h - length) > 1e-9 * max(1.0, length):
        raise ValueError(f"h={h} must divide {what}={length} into a whole number of steps")
    return k


def mackey_glass(
    n: int,
    tau: float = 17.0,
    h: float = 0.1,
    *,
    beta: float = 0.2,
    gamma: float = 0.1,
    exponent: float = 10.0,
    x0: float = 1.2,
    sample_step: float = 1.0,
    transient: float = 1000.0,
) -> np.ndarray:
    """Samples of the Mackey–Glass delay equation dx/dt = β·x(t−τ)/(1 + x(t−τ)^n) − γ·x(t).

    Method: classical RK4 with step ``h`` (which must divide both ``tau`` and
    ``sample_step``). The delayed term at the stage times t+h/2 falls halfway between two
    stored grid points; it is taken from the cubic Hermite interpolant through the stored
    values and derivatives, x((s₀+s₁)/2) ≈ (x₀+x₁)/2 + h·(x′₀−x′₁)/8, which is fourth-order
    accurate and so keeps RK4's global order (error ∝ h⁴ on smooth stretches). At t+h the
    delayed value is a grid point. The history is the constant ``x0`` for t ≤ 0; the first
    ``transient`` time units are integrated and discarded, then one value is kept every
    ``sample_step`` time units.

    Returns an array of shape (n,). With the defaults (τ = 17) the series is chaotic, has
    mean ≈ 0.9 and stays within about (0.4, 1.35).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not (tau > 0 and h > 0 and sample_step > 0 and transient >= 0):
        raise ValueError("tau, h and sample_step must be > 0 and transient >= 0")
    lag = _steps_per(tau, h, "tau")
    per_sample = _steps_per(sample_step, h, "sample_step")
    skip = _steps_per(transient, h, "transient") if transient > 0 else 0
    total = skip + (n - 1) * per_sample + 1 if n else 0

    # Ring buffers of the last `lag` + 1 grid values and derivatives: x(t−τ) is at the slot
    # being overwritten next, so the delay line costs O(τ/h) memory for any series length.
    size = lag + 1
    xs = [x0] * size
    ds = [0.0] * size  # the constant history has zero derivative ...
    # ... but the solution leaves t = 0 with the right-hand derivative; the delay line must
    # hold that one, or the Hermite midpoints on [0, h] lose two orders.
    ds[0] = beta * x0 / (1.0 + x0**exponent) - gamma * x0
    out = np.empty(n)
    x = x0
    half = 0.5 * h
    h6 = h / 6.0
    k = 0  # ring slot of the current time t
    j = 0  # next output row
    for step in range(total):
        if step >= skip and (step - skip) % per_sample == 0:
            out[j] = x
            j += 1
            if j == n:
                break
        # Delayed values at t, t+h/2, t+h: grid points t−τ, t−τ+h and the Hermite midpoint.
        if step < lag:  # t − τ + h <= 0: every delayed value is the constant history
            xa = xb = xm = x0
        else:
            i0 = (k + 1) % size  # slot holding t − τ
            i1 = (k + 2) % size  # slot holding t − τ + h
            xa, xb = xs[i0], xs[i1]
            xm = 0.5 * (xa + xb) + h * (ds[i0] - ds[i1]) / 8.0
        ga = beta * xa / (1.0 + xa**exponent)
        gm = beta * xm / (1.0 + xm**exponent)
        gb = beta * xb / (1.0 + xb**exponent)
        k1 = ga - gamma * x
        k2 = gm - gamma * (x + half * k1)
        k3 = gm - gamma * (x + half * k2)
        k4 = gb - gamma * (x + h * k3)
        x = x + h6 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        k = (k + 1) % size
        xs[k] = x
        ds[k] = gb - gamma * x  # x′(t+h) = g(x(t+h−τ)) − γ·x(t+h), exact at grid points
    return out


NARMA30_COEFFICIENTS = (0.2, 0.004, 1.5, 0.001)  # Atiya & Parlos (2000); bounded at order 30


def narma(
    n: int,
    order: int = 10,
    seed: int = 0,
    *,
    low: float = 0.0,
    high: float = 0.5,
    coefficients: tuple[float, float, float, float] = (0.3, 0.05, 1.5, 0.1),
) -> tuple[np.ndarray, np.ndarray]:
    """The NARMA system of the given order driven by i.i.d. u ~ U[low, high).

    y[t+1] = α·y[t] + β·y[t]·Σ_{i=0}^{order−1} y[t−i] + γ·u[t−order+1]·u[t] + δ with
    (α, β, γ, δ) = ``coefficients``, by default NARMA10's 0.3 / 0.05 / 1.5 / 0.1 (for order
    30 use ``NARMA30_COEFFICIENTS``: NARMA10's diverge there), and y[t] = 0 for t < order (so
    the first ``order`` outputs are the zero start-up; use a warm-up). Returns ``(u, y)``,
    both of shape (n,). y[t+1] is the response to inputs up to u[t]: the usual task feeds
    u[t] and targets y[t+1] (``X = u[:-1], Y = y[1:]``). Raises ValueError if the series
    diverges (possible for orders well above 10 with NARMA10's coefficients).
    """
    if n < 0 or order < 1:
        raise ValueError(f"need n >= 0 and order >= 1, got n={n}, order={order}")
    a, b, c, d = (float(v) for v in coefficients)
    u = np.random.default_rng(seed).uniform(low, high, size=n)
    uu = u.tolist()
    yy = [0.0] * n
    for t in range(order - 1, n - 1):
        window = sum(yy[t - order + 1 : t + 1])  # O(order) per step; order is small
        yy[t + 1] = a * yy[t] + b * yy[t] * window + c * uu[t - order + 1] * uu[t] + d
        if abs(yy[t + 1]) > 1e6:  # diverging: stop before it overflows
            yy[t + 1] = float("inf")
            break
    y = np.array(yy)
    if not np.all(np.isfinite(y)):
        raise ValueError(f"NARMA{order} diverged for seed={seed}; try another seed")
    return u, y


def _rk4_samples(
    f: Callable[[float, float, float], tuple[float, float, float]],
    x0: tuple[float, float, float],
    n: int,
    dt: float,
    substeps: int,
    transient: float,
) -> np.ndarray:
    """n rows of a 3-D autonomous ODE dx/dt = f(x), one every dt, by classical RK4 with step
    dt/substeps, after discarding the first ``transient`` time units."""
    if n < 0 or dt <= 0 or substeps < 1 or transient < 0:
        raise ValueError("need n >= 0, dt > 0, substeps >= 1 and transient >= 0")
    h = dt / substeps
    h2, h6 = 0.5 * h, h / 6.0
    x, y, z = (float(v) for v in x0)
    skip = round(transient / dt)
    out = np.empty((n, 3))
    for row in range(-skip, n):
        if row >= 0:
            out[row] = (x, y, z)
        for _ in range(substeps):
            a1, b1, c1 = f(x, y, z)
            a2, b2, c2 = f(x + h2 * a1, y + h2 * b1, z + h2 * c1)
            a3, b3, c3 = f(x + h2 * a2, y + h2 * b2, z + h2 * c2)
            a4, b4, c4 = f(x + h * a3, y + h * b3, z + h * c3)
            x += h6 * (a1 + 2.0 * a2 + 2.0 * a3 + a4)
            y += h6 * (b1 + 2.0 * b2 + 2.0 * b3 + b4)
            z += h6 * (c1 + 2.0 * c2 + 2.0 * c3 + c4)
    return out


def lorenz(
    n: int,
    dt: float = 0.01,
    *,
    sigma: float = 10.0,
    rho: float = 28.0,
    beta: float = 8.0 / 3.0,
    x0: tuple[float, float, float] = (1.0, 1.0, 1.0),
    substeps: int = 1,
    transient: float = 10.0,
) -> np.ndarray:
    """Samples of the Lorenz-63 system, shape (n, 3), columns (x, y, z), one row every dt.

    Method: classical RK4 with step dt/substeps; the first ``transient`` time units are
    discarded so the samples lie on the attractor (with the classic σ, ρ, β the long-run
    mean of z is about 23.5).
    """

    def f(x: float, y: float, z: float) -> tuple[float, float, float]:
        return sigma * (y - x), x * (rho - z) - y, x * y - beta * z

    return _rk4_samples(f, x0, n, dt, substeps, transient)


def rossler(
    n: int,
    dt: float = 0.1,
    *,
    a: float = 0.2,
    b: float = 0.2,
    c: float = 5.7,
    x0: tuple[float, float, float] = (1.0, 1.0, 0.0),
    substeps: int = 1,
    transient: float = 50.0,
) -> np.ndarray:
    """Samples of the Rössler system dx = −y − z, dy = x + a·y, dz = b + z·(x − c), shape
    (n, 3), one row every dt, by classical RK4 with step dt/substeps after ``transient``
    time units (the classic a = b = 0.2, c = 5.7 give the chaotic band attractor, x and y
    within about ±12, z in (0, 25))."""

    def f(x: float, y: float, z: float) -> tuple[float, float, float]:
        return -y - z, x + a * y, b + z * (x - c)

    return _rk4_samples(f, x0, n, dt, substeps, transient)


def memory_capacity_task(
    n: int, max_delay: int, seed: int = 0, *, low: float = -0.8, high: float = 0.8
) -> tuple[np.ndarray, np.ndarray]:
    """Input and delayed-copy targets for Jaeger's short-term memory capacity.

    Returns ``(u, Y)``: u of shape (n,) i.i.d. U[low, high) and Y of shape (n, max_delay)
    with Y[t, k−1] = u[t−k] (zero where t < k). MC = Σ_k r²(ŷ_k, y_k) over the delays,
    evaluated after a warm-up of at least ``max_delay`` steps.
    """
    if n < 0 or max_delay < 1:
        raise ValueError(f"need n >= 0 and max_delay >= 1, got n={n}, max_delay={max_delay}")
    u = np.random.default_rng(seed).uniform(low, high, size=n)
    Y = np.zeros((n, max_delay))
    for k in range(1, max_delay + 1):
        Y[k:, k - 1] = u[: n - k] if k < n else Y[k:, k - 1]
    return u, Y
