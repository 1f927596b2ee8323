"""The task suite of the defaults study (``defaults_study.py``): data it generates itself,
each task split in time into training and validation rows only (no test set: the study
chooses defaults, it does not report a final score).

A task is a ``Task``: inputs and targets of the training part (``X``, ``Y``, one sequence or
a list of sequences), what to feed at validation and how to score a library's predictions.
Scores are errors: lower is better for every task (memory capacity is reported as the
capacity *missing* from the delays asked for, classification as the error rate).

Families: "forecast" (Mackey–Glass free run, Lorenz and Rössler one and ten steps ahead),
"narma" (NARMA10, NARMA30: nonlinear system identification), "memory" (memory capacity) and
"classify" (a synthetic multichannel sequence classification).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dtecho.dtesn import datasets

WARMUP = 100  # rows of each training sequence the readout skips (washout)


@dataclass
class Task:
    """One benchmark task, generated for one data seed."""

    name: str
    family: str
    X: Any  # training inputs: (T, d) or a list of (T_b, d)
    Y: Any  # training targets, the same layout
    kind: str  # "teacher" (score predict(X_val)), "freerun" (score generate), "classify"
    X_val: Any = None
    Y_val: Any = None
    horizon: int = 0  # free run: steps generated after the training series
    warmup: int = WARMUP  # training rows of each sequence the readout skips
    cap: float = float("inf")  # scores above count as this (a diverged free run fails once)
    score_fn: Callable[[Any, Any], float] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def score(self, predicted: Any) -> float:
        """The task's error for predictions of the validation part."""
        assert self.score_fn is not None
        score = float(self.score_fn(predicted, self.Y_val))
        return min(score, self.cap) if np.isfinite(score) else self.cap


def nrmse(predicted: np.ndarray, target: np.ndarray) -> float:
    """RMSE over all rows and columns / the target's standard deviation (per column, pooled)."""
    p, t = np.asarray(predicted, float), np.asarray(target, float)
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} vs target {t.shape}")
    err = np.sqrt(np.mean((p - t) ** 2, axis=0))
    return float(np.mean(err / t.std(axis=0)))


def _split(u: np.ndarray, y: np.ndarray, n_train: int) -> tuple:
    return u[:n_train], y[:n_train], u[n_train:], y[n_train:]


def mackey_glass_freerun(seed: int, n_train: int = 2000, horizon: int = 300) -> Task:
    """Mackey–Glass τ=17, one sample per time unit; fit one step ahead, then run free.

    The data seed picks where on the attractor the series starts (a different transient)."""
    x = datasets.mackey_glass(n_train + horizon + 1, transient=1000.0 + 50.0 * seed)
    X, Y = x[:n_train, None], x[1 : n_train + 1, None]
    truth = x[n_train + 1 : n_train + 1 + horizon, None]
    return Task(
        "mackey_glass_freerun",
        "forecast",
        X,
        Y,
        "freerun",
        X_val=x[: n_train + 1, None],  # warm-up: the whole training series and its next value
        Y_val=truth,
        horizon=horizon,
        cap=2.0,  # NRMSE 2: worse than predicting the mean; a diverged run is not 1e100 worse
        score_fn=lambda p, t: np.sqrt(np.mean((p - t) ** 2)) / x.std(),
    )


def narma_task(order: int, seed: int, n_train: int = 2000, n_val: int = 1000) -> Task:
    """NARMA of ``order``: input u(t), target y(t+1)."""
    coefficients = datasets.NARMA30_COEFFICIENTS if order >= 20 else (0.3, 0.05, 1.5, 0.1)
    u, y = datasets.narma(n_train + n_val + 1, order=order, seed=seed, coefficients=coefficients)
    X, Y, Xv, Yv = _split(u[:-1, None], y[1:, None], n_train)
    return Task(f"narma{order}", "narma", X, Y, "teacher", Xv, Yv, score_fn=nrmse)


def _ahead(series: np.ndarray, steps: int, n_train: int, n_val: int) -> tuple:
    X, Y = series[:-steps], series[steps:]
    return X[:n_train], Y[:n_train], X[n_train : n_train + n_val], Y[n_train : n_train + n_val]


def lorenz_task(steps: int, seed: int, n_train: int = 2000, n_val: int = 1000) -> Task:
    """Lorenz-63 (raw coordinates, as a user would feed them), dt = 0.02: all three
    coordinates ``steps`` samples ahead from the current ones."""
    s = datasets.lorenz(n_train + n_val + steps, dt=0.02, substeps=2, transient=10.0 + seed)
    X, Y, Xv, Yv = _ahead(s, steps, n_train, n_val)
    return Task(f"lorenz_{steps}step", "forecast", X, Y, "teacher", Xv, Yv, score_fn=nrmse)


def rossler_task(steps: int, seed: int, n_train: int = 2000, n_val: int = 1000) -> Task:
    """Rössler (a = b = 0.2, c = 5.7; raw coordinates), dt = 0.1: ``steps`` samples ahead."""
    s = datasets.rossler(n_train + n_val + steps, dt=0.1, substeps=2, transient=50.0 + 5 * seed)
    X, Y, Xv, Yv = _ahead(s, steps, n_train, n_val)
    return Task(f"rossler_{steps}step", "forecast", X, Y, "teacher", Xv, Yv, score_fn=nrmse)


def memory_task(seed: int, max_delay: int = 60, n_train: int = 2000, n_val: int = 1000) -> Task:
    """Jaeger's memory capacity: MC = Σ_k r²(ŷ_k, u(t−k)); scored as max_delay − MC."""
    u, Y = datasets.memory_capacity_task(n_train + n_val, max_delay, seed=seed)
    X, Yt, Xv, Yv = _split(u[:, None], Y, n_train)

    def missing_capacity(p: np.ndarray, t: np.ndarray) -> float:
        r = [np.corrcoef(p[:, k], t[:, k])[0, 1] for k in range(t.shape[1])]
        return max_delay - float(np.nansum(np.square(r)))

    return Task("memory_capacity", "memory", X, Yt, "teacher", Xv, Yv, score_fn=missing_capacity)


def classification_task(
    seed: int, n_classes: int = 5, per_class_train: int = 24, per_class_val: int = 16
) -> Task:
    """Synthetic multichannel sequences, lengths 40–80: class c is three channels of
    sinusoids whose frequencies, channel mixing and (small) offsets are the class's, with
    random phase, amplitude jitter, a random time warp and noise. Per-step one-hot
    targets; a sequence's class is the argmax of its predictions averaged over its second
    half (the usual ESN recipe). Scored as the validation error rate."""
    rng = np.random.default_rng(1000 + seed)
    proto = np.random.default_rng(7)  # the classes are the same for every data seed
    freqs = proto.uniform(0.05, 0.35, size=(n_classes, 3))
    mix = proto.normal(size=(n_classes, 3, 3))
    offset = proto.normal(scale=0.1, size=(n_classes, 3))

    def sample(c: int) -> np.ndarray:
        T = int(rng.integers(40, 81))
        t = np.arange(T) * rng.uniform(0.85, 1.15)
        phase = rng.uniform(0, 2 * np.pi, size=3)
        waves = np.sin(2 * np.pi * freqs[c] * t[:, None] + phase) * rng.uniform(0.7, 1.3, 3)
        return waves @ mix[c] + offset[c] + rng.normal(size=(T, 3))

    def make(per_class: int) -> tuple[list, list, list]:
        X, Y, labels = [], [], []
        for c in rng.permutation(np.repeat(np.arange(n_classes), per_class)):
            x = sample(int(c))
            X.append(x)
            Y.append(np.tile(np.eye(n_classes)[c], (len(x), 1)))
            labels.append(int(c))
        return X, Y, labels

    X, Y, _ = make(per_class_train)
    Xv, _, labels = make(per_class_val)

    def error_rate(pred: list, truth: list) -> float:
        guesses = [int(np.argmax(p[len(p) // 2 :].mean(axis=0))) for p in pred]
        return float(np.mean(np.asarray(guesses) != np.asarray(truth)))

    return Task("classify", "classify", X, Y, "classify", Xv, labels, warmup=0, score_fn=error_rate)


def suite(seed: int) -> list[Task]:
    """Every task of the study for one data seed."""
    return [
        mackey_glass_freerun(seed),
        narma_task(10, seed),
        narma_task(30, seed),
        lorenz_task(1, seed),
        lorenz_task(10, seed),
        rossler_task(1, seed),
        rossler_task(10, seed),
        memory_task(seed),
        classification_task(seed),
    ]
