"""Which defaults should ``DTESN(units=…)`` have? A cross-task study on validation data.

Every candidate (a set of constructor arguments; ``units`` and ``seed`` aside) is fitted on
every task of ``_tasks.suite`` (Mackey–Glass free run, NARMA10 and NARMA30, Lorenz and
Rössler one and ten steps ahead, memory capacity, a sequence classification), at several
reservoir sizes and network seeds (data seed = network seed, so a seed varies both), and
scored on the task's validation rows; there is no test set, nothing here is a final score.
ReservoirPy 0.4.2 at *its* defaults (``ESN(units=N, seed=s)``: lr 1, sr 1, ridge 0, Win
Bernoulli with input connectivity 0.1, the readout on the states) runs the same tasks,
sizes and seeds as the reference.

Ranking: per task, candidates are ranked by their mean score over sizes and seeds; a
candidate's overall rank is its mean rank over tasks (every task counts the same whatever
its error scale). For the chosen defaults the table gives, per task, the mean score of
both libraries and the paired difference (DTESN − ReservoirPy over the same size, seed and
data) with its standard error.

    python benchmarks/defaults_study.py [--quick] [--sizes 100 500] [--seeds 3]
        [--candidates NAME ...] [--tune-trials N]

``--tune-trials N`` adds the search comparison: ``DTESN.tune`` and ReservoirPy's
``hyper`` search (hyperopt TPE over lr, sr, input scaling and ridge) with the same budget
of N trials, each on the task's training rows (their own time-ordered validation split),
scored on the task's validation rows.
"""

from __future__ import annotations

import os
import time

from _common import pin_threads

THREADS = pin_threads()

import itertools  # noqa: E402
import warnings  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from _common import arg_parser, machine_info, print_table, write_json  # noqa: E402
from _tasks import Task, suite  # noqa: E402
from dtecho.dtesn import DTESN  # noqa: E402

# The defaults before this study (explicit, so the row survives a change of defaults).
OLD_DEFAULTS = {
    "spectral_radius": 0.9,
    "leak_rate": 0.3,
    "input_scaling": 1.0,
    "bias_scaling": 0.0,
    "connectivity": 0.1,
    "input_connectivity": 1.0,
    "ridge": 1e-8,
    "input_norm": "none",
    "weights": "random",
}


GRIDS = {
    # stage 1: the settings a user would otherwise tune, over wide ranges
    "wide": {
        "spectral_radius": (0.8, 1.0, 1.2),
        "leak_rate": (0.3, 0.6, 1.0),
        "input_scaling": (0.3, 1.0),  # of standardised inputs
        "bias_scaling": (0.0, 0.3, 1.0),
        "input_init": ("uniform", "bernoulli"),
    },
    # stage 2: around stage 1's best for the memory tasks (NARMA, memory capacity), which
    # want weak inputs and little leak, without losing the forecasts
    "focus": {
        "spectral_radius": (0.9, 1.0),
        "leak_rate": (0.6, 1.0),
        "input_scaling": (0.05, 0.1, 0.2),
        "bias_scaling": (0.1, 0.3),
        "input_connectivity": (1.0, 0.1),
        "input_init": ("uniform", "bernoulli"),
    },
    # stage 3: membrane trees under stage 2's best (a fast skin over slower inner membranes)
    "trees": {
        "spectral_radius": (0.9,),
        "leak_rate": (1.0,),
        "input_scaling": (0.1,),
        "bias_scaling": (0.1, 0.3),
        "depth": (2, 3),
        "tau_scaling": (2.0, 4.0),
    },
}
_SHORT = {
    "spectral_radius": "sr",
    "leak_rate": "lr",
    "input_scaling": "in",
    "bias_scaling": "b",
    "input_connectivity": "ic",
    "input_init": "",
    "depth": "d",
    "tau_scaling": "tau",
    "weights": "",
}


def candidates(grids: tuple[str, ...] = tuple(GRIDS)) -> dict[str, dict[str, Any]]:
    """name → constructor arguments. "defaults" is ``DTESN(units=N, seed=s)`` as shipped;
    the grids vary the settings a user would otherwise tune, the ridge chosen by "auto"."""
    out: dict[str, dict[str, Any]] = {"defaults": {}, "old_defaults": dict(OLD_DEFAULTS)}
    for grid in grids:
        space = GRIDS[grid]
        for values in itertools.product(*space.values()):
            params = dict(zip(space, values, strict=True))
            name = "_".join(
                f"{_SHORT[k]}{v if not isinstance(v, str) else v[:4]}" for k, v in params.items()
            )
            out[name] = {**params, "ridge": "auto"}
    return out


# -- running one candidate on one task ---------------------------------------------------


def _validation_inputs(task: Task) -> Any:
    """Teacher-forced tasks run the training and validation inputs as one series (the
    validation rows continue from the training state); classification runs each sequence."""
    if task.kind == "teacher":
        return np.concatenate([task.X, task.X_val])
    return task.X_val


def _validation_part(task: Task, predicted: Any) -> Any:
    if task.kind == "teacher":
        return predicted[len(task.X) :]
    return predicted


def dtesn_validation_score(task: Task, model: DTESN) -> float:
    """A fitted DTESN's score on the task's validation part."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        if task.kind == "freerun":
            return _finite(task, model.generate(task.horizon, warmup=task.X_val))
        return _finite(task, _validation_part(task, model.predict(_validation_inputs(task))))


def dtesn_score(task: Task, params: dict[str, Any], units: int, seed: int) -> float:
    """Fit a DTESN with ``params`` on the task's training part, score on validation."""
    model = DTESN(units=units, seed=seed, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(task.X, task.Y, warmup=task.warmup)
    return dtesn_validation_score(task, model)


def _finite(task: Task, predicted: Any) -> float:
    with np.errstate(all="ignore"):
        return task.score(predicted)  # a diverged run scores the task's cap


def reservoirpy_validation_score(task: Task, esn: Any) -> float:
    """A fitted ReservoirPy model's score on the task's validation part (from its reset
    state: the free run and the teacher-forced rows rerun the training inputs first)."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        if task.kind == "freerun":
            esn.reset()
            u = esn.run(task.X_val)[-1]
            out = [u]
            for _ in range(task.horizon - 1):
                u = esn(u)
                out.append(u)
            return _finite(task, np.asarray(out))
        if task.kind == "teacher":
            esn.reset()
            return _finite(task, _validation_part(task, esn.run(_validation_inputs(task))))
        predicted = []
        for x in task.X_val:
            esn.reset()
            predicted.append(esn.run(x))
        return _finite(task, predicted)


def reservoirpy_score(task: Task, units: int, seed: int, **params: Any) -> float:
    """ReservoirPy's ``ESN(units=…)`` (its defaults, unless ``params`` override them)."""
    from reservoirpy.esn import ESN

    esn = ESN(units=units, seed=seed, **params)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        esn.fit(task.X, task.Y, warmup=task.warmup)
    return reservoirpy_validation_score(task, esn)


# -- searches with the same budget --------------------------------------------------------


def dtesn_tuned_score(task: Task, units: int, seed: int, trials: int) -> float:
    """``DTESN(units).tune`` with ``trials`` trials on the training part (its own folds)."""
    model = DTESN(units=units, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.tune(task.X, task.Y, n_trials=trials, seed=seed, warmup=task.warmup)
    return dtesn_validation_score(task, model)


def _rpy_esn(units: int, seed: int, hp: dict[str, float]) -> Any:
    from reservoirpy.nodes import Reservoir, Ridge

    res = Reservoir(units, sr=hp["sr"], lr=hp["lr"], input_scaling=hp["input_scaling"], seed=seed)
    return res >> Ridge(ridge=hp["ridge"])


def reservoirpy_hyper_score(task: Task, units: int, seed: int, trials: int, tmp: str) -> float:
    """ReservoirPy's ``hyper.research`` (hyperopt TPE, ``trials`` evaluations) over the
    space of its tutorial (sr, lr, input scaling, ridge, log-uniform), on the last 20 % of
    the training part (rows in time, or sequences) as validation; the best refitted on the
    whole training part and scored on the task's validation, as the DTESN's."""
    import json

    from hyperopt import hp as space  # noqa: F401 (the config names hyperopt's families)
    from reservoirpy.hyper import research

    if isinstance(task.X, list):
        k = max(1, len(task.X) // 5)
        tr = (task.X[:-k], task.Y[:-k])
        va = (task.X[-k:], task.Y[-k:])
    else:
        cut = int(len(task.X) * 0.8)
        tr = (task.X[:cut], task.Y[:cut])
        va = (task.X[cut:], task.Y[cut:])

    def objective(dataset, config, *, sr, lr, input_scaling, ridge):
        (x_tr, y_tr), (x_va, y_va) = dataset
        esn = _rpy_esn(
            units, seed, {"sr": sr, "lr": lr, "input_scaling": input_scaling, "ridge": ridge}
        )
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            esn.fit(
                x_tr, y_tr, warmup=min(task.warmup, 10) if isinstance(x_tr, list) else task.warmup
            )
            if isinstance(x_va, list):
                err = []
                for x, y in zip(x_va, y_va, strict=True):
                    esn.reset()
                    err.append(np.mean((esn.run(x) - y) ** 2))
                loss = float(np.mean(err))
            else:
                esn.reset()
                p = esn.run(np.concatenate([x_tr, x_va]))[len(x_tr) :]
                loss = float(np.mean((p - y_va) ** 2) / np.var(y_va))
        return {"loss": loss if np.isfinite(loss) else 1e6}

    config = {
        "exp": f"study-{task.name}-{units}-{seed}",
        "hp_max_evals": trials,
        "hp_method": "tpe",
        "seed": seed,
        "instances_per_trial": 1,
        "hp_space": {
            "sr": ["loguniform", 1e-2, 10],
            "lr": ["loguniform", 1e-3, 1],
            "input_scaling": ["loguniform", 1e-2, 10],
            "ridge": ["loguniform", 1e-10, 1e1],
        },
    }
    path = os.path.join(tmp, config["exp"] + ".json")
    with open(path, "w") as f:
        json.dump(config, f)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        best, _ = research(objective, (tr, va), path, tmp)
    esn = _rpy_esn(units, seed, best)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        esn.fit(task.X, task.Y, warmup=task.warmup)
    return reservoirpy_validation_score(task, esn)


def run_searches(units: int, seeds: list[int], trials: int) -> list[dict[str, Any]]:
    """Both searches on every task and seed, one after the other (each uses the cores)."""
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for task in suite(seed):
                for name, fn in (
                    ("dtesn_tune", lambda t=task, s=seed: dtesn_tuned_score(t, units, s, trials)),
                    (
                        "reservoirpy_hyper",
                        lambda t=task, s=seed: reservoirpy_hyper_score(t, units, s, trials, tmp),
                    ),
                ):
                    t0 = time.perf_counter()
                    score = fn()
                    rows.append(
                        {
                            "candidate": name,
                            "task": task.name,
                            "family": task.family,
                            "units": units,
                            "seed": seed,
                            "score": score,
                            "seconds": time.perf_counter() - t0,
                        }
                    )
                    print(f"  {name:18s} {task.name:22s} seed {seed}: {score:.4g}", flush=True)
    return rows


# -- the study -----------------------------------------------------------------------------


def run_grid(
    cands: dict[str, dict[str, Any]],
    names: list[str],
    sizes: list[int],
    seeds: list[int],
    jobs: int,
) -> tuple[list[dict[str, Any]], dict[str, list[Task]]]:
    """Scores of every (candidate, task, size, seed), ReservoirPy's defaults included."""
    tasks = {seed: suite(seed) for seed in seeds}
    work = []
    for seed, size, i in itertools.product(seeds, sizes, range(len(tasks[seeds[0]]))):
        task = tasks[seed][i]
        work.append(("reservoirpy", task, size, seed, None))
        work.extend((name, task, size, seed, cands[name]) for name in names)

    def one(item: tuple) -> dict[str, Any]:
        name, task, size, seed, params = item
        t0 = time.perf_counter()
        if params is None:
            score = reservoirpy_score(task, size, seed)
        else:
            score = dtesn_score(task, params, size, seed)
        return {
            "candidate": name,
            "task": task.name,
            "family": task.family,
            "units": size,
            "seed": seed,
            "score": score,
            "seconds": time.perf_counter() - t0,
        }

    with ThreadPoolExecutor(jobs) as pool:  # the compiled loops and BLAS release the GIL
        rows = list(pool.map(one, work))
    return rows, tasks


def rank(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean rank over tasks of each candidate's mean score (1 = best)."""
    names = sorted({r["candidate"] for r in rows})
    task_names = list(dict.fromkeys(r["task"] for r in rows))
    means = {
        (n, t): float(np.mean([r["score"] for r in rows if r["candidate"] == n and r["task"] == t]))
        for n in names
        for t in task_names
    }
    ranks: dict[str, list[float]] = {n: [] for n in names}
    for t in task_names:
        order = sorted(names, key=lambda n: means[n, t])
        for position, n in enumerate(order, 1):
            ranks[n].append(position)
    table = []
    for n in names:
        row: dict[str, Any] = {"candidate": n, "mean_rank": float(np.mean(ranks[n]))}
        row.update({t: means[n, t] for t in task_names})
        table.append(row)
    table.sort(key=lambda r: r["mean_rank"])
    return table


def choose(ranking: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The criterion, fixed before the final run: the best mean rank among the candidates
    whose mean score is no worse than ReservoirPy's defaults on every task."""
    rpy = next((r for r in ranking if r["candidate"] == "reservoirpy"), None)
    if rpy is None:
        return None
    tasks = [k for k in rpy if k not in ("candidate", "mean_rank")]
    for row in ranking:  # best mean rank first
        if row["candidate"] != "reservoirpy" and all(row[t] <= rpy[t] for t in tasks):
            return row
    return None


def paired(rows: list[dict[str, Any]], a: str, b: str) -> list[dict[str, Any]]:
    """Per task: mean score of ``a`` and ``b`` and the paired difference a − b ± its SE."""
    out = []
    for t in dict.fromkeys(r["task"] for r in rows):
        key = lambda r: (r["units"], r["seed"])  # noqa: E731
        sa = {key(r): r["score"] for r in rows if r["candidate"] == a and r["task"] == t}
        sb = {key(r): r["score"] for r in rows if r["candidate"] == b and r["task"] == t}
        common = sorted(set(sa) & set(sb))
        d = np.array([sa[k] - sb[k] for k in common])
        se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
        out.append(
            {
                "task": t,
                a: float(np.mean([sa[k] for k in common])),
                b: float(np.mean([sb[k] for k in common])),
                "diff": float(d.mean()),
                "se": se,
                "wins": int(np.sum(d < 0)),
                "runs": len(d),
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = arg_parser(__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--candidates", nargs="+", default=None)
    parser.add_argument("--grids", nargs="+", default=list(GRIDS), choices=list(GRIDS))
    parser.add_argument("--tune-trials", type=int, default=0, help="add the searches (N trials)")
    parser.add_argument("--tune-units", type=int, default=100)
    parser.add_argument("--no-grid", action="store_true", help="only the searches")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    sizes = [50] if args.quick else args.sizes
    seeds = list(range(1 if args.quick else args.seeds))
    pool = candidates(tuple(args.grids))
    names = args.candidates or list(pool)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    ranking: list[dict[str, Any]] = []
    chosen: dict[str, Any] | None = None
    comparison: list[dict[str, Any]] = []
    if not args.no_grid:
        rows, _ = run_grid(pool, names, sizes, seeds, args.jobs)
        ranking = rank(rows)
        tasks = [k for k in ranking[0] if k not in ("candidate", "mean_rank")]
        print_table(ranking, ["candidate", "mean_rank", *tasks], title="mean validation score")
        chosen = choose(ranking)
        print(
            "chosen (best mean rank, no worse than ReservoirPy's defaults on any task):",
            chosen["candidate"] if chosen else None,
        )
        comparison = paired(rows, "defaults", "reservoirpy")
        cols = ["task", "defaults", "reservoirpy", "diff", "se", "wins", "runs"]
        print_table(comparison, cols, title="defaults vs ReservoirPy's defaults (paired)")
    searches: list[dict[str, Any]] = []
    search_comparison: list[dict[str, Any]] = []
    if args.tune_trials:
        searches = run_searches(args.tune_units, seeds, args.tune_trials)
        search_comparison = paired(searches, "dtesn_tune", "reservoirpy_hyper")
        cols = ["task", "dtesn_tune", "reservoirpy_hyper", "diff", "se", "wins", "runs"]
        title = f"DTESN.tune vs ReservoirPy hyper, {args.tune_trials} trials each (paired)"
        print_table(search_comparison, cols, title=title)
    payload = {
        "machine": machine_info(THREADS),
        "sizes": sizes,
        "seeds": seeds,
        "candidates": {n: pool[n] for n in names},
        "ranking": ranking,
        "chosen": chosen,
        "defaults_vs_reservoirpy": comparison,
        "rows": rows,
        "tune_trials": args.tune_trials,
        "tune_units": args.tune_units,
        "searches": searches,
        "tune_vs_reservoirpy_hyper": search_comparison,
        "seconds": time.perf_counter() - t0,
    }
    print("wrote", write_json("defaults_study", payload, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
