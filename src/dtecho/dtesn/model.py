"""The DTESN estimator: fit / predict / run / partial_fit / generate, save / load.

Inputs: X of shape (T,) or (T, d_in) for one sequence, (B, T, d_in) for B sequences of equal
length, or a list of (T_b, d_in) arrays of any lengths (padded and sorted internally;
results are those of each sequence run alone). Targets Y mirror X with d_out columns.
Every call starts from the zero state unless ``initial_state`` is given, so a fitted model is
a pure function of its parameters, seed and readout.
"""

from __future__ import annotations

import inspect
import json
import os
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import scipy.sparse as sps

from . import bseries
from ._pipeline import overlapped
from .membranes import Membrane, build_membranes
from .readout import RidgeReadout, RLSReadout, readout_from_state, ridge_path
from .reservoir import INITIALISERS, ROW_GROUP, ESPReport, Reservoir, build_weights

if TYPE_CHECKING:
    from .search import TuneResult

__all__ = ["DTESN", "NotFittedError"]

_CHUNK_BYTES = 16 * 2**20  # states of one window of fit and predict (see _windows)
_AHEAD = 4  # windows integrated ahead of their work before that thread helps with it
FORMAT = "dtecho.dtesn"
FORMAT_VERSION = 1
# build_weights' keyword-only arguments are named like our parameters (but for the radius)
_WEIGHT_PARAMS = [
    name
    for name, p in inspect.signature(build_weights).parameters.items()
    if p.kind is p.KEYWORD_ONLY and name != "spectral_radius_target"
]


def _differs(value: Any, default: Any) -> bool:
    try:
        return bool(value != default)
    except ValueError:  # arrays compare elementwise
        return True


def input_statistics(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) per column of ``rows`` (n, d) as ``input_norm="standard"`` uses them:
    the scale is the standard deviation, 1 for a constant column."""
    mean, std = rows.mean(axis=0), rows.std(axis=0)
    return mean, np.where(std > 1e-12 * np.maximum(1.0, np.abs(mean)), std, 1.0)


def _same_stats(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def _is_ridge(value: Any) -> bool:
    try:
        return not isinstance(value, bool | str) and 0 <= float(value) < np.inf
    except (TypeError, ValueError):
        return False


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


# weights="auto" draws in row groups (the fast one-sequence layout) when every membrane has
# at least this many recurrent inputs per unit: a group of ROW_GROUP units then shares
# columns without losing rank, and the study found no loss of quality (docs/dtesn.md).
_AUTO_GROUP_MIN_IN_DEGREE = ROW_GROUP
# ridge="auto" holds out this share of the training rows (the latest of each sequence, or
# the last sequences of a set of five or more) to choose the ridge, then refits on all.
_AUTO_RIDGE_HOLDOUT = 0.2
_AUTO_RIDGE_BLOCKS = 5  # consecutive holdout blocks: the spread of their errors (see ridge_path)
_FALLBACK_RIDGE = 1e-8  # ridge="auto" with too few rows to hold any out


def _is_count(value: Any) -> bool:
    try:
        return not isinstance(value, bool) and int(value) == value and value >= 1
    except (TypeError, ValueError):
        return False


class NotFittedError(ValueError, AttributeError):
    """Raised when a method needs a fitted readout (call fit or partial_fit first)."""


class _Batch:
    """Inputs in canonical (B, T, d) form, sorted by length, and how to give results back."""

    def __init__(self, X: Any, name: str = "X", like: _Batch | None = None) -> None:
        self.kind = "list" if isinstance(X, list | tuple) else "array"
        seqs = list(X) if self.kind == "list" else [X]
        if self.kind == "array":
            a = np.asarray(X)
            self.kind = {1: "1d", 2: "2d", 3: "3d"}.get(a.ndim, "bad")
            if self.kind == "bad":
                raise ValueError(f"{name} must be (T,), (T, d) or (B, T, d), got shape {a.shape}")
            seqs = list(a) if a.ndim == 3 else [a]
        if not seqs:
            raise ValueError(f"{name} is an empty list of sequences")
        arrs = []
        for s in seqs:
            s = np.asarray(s)
            if s.ndim == 1:
                s = s[:, None]
            if s.ndim != 2 or s.shape[0] == 0:
                raise ValueError(
                    f"each sequence in {name} must be (T, d) with T >= 1, got {s.shape}"
                )
            if not np.issubdtype(s.dtype, np.number) or np.iscomplexobj(s):
                raise ValueError(f"{name} must be real numbers, got dtype {s.dtype}")
            if not np.all(np.isfinite(s)):
                raise ValueError(f"{name} contains NaN or infinite values")
            arrs.append(s)
        if len({a.shape[1] for a in arrs}) != 1:
            raise ValueError(f"all sequences in {name} need the same number of columns")
        self.lengths_orig = np.array([a.shape[0] for a in arrs])
        if like is not None and (
            (self.kind != like.kind and {self.kind, like.kind} != {"1d", "2d"})
            or not np.array_equal(self.lengths_orig, like.lengths_orig)
        ):
            raise ValueError(f"{name} must have the same layout and lengths as X")
        self.order = np.argsort(-self.lengths_orig, kind="stable")
        self.lengths = self.lengths_orig[self.order]
        self.uniform = bool(self.lengths[0] == self.lengths[-1])
        if self.kind in ("1d", "2d", "3d") and self.uniform:
            self.data = arrs[0][None] if self.kind != "3d" else np.asarray(X)
        else:
            self.data = np.zeros((len(arrs), self.lengths[0], arrs[0].shape[1]))
            for i, j in enumerate(self.order):
                self.data[i, : self.lengths[i]] = arrs[j]
        self.width = arrs[0].shape[1]

    def pieces(self, warmup: int = 0):
        """(b, slice of rows after warm-up) per sequence in sorted order."""
        for b, L in enumerate(self.lengths):
            if warmup < L:
                yield b, slice(warmup, int(L))

    def unpack(self, R: np.ndarray) -> Any:
        """(B, T, k) results in sorted order → the caller's layout."""
        if self.kind in ("1d", "2d"):
            return R[0]
        if self.kind == "3d":
            return R
        out: list[Any] = [None] * len(self.order)
        for i, j in enumerate(self.order):
            out[j] = R[i, : self.lengths[i]]
        return out


class DTESN:
    """Deep Tree Echo State Network: a tree of leaky reservoirs with a linear readout.

    Parameters (stored as given; checked at fit/run time). The defaults come from a study
    across nine tasks, two sizes and three seeds (``benchmarks/defaults_study.py``, table in
    docs/dtesn.md); ``DTESN.for_task(family)`` gives that study's per-family choices.
      units: total reservoir units N, split over the membranes (``membranes``).
      depth / tree: membrane structure (level k of a depth-d network holds A000081(k)
        membranes) or an explicit nested-parentheses tree such as "(()(()))".
      spectral_radius: of the whole network's recurrent matrix (0.9; exact, not estimated).
      leak_rate: per-sample leak a of the skin; τ_skin = 1/leak_rate sampling intervals
        (1: no leak; the memory tasks lose most with a leak, the forecasts little).
      input_norm: "standard" (default): the first fit measures each input column's mean and
        standard deviation and folds (u − μ)/σ into W_in and b, so ``input_scaling`` means
        the same for data in any units (raw Lorenz coordinates or NARMA's [0, 0.5]); the
        states of a ``run`` before any fit use the raw inputs. "none": raw inputs always.
      input_scaling (0.05), input_connectivity (0.1), input_init ("bernoulli"): W_in
        entries drawn from ``input_init`` ("uniform" U[−1, 1], "normal" N(0, 1), "bernoulli"
        ±1) times the scale, each kept with probability ``input_connectivity`` (so by
        default a tenth of the units hear each input, ±0.05 per standard deviation: the
        rest are driven only through the recurrence, which the memory tasks want). Weak
        inputs keep the reservoir near its linear regime, which NARMA and memory capacity
        need and the forecasts tolerate; the study's ranking and the choice rule are in
        docs/dtesn.md.
      bias_scaling (0.1), bias_init ("uniform"), bias_connectivity (1): b likewise; a small
        bias breaks the tanh's symmetry, which classification of oscillations needs.
      recurrent_init ("normal"): the distribution of W's values before its radius is set.
      connectivity: fraction of nonzeros per row of each recurrent and coupling block.
      ridge: L2 penalty of the readout (not applied to the intercept, see readout.py), or
        "auto" (default): chosen on held-out training rows, see ``fit``.
      integrator: a bseries tableau name (or a Tableau); dt: integration step in sampling
        intervals, 1/dt must be an integer. Euler with dt = 1 is exactly the leaky ESN.
      input_to: "skin" (root only) or "all" membranes. seed: all weights derive from it.
      dtype: "float64" or "float32" for the state dynamics (readout math stays float64).
      tau_scaling: τ of level k is tau_scaling^(k−1)·τ_skin (> 1: inner membranes slower).
      coupling / feedback: scale of parent→child / child→parent blocks (feedback 0 = none).
      weights: "auto" (default: "grouped" where every membrane has ≥ 16 recurrent inputs per
        unit, else "random"), "random" (sparse, fixed in-degree), "grouped" (the same, but
        each aligned group of 16 units shares its input columns, with independent values,
        drawn as float32 numbers that float64 runs read at half the memory traffic: one
        sequence then runs several times faster in the compiled kernel; needs
        connectivity·units >= 16) or "orthogonal" blocks. activation: "tanh" or "identity".
        forgetting, rls_delta: RLS factor λ and P₀ = I/δ for a partial_fit without prior fit
        (δ defaults to ridge). matrix_format: "auto",
        "dense" or "sparse" recurrent products. regularize_bias: penalise the intercept too.
      backend: "auto" (compiled Numba kernels for the Euler loop when Numba is installed,
        as it is by default), "numpy" or "numba"; the choice changes speed, not results
        (to ~1e-15).
      n_jobs: threads for the compiled loop (None, the default: the usable cores): a
        batch's sequences are split between them (at least 8 each); one sequence of a large
        reservoir (≥ 16,384 stored entries of W per thread, i.e. about 400 units at the
        default connectivity for two threads) has its units split between them, the
        threads busy-waiting for each other after every step (so give each a core of its
        own; pass n_jobs=1 where other work shares the cores). fit integrates on one thread
        either way, its second forming the normal equations. The results do not depend on
        it, bit for bit.
    """

    # The study's choices per task family (docs/dtesn.md); "general" is the defaults.
    TASK_PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "general": {},
        "memory": {},  # NARMA, memory capacity: the defaults were chosen with them
        # every unit hears the inputs, stronger: the best forecaster of the study's final stage
        "forecast": {
            "input_scaling": 0.2,
            "bias_scaling": 0.3,
            "input_connectivity": 1.0,
            "input_init": "uniform",
        },
        # a slower inner membrane and more bias: the study's stage-3 best classifier
        "classify": {
            "input_scaling": 0.1,
            "bias_scaling": 0.3,
            "input_connectivity": 1.0,
            "input_init": "uniform",
            "depth": 2,
            "tau_scaling": 4.0,
        },
    }

    @classmethod
    def for_task(cls, family: str, units: int = 400, **params: Any) -> DTESN:
        """A DTESN with the defaults study's settings for a task family: "general",
        "memory" (system identification, delayed recall), "forecast" (chaotic series,
        one or many steps ahead, free runs) or "classify" (sequence classification);
        ``params`` override them."""
        if family not in cls.TASK_PRESETS:
            known = ", ".join(cls.TASK_PRESETS)
            raise ValueError(f"unknown task family {family!r}; known: {known}")
        return cls(units=units, **{**cls.TASK_PRESETS[family], **params})

    def __init__(
        self,
        units: int = 400,
        depth: int | None = 1,
        tree: str | None = None,
        *,
        spectral_radius: float = 0.9,
        leak_rate: float = 1.0,
        input_scaling: float = 0.05,
        bias_scaling: float = 0.1,
        connectivity: float = 0.1,
        ridge: float | str = "auto",
        integrator: str | bseries.Tableau = "euler",
        dt: float = 1.0,
        input_to: str = "skin",
        seed: int = 0,
        dtype: str = "float64",
        tau_scaling: float = 1.0,
        coupling: float = 1.0,
        feedback: float = 0.0,
        input_connectivity: float = 0.1,
        input_norm: str = "standard",
        input_init: str = "bernoulli",
        recurrent_init: str = "normal",
        bias_init: str = "uniform",
        bias_connectivity: float = 1.0,
        weights: str = "auto",
        activation: str = "tanh",
        forgetting: float = 1.0,
        rls_delta: float | None = None,
        matrix_format: str = "auto",
        regularize_bias: bool = False,
        backend: str = "auto",
        n_jobs: int | None = None,
    ) -> None:
        for name, value in locals().items():
            if name != "self":
                setattr(self, name, value)

    # -- parameters ---------------------------------------------------------------------

    @classmethod
    def _param_names(cls) -> list[str]:
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    def get_params(self) -> dict[str, Any]:
        """The constructor parameters as currently set."""
        return {k: getattr(self, k) for k in self._param_names()}

    def set_params(self, **params: Any) -> DTESN:
        """Set constructor parameters; takes effect at the next fit (returns self)."""
        for k, v in params.items():
            if k not in self._param_names():
                raise ValueError(f"unknown parameter {k!r}")
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        defaults = {
            k: p.default for k, p in inspect.signature(type(self).__init__).parameters.items()
        }
        changed = [f"{k}={v!r}" for k, v in self.get_params().items() if _differs(v, defaults[k])]
        return f"DTESN({', '.join(changed)})"

    def _tableau(self) -> bseries.Tableau:
        if isinstance(self.integrator, bseries.Tableau):
            return self.integrator
        if self.integrator not in bseries.TABLEAUX:
            known = ", ".join(bseries.TABLEAUX)
            raise ValueError(f"unknown integrator {self.integrator!r}; known: {known}")
        return bseries.TABLEAUX[self.integrator]

    def _substeps(self) -> int:
        k = round(1.0 / self.dt) if self.dt > 0 else 0
        if k < 1 or abs(k * self.dt - 1.0) > 1e-9:
            raise ValueError(f"dt must be 1/k for an integer k >= 1, got dt={self.dt}")
        return k

    def _check_params(self) -> None:
        checks = [
            (0 <= self.spectral_radius < np.inf, "spectral_radius >= 0"),
            (0 < self.connectivity <= 1, "connectivity in (0, 1]"),
            (0 < self.input_connectivity <= 1, "input_connectivity in (0, 1]"),
            (self.ridge == "auto" or _is_ridge(self.ridge), "ridge 'auto' or a number >= 0"),
            (0 <= self.bias_connectivity <= 1, "bias_connectivity in [0, 1]"),
            (self.input_norm in ("standard", "none"), "input_norm 'standard' or 'none'"),
            (self.input_init in INITIALISERS, f"input_init one of {INITIALISERS}"),
            (self.recurrent_init in INITIALISERS, f"recurrent_init one of {INITIALISERS}"),
            (self.bias_init in INITIALISERS, f"bias_init one of {INITIALISERS}"),
            (self.input_to in ("skin", "all"), "input_to 'skin' or 'all'"),
            (self.dtype in ("float64", "float32"), "dtype 'float64' or 'float32'"),
            (
                self.weights in ("auto", "random", "grouped", "orthogonal"),
                "weights 'auto', 'random', 'grouped' or 'orthogonal'",
            ),
            (self.activation in ("tanh", "identity"), "activation 'tanh' or 'identity'"),
            (0 < self.forgetting <= 1, "forgetting in (0, 1]"),
            (self.matrix_format in ("auto", "dense", "sparse"), "matrix_format auto/dense/sparse"),
            (self.backend in ("auto", "numpy", "numba"), "backend 'auto', 'numpy' or 'numba'"),
            (self.n_jobs is None or _is_count(self.n_jobs), "n_jobs None or an integer >= 1"),
        ]
        for ok, what in checks:
            if not ok:
                raise ValueError(f"invalid parameter: need {what}; got {self!r}")
        self._tableau(), self._substeps()
        if self.weights == "grouped":  # chosen by hand: "auto" only groups where it can
            # a group's rows all draw from the same k columns, so its block has rank <= k
            short = [
                m
                for m in self.membranes
                if round(self.connectivity * m.units) < min(ROW_GROUP, m.units)
            ]
            if short:
                k = max(1, round(self.connectivity * short[0].units))
                warnings.warn(
                    f"weights='grouped' with {k} recurrent inputs per unit (membrane "
                    f"{short[0].id}): every group of {ROW_GROUP} units shares those {k} "
                    "columns, so W loses rank and the reservoir memory; raise connectivity "
                    f"so that connectivity * units >= {ROW_GROUP}, or use weights='random'",
                    UserWarning,
                    stacklevel=5,  # the caller of fit / run / predict
                )

    def _jobs(self) -> int:
        return usable_cores() if self.n_jobs is None else int(self.n_jobs)

    def weights_layout(self) -> str:
        """The recurrent layout ``weights`` stands for: "auto" is "grouped" when every
        membrane has at least ``ROW_GROUP`` (16) recurrent inputs per unit
        (connectivity · units), else "random"."""
        if self.weights != "auto":
            return self.weights
        degrees = [round(self.connectivity * m.units) for m in self.membranes]
        return "grouped" if min(degrees) >= _AUTO_GROUP_MIN_IN_DEGREE else "random"

    @property
    def membranes(self) -> tuple[Membrane, ...]:
        """Per membrane: id, tree path, level, parent id, units, first unit, time constant τ."""
        keys = ("depth", "tree", "leak_rate", "tau_scaling")
        return build_membranes(self.units, **{k: getattr(self, k) for k in keys})

    # -- building and running ------------------------------------------------------------

    def _ensure_reservoir(
        self, d_in: int, input_stats: tuple[np.ndarray, np.ndarray] | None = None
    ) -> Reservoir:
        """The reservoir for the current parameters, (re)built when they or d_in changed, or
        when ``input_stats`` (fit's (mean, scale) of the inputs) differ from the built ones."""
        key = self._reservoir_key()
        built_stats = getattr(self, "_built_stats", None)
        restandardise = input_stats is not None and not _same_stats(input_stats, built_stats)
        if getattr(self, "_built_key", None) != key or self.n_features_in_ != d_in or restandardise:
            self._check_params()
            mem = self.membranes
            params = {k: getattr(self, k) for k in _WEIGHT_PARAMS}
            params["weights"] = self.weights_layout()
            W, W_in, b = build_weights(
                mem, d_in, spectral_radius_target=self.spectral_radius, **params
            )
            if input_stats is not None:  # W_in·(u − μ)/σ + b = (W_in/σ)·u + (b − (W_in/σ)·μ)
                mean, scale = input_stats
                W_in = W_in / scale
                b = b - W_in @ mean
            leak = np.concatenate([np.full(m.units, self.dt / m.tau) for m in mem])
            self._install(mem, W, W_in, b, leak, key)
            self._built_stats = input_stats
            for attr in ("readout_", "n_outputs_"):  # a readout of other weights is void
                self.__dict__.pop(attr, None)
        elif (self.reservoir_.backend, self.reservoir_.n_jobs) != (self.backend, self._jobs()):
            # speed only: same weights, same readout
            self._check_params()
            res = self.reservoir_
            self._install(self.membranes_, res.W, res.W_in, res.bias, res.leak, key)
        return self.reservoir_

    def _install(self, mem, W, W_in, b, leak, key: str) -> None:
        self.membranes_ = mem
        keys = ("activation", "dtype", "matrix_format", "backend")
        runtime = {k: getattr(self, k) for k in keys}
        runtime["n_jobs"] = self._jobs()
        tableau, substeps = self._tableau(), self._substeps()
        self.reservoir_ = Reservoir(W, W_in, b, leak, tableau=tableau, substeps=substeps, **runtime)
        self.n_features_in_ = W_in.shape[1]
        self._built_key = key

    def _input_stats(self, batch: _Batch) -> tuple[np.ndarray, np.ndarray] | None:
        """(mean, scale) per input column over every row of ``batch`` for
        ``input_norm="standard"`` (scale = the standard deviation; 1 for a constant column)."""
        if self.input_norm == "none":
            return None
        return input_statistics(np.concatenate([batch.data[b, r] for b, r in batch.pieces(0)]))

    def _states(self, batch: _Batch, initial_state: np.ndarray | None) -> np.ndarray:
        res = self._ensure_reservoir(batch.width)
        x0 = None
        if initial_state is not None:
            x0 = np.broadcast_to(initial_state, (len(batch.lengths), res.units))[batch.order]
        lengths = None if batch.uniform else batch.lengths
        return res.run(batch.data, x0=x0, lengths=lengths)

    def _windows(
        self,
        batch: _Batch,
        initial_state: np.ndarray | None,
        work: Callable,
        *,
        share_rows: bool = True,
    ):
        """work(t0, S) for consecutive time windows, in order: S (k, L, N) holds the states
        of steps t0 … t0+L−1 of the k sequences still running at t0 (a prefix: they are
        sorted by length). fit and predict reduce these, so the (B, T, N) states never exist
        at once (~16 MB a window); every step is computed exactly as in one ``run``.

        With the compiled kernels (which release the GIL) the windows are integrated on a
        second thread while this one runs ``work``, and when ``work`` is the slower part
        (fit's normal equations, BLAS) that thread also takes the work of the newest
        windows (``_pipeline.overlapped``), so both cores stay busy. ``work`` must depend
        on its arguments alone: the results are then the same bit for bit, whichever
        thread ran them. ``share_rows=False`` keeps a sequence's own units on one thread
        (``Reservoir.run``), for work that keeps another core busy."""
        res = self._ensure_reservoir(batch.width)
        lengths = batch.lengths
        B, N = len(lengths), res.units
        x = np.zeros((B, N), res.dtype)
        if initial_state is not None:
            x[:] = np.broadcast_to(initial_state, (B, N))[batch.order]
        span = max(16, _CHUNK_BYTES // (B * N * res.dtype.itemsize))
        starts = range(0, int(lengths[0]), span)

        def window(i: int) -> tuple[int, np.ndarray]:
            t0 = starts[i]
            k = int(np.count_nonzero(lengths > t0))
            L = min(span, int(lengths[0]) - t0)
            steps = np.minimum(lengths[:k] - t0, L)
            ragged = steps if steps[-1] < L else None
            U = batch.data[:k, t0 : t0 + L]
            S = res.run(U, x0=x[:k], lengths=ragged, share_rows=share_rows)
            x[:k] = S[np.arange(k), steps - 1]
            return t0, S

        if len(starts) == 1 or not res._compiled():
            for i in range(len(starts)):
                yield work(*window(i))
            return
        yield from overlapped(window, len(starts), lambda item: work(*item), ahead=_AHEAD)

    def run(
        self,
        X: Any,
        *,
        initial_state: np.ndarray | None = None,
        states: str = "all",
        dtype: str | np.dtype | None = None,
        out: np.ndarray | None = None,
    ) -> Any:
        """Reservoir states: (T, N), (B, T, N) or a list of (T_b, N), matching X.

        ``states="last"``: only each sequence's final state, (N,), (B, N) or a list of (N,);
        the states before it are integrated in windows of ~16 MB and never stored whole.
        ``dtype``: the returned states' dtype (e.g. "float32" from a float64 run: half the
        memory, converted window by window, so the float64 states never exist whole).
        ``out``: an array of the result's shape and dtype to write the states into (an
        array input; not with a list of sequences), which is returned. The numbers are
        those of the plain call in every case.
        """
        if states not in ("all", "last"):
            raise ValueError(f"states must be 'all' or 'last', got {states!r}")
        batch = _Batch(X)
        if states == "all" and dtype is None and out is None:
            return batch.unpack(self._states(batch, initial_state))
        res = self._ensure_reservoir(batch.width)
        want = np.dtype(dtype) if dtype is not None else None
        if out is not None:
            if batch.kind == "list":
                raise ValueError("out= needs an array input, not a list of sequences")
            want = want or out.dtype
        want = want or res.dtype
        B, T, N = len(batch.lengths), int(batch.lengths[0]), res.units
        shape = (B, N) if states == "last" else (B, T, N)
        public = shape[1:] if batch.kind in ("1d", "2d") else shape
        if out is not None:
            if out.shape != public or out.dtype != want:
                raise ValueError(
                    f"out must have shape {public} and dtype {want}, got {out.shape} {out.dtype}"
                )
            dest = out.reshape(shape)  # a view (1d/2d inputs gain the batch axis)
        else:
            dest = np.empty(shape, want)
        ends = batch.lengths

        def keep(t0: int, S: np.ndarray) -> None:
            k, L = S.shape[:2]
            if states == "all":
                dest[:k, t0 : t0 + L] = S
                return
            done = np.nonzero((ends[:k] > t0) & (ends[:k] <= t0 + L))[0]
            dest[done] = S[done, ends[done] - 1 - t0]

        for _ in self._windows(batch, initial_state, keep):
            pass
        if states == "last":
            if batch.kind in ("1d", "2d"):
                return out if out is not None else dest[0]
            if batch.kind == "3d":
                return out if out is not None else dest
            result: list[Any] = [None] * B
            for i, j in enumerate(batch.order):
                result[j] = dest[i]
            return result
        return out if out is not None else batch.unpack(dest)

    def fit(self, X: Any, Y: Any, warmup: int = 100) -> DTESN:
        """Ridge readout on [1, u, x] over all rows after the first ``warmup`` of each sequence.

        With ``ridge="auto"`` the ridge is chosen on held-out training rows first (the last
        20 % of each sequence's rows after the warm-up, or the last 20 % of the sequences
        when there are five or more): the readout of every ridge on a log grid is fitted on
        the other rows and scored on those (``readout.ridge_path``, one eigendecomposition),
        then the best is refitted on all rows. ``ridge_`` is the ridge used; ``ridge_path_``
        the (ridge, holdout MSE) pairs. The states are computed once either way.
        """
        batch = _Batch(X)
        target = _Batch(Y, "Y", like=batch)
        if warmup < 0 or batch.lengths.max() <= warmup:
            raise ValueError(
                f"warmup={warmup} leaves no training rows (longest sequence is "
                f"{batch.lengths.max()})"
            )
        auto = isinstance(self.ridge, str)
        self._check_params()
        self._ensure_reservoir(batch.width, self._input_stats(batch))
        ridge = 0.0 if auto else float(self.ridge)
        regularize_bias = self.regularize_bias
        # Row ranges per sequence (sorted order): training rows [warmup, bounds[:, 0]), the
        # holdout's blocks [bounds[:, k], bounds[:, k+1]). Without "auto" nothing is held out.
        ends = batch.lengths
        bounds = self._holdout_blocks(batch, warmup) if auto else ends[:, None]
        cuts = bounds[:, 0]

        def accumulate(part, U, S, Y, lo, hi) -> bool:
            """Rows [lo_b, hi_b) (window-relative) of each sequence into ``part``."""
            k = S.shape[0]
            if not np.any(hi > lo):
                return False
            if np.all(lo == lo[0]) and np.all(hi == hi[0]):  # one product for all
                rows = slice(int(lo[0]), int(hi[0]))
                flat = [a[:, rows].reshape(-1, a.shape[-1]) for a in (U, S, Y)]
                part.accumulate(flat[:2], flat[2])
                return True
            for b in range(k):
                if hi[b] > lo[b]:
                    rows = slice(int(lo[b]), int(hi[b]))
                    part.accumulate([U[b, rows], S[b, rows]], Y[b, rows])
            return True

        def normal_equations(t0: int, S: np.ndarray):
            """One window's share of the normal equations: (training, holdout) parts."""
            k, L = S.shape[:2]
            U, Y = batch.data[:k, t0 : t0 + L], target.data[:k, t0 : t0 + L]
            start = np.full(k, np.clip(warmup - t0, 0, L))
            cut = np.clip(cuts[:k] - t0, 0, L)
            stop = np.clip(ends[:k] - t0, 0, L)
            train = RidgeReadout(ridge, regularize_bias=regularize_bias)
            has_train = accumulate(train, U, S, Y, start, np.maximum(start, cut))
            held = []
            for j in range(bounds.shape[1] - 1 if auto else 0):
                lo = np.maximum(start, np.clip(bounds[:k, j] - t0, 0, L))
                hi = np.maximum(lo, np.minimum(stop, np.clip(bounds[:k, j + 1] - t0, 0, L)))
                block = RidgeReadout(ridge, regularize_bias=regularize_bias)
                held.append(block if accumulate(block, U, S, Y, lo, hi) else None)
            return (train if has_train else None), held

        train = RidgeReadout(ridge, regularize_bias=regularize_bias)
        blocks = [RidgeReadout(ridge, regularize_bias=regularize_bias) for _ in bounds[0, 1:]]
        # one thread integrates (share_rows=False): the other forms normal equations meanwhile
        for part, parts_held in self._windows(batch, None, normal_equations, share_rows=False):
            if part is not None:
                train.merge(part)  # in window order: the same sums whoever computed them
            for block, piece in zip(blocks, parts_held, strict=False):
                if piece is not None:
                    block.merge(piece)
        if auto:
            self.ridge_path_ = None
            blocks = [b for b in blocks if b.n_samples_ > 0]
            held_rows = sum(b.n_samples_ for b in blocks)
            if train.n_samples_ >= 2 and held_rows >= 1:
                best, path = ridge_path(train, blocks)
                self.ridge_path_ = path
                # the same penalty per row on all rows as on the training part
                ridge = best * (train.n_samples_ + held_rows) / train.n_samples_
            else:  # too few rows to hold any out: the old fixed default
                ridge = _FALLBACK_RIDGE
            for block in blocks:
                train.merge(block)
            train.ridge = float(ridge)
        self.ridge_ = float(ridge)
        self.readout_ = train.solve()
        self.n_outputs_ = target.width
        return self

    def _holdout_blocks(self, batch: _Batch, warmup: int) -> np.ndarray:
        """(B, K+1) row bounds per sequence (sorted order) of the ``_AUTO_RIDGE_BLOCKS`` = K
        holdout blocks of ``ridge="auto"``: block k is rows [bounds[b, k], bounds[b, k+1])
        of each sequence b; rows before bounds[b, 0] (after the warm-up) train."""
        lengths = batch.lengths.astype(np.int64)
        B, K = len(lengths), _AUTO_RIDGE_BLOCKS
        if B >= 5:  # whole sequences: the last ones in the caller's order, dealt to blocks
            n_held = max(1, round(_AUTO_RIDGE_HOLDOUT * B))
            rank = np.empty(B, np.int64)
            rank[batch.order] = np.arange(B)  # caller index → sorted position
            bounds = np.repeat(lengths[:, None], K + 1, axis=1)
            for j, caller in enumerate(range(B - n_held, B)):
                b = rank[caller]
                first = min(warmup, lengths[b])
                bounds[b, : j % K + 1] = first  # blocks before j % K empty, then this one
            return bounds
        usable = np.maximum(lengths - warmup, 0)
        cut = lengths - np.floor(_AUTO_RIDGE_HOLDOUT * usable).astype(np.int64)
        steps = np.linspace(0.0, 1.0, K + 1)
        return cut[:, None] + np.floor(np.outer(lengths - cut, steps)).astype(np.int64)

    def partial_fit(
        self, X: Any, Y: Any, warmup: int = 0, *, initial_state: np.ndarray | None = None
    ) -> DTESN:
        """Recursive-least-squares update with forgetting factor ``forgetting``.

        After ``fit`` it continues the ridge solution exactly (P₀ = (G + ridge·D)⁻¹); without
        one it starts from P₀ = I/rls_delta. Rows are taken in time order, sequence by sequence.
        """
        batch = _Batch(X)
        target = _Batch(Y, "Y", like=batch)
        if not hasattr(self, "readout_"):  # the first fit: standardise on this data
            self._check_params()
            self._ensure_reservoir(batch.width, self._input_stats(batch))
        S = self._states(batch, initial_state)
        readout = getattr(self, "readout_", None)
        if isinstance(readout, RidgeReadout):
            readout = RLSReadout.from_ridge(readout, forgetting=self.forgetting)
        elif readout is None:
            ridge = _FALLBACK_RIDGE if isinstance(self.ridge, str) else float(self.ridge)
            delta = self.rls_delta if self.rls_delta is not None else max(ridge, 1e-12)
            readout = RLSReadout(
                batch.width + self.units, target.width, forgetting=self.forgetting, delta=delta
            )
        elif readout.coef_.shape[1] != target.width:
            raise ValueError(f"Y has {target.width} columns, the readout {readout.coef_.shape[1]}")
        readout.forgetting = float(self.forgetting)
        for b, rows in batch.pieces(warmup):
            readout.update([batch.data[b, rows], S[b, rows]], target.data[b, rows])
        self.readout_ = readout
        self.n_outputs_ = target.width
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "readout_"):
            raise NotFittedError("this DTESN is not fitted yet: call fit or partial_fit first")

    def predict(self, X: Any, *, initial_state: np.ndarray | None = None) -> Any:
        """Teacher-forced outputs: (T, d_out), (B, T, d_out) or a list, matching X."""
        self._check_fitted()
        batch = _Batch(X)
        if batch.width != self.n_features_in_:
            raise ValueError(f"X has {batch.width} features, the model {self.n_features_in_}")
        dtype = self._ensure_reservoir(batch.width).dtype
        out = np.zeros((*batch.data.shape[:2], self.n_outputs_), dtype)
        readout = self.readout_

        def outputs(t0: int, S: np.ndarray) -> None:
            k, L = S.shape[:2]
            U = batch.data[:k, t0 : t0 + L].astype(S.dtype, copy=False)
            out[:k, t0 : t0 + L] = readout.predict([U, S])  # windows write disjoint rows

        for _ in self._windows(batch, initial_state, outputs):
            pass
        return batch.unpack(out)

    def generate(self, n_steps: int, warmup: Any, *, return_states: bool = False) -> Any:
        """Closed loop: teacher-force ``warmup`` ((T₀, d) or (B, T₀, d)), then feed each output
        back as the next input. Returns the n_steps outputs that follow the warm-up, shape
        (n_steps, d) or (B, n_steps, d) (and the states, same leading shape, if asked)."""
        self._check_fitted()
        if self.n_outputs_ != self.n_features_in_:
            raise ValueError(
                f"generate needs d_out == d_in, got {self.n_outputs_} and {self.n_features_in_}"
            )
        batch = _Batch(warmup, "warmup")
        if batch.kind == "list" or not batch.uniform:
            raise ValueError("warmup must be one array, (T0, d) or (B, T0, d)")
        res = self.reservoir_
        S = self._states(batch, None)
        x, u = S[:, -1], batch.data[:, -1].astype(S.dtype)
        B = x.shape[0]
        out = np.empty((B, n_steps, self.n_outputs_), S.dtype)
        states = np.empty((B, n_steps, res.units), S.dtype) if return_states else None
        for i in range(n_steps):
            if i:
                x = res.run_projected(res.project(u[:, None, :]), x0=x)[:, 0]
            y = self.readout_.predict([u, x])
            out[:, i] = y
            if states is not None:
                states[:, i] = x
            u = y.astype(S.dtype, copy=False)
        unpack = batch.unpack
        return (unpack(out), unpack(states)) if return_states else unpack(out)

    def esp_check(self, n_steps: int = 1000, **kw: Any) -> ESPReport:
        """Echo-state diagnostics of the built reservoir (see reservoir.ESPReport)."""
        d_in = getattr(self, "n_features_in_", None) or 1
        return self._ensure_reservoir(d_in).esp_check(n_steps, **kw)

    def tune(self, X: Any, Y: Any, **kw: Any) -> TuneResult:
        """Search this model's settings on forward-chaining validation folds, set the best on
        it and fit it on all of X, Y (``dtecho.dtesn.search.search``, whose keyword
        arguments ``kw`` takes: ``n_trials``, ``folds``, ``warmup``, ``seed``, ``space`` …).
        Parameters set to other values than the constructor's defaults (``units`` …) stay
        fixed. Returns the ``TuneResult``, whose ``model`` is this instance:
        ``model, table = DTESN(units=200).tune(X, Y)``."""
        from .search import search  # the search imports this module (and Optuna, lazily)

        result = search(X, Y, base=self, refit=False, **kw)
        self.set_params(**{k: v for k, v in result.params.items() if k in self.get_params()})
        return result.with_model(self.fit(X, Y, warmup=result.warmup))

    # -- persistence -------------------------------------------------------------------

    def _config_params(self) -> dict[str, Any]:
        p = self.get_params()
        t = p["integrator"]
        if isinstance(t, bseries.Tableau):
            p["integrator"] = {"name": t.name, **{k: getattr(t, k).tolist() for k in "Abc"}}
        if isinstance(p["input_scaling"], np.ndarray | list | tuple):
            p["input_scaling"] = np.asarray(p["input_scaling"], dtype=float).tolist()
        return p

    def _reservoir_key(self) -> str:
        """The parameters the reservoir depends on (readout-only ones excluded), as JSON."""
        p = self._config_params()
        for k in ("ridge", "forgetting", "rls_delta", "regularize_bias", "backend", "n_jobs"):
            del p[k]
        return json.dumps(p, sort_keys=True)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write a single .npz file (no pickle): JSON config plus weights and readout arrays."""
        self._check_fitted()
        res = self.reservoir_
        meta, ro_arrays = self.readout_.get_state()
        config = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "readout": meta,
            "params": self._config_params(),
            "n_outputs": self.n_outputs_,
        }
        arrays = {
            "W_data": res.W.data,
            "W_indices": res.W.indices,
            "W_indptr": res.W.indptr,
            "W_in": res.W_in,
            "bias": res.bias,
            "leak": res.leak,
        }
        arrays.update({f"readout_{k}": v for k, v in ro_arrays.items()})
        stats = getattr(self, "_built_stats", None)
        if stats is not None:  # already folded into W_in and bias; kept for refits
            arrays["input_mean"], arrays["input_scale"] = stats
        blob = np.frombuffer(json.dumps(config).encode(), dtype=np.uint8)
        with open(path, "wb") as f:  # a file object: np.savez would otherwise append ".npz"
            np.savez(f, config=blob, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DTESN:
        """Read a file written by ``save``; predictions are bit-identical to the saved model's."""
        with np.load(path, allow_pickle=False) as z:
            config = json.loads(z["config"].tobytes())
            version = config.get("format_version")
            if config.get("format") != FORMAT:
                raise ValueError(f"{path} is not a saved DTESN (format {config.get('format')!r})")
            if version != FORMAT_VERSION:
                raise ValueError(
                    f"unsupported DTESN format version {version!r} (this library "
                    f"reads version {FORMAT_VERSION})"
                )
            a = {k: z[k] for k in z.files if k != "config"}
        params = dict(config["params"])
        if isinstance(params["integrator"], dict):
            t = params["integrator"]
            params["integrator"] = bseries.Tableau(t["name"], t["A"], t["b"], t["c"])
        model = cls(**params)
        N = a["W_in"].shape[0]
        W = sps.csr_array((a["W_data"], a["W_indices"], a["W_indptr"]), shape=(N, N))
        model._install(model.membranes, W, a["W_in"], a["bias"], a["leak"], model._reservoir_key())
        if "input_mean" in a:
            model._built_stats = (a["input_mean"], a["input_scale"])
        ro = {k.removeprefix("readout_"): v for k, v in a.items() if k.startswith("readout_")}
        model.readout_ = readout_from_state(config["readout"], ro)
        if hasattr(model.readout_, "ridge"):
            model.ridge_ = model.readout_.ridge
        model.n_outputs_ = config["n_outputs"]
        return model
