"""Forward-chaining validation folds and the ridge path on them (the numerics of ``search``).

Folds: the rows after each sequence's ``warmup`` are cut into ``folds + 1`` consecutive blocks
of about equal size; fold k trains on blocks 0 … k−1 and validates on block k, so a model is
never scored on rows older than those it learnt from. ``split="time"`` cuts along the time
axis (common to every sequence of a batch: the blocks are time ranges, each sequence adds
the rows it has in them); ``split="sequences"`` keeps sequences whole and cuts the list of
sequences, in the order given, into consecutive groups (for many independent sequences, such
as a classification set). ``"auto"`` is ``"sequences"`` when at least ``folds + 1``
sequences are longer than the warm-up, else ``"time"``. The reservoir runs over each block
once, from the start of its sequence (validation rows carry the history they follow, as in a
model's use), and fold k needs only blocks 0 … k: a pruned trial integrates no further.

The ridge path: with the features φ = [u, x] and the targets centred on a fold's training
rows, the ridge readout with an unpenalised intercept (the DTESN's) is w(λ) = (G + λI)⁻¹ c,
G the centred Gram matrix and c the centred cross products. One eigendecomposition
G = V diag(e) Vᵀ gives w(λ) = V (Vᵀc / (e + λ)) for every λ, and the validation error
Σ‖y − ŷ(λ)‖² follows from the validation block's own scatter matrices, O(F²) per λ and
output (F = d_in + units), without another pass over its rows. Block statistics are
accumulated centred (means and scatter matrices merged pairwise, as in Chan, Golub and
LeVeque), so they stay exact when the features have large means.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .model import DTESN, input_statistics
from .readout import Stats, path_errors

__all__ = ["METRICS", "RIDGES_PER_DECADE", "FoldScores", "score_folds"]

RIDGES_PER_DECADE = 4
METRICS = ("nrmse", "rmse", "mse")
MIN_BLOCK_ROWS = 10
_WINDOW_BYTES = 16 * 2**20  # states of one integration window


def sequences(X: Any, name: str) -> list[np.ndarray]:
    """What ``DTESN.fit`` accepts → a list of (T_b, d) float64 arrays in the caller's order."""
    if isinstance(X, list | tuple):
        seqs = [np.asarray(s) for s in X]
        if not seqs:
            raise ValueError(f"{name} is an empty list of sequences")
    else:
        a = np.asarray(X)
        if a.ndim not in (1, 2, 3):
            raise ValueError(f"{name} must be (T,), (T, d) or (B, T, d), got shape {a.shape}")
        seqs = list(a) if a.ndim == 3 else [a]
    out = []
    for s in seqs:
        s = s[:, None] if s.ndim == 1 else s
        if s.ndim != 2 or s.shape[0] == 0:
            raise ValueError(f"each sequence in {name} must be (T, d) with T >= 1, got {s.shape}")
        if not np.issubdtype(s.dtype, np.number) or np.iscomplexobj(s):
            raise ValueError(f"{name} must be real numbers, got dtype {s.dtype}")
        s = np.asarray(s, dtype=np.float64)
        if not np.all(np.isfinite(s)):
            raise ValueError(f"{name} contains NaN or infinite values")
        out.append(s)
    if len({s.shape[1] for s in out}) != 1:
        raise ValueError(f"all sequences in {name} need the same number of columns")
    return out


def check_common(folds: Any, warmup: Any, metric: Any) -> None:
    """ValueError naming ``folds``, ``warmup`` or ``metric`` when one is out of its domain."""
    if isinstance(folds, bool) or not isinstance(folds, int | np.integer) or folds < 1:
        raise ValueError(f"folds must be an integer >= 1, got {folds!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int | np.integer) or warmup < 0:
        raise ValueError(f"warmup must be an integer >= 0, got {warmup!r}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")


def ridge_grid(spec: Any) -> np.ndarray:
    """(low, high): a log grid of ``RIDGES_PER_DECADE`` values a decade; else the values."""
    if isinstance(spec, tuple) and len(spec) == 2:
        low, high = (float(v) for v in spec)
        if not 0 < low <= high < np.inf:
            raise ValueError(f"ridge range (low, high) needs 0 < low <= high, got {spec}")
        n = max(1, round(RIDGES_PER_DECADE * math.log10(high / low)) + 1)
        return np.geomspace(low, high, n)
    try:
        values = np.atleast_1d(np.asarray(spec, dtype=float))
    except (TypeError, ValueError):
        values = np.array([np.nan])
    if values.ndim != 1 or not values.size or not np.all((values > 0) & np.isfinite(values)):
        raise ValueError(f"ridge values must be finite numbers > 0, got {spec!r}")
    return np.unique(values)


# ---- the blocks -------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """Rows t in [max(start, warmup), stop) of the sequences ``seqs``."""

    seqs: tuple[int, ...]
    start: int
    stop: int


def _cuts(cumulative: np.ndarray, parts: int) -> list[int]:
    """Indices 0 = i₀ < i₁ < … < i_parts = len − 1 into a non-decreasing count of rows
    (``cumulative[i]``: rows before item i) cutting it into ``parts`` about equal pieces."""
    last = len(cumulative) - 1
    total = float(cumulative[-1])
    edges = [0]
    for j in range(1, parts):
        i = int(np.argmin(np.abs(cumulative - total * j / parts)))
        edges.append(min(max(i, edges[-1] + 1), last - (parts - j)))
    return [*edges, last]


def plan(lengths: np.ndarray, folds: int, warmup: int, split: str) -> tuple[str, list[Block]]:
    """(the split used, the folds + 1 blocks); ValueError when the data are too few."""
    rows = np.maximum(lengths - warmup, 0)
    total = int(rows.sum())
    if total < (folds + 1) * MIN_BLOCK_ROWS:
        raise ValueError(
            f"warmup={warmup} leaves {total} rows, too few for folds={folds} (each of the "
            f"{folds + 1} blocks needs at least {MIN_BLOCK_ROWS})"
        )
    if split == "auto":
        split = "sequences" if int(np.count_nonzero(rows)) >= folds + 1 else "time"
    if split == "time":
        longest = int(lengths.max())
        # rows in [warmup, warmup + i): each step adds the sequences still running
        steps = np.arange(warmup, longest)
        running = len(lengths) - np.searchsorted(np.sort(lengths), steps, side="right")
        cumulative = np.concatenate([[0], np.cumsum(running)])
        edges = [warmup + i for i in _cuts(cumulative, folds + 1)]
        everyone = tuple(range(len(lengths)))
        blocks = [Block(everyone, a, b) for a, b in itertools.pairwise(edges)]
        sizes = [int(cumulative[b.stop - warmup] - cumulative[b.start - warmup]) for b in blocks]
    elif split == "sequences":
        with_rows = [b for b in range(len(lengths)) if rows[b] > 0]
        if len(with_rows) < folds + 1:
            raise ValueError(
                f"split='sequences' needs at least folds + 1 = {folds + 1} sequences longer "
                f"than warmup={warmup}, got {len(with_rows)}; use split='time'"
            )
        cumulative = np.concatenate([[0], np.cumsum(rows[with_rows])])
        longest = int(lengths.max())
        edges = _cuts(cumulative, folds + 1)
        blocks = [Block(tuple(with_rows[a:b]), 0, longest) for a, b in itertools.pairwise(edges)]
        sizes = [int(rows[list(b.seqs)].sum()) for b in blocks]
    else:
        raise ValueError(f"split must be 'auto', 'time' or 'sequences', got {split!r}")
    if min(sizes) < MIN_BLOCK_ROWS:
        raise ValueError(
            f"folds={folds} cuts the data into blocks of {sizes} rows; each needs at least "
            f"{MIN_BLOCK_ROWS} (use fewer folds or more data)"
        )
    return split, blocks


# ---- centred statistics -----------------------------------------------------------------


class Integrator:
    """Runs a model over the blocks in order, keeping each sequence's state between them.

    ``drive`` is what the reservoir reads (X itself, or X standardised for an unfitted model
    standing in for one that ``fit`` standardises, see ``search``); the readout's features
    are [u, x] with the raw u, as in ``DTESN.fit``."""

    def __init__(
        self,
        model: DTESN,
        X: list[np.ndarray],
        Y: list[np.ndarray],
        warmup: int,
        drive: list[np.ndarray] | None = None,
    ) -> None:
        self.model, self.X, self.Y, self.warmup = model, X, Y, warmup
        self.drive = X if drive is None else drive
        self.state: dict[int, np.ndarray] = {}  # last state of each sequence
        self.time: dict[int, int] = {}  # steps of each sequence integrated so far

    def stats(self, block: Block) -> Stats | None:
        """Integrate the block's sequences to its end; its rows' statistics (None: no row)."""
        seqs = [b for b in block.seqs if len(self.X[b]) > block.start]
        if not seqs:
            return None
        t0 = self.time.get(seqs[0], 0)
        assert all(self.time.get(b, 0) == t0 for b in seqs), "blocks out of order"
        stop = min(block.stop, max(len(self.X[b]) for b in seqs))
        units, d = self.model.units, self.X[0].shape[1]
        span = max(16, _WINDOW_BYTES // (len(seqs) * (units + d) * 8))
        out = None
        for w0 in range(t0, stop, span):
            w1 = min(w0 + span, stop)
            active = [b for b in seqs if len(self.X[b]) > w0]
            x0 = np.stack([self.state.get(b, np.zeros(units)) for b in active])
            S = self.model.run([self.drive[b][w0:w1] for b in active], initial_state=x0)
            first = max(w0, block.start, self.warmup) - w0
            pieces = []
            for b, s in zip(active, S, strict=True):
                self.state[b] = s[-1]
                self.time[b] = w0 + len(s)
                if first < len(s):
                    pieces.append((b, s))
            n = sum(len(s) - first for _, s in pieces)
            if n == 0:
                continue
            Phi = np.empty((n, d + units))
            Yw = np.empty((n, self.Y[0].shape[1]))
            row = 0
            for b, s in pieces:
                k = len(s) - first
                Phi[row : row + k, :d] = self.X[b][w0 + first : w0 + len(s)]
                Phi[row : row + k, d:] = s[first:]
                Yw[row : row + k] = self.Y[b][w0 + first : w0 + len(s)]
                row += k
            if not np.all(np.isfinite(Phi[:, d:])):
                raise FloatingPointError("the reservoir states are not finite")
            out = Stats.of(Phi, Yw) if out is None else out.merge(Stats.of(Phi, Yw))
        return out


# ---- the ridge path ---------------------------------------------------------------------


def score(errors: np.ndarray, val: Stats, metric: str) -> np.ndarray:
    """The metric per ridge value from one fold's squared errors (n_ridges, d)."""
    if metric == "nrmse":  # each output normalised by its own variance on the block
        spread = np.where(val.scatter_y > 0, val.scatter_y, val.n)
        return np.sqrt(np.mean(errors / spread, axis=1))
    mse = errors.mean(axis=1) / val.n
    return np.sqrt(mse) if metric == "rmse" else mse


def fold_scores(
    model: DTESN,
    data: FoldData,
    ridges: np.ndarray,
    metric: str,
    drive: list[np.ndarray] | None = None,
) -> Iterator[np.ndarray]:
    """Fold by fold, the metric for every ridge value; integrates only what each fold needs."""
    run = Integrator(model, data.X, data.Y, data.warmup, drive)
    train = run.stats(data.blocks[0])
    for k in range(1, len(data.blocks)):
        val = run.stats(data.blocks[k])
        if train is None or val is None:  # _plan gives every block rows: cannot happen
            raise RuntimeError("a fold without training or validation rows")
        yield score(path_errors(train, val, ridges), val, metric)
        if k + 1 < len(data.blocks):
            train = train.merge(val)


@dataclass(frozen=True)
class FoldData:
    """Inputs and targets as lists of sequences, and the blocks of the folds."""

    X: list[np.ndarray]
    Y: list[np.ndarray]
    warmup: int
    split: str
    blocks: list[Block]

    @classmethod
    def of(cls, X: Any, Y: Any, folds: int, warmup: int, split: str) -> FoldData:
        Xs, Ys = sequences(X, "X"), sequences(Y, "Y")
        lengths = np.array([len(s) for s in Xs])
        if len(Ys) != len(Xs) or any(len(y) != n for y, n in zip(Ys, lengths, strict=True)):
            raise ValueError("Y must have the same layout and lengths as X")
        split, blocks = plan(lengths, folds, warmup, split)
        return cls(Xs, Ys, int(warmup), split, blocks)

    def standardised(self) -> list[np.ndarray]:
        """X as ``DTESN.fit`` standardises it for ``input_norm="standard"``: per column, the
        mean and standard deviation over every row of every sequence (1 for a constant)."""
        mean, scale = input_statistics(np.concatenate(self.X))
        return [(x - mean) / scale for x in self.X]


def stand_in(params: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """(arguments of an unfitted model with the states of ``DTESN(**params)`` once fitted,
    whether it must read standardised inputs): ``fit`` standardises the inputs the reservoir
    reads when ``input_norm="standard"`` (folding the statistics into W_in and the bias), an
    unfitted model does not, so its stand-in reads them standardised, with normalisation off."""
    if DTESN(**params).get_params().get("input_norm", "none") == "standard":
        return {**params, "input_norm": "none"}, True
    return dict(params), False


@dataclass(frozen=True)
class FoldScores:
    """A configuration scored on every fold for every ridge value.

    ``ridges`` (n,); ``scores`` (folds, n): the metric per fold and ridge; ``split``: the
    split used; ``blocks``: the folds + 1 blocks as (sequence indices, start, stop), rows t
    with max(start, warmup) <= t < stop of those sequences (fold k trains on blocks < k and
    validates on block k); ``best_ridge`` minimises the mean over folds, ``best_score``."""

    ridges: np.ndarray
    scores: np.ndarray
    split: str
    blocks: tuple[tuple[tuple[int, ...], int, int], ...]

    @property
    def mean(self) -> np.ndarray:
        """The mean score over the folds, per ridge value."""
        return self.scores.mean(axis=0)

    @property
    def best_ridge(self) -> float:
        return float(self.ridges[int(np.argmin(self.mean))])

    @property
    def best_score(self) -> float:
        return float(self.mean.min())


def score_folds(
    model: DTESN,
    X: Any,
    Y: Any,
    *,
    folds: int = 3,
    warmup: int = 100,
    split: str = "auto",
    ridges: Any = (1e-12, 1e4),
    metric: str = "nrmse",
) -> FoldScores:
    """Score ``model``'s configuration (its parameters as set, its ``ridge`` aside) on
    forward-chaining folds for every ridge value: ``ridges`` (low, high) for a log grid of
    ``RIDGES_PER_DECADE`` values a decade, or the values. The states are those ``model``
    would have once fitted on all of X (so standardised inputs where ``fit`` standardises
    them); the model itself is left as it is."""
    check_common(folds, warmup, metric)
    if model.get_params().get("regularize_bias"):
        raise ValueError("the ridge path needs an unpenalised intercept (regularize_bias=False)")
    data = FoldData.of(X, Y, folds, warmup, split)
    grid = ridge_grid(ridges)
    params, standardise = stand_in(model.get_params())
    drive = data.standardised() if standardise else None
    scores = np.array(list(fold_scores(DTESN(**params), data, grid, metric, drive)))
    blocks = tuple((b.seqs, b.start, b.stop) for b in data.blocks)
    return FoldScores(grid, scores, data.split, blocks)
