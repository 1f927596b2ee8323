"""Linear readouts on feature rows [1, block₀, block₁, …]: ridge (closed form) and RLS (online).

The features of a DTESN are the bias, the input u and the reservoir state x, so callers pass
the blocks separately (``[u, x]``) and never build the concatenated matrix: the normal
equations are accumulated block by block, in float64, chunk by chunk over time. The
coefficient matrix ``coef_`` has shape (1 + Σ fᵢ, d_out); row 0 is the intercept.

Choice: the intercept is *not* penalised by default (``regularize_bias=False``). Penalising
it would make the fit depend on where the origin of Y and of the features lies (a constant
offset in the target would be shrunk towards zero), which is never what a forecaster wants.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg as sla
from scipy.linalg import blas

__all__ = [
    "RIDGE_GRID",
    "RLSReadout",
    "RidgeReadout",
    "Stats",
    "path_errors",
    "readout_from_state",
    "ridge_path",
]

_CHUNK_BYTES = 32 * 2**20  # float64 working set per chunk when blocks must be converted


def _as_blocks(blocks: Sequence[np.ndarray], Y: np.ndarray | None = None) -> list[np.ndarray]:
    if not blocks:
        raise ValueError("need at least one feature block")
    out = [np.asarray(b) for b in blocks]
    n = out[0].shape[0]
    for b in out:
        if b.ndim != 2 or b.shape[0] != n:
            raise ValueError(
                f"feature blocks must be 2-D with the same number of rows, got shapes "
                f"{[x.shape for x in out]}"
            )
    if Y is not None and (Y.ndim != 2 or Y.shape[0] != n):
        raise ValueError(f"targets must have shape ({n}, d_out), got {Y.shape}")
    return out


def _edges(widths: Sequence[int]) -> list[int]:
    """Column offsets of each block in the feature vector (column 0 is the bias)."""
    e = [1]
    for w in widths:
        e.append(e[-1] + w)
    return e


def _predict(coef: np.ndarray, blocks: Sequence[np.ndarray]) -> np.ndarray:
    """coef[0] + Σᵢ blockᵢ @ coef[slice i], in the blocks' dtype (broadcasts over leading axes)."""
    dtype = np.result_type(*blocks)
    edges = _edges([b.shape[-1] for b in blocks])
    c = coef.astype(dtype, copy=False)
    out = blocks[-1] @ c[edges[-2] : edges[-1]]
    for i, b in enumerate(blocks[:-1]):
        out += b @ c[edges[i] : edges[i + 1]]
    out += c[0]
    return out


class RidgeReadout:
    """Ridge regression Y ≈ [1, blocks…] @ coef_ from accumulated normal equations.

    ``accumulate`` may be called many times (several sequences, chunks of a long one);
    ``solve`` then factorises (G + ridge·D) with Cholesky, where G = ΦᵀΦ is the float64
    Gram matrix and D is the identity (its bias entry zero unless ``regularize_bias``). If
    that matrix is not numerically positive definite (e.g. ridge = 0 with a constant
    feature) it falls back to SVD least squares (LAPACK gelsd), giving the minimum-norm
    solution. Learned: ``coef_`` (1+F, d_out), ``gram_``, ``xty_``, ``n_samples_``, ``solver_``.
    """

    def __init__(self, ridge: float = 1e-8, *, regularize_bias: bool = False) -> None:
        if not (ridge >= 0 and np.isfinite(ridge)):
            raise ValueError(f"ridge must be a finite number >= 0, got {ridge}")
        self.ridge = float(ridge)
        self.regularize_bias = regularize_bias
        self.n_samples_ = 0

    def accumulate(self, blocks: Sequence[np.ndarray], Y: np.ndarray) -> RidgeReadout:
        """Add rows: blocks of shapes (n, fᵢ) (any float dtype) and targets Y (n, d_out)."""
        Y = np.asarray(Y)
        blocks = _as_blocks(blocks, Y)
        widths = [b.shape[1] for b in blocks]
        F = 1 + sum(widths)
        if self.n_samples_ == 0:
            self.gram_ = np.zeros((F, F))
            self.xty_ = np.zeros((F, Y.shape[1]))
            self.yty_ = np.zeros(Y.shape[1])  # Σ y² per target column (holdout errors)
            self._widths = widths
        elif widths != self._widths or Y.shape[1] != self.xty_.shape[1]:
            raise ValueError("feature/target widths changed between accumulate() calls")
        n = Y.shape[0]
        # Converted float64 copies exist one chunk at a time, so a huge float32 state matrix
        # is never duplicated whole; float64 input is used in place (no chunking needed).
        convert = any(b.dtype != np.float64 for b in blocks) or Y.dtype != np.float64
        step = max(1, _CHUNK_BYTES // (8 * F)) if convert else max(n, 1)
        e = _edges(widths)
        G, R = self.gram_, self.xty_
        for s in range(0, n, step):
            bs = [np.asarray(b[s : s + step], dtype=np.float64) for b in blocks]
            y = np.asarray(Y[s : s + step], dtype=np.float64)
            G[0, 0] += y.shape[0]
            R[0] += y.sum(axis=0)
            self.yty_ += np.einsum("ij,ij->j", y, y)
            for i, bi in enumerate(bs):
                G[0, e[i] : e[i + 1]] += bi.sum(axis=0)
                G[e[i] : e[i + 1], e[i] : e[i + 1]] += bi.T @ bi  # numpy uses syrk here
                for j in range(i + 1, len(bs)):
                    G[e[i] : e[i + 1], e[j] : e[j + 1]] += bi.T @ bs[j]
                R[e[i] : e[i + 1]] += bi.T @ y
        self.n_samples_ += n
        return self

    def merge(self, other: RidgeReadout) -> RidgeReadout:
        """Add the normal equations ``other`` accumulated (same widths) to these."""
        if other.n_samples_ == 0:
            return self
        if self.n_samples_ == 0:
            self.gram_, self.xty_ = other.gram_.copy(), other.xty_.copy()
            self.yty_ = other.yty_.copy()
            self._widths = other._widths
        elif other._widths != self._widths or other.xty_.shape != self.xty_.shape:
            raise ValueError("feature/target widths differ between the merged readouts")
        else:
            self.gram_ += other.gram_
            self.xty_ += other.xty_
            self.yty_ += other.yty_
        self.n_samples_ += other.n_samples_
        return self

    def stats(self) -> Stats:
        """The accumulated rows as centred statistics (``Stats``; intercept column dropped)."""
        G, R = self._symmetric_gram(), self.xty_
        n = G[0, 0]
        mean, mean_y = G[0, 1:] / n, R[0] / n
        return Stats(
            int(n),
            mean,
            G[1:, 1:] - n * np.outer(mean, mean),
            mean_y,
            R[1:] - n * np.outer(mean, mean_y),
            self.yty_ - n * mean_y**2,
        )

    def _symmetric_gram(self) -> np.ndarray:
        G = np.triu(self.gram_)
        return G + np.triu(G, 1).T

    def _system(self) -> np.ndarray:
        """The regularised normal matrix G + ridge·D, symmetric (upper blocks mirrored)."""
        G = self._symmetric_gram()
        d = np.full(G.shape[0], self.ridge)
        if not self.regularize_bias:
            d[0] = 0.0
        G[np.diag_indices_from(G)] += d
        return G

    def solve(self) -> RidgeReadout:
        """Compute ``coef_`` from everything accumulated so far."""
        if self.n_samples_ == 0:
            raise ValueError("no samples accumulated: every sequence was shorter than warm-up")
        A = self._system()
        try:
            factor = sla.cho_factor(A, lower=False, check_finite=False)
            self.coef_ = sla.cho_solve(factor, self.xty_, check_finite=False)
            self.solver_ = "cholesky"
        except np.linalg.LinAlgError:
            self.coef_ = sla.lstsq(A, self.xty_, lapack_driver="gelsd", check_finite=False)[0]
            self.solver_ = "svd"
        return self

    def fit(self, features: np.ndarray, Y: np.ndarray) -> RidgeReadout:
        """One-shot fit on a feature matrix of shape (n, F) (bias added here) and Y (n, d_out)."""
        self.n_samples_ = 0
        return self.accumulate([features], Y).solve()

    def predict(self, blocks: Sequence[np.ndarray]) -> np.ndarray:
        """Outputs for blocks of shapes (…, fᵢ) → (…, d_out), computed in the blocks' dtype."""
        return _predict(self.coef_, list(blocks))

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(JSON-ready settings, arrays) of a solved readout, for ``readout_from_state``."""
        meta = {
            "kind": "ridge",
            "ridge": self.ridge,
            "regularize_bias": self.regularize_bias,
            "n_samples": self.n_samples_,
            "solver": self.solver_,
            "widths": self._widths,
        }
        return meta, {"coef": self.coef_, "gram": self.gram_, "xty": self.xty_}


RIDGE_GRID = 10.0 ** np.arange(-12.0, 1.01, 0.5)  # relative to the mean feature variance
_NEAR_EXACT = 1e-4  # holdout MSE / variance below which ridge_path allows more slack …
_NEAR_EXACT_SLACK = 10.0  # … up to this many times the least MSE
_PATH_BYTES = 32 * 2**20  # coefficients of the ridge values evaluated at once


@dataclass
class Stats:
    """Row count, means and centred scatter matrices of features φ and targets y."""

    n: int
    mean: np.ndarray  # (F,)
    scatter: np.ndarray  # (F, F) Σ (φ − mean)(φ − mean)ᵀ
    mean_y: np.ndarray  # (d,)
    cross: np.ndarray  # (F, d) Σ (φ − mean)(y − mean_y)ᵀ
    scatter_y: np.ndarray  # (d,) Σ (y − mean_y)²

    @classmethod
    def of(cls, Phi: np.ndarray, Y: np.ndarray) -> Stats:
        """The statistics of rows Phi (n, F), Y (n, d); Phi is overwritten (scratch)."""
        mean, mean_y = Phi.mean(axis=0), Y.mean(axis=0)
        Phi -= mean
        Yc = Y - mean_y
        scatter = Phi.T @ Phi  # numpy sees Aᵀ·A and calls syrk
        return cls(len(Phi), mean, scatter, mean_y, Phi.T @ Yc, np.einsum("ij,ij->j", Yc, Yc))

    def merge(self, other: Stats | None) -> Stats:
        """The statistics of both sets of rows (the pairwise update of Chan et al.)."""
        if other is None:
            return self
        n = self.n + other.n
        w = self.n * other.n / n
        d, dy = other.mean - self.mean, other.mean_y - self.mean_y
        return Stats(
            n,
            self.mean + d * (other.n / n),
            self.scatter + other.scatter + w * np.outer(d, d),
            self.mean_y + dy * (other.n / n),
            self.cross + other.cross + w * np.outer(d, dy),
            self.scatter_y + other.scatter_y + w * dy**2,
        )


def path_errors(train: Stats, val: Stats, ridges: np.ndarray) -> np.ndarray:
    """Σ over the validation rows of (y − ŷ(λ))², per ridge value and output: (n_ridges, d).

    ŷ(λ) = mean_y + (φ − mean)ᵀ w(λ), the training rows' means, w(λ) = V (c / (e + λ)),
    c = Vᵀ cross. With S, R the validation block's scatter about the *training* means,
    Σ‖y − ŷ‖² = yy − 2 Rᵀw + wᵀ S w."""
    e, V = sla.eigh(train.scatter, check_finite=False, driver="evd")
    e = np.maximum(e, 0.0)  # rounding can leave the smallest eigenvalues slightly negative
    c = V.T @ train.cross  # (F, d)
    shift, shift_y = val.mean - train.mean, val.mean_y - train.mean_y
    S = val.scatter + val.n * np.outer(shift, shift)
    R = val.cross + val.n * np.outer(shift, shift_y)
    yy = val.scatter_y + val.n * shift_y**2
    F, d = c.shape
    # The quadratic form costs F² per ridge value and output in either basis: the original
    # one needs w = V w′ (F² each), the eigenbasis H = Vᵀ S V (2F³ once). The cheaper wins.
    eigenbasis = len(ridges) * d > F
    if eigenbasis:
        S, R = V.T @ S @ V, V.T @ R
    out = np.empty((len(ridges), d))
    step = max(1, _PATH_BYTES // (8 * F * d))
    for i in range(0, len(ridges), step):
        lam = ridges[i : i + step]
        W = (c[:, None, :] / (e[:, None, None] + lam[None, :, None])).reshape(F, -1)
        if not eigenbasis:
            W = V @ W
        SW = (S @ W).reshape(F, len(lam), d)
        W = W.reshape(F, len(lam), d)
        out[i : i + step] = yy - 2 * np.einsum("fd,fkd->kd", R, W) + np.einsum("fkd,fkd->kd", W, SW)
    return np.maximum(out, 0.0)


def ridge_path(
    train: RidgeReadout,
    holdout: RidgeReadout | Sequence[RidgeReadout],
    grid: np.ndarray = RIDGE_GRID,
) -> tuple[float, list[tuple[float, float]]]:
    """The ridge for a readout fitted on ``train``'s rows, chosen on ``holdout``'s rows; and
    (ridge, holdout MSE summed over the target columns) per ridge of the grid.

    Ridges are ``grid`` × the mean variance of the features on the training rows, so the
    choice does not depend on their units. The errors come from the accumulated sums alone
    (``path_errors``: one eigendecomposition of the training rows' centred Gram matrix; the
    intercept unpenalised — with ``regularize_bias`` the ridge is chosen as if it were).

    Choice: the largest ridge whose MSE is within a slack of the least: one standard error
    of the blocks' MSEs at the best ridge (with several holdout blocks: the
    one-standard-error rule), or, when the least MSE is below 1e-4 of the holdout targets'
    variance (a nearly noiseless series such as Mackey–Glass), up to ten times the least
    (still below 1e-4 of the variance: one-step NRMSE about 3× the least). Among ridges
    that predict the held-out rows about equally well it takes the most regular readout,
    the one that stays stable when its outputs are fed back (``generate``): the least-MSE
    ridge of a nearly noiseless series is often tiny, and its closed loop diverges
    (measured on Mackey–Glass at 100–1000 units: with twice the least it still diverged
    at 500 and 1000 units; docs/dtesn.md).
    """
    blocks = [holdout] if isinstance(holdout, RidgeReadout) else list(holdout)
    blocks = [b.stats() for b in blocks if b.n_samples_ > 0]
    held_rows = sum(b.n for b in blocks)
    if train.n_samples_ < 2 or held_rows < 1:
        raise ValueError("ridge_path needs training and holdout rows")
    fitted = train.stats()
    scale = max(float(np.trace(fitted.scatter)) / max(len(fitted.mean), 1), 1e-300)
    ridges = np.asarray(grid, float) * scale
    per_block = np.array([path_errors(fitted, b, ridges).sum(axis=1) / b.n for b in blocks])
    weights = np.array([b.n for b in blocks], float) / held_rows
    mse = weights @ per_block  # (n_ridges,)
    table = [(float(r), float(e)) for r, e in zip(ridges, mse, strict=True)]
    finite = np.nonzero(np.isfinite(mse))[0]
    if not finite.size:
        return float(ridges[len(ridges) // 2]), table
    best = int(finite[np.argmin(mse[finite])])
    least = float(mse[best])
    se = 0.0
    if len(blocks) > 1:
        se = float(np.std(per_block[:, best], ddof=1) / np.sqrt(len(blocks)))
    # the holdout targets' variance about their own mean, summed over the columns
    variance = sum(float(np.sum(b.scatter_y)) for b in blocks) / held_rows
    # slack: one standard error; where the holdout is fitted to better than 1e-4 of its
    # variance (a nearly noiseless series), up to _NEAR_EXACT_SLACK times the least MSE
    threshold = least + se
    if least < _NEAR_EXACT * variance:
        threshold = max(threshold, min(_NEAR_EXACT_SLACK * least, _NEAR_EXACT * variance))
    within = finite[mse[finite] <= threshold]
    return float(ridges[within].max()), table


class RLSReadout:
    """Recursive least squares with forgetting factor λ (``forgetting``), one row at a time.

    For each row φ = [1, blocks…] and target y: k = Pφ/(λ + φᵀPφ), coef += k(y − coefᵀφ)ᵀ,
    P ← (P − PφφᵀP/(λ + φᵀPφ))/λ. With λ = 1 and P₀ = (G + ridge·D)⁻¹ this reproduces, row
    by row, the ridge solution on all data seen (``from_ridge``); λ < 1 weights a row k
    steps old by λᵏ and so tracks a drifting target. P is symmetrised once at the start and
    the rank-one update is applied as −ssᵀ with s = Pφ/√(λ + φᵀPφ), which keeps it exactly
    symmetric in floating point. A fresh readout starts from P₀ = I/delta, coef = 0
    (equivalent to ridge = delta on every coefficient).
    """

    def __init__(
        self, n_features: int, n_outputs: int, *, forgetting: float = 1.0, delta: float = 1e-6
    ) -> None:
        if not 0.0 < forgetting <= 1.0:
            raise ValueError(f"forgetting factor must be in (0, 1], got {forgetting}")
        if not delta > 0:
            raise ValueError(f"delta must be > 0, got {delta}")
        self.forgetting = float(forgetting)
        self.delta = float(delta)
        F = 1 + n_features
        self.P_ = np.asfortranarray(np.eye(F) / delta)
        self.coef_ = np.zeros((F, n_outputs))
        self.n_samples_ = 0

    @classmethod
    def from_ridge(cls, ridge: RidgeReadout, *, forgetting: float = 1.0) -> RLSReadout:
        """Continue a solved ridge readout: P₀ = (G + ridge·D)⁻¹ and coef₀ = its ``coef_``."""
        A = ridge._system()
        F, d_out = ridge.coef_.shape
        self = cls(F - 1, d_out, forgetting=forgetting, delta=max(ridge.ridge, 1e-300))
        try:
            P = sla.cho_solve(sla.cho_factor(A, check_finite=False), np.eye(F))
        except np.linalg.LinAlgError:
            P = np.linalg.pinv(A, hermitian=True)
        self.P_ = np.asfortranarray(0.5 * (P + P.T))
        self.coef_ = ridge.coef_.copy()
        self.n_samples_ = ridge.n_samples_
        return self

    def update(self, blocks: Sequence[np.ndarray], Y: np.ndarray) -> RLSReadout:
        """Absorb rows in order: blocks of shapes (n, fᵢ), targets (n, d_out). O(F²) per row."""
        Y = np.asarray(Y, dtype=np.float64)
        blocks = _as_blocks(blocks, Y)
        Phi = np.empty((Y.shape[0], self.P_.shape[0]))
        Phi[:, 0] = 1.0
        e = _edges([b.shape[1] for b in blocks])
        if e[-1] != Phi.shape[1] or Y.shape[1] != self.coef_.shape[1]:
            raise ValueError(
                f"expected {Phi.shape[1] - 1} features and {self.coef_.shape[1]} outputs, "
                f"got {e[-1] - 1} and {Y.shape[1]}"
            )
        for i, b in enumerate(blocks):
            Phi[:, e[i] : e[i + 1]] = b
        P, W, lam = self.P_, self.coef_, self.forgetting
        # P is symmetric, so its Fortran-ordered storage is also a C-ordered view of Pᵀ = P:
        # BLAS ger updates it in place without copies.
        ger = blas.get_blas_funcs("ger", (P,))
        inv_lam = 1.0 / lam
        for phi, y in zip(Phi, Y, strict=True):
            Pphi = P @ phi
            denom = lam + phi @ Pphi
            err = y - phi @ W
            W += np.multiply.outer(Pphi / denom, err)
            s = Pphi / np.sqrt(denom)
            P = ger(-1.0, s, s, a=P, overwrite_a=True)
            if lam != 1.0:
                P *= inv_lam
        self.P_ = P
        self.n_samples_ += Y.shape[0]
        return self

    def predict(self, blocks: Sequence[np.ndarray]) -> np.ndarray:
        """Outputs for blocks of shapes (…, fᵢ) → (…, d_out)."""
        return _predict(self.coef_, list(blocks))

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(JSON-ready settings, arrays), for ``readout_from_state``."""
        meta = {
            "kind": "rls",
            "forgetting": self.forgetting,
            "delta": self.delta,
            "n_samples": self.n_samples_,
        }
        return meta, {"coef": self.coef_, "P": np.ascontiguousarray(self.P_)}


def readout_from_state(
    meta: dict[str, Any], arrays: dict[str, np.ndarray]
) -> RidgeReadout | RLSReadout:
    """Rebuild a readout from ``get_state()`` output (the arrays are used as given)."""
    coef = arrays["coef"]
    if meta["kind"] == "ridge":
        ro = RidgeReadout(meta["ridge"], regularize_bias=meta["regularize_bias"])
        ro.gram_, ro.xty_, ro._widths = arrays["gram"], arrays["xty"], meta["widths"]
        ro.solver_ = meta["solver"]
    elif meta["kind"] == "rls":
        ro = RLSReadout(
            coef.shape[0] - 1, coef.shape[1], forgetting=meta["forgetting"], delta=meta["delta"]
        )
        ro.P_ = np.asfortranarray(arrays["P"])
    else:
        raise ValueError(f"unknown readout kind {meta['kind']!r}")
    ro.coef_, ro.n_samples_ = coef, meta["n_samples"]
    return ro
