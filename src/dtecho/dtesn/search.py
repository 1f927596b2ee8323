"""Hyperparameter search for the DTESN: the reservoir settings by Optuna's TPE with
successive-halving pruning, the ridge for free, on forward-chaining validation folds.

What is searched (``DEFAULT_SPACE``; ``space=`` changes it): the spectral radius, the leak
rate, the input and bias scalings; with ``trees=True`` (``TREE_SPACE``) also the membrane
tree (one membrane, depth 2 or 3, or two other trees of three membranes) and, for trees of
several membranes, how much slower the inner ones are (``tau_scaling``) and whether the
input reaches every membrane (``input_to``). The trees are not searched by default: on the
defaults study's tasks at 100 and 400 units, budgets of 30 and 80 trials found better
validation scores without them (three more dimensions for the same trials). The ridge is
not one of the optimiser's dimensions: every trial scores a log grid of ridge values from
one eigendecomposition per fold and keeps the best (see ``_folds``: folds, blocks, the
path). Each fold is a pruning step: a trial reports its running mean score after each fold
and successive halving stops the unpromising ones early, before the reservoir has run over
the later blocks.

Determinism: trials run one after another, each using every core (the reservoir's
``n_jobs`` threads, BLAS for the Gram matrices and eigendecompositions); the sampler is
seeded with ``seed``; the network seed is the base model's ``seed`` (the final model keeps
it). The same data and arguments give the same table; only a ``timeout`` makes the number of
trials depend on the machine. The first trial is the constructor's defaults (those the space
holds), so the search does no worse on validation than ``DTESN()`` with its best ridge.
"""

from __future__ import annotations

import contextlib
import functools
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ._folds import (
    METRICS,
    RIDGES_PER_DECADE,
    FoldData,
    FoldScores,
    check_common,
    fold_scores,
    ridge_grid,
    score_folds,
    stand_in,
)
from .membranes import membrane_layout
from .model import DTESN, _differs, usable_cores

__all__ = [
    "DEFAULT_SPACE",
    "METRICS",
    "RIDGES_PER_DECADE",
    "TREE_SPACE",
    "FoldScores",
    "TrialProgress",
    "TrialTable",
    "TuneResult",
    "check_folds",
    "score_folds",
    "search",
]

# (low, high) uniform, (low, high, "log") log-uniform, a list: categorical choices. "tree":
# an int is a depth (DTESN(depth=d)), a string a tree ("(()())": the skin and two children).
DEFAULT_SPACE: dict[str, Any] = {
    "spectral_radius": (0.1, 1.5, "log"),
    "leak_rate": (0.01, 1.0, "log"),
    "input_scaling": (0.01, 10.0, "log"),
    "bias_scaling": (0.0, 2.0),
    "ridge": (1e-12, 1e4),  # the path: a log grid, RIDGES_PER_DECADE values a decade
}
# Added by trees=True. tau_scaling and input_to apply to trees of several membranes only.
TREE_SPACE: dict[str, Any] = {
    "tree": [1, 2, 3, "(()())", "((()))"],
    "tau_scaling": (1.0, 4.0, "log"),
    "input_to": ["skin", "all"],
}
# Searched only for networks of several membranes (they change nothing with one).
_SEVERAL_MEMBRANES = ("tau_scaling", "input_to", "coupling", "feedback")
_STATES = ("complete", "pruned", "failed")
_STARTUP = 10  # random trials before TPE models the results


# ---- results ----------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return " ".join(_fmt(v) for v in value)
    return "-" if value is None else str(value)


class TrialTable(list):
    """One dict per trial, in trial order: ``trial``, ``state`` ("complete", "pruned" or
    "failed"), ``score`` (mean over the folds it reached, at its best ridge), ``ridge``,
    ``folds`` (each fold's score at that ridge), the searched parameters, and ``error`` for a
    failed trial. A list of dicts (``pandas.DataFrame(table)`` works); ``to_text`` renders it."""

    def to_text(self, limit: int | None = None, *, sort: bool = False) -> str:
        """Aligned columns, one line per trial (``sort``: completed trials first, best first)."""
        rows = list(self)
        if sort:
            rows.sort(key=lambda r: (r["state"] != "complete", r["score"] is None, r["score"]))
        if limit is not None:
            rows = rows[:limit]
        keys: list[str] = []
        for row in rows:
            keys += [k for k in row if k not in keys]
        cells = [keys] + [[_fmt(row.get(k)) for k in keys] for row in rows]
        widths = [max(len(line[i]) for line in cells) for i in range(len(keys))]
        return "\n".join(
            "  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)).rstrip()
            for line in cells
        )


@dataclass
class TuneResult:
    """What ``search`` found.

    ``model``: the best configuration fitted on all the data (None with ``refit=False``);
    ``table``: every trial (``TrialTable``); ``best_params``: the searched parameters of the
    best trial and its ``ridge``; ``best_score``: its mean validation score; ``params``: every
    constructor argument of the final model that is not left at its default (fixed ones
    included), so ``DTESN(**result.params)`` is that model. ``model, table = result``
    unpacks the first two."""

    model: DTESN | None
    table: TrialTable
    best_params: dict[str, Any]
    best_score: float
    params: dict[str, Any]
    metric: str
    split: str
    folds: int
    warmup: int
    seconds: float = field(default=0.0, compare=False)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.model, self.table))

    def with_model(self, model: DTESN) -> TuneResult:
        """The same result holding ``model`` (``DTESN.tune`` puts the tuned instance here)."""
        return replace(self, model=model)

    def summary(self, top: int = 5) -> dict[str, Any]:
        """JSON-ready: trials per state, the best score and parameters, the ``top`` trials."""
        completed = sorted(
            (r for r in self.table if r["state"] == "complete"), key=lambda r: r["score"]
        )
        return {
            "metric": self.metric,
            "split": self.split,
            "folds": self.folds,
            "warmup": self.warmup,
            "trials": len(self.table),
            **{s: sum(r["state"] == s for r in self.table) for s in _STATES},
            "best_score": self.best_score,
            "best_params": self.best_params,
            "top": completed[:top],
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class TrialProgress:
    """Passed to ``progress`` after each trial: ``done`` of ``total`` trials, that trial's
    table row, and the best score and parameters so far (None until a trial completes)."""

    done: int
    total: int
    row: dict[str, Any]
    best_score: float | None
    best_params: dict[str, Any] | None


# ---- the space --------------------------------------------------------------------------


def _membranes(params: Mapping[str, Any]) -> int:
    return len(membrane_layout(params.get("depth", 1), params.get("tree")))


def _structure(choice: Any) -> dict[str, Any]:
    """A ``tree`` choice → DTESN arguments (an int is a depth)."""
    if isinstance(choice, int | np.integer) and not isinstance(choice, bool):
        return {"depth": int(choice), "tree": None}
    return {"tree": choice}


def _arguments(chosen: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's parameters (as its row shows them) → DTESN arguments."""
    args = dict(chosen)
    if "tree" in args:
        args.update(_structure(args.pop("tree")))
    return args


def _range(key: str, spec: Any) -> Any:
    """One space entry, checked: a list, (low, high, scale) or None."""
    if spec is None:
        return None
    if isinstance(spec, list):
        if not spec:
            raise ValueError(f"space[{key!r}]: an empty list of choices")
        if key == "tree":
            for choice in spec:
                try:
                    _membranes(_structure(choice))
                except (TypeError, ValueError) as exc:
                    raise ValueError(f"space['tree']: {choice!r}: {exc}") from None
        return list(spec)
    if isinstance(spec, tuple) and len(spec) in (2, 3):
        low, high, *scale = spec
        if scale not in ([], ["log"], ["linear"]):
            raise ValueError(f"space[{key!r}]: the scale is 'log' or 'linear', got {scale[0]!r}")
        log = scale == ["log"]
        try:
            low, high = float(low), float(high)
        except (TypeError, ValueError):
            raise ValueError(f"space[{key!r}]: low and high must be numbers, got {spec}") from None
        if not (np.isfinite(low) and np.isfinite(high) and low < high and (low > 0 or not log)):
            raise ValueError(f"space[{key!r}]: need low < high (low > 0 for 'log'), got {spec}")
        return (low, high, "log" if log else "linear")
    raise ValueError(
        f"space[{key!r}]: (low, high), (low, high, 'log'), a list of choices or None, got {spec!r}"
    )


def _fixed_params(base: Any, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters the search keeps: a dict as given, a DTESN's non-default ones."""
    if base is None:
        fixed: dict[str, Any] = {}
    elif isinstance(base, DTESN):
        fixed = {k: v for k, v in base.get_params().items() if _differs(v, defaults[k])}
    elif isinstance(base, Mapping):
        unknown = sorted(set(base) - set(defaults))
        if unknown:
            raise ValueError(f"base: unknown parameters {unknown}")
        fixed = dict(base)
    else:
        raise ValueError(
            f"base must be None, a DTESN or a dict of parameters, got {type(base).__name__}"
        )
    if fixed.get("regularize_bias"):
        raise ValueError("base: the ridge path needs an unpenalised intercept (regularize_bias)")
    return fixed


def _fixed_by(key: str, fixed: Mapping[str, Any]) -> bool:
    """Whether the base fixes what ``key`` searches (a structure is fixed by depth or tree)."""
    if key == "tree":
        return "tree" in fixed or "depth" in fixed
    if key == "ridge":  # a number; "auto" (a DTESN's own choice) leaves it to the path
        return "ridge" in fixed and not isinstance(fixed["ridge"], str)
    return key in fixed


def _search_space(
    space: Any, fixed: dict[str, Any], names: set[str], trees: bool = False
) -> tuple[dict[str, Any], np.ndarray]:
    """(the searched parameters' ranges, the ridge grid). Takes the searched parameters out
    of ``fixed``: an explicit ``space`` entry wins over the base."""
    if space is not None and not isinstance(space, Mapping):
        raise ValueError(f"space must be a dict, got {type(space).__name__}")
    unknown = sorted(set(space or {}) - names)
    if unknown:
        raise ValueError(f"space: unknown parameters {unknown} (DTESN constructor arguments)")
    defaults = {**DEFAULT_SPACE, **(TREE_SPACE if trees else {})}
    wanted = {k: v for k, v in defaults.items() if not _fixed_by(k, fixed)}
    wanted.update(space or {})
    ridge = wanted.pop("ridge", None)
    if ridge is None:
        ridge = [fixed["ridge"]] if _fixed_by("ridge", fixed) else DEFAULT_SPACE["ridge"]
    try:
        grid = ridge_grid(ridge)
    except ValueError as exc:
        raise ValueError(f"space['ridge']: {exc}") from None
    searched = {k: r for k, v in wanted.items() if (r := _range(k, v)) is not None}
    for key in searched:
        fixed.pop(key, None)
        if key == "tree":
            fixed.pop("depth", None)
    fixed.pop("ridge", None)
    return searched, grid


def _suggest(trial: Any, space: Mapping[str, Any], fixed: Mapping[str, Any]) -> dict[str, Any]:
    """The trial's parameters, as its row shows them."""
    chosen: dict[str, Any] = {}
    structure = dict(fixed)
    if "tree" in space:
        chosen["tree"] = trial.suggest_categorical("tree", space["tree"])
        structure.update(_structure(chosen["tree"]))
    several = _membranes(structure) > 1
    for key, spec in space.items():
        if key == "tree" or (key in _SEVERAL_MEMBRANES and not several):
            continue
        if isinstance(spec, list):
            chosen[key] = trial.suggest_categorical(key, spec)
        else:
            low, high, scale = spec
            chosen[key] = trial.suggest_float(key, low, high, log=scale == "log")
    return chosen


def _first_trial(
    space: Mapping[str, Any], defaults: Mapping[str, Any], fixed: Mapping[str, Any]
) -> dict[str, Any]:
    """The constructor's defaults where the space holds them (the first trial)."""
    first: dict[str, Any] = {}
    if "tree" in space:
        tree = defaults["tree"] if defaults["tree"] is not None else defaults["depth"]
        if tree in space["tree"]:
            first["tree"] = tree
    several = _membranes({**fixed, **_arguments(first)}) > 1
    for key, spec in space.items():
        value = defaults.get(key)
        if key == "tree" or (key in _SEVERAL_MEMBRANES and not several):
            continue
        if isinstance(spec, list):
            if value in spec:
                first[key] = value
        elif isinstance(value, int | float) and spec[0] <= value <= spec[1]:
            first[key] = value
    return first


# ---- the search -------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet(category: type[Warning]) -> Iterator[None]:
    """Silence Optuna's ExperimentalWarning (multivariate TPE over conditional spaces,
    ``group=True``, is marked experimental) in the sampler's calls only, not in the trials:
    warnings filters are process-wide."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category)
        yield


def _import_optuna() -> Any:
    try:
        import optuna
    except ImportError as exc:  # optuna is a dependency of dtecho; a trimmed install may lack it
        raise ImportError(
            "the DTESN hyperparameter search needs Optuna: pip install optuna"
        ) from exc
    return optuna


def _pruner(pruner: Any, optuna: Any) -> Any:
    if pruner == "halving":  # rungs after folds 1, 3, 9, …: the best third goes on
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=3)
    if pruner is None or pruner == "none":
        return optuna.pruners.NopPruner()
    if isinstance(pruner, optuna.pruners.BasePruner):
        return pruner
    raise ValueError(
        f"pruner must be 'halving', 'hyperband', 'none' or an Optuna pruner, got {pruner!r}"
    )


def _trial(
    trial: Any,
    params: dict[str, Any],
    data: FoldData,
    standardised: Callable[[], list[np.ndarray]],
    grid: np.ndarray,
    metric: str,
) -> dict[str, Any]:
    """Score one configuration fold by fold, reporting to the pruner: the row's fields."""
    scores: list[np.ndarray] = []
    state = "complete"
    folds = len(data.blocks) - 1
    try:
        args, standardise = stand_in(params)
        drive = standardised() if standardise else None
        for k, fold in enumerate(fold_scores(DTESN(**args), data, grid, metric, drive)):
            scores.append(fold)
            mean = np.mean(scores, axis=0)
            if not np.any(np.isfinite(mean)):
                raise FloatingPointError("the validation scores are not finite")
            trial.report(float(np.nanmin(mean)), step=k + 1)
            if k + 1 < folds and trial.should_prune():
                state = "pruned"
                break
    except (FloatingPointError, np.linalg.LinAlgError, ValueError) as exc:
        # The fixed parameters were checked before the first trial: what fails here is this
        # combination of sampled values (a tree with too few units, overflowing states).
        return {"state": "failed", "score": None, "ridge": None, "folds": [], "error": str(exc)}
    mean = np.mean(scores, axis=0)
    at = _regular_ridge(np.asarray(scores), mean, np.asarray(grid), metric)
    return {
        "state": state,
        "score": float(mean[at]),
        "ridge": float(grid[at]),
        "folds": [float(s[at]) for s in scores],
    }


def _regular_ridge(scores: np.ndarray, mean: np.ndarray, grid: np.ndarray, metric: str) -> int:
    """Index of the ridge a trial keeps: the largest whose mean score is within one
    standard error (over the folds, at the best ridge) of the best, or, for an NRMSE below
    0.01 (a nearly noiseless fit), within √10 times the best (at most 0.01) — the rule of
    ``ridge="auto"`` (``readout.ridge_path``): among readouts that validate about equally
    well, the most regular one, whose closed loop (``generate``) stays stable; the least
    score's ridge of a Mackey–Glass series often diverges in a free run."""
    best = int(np.nanargmin(mean))
    least = float(mean[best])
    column = scores[:, best]
    se = float(np.std(column, ddof=1) / np.sqrt(len(column))) if len(column) > 1 else 0.0
    threshold = least + se
    if metric == "nrmse" and least < _NEAR_EXACT_NRMSE:
        threshold = max(threshold, min(np.sqrt(10.0) * least, _NEAR_EXACT_NRMSE))
    within = np.nonzero(np.isfinite(mean) & (mean <= threshold))[0]
    return int(within[np.argmax(grid[within])]) if within.size else best


_NEAR_EXACT_NRMSE = 0.01


def check_folds(X: Any, Y: Any, *, folds: int = 3, warmup: int = 100, split: str = "auto") -> str:
    """Check that X, Y can be cut into the folds ``search`` would use (ValueError naming
    what is wrong otherwise); returns the split it would use."""
    check_common(folds, warmup, "nrmse")
    return FoldData.of(X, Y, folds, warmup, split).split


def search(
    X: Any,
    Y: Any,
    *,
    n_trials: int = 50,
    folds: int = 3,
    warmup: int = 100,
    split: str = "auto",
    seed: int = 0,
    timeout: float | None = None,
    base: DTESN | Mapping[str, Any] | None = None,
    space: Mapping[str, Any] | None = None,
    metric: str = "nrmse",
    pruner: Any = "halving",
    trees: bool = False,
    progress: Callable[[TrialProgress], None] | None = None,
    n_jobs: int | None = None,
    refit: bool = True,
) -> TuneResult:
    """Search DTESN hyperparameters on forward-chaining validation folds (see the module).

    X, Y: what ``DTESN.fit`` accepts. ``n_trials`` configurations are tried (fewer if
    ``timeout`` seconds pass first), each scored by ``metric`` averaged over the ``folds``
    at its best ridge: "nrmse" (per output, RMSE on the block over the target's standard
    deviation on it, averaged in the square), "rmse" or "mse". ``warmup``: rows of each
    sequence the readout skips, as in ``fit``; ``split``: "auto", "time" or "sequences"
    (``_folds``). ``base``: fixed parameters, a dict or a DTESN (whose parameters that
    differ from the constructor's defaults, such as ``units``, stay fixed); the rest of
    ``DEFAULT_SPACE`` is searched, and ``TREE_SPACE`` with ``trees``. ``space``: entries
    replacing or extending them (any constructor argument: (low, high), (low, high, "log"),
    a list of choices, None to leave one alone; "ridge": (low, high) or the values of the
    path). ``pruner``: "halving"
    (successive halving over the folds), "hyperband", "none" or an Optuna pruner.
    ``progress`` is called after every trial with a ``TrialProgress``; an exception it
    raises stops the search. ``n_jobs``: threads for each trial's reservoir (default: the
    usable cores; it changes no number). ``refit``: fit the best configuration on all of
    X, Y as ``result.model``. Raises ValueError naming a bad argument.
    """
    if isinstance(n_trials, bool) or not isinstance(n_trials, int | np.integer) or n_trials < 1:
        raise ValueError(f"n_trials must be an integer >= 1, got {n_trials!r}")
    check_common(folds, warmup, metric)
    if timeout is not None and not (isinstance(timeout, int | float) and timeout > 0):
        raise ValueError(f"timeout must be a number of seconds > 0 or None, got {timeout!r}")
    if n_jobs is not None and (
        isinstance(n_jobs, bool) or not isinstance(n_jobs, int | np.integer) or n_jobs < 1
    ):
        raise ValueError(f"n_jobs must be an integer >= 1 or None, got {n_jobs!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    defaults = DTESN().get_params()
    fixed = _fixed_params(base, defaults)
    searched, grid = _search_space(space, fixed, set(defaults), bool(trees))
    data = FoldData.of(X, Y, folds, warmup, split)
    try:  # the fixed parameters, checked once: build their reservoir
        DTESN(**fixed).run(data.X[0][:1])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"base: {exc}") from None
    threads = int(n_jobs or fixed.get("n_jobs") or usable_cores())
    cache: list[list[np.ndarray]] = []

    def standardised() -> list[np.ndarray]:
        if not cache:
            cache.append(data.standardised())
        return cache[0]

    optuna = _import_optuna()
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    table = TrialTable()
    best: tuple[float, dict[str, Any]] | None = None
    try:
        quiet = functools.partial(_quiet, optuna.exceptions.ExperimentalWarning)
        with quiet():
            sampler = optuna.samplers.TPESampler(
                seed=int(seed), multivariate=True, group=True, n_startup_trials=_STARTUP
            )
            study = optuna.create_study(sampler=sampler, pruner=_pruner(pruner, optuna))
            first = _first_trial(searched, defaults, fixed)
            if first:
                study.enqueue_trial(first)
        for number in range(int(n_trials)):
            if timeout is not None and time.perf_counter() - started > timeout:
                break
            with quiet():
                trial = study.ask()
                chosen = _suggest(trial, searched, fixed)
            params = {**fixed, **_arguments(chosen), "n_jobs": threads}
            row = _trial(trial, params, data, standardised, grid, metric)
            state = getattr(optuna.trial.TrialState, {"failed": "FAIL"}.get(
                row["state"], row["state"].upper()))  # fmt: skip
            with quiet():
                study.tell(trial, row["score"] if row["state"] == "complete" else None, state)
            row = {"trial": number, **row, **chosen}
            if "error" in row:  # last, after the parameters
                row["error"] = row.pop("error")
            table.append(row)
            if row["state"] == "complete" and (best is None or row["score"] < best[0]):
                best = (row["score"], {**chosen, "ridge": row["ridge"]})
            if progress is not None:
                progress(TrialProgress(number + 1, int(n_trials), row, *(best or (None, None))))
    finally:
        optuna.logging.set_verbosity(verbosity)
    if best is None:
        errors = sorted({r["error"] for r in table if r.get("error")})
        raise RuntimeError(
            f"no trial of {len(table)} completed ({'; '.join(errors) or 'all pruned'}); "
            "widen or narrow the space, or allow more trials"
        )
    best_score, best_params = best
    final = {**fixed, **_arguments(best_params)}
    model = DTESN(**final).fit(X, Y, warmup=warmup) if refit else None
    return TuneResult(
        model, table, best_params, best_score, final, metric, data.split, folds, warmup,
        seconds=time.perf_counter() - started,
    )  # fmt: skip
