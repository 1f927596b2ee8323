"""Optional Numba kernels for the leaky-ESN time loop (explicit Euler, one step per sample)
with a CSR recurrent matrix. Numba comes with the ``fast`` extra; ``reservoir.py`` imports
this module on first use only (importing Numba takes ~0.5 s) and keeps its NumPy/SciPy loop
when the import fails. Both compute the same states up to rounding: the sums run in another
order and ``tanh`` is computed here (``_tanh``, within 2 ulp of NumPy's), so states differ
by a few ulp (~1e-15 for states of size 1).

  * ``euler_csr_single``: one sequence; the whole time loop is compiled. Four rows' dot
    products run interleaved, so it runs at about 1.2 cycles per nonzero (bound by loads)
    instead of waiting on one chain of additions.
  * ``euler_csr_batch``: B sequences; states are kept transposed, (N, B), so each nonzero
    W[i, j] updates a contiguous run of B values (row j of the states) rather than gathering
    from B rows, and four nonzeros are applied per pass over the run, so every accumulator
    is loaded and stored once per four nonzeros. Given the raw inputs (``fused``) it also
    computes the input projection itself, in exactly the operations of
    ``Reservoir.project``, so the (B, T, N) projections are never written and re-read; rows
    move between the (B, ·, N) output and the transposed states in blocks of units.

Both sum every row in index order starting from the projected input (as SciPy's
csr_matvec does), so a sequence gets bit-identical states alone or in any batch
(``tests/dtesn/test_numba_backend.py``).

  * ``euler_grouped_single``: one sequence, with W stored by *row groups* (see
    ``reservoir.row_groups``): each aligned group of ``GROUP`` = 16 rows keeps one shared,
    sorted list of columns and a (columns × 16) block of values, zero where a row lacks the
    column. Each step then multiplies a 16-row block by a broadcast state value, which LLVM
    turns into SIMD products without gathers; a W drawn with ``weights="grouped"`` (every
    group shares its inputs) stores no zeros at all and steps several times faster than the
    CSR kernel (``benchmarks/speed.py --parts a`` compares the two on the same density).
    Adding a stored zero leaves a sum unchanged, so the rows are summed in exactly the CSR
    order and the states are bit-identical to ``euler_csr_single``/``euler_csr_batch``.

Indices are unsigned throughout (``indptr`` uint64, ``indices`` uint32): Numba guards every
signed index against Python's negative wrap-around, which blocks vectorisation and about
doubles the cost of a sparse product. ``error_model="numpy"`` drops the zero-division checks
for the same reason.
"""

from __future__ import annotations

import math
import threading

import llvmlite.ir as llvm_ir
import numba
import numpy as np
from numba.extending import intrinsic

from ._tiles import LANES as TILE_LANES
from ._tiles import grouped_tiles

__all__ = [
    "GROUP",
    "euler_csr_batch",
    "euler_csr_single",
    "euler_grouped_batch",
    "euler_grouped_single",
]

_LN2_HI = 6.93147180369123816490e-01  # ln 2 split for an exact k·ln2 (Cody & Waite)
_LN2_LO = 1.90821492927058770002e-10
_EXP_TAYLOR = tuple(1.0 / math.factorial(n) for n in range(14))
_BLOCK = 8  # units per block when copying between (B, ·, N) rows and (N, B) states
GROUP = 16  # rows per row group (``euler_grouped_single``); its 16 accumulators are spelled out

_compiled: set[tuple] = set()
_compile_lock = threading.Lock()


def _jit(contract: bool = True, **options):
    """Every kernel lets LLVM fuse a multiply and the add of its product into one FMA
    (``contract``): one rounding instead of two, and twice the arithmetic per instruction.
    All kernels do, in the same order, so they stay bit-identical to one another; only the
    in-kernel input projection opts out, to match ``Reservoir.project`` (NumPy, unfused)."""
    fastmath = {"contract"} if contract else False
    return numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=fastmath, **options)


def _compile_slp(function, *types) -> None:
    """Compile ``function`` for ``types`` (or load it from Numba's cache) with LLVM's SLP
    vectorizer on. Numba turns SLP off by default (numba#8852: it miscompiled with older
    LLVMs), but only SLP vectorises the row-group kernels' spelled-out accumulators
    (``_grouped_matvec_add``, ``_tiles.grouped_tiles``); the CSR kernels are slower with
    it and compile without. Only these inner products get SLP: a kernel compiled whole
    with it was seen to lose bit-identity, SLP packing some multiplies of a scalar loop
    away from their adds so that they no longer fuse like the loop's other iterations. The
    setting is process-wide, so it is switched on only while compiling, under a lock. A
    kernel compiled afterwards links these compiled versions (same types) as they are."""
    if (function, types) in _compiled:
        return
    with _compile_lock:
        previous = numba.config.SLP_VECTORIZE
        numba.config.SLP_VECTORIZE = 1
        try:
            function.compile(types)
        finally:
            numba.config.SLP_VECTORIZE = previous
        _compiled.add((function, types))


def _layout_types(gptr, gcols, gvals) -> tuple:
    return numba.typeof(gptr), numba.typeof(gcols), numba.typeof(gvals)


def euler_grouped_single(gptr, gcols, gvals, P, x0, a, tanh, leaky, n_steps) -> None:
    """``euler_csr_single`` with W in the row-group layout (``reservoir.row_groups``)."""
    x0 = np.ascontiguousarray(x0)
    row = numba.typeof(x0)
    _compile_slp(_grouped_matvec_add, *_layout_types(gptr, gcols, gvals), row, row)
    _euler_grouped_single(gptr, gcols, gvals, P, x0, a, tanh, leaky, n_steps)


def euler_grouped_batch(
    gptr, gcols, gvals, P, x0, a, tanh, leaky, active, U, WinT, bias, fused, has_bias
) -> None:
    """``euler_csr_batch`` with W in the row-group layout (``reservoir.row_groups``). Every
    row is summed in the same order as by the CSR kernels, so a sequence's states are
    bit-identical to theirs, alone or in any batch."""
    buffer = numba.types.Array(numba.from_dtype(P.dtype), 2, "C")
    layout = _layout_types(gptr, gcols, gvals)
    _compile_slp(grouped_tiles, *layout, buffer, buffer, numba.types.int64)
    _euler_grouped_batch(
        gptr, gcols, gvals, P, x0, a, tanh, leaky, active, U, WinT, bias, fused, has_bias
    )


@intrinsic
def _pow2(typingctx, k):
    """2.0**k for an int64 k in [0, 1023], by writing k + 1023 into a float64's exponent
    bits: plain integer SIMD, where a table of powers would need a gather."""

    def codegen(context, builder, signature, args):
        i64 = llvm_ir.IntType(64)
        bits = builder.shl(
            builder.add(args[0], llvm_ir.Constant(i64, 1023)), llvm_ir.Constant(i64, 52)
        )
        return builder.bitcast(bits, llvm_ir.DoubleType())

    return numba.types.float64(numba.types.int64), codegen


@_jit(inline="always")
def _tanh(x):  # pragma: no cover - compiled
    """tanh(x) without libm, so that loops over it vectorise (libm's scalar tanh costs
    ~10 ns, this ~2 ns per value with AVX-512, like NumPy's own SIMD tanh).

    |x| < 0.625: Cephes' rational form x + x³·P(x²)/Q(x²). Otherwise 1 − 2/(e^{2|x|} + 1)
    with the sign of x, e^y = 2^k·e^r, k = round(y/ln 2), r = y − k·ln 2 ∈ [−ln2/2, ln2/2]
    by Taylor to degree 13 (truncation < 1e-17); |x| is clamped at 19.0625, beyond which
    tanh rounds to ±1. Both branches are computed (SIMD has no branches) but share one
    division, base + m·(n/d), whose operands are picked first. Measured against np.tanh on
    8e6 points over [−25, 25] and scales 1e-8 … 10: at most 2 ulp apart (libm's tanh: 3).
    """
    a = min(abs(x), 19.0625)
    z = x * x
    p = (-9.64399179425052238628e-1 * z - 9.92877231001918586564e1) * z - 1.61468768441708447952e3
    q = (
        (z + 1.12811678491632931402e2) * z + 2.23548839060100448583e3
    ) * z + 4.84406305325125486048e3
    y = a + a
    kf = np.floor(y * 1.4426950408889634 + 0.5)
    r = (y - kf * _LN2_HI) - kf * _LN2_LO
    c = _EXP_TAYLOR
    e = c[13]
    for n in range(12, -1, -1):
        e = c[n] + r * e
    e *= _pow2(np.int64(kf))
    small = a < 0.625
    # small: x + (x·z)·(p/q); otherwise 1 + (−2)·(1/(e + 1)), which rounds as 1 − 2/(e + 1)
    base = x if small else 1.0
    m = x * z if small else -2.0
    v = base + m * ((p if small else 1.0) / (q if small else e + 1.0))
    out = v if small else math.copysign(v, x)
    return out if x == x and x != 0.0 else x  # NaN stays NaN; ±0 keeps its sign


@_jit(inline="always")
def _activate(z, x, a, tanh, leaky):  # pragma: no cover - compiled
    """z ← x + a ⊙ (f(z) − x) (f(z) itself when not ``leaky``), f = tanh or identity, for
    vectors z, x, a. Two passes: LLVM vectorises each, but not one loop holding both."""
    if tanh:
        for i in range(z.shape[0]):
            z[i] = _tanh(z[i])
    if leaky:
        for i in range(z.shape[0]):
            z[i] = x[i] + a[i] * (z[i] - x[i])


@_jit(inline="always")
def _csr_matvec_add(indptr, indices, data, x, out):  # pragma: no cover - compiled
    """out += W x for CSR W, every row summed in index order starting from out[i] (the
    order of SciPy's csr_matvec and of ``euler_csr_batch``, hence bit-identical to both).
    Four rows are interleaved so that four independent chains of additions hide the
    latency that a single chain would expose."""
    N = out.shape[0]
    i = 0
    while i + 4 <= N:
        k0 = np.uint64(indptr[i])
        k1 = np.uint64(indptr[i + 1])
        k2 = np.uint64(indptr[i + 2])
        k3 = np.uint64(indptr[i + 3])
        l0 = k1 - k0
        l1 = k2 - k1
        l2 = k3 - k2
        l3 = np.uint64(indptr[i + 4]) - k3
        s0 = out[i]
        s1 = out[i + 1]
        s2 = out[i + 2]
        s3 = out[i + 3]
        common = min(min(l0, l1), min(l2, l3))
        for t in range(common):
            s0 += data[k0 + t] * x[indices[k0 + t]]
            s1 += data[k1 + t] * x[indices[k1 + t]]
            s2 += data[k2 + t] * x[indices[k2 + t]]
            s3 += data[k3 + t] * x[indices[k3 + t]]
        for t in range(common, l0):
            s0 += data[k0 + t] * x[indices[k0 + t]]
        for t in range(common, l1):
            s1 += data[k1 + t] * x[indices[k1 + t]]
        for t in range(common, l2):
            s2 += data[k2 + t] * x[indices[k2 + t]]
        for t in range(common, l3):
            s3 += data[k3 + t] * x[indices[k3 + t]]
        out[i] = s0
        out[i + 1] = s1
        out[i + 2] = s2
        out[i + 3] = s3
        i += 4
    while i < N:
        s = out[i]
        for k in range(np.uint64(indptr[i]), np.uint64(indptr[i + 1])):
            s += data[k] * x[indices[k]]
        out[i] = s
        i += 1


@_jit()  # not inlined by Numba: compiled once with SLP (``_compile_slp``), then linked
def _grouped_matvec_add(gptr, gcols, gvals, x, out):  # pragma: no cover - compiled
    """out += W x for W stored by row groups of ``GROUP`` rows: group g's shared columns are
    gcols[gptr[g]:gptr[g+1]] (sorted), and the value of row gGROUP + l at the j-th of them is
    gvals[j·GROUP + l] (0 where that row has no such entry). Every row is summed in column
    order starting from out[i], as in ``_csr_matvec_add``; the stored zeros add nothing."""
    N = out.shape[0]
    full = np.uint64(N // GROUP)
    R = np.uint64(GROUP)
    for g in range(full):
        o = g * R
        a0 = out[o]
        a1 = out[o + np.uint64(1)]
        a2 = out[o + np.uint64(2)]
        a3 = out[o + np.uint64(3)]
        a4 = out[o + np.uint64(4)]
        a5 = out[o + np.uint64(5)]
        a6 = out[o + np.uint64(6)]
        a7 = out[o + np.uint64(7)]
        a8 = out[o + np.uint64(8)]
        a9 = out[o + np.uint64(9)]
        a10 = out[o + np.uint64(10)]
        a11 = out[o + np.uint64(11)]
        a12 = out[o + np.uint64(12)]
        a13 = out[o + np.uint64(13)]
        a14 = out[o + np.uint64(14)]
        a15 = out[o + np.uint64(15)]
        for j in range(np.uint64(gptr[g]), np.uint64(gptr[g + np.uint64(1)])):
            xv = x[gcols[j]]
            q = j * R
            a0 += gvals[q] * xv
            a1 += gvals[q + np.uint64(1)] * xv
            a2 += gvals[q + np.uint64(2)] * xv
            a3 += gvals[q + np.uint64(3)] * xv
            a4 += gvals[q + np.uint64(4)] * xv
            a5 += gvals[q + np.uint64(5)] * xv
            a6 += gvals[q + np.uint64(6)] * xv
            a7 += gvals[q + np.uint64(7)] * xv
            a8 += gvals[q + np.uint64(8)] * xv
            a9 += gvals[q + np.uint64(9)] * xv
            a10 += gvals[q + np.uint64(10)] * xv
            a11 += gvals[q + np.uint64(11)] * xv
            a12 += gvals[q + np.uint64(12)] * xv
            a13 += gvals[q + np.uint64(13)] * xv
            a14 += gvals[q + np.uint64(14)] * xv
            a15 += gvals[q + np.uint64(15)] * xv
        out[o] = a0
        out[o + np.uint64(1)] = a1
        out[o + np.uint64(2)] = a2
        out[o + np.uint64(3)] = a3
        out[o + np.uint64(4)] = a4
        out[o + np.uint64(5)] = a5
        out[o + np.uint64(6)] = a6
        out[o + np.uint64(7)] = a7
        out[o + np.uint64(8)] = a8
        out[o + np.uint64(9)] = a9
        out[o + np.uint64(10)] = a10
        out[o + np.uint64(11)] = a11
        out[o + np.uint64(12)] = a12
        out[o + np.uint64(13)] = a13
        out[o + np.uint64(14)] = a14
        out[o + np.uint64(15)] = a15
    o = full * R  # the last, partial group (N not a multiple of GROUP), row by row
    for i in range(o, np.uint64(N)):
        s = out[i]
        for j in range(np.uint64(gptr[full]), np.uint64(gptr[full + np.uint64(1)])):
            s += gvals[j * R + (i - o)] * x[gcols[j]]
        out[i] = s


@_jit()
def _euler_grouped_single(gptr, gcols, gvals, P, x0, a, tanh, leaky, n_steps):  # pragma: no cover
    """``euler_csr_single`` with W stored by row groups (see ``_grouped_matvec_add``)."""
    prev = x0
    for t in range(n_steps):
        cur = P[t]
        _grouped_matvec_add(gptr, gcols, gvals, prev, cur)
        _activate(cur, prev, a, tanh, leaky)
        prev = cur


@_jit()
def euler_csr_single(indptr, indices, data, P, x0, a, tanh, leaky, n_steps):  # pragma: no cover
    """In place: row t of P (T, N) holds p_t = W_in u_t + b and becomes the state
    x_t = x_{t−1} + a ⊙ (f(W x_{t−1} + p_t) − x_{t−1}) (f(…) itself when not ``leaky``), with
    x_{−1} = x0. Only the first ``n_steps`` rows are advanced."""
    prev = x0
    for t in range(n_steps):
        cur = P[t]
        _csr_matvec_add(indptr, indices, data, prev, cur)
        _activate(cur, prev, a, tanh, leaky)
        prev = cur


@_jit(contract=False)  # the same operations and roundings as ``Reservoir.project``
def _project_step(U, t, WinT, bias, has_bias, ut, zT, k):  # pragma: no cover - compiled
    """zT[i, c] = U[c, t] · W_in[i] (+ bias[i]) for c < k, column by column in exactly the
    operations of ``Reservoir.project`` (u₀w₀, then + u_j w_j for j = 1 …, then + bias):
    bit-identical to projecting first. ``ut`` (d, B) is scratch."""
    d = U.shape[2]
    for j in range(d):
        for c in range(k):
            ut[j, c] = U[c, t, j]
    for i in range(zT.shape[0]):
        z = zT[i]
        w0 = WinT[0, i]
        u0 = ut[0]
        for c in range(k):
            z[c] = u0[c] * w0
        for j in range(1, d):
            wj = WinT[j, i]
            uj = ut[j]
            for c in range(k):
                z[c] = z[c] + uj[c] * wj
        if has_bias:
            bi = bias[i]
            for c in range(k):
                z[c] = z[c] + bi


@_jit(inline="always")
def _load_step(P, t, U, WinT, bias, fused, has_bias, ut, zT, k):  # pragma: no cover
    """zT[:, :k] ← the projected inputs of step t: computed from U when ``fused``, else
    copied from P[:k, t] in blocks of ``_BLOCK`` units (whole cache lines on both sides)."""
    if fused:
        _project_step(U, t, WinT, bias, has_bias, ut, zT, k)
        return
    N = zT.shape[0]
    tt = np.uint64(t)
    for i0 in range(0, N, _BLOCK):
        i1 = min(N, i0 + _BLOCK)
        for b in range(np.uint64(k)):
            for i in range(np.uint64(i0), np.uint64(i1)):
                zT[i, b] = P[b, tt, i]


@_jit(inline="always")
def _finish_step(P, t, a, tanh, leaky, xT, zT, k):  # pragma: no cover - compiled
    """The new states of step t: f(z) in zT (not ``leaky``; the caller then swaps xT and
    zT) or x + a ⊙ (f(z) − x) in xT (``leaky``), for the first k sequences; and P[:k, t] ←
    those states, in blocks of ``_BLOCK`` units (P indexed directly with unsigned indices:
    an array view per row and block cost as much as the copy)."""
    N = zT.shape[0]
    new = xT if leaky else zT
    tt = np.uint64(t)
    for i0 in range(0, N, _BLOCK):
        i1 = min(N, i0 + _BLOCK)
        for i in range(i0, i1):
            z = zT[i]
            if tanh:
                for c in range(k):
                    z[c] = _tanh(z[c])
            if leaky:
                x = xT[i]
                ai = a[i]
                for c in range(k):
                    x[c] += ai * (z[c] - x[c])
        for b in range(np.uint64(k)):
            for i in range(np.uint64(i0), np.uint64(i1)):
                P[b, tt, i] = new[i, b]


@_jit(inline="always")
def _csr_batch_add(indptr, indices, data, xT, zT, k):  # pragma: no cover - compiled
    """zT[:, :k] += W xT[:, :k] for CSR W, four nonzeros per pass over a row's k values."""
    four = np.uint64(4)
    one = np.uint64(1)
    for i in range(zT.shape[0]):
        z = zT[i]
        j = np.uint64(indptr[i])
        end = np.uint64(indptr[i + 1])
        while j + four <= end:
            v0 = data[j]
            v1 = data[j + one]
            v2 = data[j + np.uint64(2)]
            v3 = data[j + np.uint64(3)]
            r0 = xT[indices[j]]
            r1 = xT[indices[j + one]]
            r2 = xT[indices[j + np.uint64(2)]]
            r3 = xT[indices[j + np.uint64(3)]]
            for c in range(k):
                z[c] = z[c] + v0 * r0[c] + v1 * r1[c] + v2 * r2[c] + v3 * r3[c]
            j += four
        while j < end:
            v0 = data[j]
            r0 = xT[indices[j]]
            for c in range(k):
                z[c] += v0 * r0[c]
            j += one


@_jit(inline="always")
def _grouped_batch_add(gptr, gcols, gvals, xT, zT, k, lanes):  # pragma: no cover - compiled
    """zT[:, :k] += W xT[:, :k] for W in the row-group layout: register tiles
    (``_tiles.grouped_tiles``) over the first ``lanes`` (k rounded up to whole tiles; the
    lanes past k hold zeros) for the full groups, then the last, partial group row by row
    in the same order (N not a multiple of ``GROUP``)."""
    grouped_tiles(gptr, gcols, gvals, xT, zT, lanes)
    N = zT.shape[0]
    R = np.uint64(GROUP)
    g = np.uint64(N // GROUP)
    o = g * R
    for i in range(o, np.uint64(N)):
        z = zT[i]
        for j in range(np.uint64(gptr[g]), np.uint64(gptr[g + np.uint64(1)])):
            v = gvals[j * R + (i - o)]
            r = xT[gcols[j]]
            for c in range(k):
                z[c] += v * r[c]


@_jit(inline="always")
def _start_batch(P, x0, lanes):  # pragma: no cover - compiled
    """The transposed buffers (N, lanes ≥ B): states, starting at x0, and projections;
    lanes past B hold zeros."""
    B, N = P.shape[0], P.shape[2]
    xT = np.zeros((N, lanes), P.dtype)
    for b in range(B):
        for i in range(N):
            xT[i, b] = x0[b, i]
    return xT, np.zeros((N, lanes), P.dtype)


@_jit()
def euler_csr_batch(  # pragma: no cover - compiled
    indptr, indices, data, P, x0, a, tanh, leaky, active, U, WinT, bias, fused, has_bias
):
    """In place, for B sequences: P[b, t] becomes the state x_t of sequence b (as in
    ``euler_csr_single``), from x0[b]. At step t only sequences b < active[t] advance
    (lengths sorted non-increasing); rows of finished sequences are left untouched.

    Not ``fused``: P[b, t] holds the projected input p on entry. ``fused``: P's contents are
    ignored and p = U[b, t] W_inᵀ + b is computed here (``_project_step``), bit-identical to
    projecting first; this saves writing and re-reading the (B, T, N) projections.
    U (B, T, d), WinT (d, N), bias (N,)."""
    xT, zT = _start_batch(P, x0, P.shape[0])
    ut = np.empty((U.shape[2], P.shape[0]), P.dtype)
    for t in range(P.shape[1]):
        k = active[t]
        if k == 0:
            break
        _load_step(P, t, U, WinT, bias, fused, has_bias, ut, zT, k)
        _csr_batch_add(indptr, indices, data, xT, zT, k)
        _finish_step(P, t, a, tanh, leaky, xT, zT, k)
        if not leaky:
            xT, zT = zT, xT


@_jit()
def _euler_grouped_batch(  # pragma: no cover - compiled
    gptr, gcols, gvals, P, x0, a, tanh, leaky, active, U, WinT, bias, fused, has_bias
):
    """See ``euler_grouped_batch``. The register tiles run whole tiles of ``TILE_LANES``
    sequences; the lanes past the active sequences are held at zero (a zero state with a
    zero input stays zero), so that they cost a little arithmetic and nothing else."""
    xT, zT = _start_batch(P, x0, -(-P.shape[0] // TILE_LANES) * TILE_LANES)
    ut = np.empty((U.shape[2], P.shape[0]), P.dtype)
    prev = P.shape[0]
    for t in range(P.shape[1]):
        k = active[t]
        if k == 0:
            break
        lanes = -(-k // TILE_LANES) * TILE_LANES
        if k < prev:  # sequences k … prev − 1 ended: zero their lanes in both buffers
            for i in range(zT.shape[0]):
                for c in range(k, lanes):
                    xT[i, c] = 0.0
                    zT[i, c] = 0.0
            prev = k
        _load_step(P, t, U, WinT, bias, fused, has_bias, ut, zT, k)
        _grouped_batch_add(gptr, gcols, gvals, xT, zT, k, lanes)
        _finish_step(P, t, a, tanh, leaky, xT, zT, k)
        if not leaky:
            xT, zT = zT, xT
