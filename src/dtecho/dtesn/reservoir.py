"""Reservoir weights for a membrane tree, spectral radius, echo-state check, batched dynamics.

Dynamics, per unit i of membrane m, in input-sampling intervals:
    τ_m dx/dt = −x + f(W x + W_in u + b),     f = tanh (or identity for a linear reservoir),
with u held constant over each sample and W the whole network's block matrix (membrane
blocks on the diagonal, parent→child coupling below it, optional child→parent feedback above
it). One sample is 1/dt steps of an explicit Runge–Kutta method (any Butcher tableau from
``bseries``); with stage increments Gᵢ = a ⊙ (f(Xᵢ Wᵀ + p) − Xᵢ), a = dt/τ (per unit):
    Xᵢ = x + Σⱼ Aᵢⱼ Gⱼ,      x ← x + Σᵢ bᵢ Gᵢ.
Explicit Euler with dt = 1 is therefore exactly the leaky ESN x ← (1−a)x + a·f(Wx + W_in u + b).

States are row vectors: a batch is a (B, N) array and one step of all B sequences is one
(B×N)·(N×N) product. Buffers are (B, T, N); the input projection U·W_inᵀ + b for every step
is one matrix product written into the output buffer, which the time loop then overwrites
with states in place (no second T×N array).
"""

from __future__ import annotations

import functools
import itertools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import scipy.sparse as sps
from scipy.sparse.linalg import ArpackNoConvergence, eigs, svds

from . import _tilegen, bseries
from .membranes import Membrane

try:  # y += A·x for CSR without allocating; scipy's private kernel behind csr @ vector
    from scipy.sparse._sparsetools import csr_matvec as _csr_matvec
except ImportError:  # pragma: no cover - only if scipy moves it; the public path still works
    _csr_matvec = None

__all__ = [
    "INITIALISERS",
    "ESPReport",
    "Reservoir",
    "build_weights",
    "row_groups",
    "spectral_radius",
]


@functools.cache
def _numba_kernels() -> ModuleType | None:
    """The compiled kernels (``_kernels``), or None when Numba is missing or will not import
    (e.g. built for another NumPy). Imported on first use: Numba takes ~0.5 s to load."""
    try:
        from . import _kernels
    except ImportError:
        return None
    return _kernels


_DENSE_EIG_MAX = 128  # LAPACK eigvals below this size; ARPACK above (much faster at N ≥ 300)
_DENSE_MAX_BYTES = 512 * 2**20  # never materialise a dense W larger than this
_EXACT_PROJECT_MAX_D = 16  # inputs this narrow are projected column by column (see project)
# One sequence splits its units between n_jobs threads only with this many stored entries of
# W per thread: a step must take several microseconds for a per-step barrier to pay.
_ROW_SHARE_ENTRIES = 16384
# rows per group of the row-group layout; sequences per register tile of the batched
# row-group kernel. _tilegen (plain Python) holds them for the generated kernels too.
ROW_GROUP = _tilegen.GROUP
_TILE_LANES = _tilegen.LANES


def spectral_radius(W: np.ndarray | sps.sparray) -> float:
    """max |λ| of a square matrix: dense LAPACK for small N, ARPACK (implicitly restarted
    Arnoldi, several eigenvalues, tol 0, fixed start vector so it is deterministic) otherwise,
    falling back to dense if ARPACK does not converge."""
    n = W.shape[0]
    if n == 0:
        return 0.0
    if n > _DENSE_EIG_MAX:
        A = sps.csr_array(W, dtype=np.float64)
        if A.nnz == 0:
            return 0.0
        v0 = np.random.default_rng(0x5EED).standard_normal(n)
        try:
            lam = eigs(
                A,
                k=6,
                ncv=min(n - 1, 40),
                which="LM",
                tol=0,
                maxiter=50 * n,
                v0=v0,
                return_eigenvectors=False,
            )
            return float(np.abs(lam).max())
        except ArpackNoConvergence:
            if n * n * 8 > _DENSE_MAX_BYTES:
                raise
    dense = W.toarray() if sps.issparse(W) else np.asarray(W)
    return float(np.abs(np.linalg.eigvals(dense.astype(np.float64))).max())


def _in_degree(connectivity: float, cols: int) -> int:
    return max(1, min(cols, round(connectivity * cols)))


def _sparse_rows(
    rng: np.random.Generator,
    rows: int,
    cols: int,
    connectivity: float,
    scale: float,
    *,
    group: int = 1,
    row0: int = 0,
    init: str = "normal",
):
    """COO triplets with exactly k = max(1, round(connectivity·cols)) entries per row, drawn
    from ``init`` (N(0, 1), U[−1, 1] or ±1) times ``scale`` (fixed in-degree: no unit is
    left without recurrent input, even in tiny membranes).

    ``group`` > 1: the rows whose network index (``row0`` + local row) falls in the same
    aligned group of ``group`` units draw their k columns once, together (the values stay
    independent), so W stores no zeros in the row-group layout (``row_groups``). Each group
    takes k of the columns the groups before it used least (ties at random): independent
    draws would leave a column unused with probability (1 − k/cols)^groups (12 % at 320
    units, 10 % dense), a unit feeding nothing back and a rank W does not have."""
    k = _in_degree(connectivity, cols)
    if group == 1:
        c = np.concatenate([rng.choice(cols, size=k, replace=False) for _ in range(rows)])
    else:
        gid = (row0 + np.arange(rows)) // group
        counts = np.unique(gid, return_counts=True)[1]
        used = np.zeros(cols)
        picks = []
        for n in counts:
            pick = np.sort(np.argpartition(used + rng.random(cols), k - 1)[:k])
            used[pick] += 1
            picks.append(np.tile(pick, n))
        c = np.concatenate(picks)
    r = np.repeat(np.arange(rows), k)
    return r, c, _draw(rng, init, rows * k) * scale


INITIALISERS = ("uniform", "normal", "bernoulli")


def _draw(rng: np.random.Generator, init: str, size: int | tuple[int, ...]) -> np.ndarray:
    """Entries of a weight array: "uniform" U[−1, 1], "normal" N(0, 1), "bernoulli" ±1."""
    if init == "normal":
        return rng.standard_normal(size)
    if init == "uniform":
        return rng.uniform(-1.0, 1.0, size=size)
    return np.where(rng.random(size) < 0.5, -1.0, 1.0)


def _orthogonal(rng: np.random.Generator, n: int) -> np.ndarray:
    """A Haar-random orthogonal matrix (QR of a Gaussian with the signs of R fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def _group_keys(W: sps.csr_array, group: int) -> np.ndarray:
    """Sorted distinct (row group, column) pairs of W's entries, as group·N + column."""
    rows = np.repeat(np.arange(W.shape[0]), np.diff(W.indptr))
    return np.unique((rows // group).astype(np.int64) * W.shape[1] + W.indices)


def row_groups(
    W: sps.csr_array, group: int = ROW_GROUP, dtype: np.dtype | str = np.float64
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """W (N, N) in the row-group layout of the compiled kernels: rows in aligned groups of
    ``group``; group g's distinct columns, sorted, are ``cols[ptr[g]:ptr[g+1]]`` and the
    value of row g·group + l at the j-th of them is ``vals[j·group + l]`` (0 where that row
    has no entry there). Returns (ptr uint64, cols uint32, vals); ``vals.size / W.nnz`` is
    the padding the layout costs (1 for a W drawn with ``weights="grouped"``)."""
    W = sps.csr_array(W, copy=True)
    W.sum_duplicates()
    N, M = W.shape
    keys = _group_keys(W, group)
    ptr = np.zeros(-(-N // group) + 1, np.uint64)
    np.cumsum(np.bincount(keys // M, minlength=ptr.size - 1), out=ptr[1:])
    rows = np.repeat(np.arange(N), np.diff(W.indptr))
    slot = np.searchsorted(keys, (rows // group).astype(np.int64) * M + W.indices)
    vals = np.zeros(keys.size * group, dtype)
    vals[slot * group + rows % group] = W.data
    return ptr, (keys % M).astype(np.uint32), vals


def build_weights(
    membranes: tuple[Membrane, ...],
    input_dim: int,
    *,
    spectral_radius_target: float,
    connectivity: float,
    input_scaling: float | np.ndarray,
    input_connectivity: float,
    bias_scaling: float,
    coupling: float,
    feedback: float,
    input_to: str,
    weights: str,
    seed: int,
    input_init: str = "uniform",
    recurrent_init: str = "normal",
    bias_init: str = "uniform",
    bias_connectivity: float = 1.0,
) -> tuple[sps.csr_array, np.ndarray, np.ndarray]:
    """(W, W_in, b) for the network, float64: W (N, N) CSR, W_in (N, input_dim), b (N,).

    Each membrane draws from its own stream (``SeedSequence(seed).spawn``): its diagonal
    block is random sparse Gaussian (``weights="random"``, fixed in-degree; ``"grouped"``,
    the same but each aligned group of ``ROW_GROUP`` units shares its columns, the layout
    the compiled one-sequence kernel runs fastest) or Haar orthogonal (``"orthogonal"``,
    dense, connectivity ignored) and is first normalised to
    spectral radius 1; its coupling rows from the parent (scale ``coupling``) and its
    feedback columns to the parent (scale ``feedback``) have entries N(0, 1/k)·scale, k the
    in-degree, i.e. as strong as the membrane's own recurrence at scale 1. The whole matrix
    is then scaled so that its spectral radius is ``spectral_radius_target``. Without
    feedback W is block lower-triangular, so its spectrum is the union of the blocks'
    (radius exactly max = 1 before scaling); with feedback it is computed on the whole W.
    A ``"grouped"`` W is finally rounded to float32 numbers (relative change < 6e-8), which
    the compiled float64 loops read as float32 (``Reservoir._value_dtype``).

    Distributions (``INITIALISERS``): ``recurrent_init`` draws the recurrent and coupling
    values ("normal" N(0, 1), "uniform" U[−1, 1], "bernoulli" ±1; the scale does not matter,
    the radius is normalised), ``input_init`` the entries of W_in before ``input_scaling``
    and ``bias_init`` those of b before ``bias_scaling``; an input (bias) entry is kept with
    probability ``input_connectivity`` (``bias_connectivity``).
    """
    for name, value in (
        ("input_init", input_init),
        ("recurrent_init", recurrent_init),
        ("bias_init", bias_init),
    ):
        if value not in INITIALISERS:
            raise ValueError(f"{name} must be one of {', '.join(INITIALISERS)}, got {value!r}")
    N = membranes[-1].stop
    group = ROW_GROUP if weights == "grouped" else 1
    streams = np.random.SeedSequence(seed).spawn(len(membranes))
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    W_in = np.zeros((N, input_dim))
    bias = np.zeros(N)
    scale_in = np.broadcast_to(np.asarray(input_scaling, dtype=np.float64), (input_dim,))
    radius = 0.0
    for m, stream in zip(membranes, streams, strict=True):
        r_rec, r_in, r_b, r_c = (np.random.default_rng(s) for s in stream.spawn(4))
        n, s0 = m.units, m.start
        if weights == "orthogonal":
            block, rho = _orthogonal(r_rec, n), 1.0
            r, c = np.nonzero(np.ones((n, n), dtype=bool))
            v = block.ravel()
        else:
            r, c, v = _sparse_rows(
                r_rec, n, n, connectivity, 1.0, group=group, row0=s0, init=recurrent_init
            )
            rho = spectral_radius(sps.csr_array((v, (r, c)), shape=(n, n)))
            if rho > 0:  # a nilpotent draw (possible only for tiny blocks) stays as drawn
                v = v / rho
        radius = max(radius, 1.0 if rho > 0 else 0.0)
        rows.append(r + s0)
        cols.append(c + s0)
        vals.append(v)
        if m.parent is not None:
            p = membranes[m.parent]
            if coupling:  # rows of this membrane, columns of its parent
                k = _in_degree(connectivity, p.units)
                r, c, v = _sparse_rows(
                    r_c,
                    n,
                    p.units,
                    connectivity,
                    coupling / np.sqrt(k),
                    group=group,
                    row0=s0,
                    init=recurrent_init,
                )
                rows.append(r + s0), cols.append(c + p.start), vals.append(v)
            if feedback:  # rows of the parent, columns of this membrane
                k = _in_degree(connectivity, n)
                r, c, v = _sparse_rows(
                    r_c,
                    p.units,
                    n,
                    connectivity,
                    feedback / np.sqrt(k),
                    group=group,
                    row0=p.start,
                    init=recurrent_init,
                )
                rows.append(r + p.start), cols.append(c + s0), vals.append(v)
        if input_to == "all" or m.parent is None:
            w = _draw(r_in, input_init, (n, input_dim)) * scale_in
            if input_connectivity < 1.0:
                w *= r_in.random((n, input_dim)) < input_connectivity
            W_in[s0 : s0 + n] = w
        if bias_scaling:
            b = _draw(r_b, bias_init, n) * bias_scaling
            if bias_connectivity < 1.0:
                b *= r_b.random(n) < bias_connectivity
            bias[s0 : s0 + n] = b
    W = sps.csr_array(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(N, N)
    )
    if feedback and len(membranes) > 1:
        radius = spectral_radius(W)
    if radius > 0:
        W = W * (spectral_radius_target / radius)
    W.sort_indices()
    if weights == "grouped":  # float32 numbers: the compiled loops read them at half the cost
        W.data = W.data.astype(np.float32).astype(np.float64)
    return sps.csr_array(W), W_in, bias


@dataclass(frozen=True)
class ESPReport:
    """Echo-state-property diagnostics of a reservoir.

    ``spectral_radius`` ρ(W); ``max_singular_value`` σ_max(W) (σ_max < 1 is sufficient for
    the ESP of a tanh reservoir with any leak); ``linearized_radius`` ρ of the one-sample
    Euler map's Jacobian at the origin, I + diag(a)(W − I) (< 1 is necessary for zero input);
    ``contraction`` the ratio of final to initial distance between two trajectories started
    from different random states under the same random input; ``holds`` = contraction < tol.
    """

    spectral_radius: float
    max_singular_value: float
    linearized_radius: float
    contraction: float
    holds: bool


class Reservoir:
    """A built network: weights (float64 master copies) plus the time integration.

    ``W`` (N, N) CSR, ``W_in`` (N, d_in), ``bias`` (N,), ``leak`` (N,) = dt/τ per unit,
    ``tableau`` an explicit Butcher tableau, ``substeps`` = 1/dt steps per sample.
    ``matrix_format``: "dense" uses BLAS, "sparse" uses CSR, "auto" picks per call from a
    cost model of B, N, density, dtype and backend. ``backend``: "numba" runs the Euler
    (leaky-ESN) loop over a CSR matrix in compiled kernels (``_kernels``; needs the ``fast``
    extra), "numpy" never does, "auto" uses Numba when it is installed. Both give the same
    states up to rounding (~1e-15; each is bit-identical batched and alone when W is CSR);
    other integrators always use the NumPy loop. ``n_jobs``:
    threads for the compiled loop: a batch is split between them (at least 8 sequences
    each); one sequence of a large enough reservoir (``_ROW_SHARE_ENTRIES`` stored entries
    of W per thread) has its units split between them, the threads meeting after every step
    on a busy-waiting barrier (``_barrier``), so only with a core per thread. The states do
    not depend on it, bit for bit.
    """

    def __init__(
        self,
        W: sps.csr_array,
        W_in: np.ndarray,
        bias: np.ndarray,
        leak: np.ndarray,
        *,
        tableau: bseries.Tableau,
        substeps: int = 1,
        activation: str = "tanh",
        dtype: str = "float64",
        matrix_format: str = "auto",
        backend: str = "auto",
        n_jobs: int = 1,
    ) -> None:
        if not tableau.explicit:
            raise ValueError(f"integrator {tableau.name!r} is implicit; only explicit tableaux")
        if activation not in ("tanh", "identity"):
            raise ValueError(f"activation must be 'tanh' or 'identity', got {activation!r}")
        if matrix_format not in ("auto", "dense", "sparse"):
            raise ValueError(f"matrix_format must be auto, dense or sparse, got {matrix_format!r}")
        if backend not in ("auto", "numpy", "numba"):
            raise ValueError(f"backend must be auto, numpy or numba, got {backend!r}")
        if backend == "numba" and _numba_kernels() is None:
            raise ValueError(
                "backend='numba' needs Numba, which is not importable here: pip install numba"
            )
        if isinstance(n_jobs, bool) or int(n_jobs) != n_jobs or n_jobs < 1:
            raise ValueError(f"n_jobs must be an integer >= 1, got {n_jobs!r}")
        self.W, self.W_in, self.bias, self.leak = W, W_in, bias, leak
        self.tableau, self.substeps, self.activation = tableau, int(substeps), activation
        self.dtype = np.dtype(dtype)
        self.matrix_format = matrix_format
        self.backend = backend
        self.n_jobs = int(n_jobs)
        self.units, self.input_dim = W_in.shape
        self._dense_T: np.ndarray | None = None
        self._csr: sps.csr_array | None = None
        self._csr_u: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._groups: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._group_entries: int | None = None

    # -- runtime matrices ---------------------------------------------------------------

    def _compiled(self) -> bool:
        """Whether the Numba kernels run this reservoir's loop (Euler, one step per sample)."""
        euler = self.tableau.name == "euler" and self.tableau.stages == 1 and self.substeps == 1
        return euler and self.backend != "numpy" and _numba_kernels() is not None

    def _use_dense(self, batch: int, compiled: bool) -> bool:
        if self.matrix_format != "auto":
            return self.matrix_format == "dense"
        N, nnz = self.units, self.W.nnz
        if N * N * self.dtype.itemsize > _DENSE_MAX_BYTES:
            return False
        f32 = self.dtype == np.float32
        # Per-step cost model (ns), measured on a 2-core AVX-512 (Zen 4) machine. BLAS: gemv
        # 0.085 per entry in float64 (0.13 once W outgrows the L3 cache), 0.045 in float32,
        # and GEMM with fewer than 8 rows runs at that speed too; larger GEMM 0.048 per entry
        # and sequence (float64), 0.024 (float32). The NumPy loop adds ~5 µs of Python per
        # step. SciPy CSR mat-vec: 0.76 per nonzero.
        gemv = 0.045 if f32 else (0.085 if N * N * 8 <= 16 * 2**20 else 0.13)
        gemm = gemv if batch < 8 else (0.024 if f32 else 0.048)
        dense = gemm * N * N * batch + 5000.0
        if not compiled:  # SciPy's sparse products: only worth it for one sequence
            return batch > 1 or dense < 0.76 * nnz + 5000.0
        # Numba kernels (no Python per step): the sparse product (``_sparse_costs``) plus ~3
        # per unit and sequence for tanh, leak and (batched) the transposes, ~3 µs per step.
        sparse = min(self._sparse_costs(batch)) + 3.0 * N * batch + (3000.0 if batch > 1 else 0)
        return dense < sparse

    def _sparse_costs(self, batch: int) -> tuple[float, float]:
        """Per-step cost (ns) of the compiled sparse product of ``batch`` sequences, (CSR,
        row groups), measured as ``_use_dense``'s. One sequence: CSR 0.4 per nonzero; row
        groups 0.08 per stored entry in float64, 0.06 in float32, zeros included (see
        ``row_groups``). Batched: CSR 1.7 per nonzero plus 0.10 (float64) or 0.04 (float32)
        per nonzero and sequence; row groups 0.035 (0.017) per stored entry and sequence,
        the batch rounded up to whole register tiles of ``_TILE_LANES`` sequences (the
        kernel runs the spare lanes on zeros) — on CPUs with AVX-512's 32 vector registers.
        With 16 (AVX2) a tile's 128 sums do not fit in registers and spill: 0.16 (0.075),
        measured on an AMD EPYC of the Zen 3 class, a little above CSR there. The row-group
        layout is only considered while it stores at most twice the nonzeros (else
        ``inf``): a padded layout also outgrows the caches (a random 10 % dense W of 1000
        units pads 8× and runs 5× slower for one sequence)."""
        nnz = self.W.nnz
        f32 = self.dtype == np.float32
        csr = 0.4 * nnz if batch == 1 else (1.7 + (0.04 if f32 else 0.10) * batch) * nnz
        if self.matrix_format == "sparse" or nnz == 0:
            return csr, np.inf
        entries = self._row_group_entries()
        if entries > 2 * nnz:
            return csr, np.inf
        if batch == 1:
            return csr, (0.06 if f32 else 0.08) * entries
        lanes = -(-batch // _TILE_LANES) * _TILE_LANES
        kernels = _numba_kernels()
        if kernels is not None and kernels.WIDE_REGISTERS:
            return csr, (0.017 if f32 else 0.035) * lanes * entries
        return csr, (0.075 if f32 else 0.16) * lanes * entries

    def _row_group_entries(self) -> int:
        """Entries (zeros included) W takes in the row-group layout; counted once."""
        if self._group_entries is None:
            self._group_entries = _group_keys(sps.csr_array(self.W), ROW_GROUP).size * ROW_GROUP
        return self._group_entries

    def _use_groups(self, batch: int = 1) -> bool:
        """Whether the compiled loop over ``batch`` sequences runs on the row-group layout
        (never with ``matrix_format="sparse"``, which asks for CSR)."""
        csr, grouped = self._sparse_costs(batch)
        return grouped < csr

    def _matrices(self, dense: bool):
        if dense:
            if self._dense_T is None:
                self._dense_T = np.ascontiguousarray(self.W.T.toarray(), dtype=self.dtype)
            return self._dense_T
        if self._csr is None:
            c = sps.csr_array(self.W, dtype=self.dtype)
            c.indices = c.indices.astype(np.int32)
            c.indptr = c.indptr.astype(np.int32)
            self._csr = c
        return self._csr

    def _csr_unsigned(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(indptr uint64, indices uint32, data) of W for the Numba kernels."""
        if self._csr_u is None:
            c = self._matrices(False)
            data = c.data.astype(self._value_dtype())
            self._csr_u = (c.indptr.astype(np.uint64), c.indices.astype(np.uint32), data)
        return self._csr_u

    def _row_groups(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """W in the row-group layout (``row_groups``) in ``_value_dtype``, built once."""
        if self._groups is None:
            self._groups = row_groups(self.W, ROW_GROUP, self._value_dtype())
        return self._groups

    def _value_dtype(self) -> np.dtype:
        """The dtype the compiled kernels read W's values in: the run dtype, except that a
        float64 run whose W holds only float32 numbers (``weights="grouped"`` draws them so)
        reads them as float32. Widening a float32 to float64 is exact, so the states are the
        same bit for bit, and W's values take half the memory traffic: the one-sequence loop
        streams all of W every step, and at 1000 units float64 values (800 kB) outgrow the
        L2 cache while float32 ones (400 kB) stay in it."""
        data = self.W.data
        if self.dtype == np.float64 and np.array_equal(data.astype(np.float32), data):
            return np.dtype(np.float32)
        return self.dtype

    # -- dynamics -----------------------------------------------------------------------

    def project(self, U: np.ndarray) -> np.ndarray:
        """U (B, T, d_in) → U·W_inᵀ + b as a new (B, T, N) array of the run dtype."""
        U = np.asarray(U, dtype=self.dtype)
        B, T, d = U.shape
        WT = self.W_in.T.astype(self.dtype)
        P = np.empty((B * T, self.units), self.dtype)
        # One 2-D product over all B·T rows (numpy's stacked matmul loops over B). The output
        # pages are first touched by one thread: page faults taken inside a multithreaded
        # GEMM were measured 5-10× slower than the product itself.
        if d <= _EXACT_PROJECT_MAX_D:
            # Column by column, in a fixed order: every row is computed by exactly the same
            # operations whatever B·T is, so a sequence's projection (and hence its states)
            # is bit-identical alone and in a batch. A BLAS product does not promise that:
            # NumPy hands a single row to gemv, which rounds differently from gemm.
            flat = U.reshape(B * T, d)
            np.multiply(flat[:, :1], WT[0], out=P)
            rows = max(1, 2**20 // max(1, self.units))  # ~8 MB of scratch at a time
            tmp = np.empty((min(rows, B * T), self.units), self.dtype) if d > 1 else None
            for r0 in range(0, B * T, rows) if d > 1 else ():
                out, t = P[r0 : r0 + rows], tmp[: min(rows, B * T - r0)]
                for j in range(1, d):
                    np.multiply(flat[r0 : r0 + rows, j : j + 1], WT[j], out=t)
                    out += t
        else:
            P.reshape(-1)[:: max(1, 4096 // P.itemsize)] = 0
            np.matmul(U.reshape(B * T, d), WT, out=P)
        P = P.reshape(B, T, self.units)
        if self.bias.any():
            P += self.bias.astype(self.dtype)
        return P

    def run_projected(
        self,
        P: np.ndarray,
        x0: np.ndarray | None = None,
        lengths: np.ndarray | None = None,
        *,
        share_rows: bool = True,
    ) -> np.ndarray:
        """Overwrite projected inputs P (B, T, N) with the states; returns P.

        ``x0`` (B, N) is the state before the first sample (zeros if None). ``lengths`` (B,)
        non-increasing: sequence b only advances for t < lengths[b] (rows past its end are
        left untouched), so a padded batch gives exactly the states of each sequence alone.
        ``share_rows=False``: one sequence runs on one thread whatever ``n_jobs`` (for a
        caller that keeps the other cores busy itself).
        """
        B, T, N = P.shape
        if P.dtype != self.dtype or self.units != N:
            raise ValueError(f"projected inputs must be (B, T, {self.units}) {self.dtype}")
        x, active = self._start(B, T, x0, lengths)
        compiled = self._compiled()
        dense = self._use_dense(B, compiled)
        if compiled and not dense:
            self._run_compiled(P, x, active, share_rows=share_rows)
            return P
        M = self._matrices(dense)
        # affine(x, p, out): out = x·Wᵀ + p, out contiguous (the state views are strided).
        if dense:

            def affine(x: np.ndarray, p: np.ndarray, out: np.ndarray) -> None:
                np.matmul(x, M, out=out)
                out += p
        elif B == 1 and _csr_matvec is not None:
            ip, ix, dat = M.indptr, M.indices, M.data

            def affine(x: np.ndarray, p: np.ndarray, out: np.ndarray) -> None:
                # W·x first, then + p: the batched CSR path's order, so a sequence gives
                # bit-identical states alone or in a batch.
                out.fill(0)
                _csr_matvec(N, N, ip, ix, dat, x[0], out[0])
                out += p
        else:

            def affine(x: np.ndarray, p: np.ndarray, out: np.ndarray) -> None:
                np.add((M @ x.T).T, p, out=out)

        leak = self.leak.astype(self.dtype)
        a: float | np.ndarray = float(leak[0]) if np.all(leak == leak[0]) else leak
        tanh = self.activation == "tanh"
        if self.tableau.name == "euler" and self.tableau.stages == 1 and self.substeps == 1:
            self._loop_euler(P, x, active, affine, a, tanh)
        else:
            self._loop_rk(P, x, active, affine, a, tanh)
        return P

    def _start(self, B: int, T: int, x0, lengths) -> tuple[np.ndarray, list[int]]:
        """The initial states (B, N) and the number of active sequences at each step."""
        x = np.zeros((B, self.units), self.dtype) if x0 is None else np.array(x0, self.dtype)
        if lengths is None:
            return x, [B] * T
        lengths = np.asarray(lengths)
        if np.any(np.diff(lengths) > 0):
            raise ValueError("lengths must be sorted in non-increasing order")
        return x, [int(np.count_nonzero(lengths > t)) for t in range(T)]

    def _run_compiled(
        self,
        P: np.ndarray,
        x: np.ndarray,
        active: list[int],
        U: np.ndarray | None = None,
        *,
        share_rows: bool = True,
    ) -> None:
        """The Euler loop over CSR W in the Numba kernels (see ``_kernels``), in place in P.
        With ``U`` (batches only) P's contents are ignored and the kernel projects U itself."""
        kernels = _numba_kernels()
        ip, ix, data = self._csr_unsigned()
        a = self.leak.astype(self.dtype)
        leaky = not np.all(a == 1.0)
        tanh = self.activation == "tanh"
        if P.shape[0] == 1:
            steps = sum(1 for k in active if k)
            if self._use_groups():
                layout, run = self._row_groups(), kernels.euler_grouped_single
                entries = self._row_group_entries()
            else:
                layout, run, entries = (ip, ix, data), kernels.euler_csr_single, data.size
            threads = min(self.n_jobs, entries // _ROW_SHARE_ENTRIES) if share_rows else 1
            run(*layout, P[0], x[0], a, tanh, leaky, steps, max(threads, 1))
            return
        steps = np.asarray(active, dtype=np.int64)
        fused = U is not None
        if fused:
            U = np.ascontiguousarray(U, dtype=self.dtype)
            WinT = np.ascontiguousarray(self.W_in.T, dtype=self.dtype)
            bias = self.bias.astype(self.dtype)
        else:  # placeholders of the same types, so that one compiled version serves both
            U, WinT, bias = np.zeros((P.shape[0], 1, 1), P.dtype), np.zeros((1, 1), P.dtype), a
        inputs = (WinT, bias, fused, bool(self.bias.any()))

        def batch(P: np.ndarray, x: np.ndarray, steps: np.ndarray, U: np.ndarray) -> None:
            if self._use_groups(P.shape[0]):
                gp, gc, gv = self._row_groups()
                kernels.euler_grouped_batch(gp, gc, gv, P, x, a, tanh, leaky, steps, U, *inputs)
            else:
                kernels.euler_csr_batch(ip, ix, data, P, x, a, tanh, leaky, steps, U, *inputs)

        parts = min(self.n_jobs, P.shape[0] // 8)
        if parts <= 1:
            batch(P, x, steps, U)
            return
        # Sequences are independent: each thread runs the kernel (which releases the GIL) on
        # a contiguous share of them, so the arithmetic per sequence is unchanged.
        edges = np.linspace(0, P.shape[0], parts + 1).astype(int)

        def share(lo: int, hi: int) -> None:
            batch(P[lo:hi], x[lo:hi], np.clip(steps - lo, 0, hi - lo), U[lo:hi])

        with ThreadPoolExecutor(parts) as pool:
            for done in [pool.submit(share, lo, hi) for lo, hi in itertools.pairwise(edges)]:
                done.result()

    @staticmethod
    def _loop_euler(P, x, active, affine, a, tanh) -> None:
        """x ← x + a(f(xWᵀ + p) − x), in place in P; the hot loop of the whole package."""
        z_buf = np.empty_like(x)
        th, sub, mul, add = np.tanh, np.subtract, np.multiply, np.add
        leaky = not (isinstance(a, float) and a == 1.0)
        prev = x
        for t, k in enumerate(active):
            if k == 0:
                break
            cur, z = P[:k, t], z_buf[:k]
            if k != prev.shape[0]:
                prev = prev[:k]
            affine(prev, cur, z)
            if tanh:
                th(z, out=z)
            if leaky:
                sub(z, prev, out=z)
                mul(z, a, out=z)
                add(z, prev, out=cur)
            else:
                np.copyto(cur, z)
            prev = cur

    def _loop_rk(self, P, x, active, affine, a, tanh) -> None:
        """General explicit Runge–Kutta with ``substeps`` steps per sample, input held."""
        A, b, s = self.tableau.A, self.tableau.b, self.tableau.stages
        G = np.empty((s, *x.shape), x.dtype)
        X = np.empty_like(x)
        state = x.copy()
        for t, k in enumerate(active):
            if k == 0:
                break
            p = P[:k, t].copy()
            xs = state[:k]
            for _ in range(self.substeps):
                for i in range(s):
                    Xi = X[:k]
                    np.copyto(Xi, xs)
                    for j in range(i):
                        if A[i, j] != 0.0:
                            Xi += A[i, j] * G[j, :k]
                    g = G[i, :k]
                    affine(Xi, p, g)
                    if tanh:
                        np.tanh(g, out=g)
                    g -= Xi
                    g *= a
                for i in range(s):
                    if b[i] != 0.0:
                        xs += b[i] * G[i, :k]
            P[:k, t] = xs

    def run(
        self,
        U: np.ndarray,
        x0: np.ndarray | None = None,
        lengths: np.ndarray | None = None,
        *,
        share_rows: bool = True,
    ) -> np.ndarray:
        """States (B, T, N) for inputs U (B, T, d_in); see ``run_projected`` (rows past the
        end of a shorter sequence hold no state: its projected inputs, or zeros)."""
        U = np.asarray(U)
        B, T, d = U.shape
        if (
            B > 1
            and d <= _EXACT_PROJECT_MAX_D
            and self._compiled()
            and not self._use_dense(B, True)
        ):
            # The batched kernel projects the inputs itself, exactly as ``project`` would.
            x, active = self._start(B, T, x0, lengths)
            S = np.empty((B, T, self.units), self.dtype)
            self._run_compiled(S, x, active, U)
            if lengths is not None:
                for b, L in enumerate(np.asarray(lengths)):
                    S[b, L:] = 0
            return S
        return self.run_projected(self.project(U), x0, lengths, share_rows=share_rows)

    def esp_check(self, n_steps: int = 1000, *, seed: int = 0, tol: float = 1e-6) -> ESPReport:
        """Echo-state diagnostics (see ``ESPReport``); drives with u ~ U[−1, 1]."""
        rng = np.random.default_rng(seed)
        W = self.W.astype(np.float64)
        N = self.units
        if N > _DENSE_EIG_MAX and W.nnz:
            smax = float(svds(W, k=1, return_singular_vectors=False, v0=rng.standard_normal(N))[0])
        else:
            smax = float(np.linalg.norm(W.toarray(), 2)) if N else 0.0
        a = self.leak * self.substeps
        J = sps.identity(N, format="csr") + sps.diags_array(a) @ (W - sps.identity(N))
        x0 = rng.uniform(-1.0, 1.0, size=(2, N))
        U = np.broadcast_to(
            rng.uniform(-1.0, 1.0, size=(1, n_steps, self.input_dim)), (2, n_steps, self.input_dim)
        )
        S = self.run(U, x0=x0)
        d0 = np.linalg.norm(x0[0] - x0[1])
        ratio = float(np.linalg.norm(S[0, -1] - S[1, -1]) / d0)
        return ESPReport(spectral_radius(W), smax, spectral_radius(J), ratio, ratio < tol)
