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
from typing import Any

import numpy as np
import scipy.sparse as sps

from . import bseries
from ._pipeline import overlapped
from .membranes import Membrane, build_membranes
from .readout import RidgeReadout, RLSReadout, readout_from_state
from .reservoir import ROW_GROUP, ESPReport, Reservoir, build_weights

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

    Parameters (stored as given; checked at fit/run time):
      units: total reservoir units N, split over the membranes (``membranes``).
      depth / tree: membrane structure (level k of a depth-d network holds A000081(k)
        membranes) or an explicit nested-parentheses tree such as "(()(()))".
      spectral_radius: of the whole network's recurrent matrix.
      leak_rate: per-sample leak a of the skin; τ_skin = 1/leak_rate sampling intervals.
      input_scaling, input_connectivity: W_in entries U[−1, 1]·scale, kept with that prob.
      bias_scaling: b entries U[−1, 1]·scale.
      connectivity: fraction of nonzeros per row of each recurrent and coupling block.
      ridge: L2 penalty of the readout (not applied to the intercept, see readout.py).
      integrator: a bseries tableau name (or a Tableau); dt: integration step in sampling
        intervals, 1/dt must be an integer. Euler with dt = 1 is exactly the leaky ESN.
      input_to: "skin" (root only) or "all" membranes. seed: all weights derive from it.
      dtype: "float64" or "float32" for the state dynamics (readout math stays float64).
      tau_scaling: τ of level k is tau_scaling^(k−1)·τ_skin (> 1: inner membranes slower).
      coupling / feedback: scale of parent→child / child→parent blocks (feedback 0 = none).
      weights: "random" (sparse Gaussian), "grouped" (the same, but each aligned group of
        16 units shares its input columns, with independent values, drawn as float32
        numbers that float64 runs read at half the memory traffic: one sequence then runs
        several times faster in the compiled kernel; needs connectivity·units >= 16) or
        "orthogonal" blocks. activation: "tanh" or "identity" (linear reservoir).
        forgetting, rls_delta: RLS factor λ and P₀ = I/δ for a partial_fit without prior fit
        (δ defaults to ridge). matrix_format: "auto",
        "dense" or "sparse" recurrent products. regularize_bias: penalise the intercept too.
      backend: "auto" (compiled Numba kernels for the Euler loop when the ``fast`` extra is
        installed), "numpy" or "numba"; the choice changes speed, not results (to ~1e-15).
      n_jobs: threads for the compiled loop: a batch's sequences are split between them;
        one sequence of a large reservoir (≥ 16,384 stored entries of W per thread) has its
        units split between them, the threads busy-waiting for each other after every step
        (so give each a core of its own). fit integrates on one thread either way, its
        second forming the normal equations. The results do not depend on it, bit for bit.
    """

    def __init__(
        self,
        units: int = 400,
        depth: int | None = 1,
        tree: str | None = None,
        *,
        spectral_radius: float = 0.9,
        leak_rate: float = 0.3,
        input_scaling: float = 1.0,
        bias_scaling: float = 0.0,
        connectivity: float = 0.1,
        ridge: float = 1e-8,
        integrator: str | bseries.Tableau = "euler",
        dt: float = 1.0,
        input_to: str = "skin",
        seed: int = 0,
        dtype: str = "float64",
        tau_scaling: float = 1.0,
        coupling: float = 1.0,
        feedback: float = 0.0,
        input_connectivity: float = 1.0,
        weights: str = "random",
        activation: str = "tanh",
        forgetting: float = 1.0,
        rls_delta: float | None = None,
        matrix_format: str = "auto",
        regularize_bias: bool = False,
        backend: str = "auto",
        n_jobs: int = 1,
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
            (self.ridge >= 0, "ridge >= 0"),
            (self.input_to in ("skin", "all"), "input_to 'skin' or 'all'"),
            (self.dtype in ("float64", "float32"), "dtype 'float64' or 'float32'"),
            (
                self.weights in ("random", "grouped", "orthogonal"),
                "weights 'random', 'grouped' or 'orthogonal'",
            ),
            (self.activation in ("tanh", "identity"), "activation 'tanh' or 'identity'"),
            (0 < self.forgetting <= 1, "forgetting in (0, 1]"),
            (self.matrix_format in ("auto", "dense", "sparse"), "matrix_format auto/dense/sparse"),
            (self.backend in ("auto", "numpy", "numba"), "backend 'auto', 'numpy' or 'numba'"),
            (_is_count(self.n_jobs), "n_jobs an integer >= 1"),
        ]
        for ok, what in checks:
            if not ok:
                raise ValueError(f"invalid parameter: need {what}; got {self!r}")
        self._tableau(), self._substeps()
        if self.weights == "grouped":
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

    @property
    def membranes(self) -> tuple[Membrane, ...]:
        """Per membrane: id, tree path, level, parent id, units, first unit, time constant τ."""
        keys = ("depth", "tree", "leak_rate", "tau_scaling")
        return build_membranes(self.units, **{k: getattr(self, k) for k in keys})

    # -- building and running ------------------------------------------------------------

    def _ensure_reservoir(self, d_in: int) -> Reservoir:
        """The reservoir for the current parameters, (re)built when they or d_in changed."""
        key = self._reservoir_key()
        if getattr(self, "_built_key", None) != key or self.n_features_in_ != d_in:
            self._check_params()
            mem = self.membranes
            W, W_in, b = build_weights(
                mem,
                d_in,
                spectral_radius_target=self.spectral_radius,
                **{k: getattr(self, k) for k in _WEIGHT_PARAMS},
            )
            leak = np.concatenate([np.full(m.units, self.dt / m.tau) for m in mem])
            self._install(mem, W, W_in, b, leak, key)
            for attr in ("readout_", "n_outputs_"):  # a readout of other weights is void
                self.__dict__.pop(attr, None)
        elif (self.reservoir_.backend, self.reservoir_.n_jobs) != (self.backend, self.n_jobs):
            # speed only: same weights, same readout
            self._check_params()
            res = self.reservoir_
            self._install(self.membranes_, res.W, res.W_in, res.bias, res.leak, key)
        return self.reservoir_

    def _install(self, mem, W, W_in, b, leak, key: str) -> None:
        self.membranes_ = mem
        keys = ("activation", "dtype", "matrix_format", "backend", "n_jobs")
        runtime = {k: getattr(self, k) for k in keys}
        tableau, substeps = self._tableau(), self._substeps()
        self.reservoir_ = Reservoir(W, W_in, b, leak, tableau=tableau, substeps=substeps, **runtime)
        self.n_features_in_ = W_in.shape[1]
        self._built_key = key

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

    def run(self, X: Any, *, initial_state: np.ndarray | None = None) -> Any:
        """Reservoir states: (T, N), (B, T, N) or a list of (T_b, N), matching X."""
        batch = _Batch(X)
        return batch.unpack(self._states(batch, initial_state))

    def fit(self, X: Any, Y: Any, warmup: int = 100) -> DTESN:
        """Ridge readout on [1, u, x] over all rows after the first ``warmup`` of each sequence."""
        batch = _Batch(X)
        target = _Batch(Y, "Y", like=batch)
        if warmup < 0 or batch.lengths.max() <= warmup:
            raise ValueError(
                f"warmup={warmup} leaves no training rows (longest sequence is "
                f"{batch.lengths.max()})"
            )
        ridge, regularize_bias = self.ridge, self.regularize_bias

        def normal_equations(t0: int, S: np.ndarray) -> RidgeReadout | None:
            """One window's share of the normal equations (None: no training rows)."""
            k, L = S.shape[:2]
            lo = np.clip(warmup - t0, 0, L)
            hi = np.clip(batch.lengths[:k] - t0, 0, L)
            if hi[0] <= lo:
                return None
            part = RidgeReadout(ridge, regularize_bias=regularize_bias)
            U, Y = batch.data[:k, t0 : t0 + L], target.data[:k, t0 : t0 + L]
            if hi[-1] == hi[0]:  # every sequence contributes the same rows: one product
                rows = slice(lo, hi[0])
                flat = [a[:, rows].reshape(-1, a.shape[-1]) for a in (U, S, Y)]
                return part.accumulate(flat[:2], flat[2])
            for b in range(k):
                if hi[b] > lo:
                    rows = slice(lo, hi[b])
                    part.accumulate([U[b, rows], S[b, rows]], Y[b, rows])
            return part

        readout = RidgeReadout(ridge, regularize_bias=regularize_bias)
        # one thread integrates (share_rows=False): the other forms normal equations meanwhile
        for part in self._windows(batch, None, normal_equations, share_rows=False):
            if part is not None:
                readout.merge(part)  # in window order: the same sums whoever computed them
        self.readout_ = readout.solve()
        self.n_outputs_ = target.width
        return self

    def partial_fit(
        self, X: Any, Y: Any, warmup: int = 0, *, initial_state: np.ndarray | None = None
    ) -> DTESN:
        """Recursive-least-squares update with forgetting factor ``forgetting``.

        After ``fit`` it continues the ridge solution exactly (P₀ = (G + ridge·D)⁻¹); without
        one it starts from P₀ = I/rls_delta. Rows are taken in time order, sequence by sequence.
        """
        batch = _Batch(X)
        target = _Batch(Y, "Y", like=batch)
        S = self._states(batch, initial_state)
        readout = getattr(self, "readout_", None)
        if isinstance(readout, RidgeReadout):
            readout = RLSReadout.from_ridge(readout, forgetting=self.forgetting)
        elif readout is None:
            delta = self.rls_delta if self.rls_delta is not None else max(self.ridge, 1e-12)
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
        ro = {k.removeprefix("readout_"): v for k, v in a.items() if k.startswith("readout_")}
        model.readout_ = readout_from_state(config["readout"], ro)
        model.n_outputs_ = config["n_outputs"]
        return model
