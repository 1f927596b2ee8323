"""Mackey–Glass τ = 17, 84-step closed-loop forecast (Jaeger's protocol): DTESN vs ReservoirPy.

Series: ``datasets.mackey_glass`` (RK4, h = 0.1, one sample per time unit), squashed as in
Jaeger & Haas (2004): y = tanh(x − 1). Training: teacher forcing on 1000 washout + 3000
training steps (input y(n−1), target y(n), ridge readout on [1, u, x]); no state noise (the
ridge penalty is the only regulariser; DTESN has no state-noise option). Test: from each of
50 start points s in a part of the series never used for training or tuning, the network is
teacher-forced on the 500 samples before s, then runs closed loop (output fed back as input)
for 84 steps. Predictions are mapped back, x̂ = 1 + artanh(ŷ), and

    NRMSE84 = sqrt(mean over starts of (x̂(s+83) − x(s+83))²) / σ(x)

i.e. the error at the 84th free-running step (as Jaeger), σ the standard deviation of the
original series. ``nrmse_all84`` is the same over all 84 steps. Targets: ≤ 2.8e-4 at 400
units (Jaeger 2001), stretch ≤ 6.3e-5 at 1000 units (Jaeger & Haas 2004).

Hyper-parameters: ``--tune`` searches the same grid for both libraries on 30 validation
starts (disjoint from the test starts): stage 1 ranks grid × ridge with network seed 0,
stage 2 re-scores the 8 best with seeds 0, 1, 2 and keeps the best mean. The constants below
are the winners of such a run. The default run only evaluates them, on the test starts, for
network seeds 0 … 4; the target is judged on the mean over seeds.

    python benchmarks/mackey_glass.py [--quick] [--tune] [--threads N]
"""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path

from _common import pin_threads

THREADS = pin_threads()

import numpy as np  # noqa: E402
from reservoirpy.esn import ESN  # noqa: E402
from reservoirpy.mat_gen import uniform  # noqa: E402
from reservoirpy.nodes import Reservoir, Ridge  # noqa: E402

from _common import arg_parser, machine_info, print_table, write_json  # noqa: E402
from dtecho.dtesn import DTESN, datasets  # noqa: E402

WASHOUT, TRAIN, WARM, HORIZON = 1000, 3000, 500, 84
STRIDE = 97  # samples between start points (MG's quasi-period is ~50)
N_VAL, N_TEST = 30, 50
CONNECTIVITY = 0.1
SEEDS = (0, 1, 2, 3, 4)  # network seeds of the evaluation
TUNE_SEEDS = (0, 1, 2)

# Winners of `python benchmarks/mackey_glass.py --tune` (validation starts only); keys:
# spectral_radius, input_scaling, bias_scaling, leak_rate, ridge.
CHOSEN: dict[str, dict[int, dict[str, float]]] = {
    "dtesn": {
        400: dict(
            spectral_radius=1.1, input_scaling=1.0, bias_scaling=0.5, leak_rate=0.6, ridge=1e-10
        ),
        1000: dict(
            spectral_radius=1.1, input_scaling=1.0, bias_scaling=0.2, leak_rate=0.6, ridge=1e-10
        ),
    },
    "reservoirpy": {
        400: dict(
            spectral_radius=1.1, input_scaling=0.5, bias_scaling=0.2, leak_rate=0.6, ridge=1e-10
        ),
        1000: dict(
            spectral_radius=1.1, input_scaling=0.5, bias_scaling=0.2, leak_rate=0.6, ridge=1e-10
        ),
    },
}
GRID = {
    "spectral_radius": (0.95, 1.1, 1.25),
    "input_scaling": (0.5, 1.0, 2.0),
    "bias_scaling": (0.2, 0.5),
    "leak_rate": (0.6, 0.8, 1.0),
}
RIDGES = (1e-14, 1e-12, 1e-10, 1e-8)
TARGETS = {400: 2.8e-4, 1000: 6.3e-5}


class Task:
    """The series, its training pairs and the validation / test start points."""

    def __init__(self) -> None:
        first_val = WASHOUT + TRAIN + 1 + WARM + 200
        first_test = first_val + N_VAL * STRIDE + 200
        n = first_test + N_TEST * STRIDE + HORIZON + 1
        self.x = datasets.mackey_glass(n, tau=17.0)
        self.y = np.tanh(self.x - 1.0)
        self.sigma = float(self.x.std())
        self.X = self.y[: WASHOUT + TRAIN, None]
        self.Y = self.y[1 : WASHOUT + TRAIN + 1, None]
        self.starts = {
            "val": first_val + STRIDE * np.arange(N_VAL),
            "test": first_test + STRIDE * np.arange(N_TEST),
        }

    def warmups(self, split: str) -> np.ndarray:
        return np.stack([self.y[s - WARM : s, None] for s in self.starts[split]])

    def score(self, split: str, y_hat: np.ndarray) -> dict[str, float]:
        """y_hat (starts, 84) in the squashed domain → NRMSE at step 84 and over all 84."""
        x_hat = 1.0 + np.arctanh(np.clip(y_hat, -1 + 1e-16, 1 - 1e-16))
        truth = np.stack([self.x[s : s + HORIZON] for s in self.starts[split]])
        err = x_hat - truth
        return {
            "nrmse84": float(np.sqrt(np.mean(err[:, -1] ** 2)) / self.sigma),
            "nrmse_all84": float(np.sqrt(np.mean(err**2)) / self.sigma),
        }


# --dtesn-weights grouped: the same chosen settings with W drawn in row groups (DTESN's
# ``weights``), to show what the fast one-sequence layout costs in accuracy.
DTESN_WEIGHTS = {"weights": "random"}


def dtesn_forecasts(task: Task, units: int, p: dict, seed: int, split: str, ridges=None):
    """{ridge: (starts, 84) closed-loop outputs of y}."""
    kw = {**DTESN_WEIGHTS, **{k: v for k, v in p.items() if k != "ridge"}}
    warm = task.warmups(split)
    out = {}
    for r in ridges or (p["ridge"],):
        # input_norm="none": these settings were tuned on raw inputs, before the defaults study
        model = DTESN(units, connectivity=CONNECTIVITY, seed=seed, ridge=r, input_norm="none", **kw)
        model.fit(task.X, task.Y, warmup=WASHOUT)
        out[r] = model.generate(HORIZON, warmup=warm)[:, :, 0]
    return out


def rpy_forecasts(task: Task, units: int, p: dict, seed: int, split: str, ridges=None):
    out = {}
    for r in ridges or (p["ridge"],):
        b = p["bias_scaling"]
        res = Reservoir(
            units,
            sr=p["spectral_radius"],
            lr=p["leak_rate"],
            input_scaling=p["input_scaling"],
            rc_connectivity=CONNECTIVITY,
            input_connectivity=1.0,
            bias=uniform(low=-b, high=b),
            seed=seed,
        )
        esn = ESN(reservoir=res, readout=Ridge(ridge=r), input_to_readout=True)
        esn.fit(task.X, task.Y, warmup=WASHOUT)
        preds = np.empty((len(task.starts[split]), HORIZON))
        for i, warm in enumerate(task.warmups(split)):
            esn.reset()
            u = esn.run(warm)[-1]
            preds[i, 0] = u[0]
            for j in range(1, HORIZON):
                u = esn(u)
                preds[i, j] = u[0]
        out[r] = preds
    return out


LIBS = {"dtesn": dtesn_forecasts, "reservoirpy": rpy_forecasts}


def tune(task: Task, sizes, quick: bool, stage1_json: Path | None) -> dict[str, list[dict]]:
    """Stage 1: the grid × ridges with network seed 0; stage 2: the 8 best of each library
    and size again with seeds 0, 1, 2, ranked by the mean (a choice that only suits one
    random network is not a good choice). Validation starts only."""
    grid = GRID if not quick else {k: v[:1] for k, v in GRID.items()}
    ridges = RIDGES if not quick else RIDGES[1:2]
    if stage1_json is not None:  # reuse stage 1 of an earlier --tune run
        stage1 = json.loads(stage1_json.read_text())["tuning"]["stage1"]
    else:
        stage1 = []
        for units, (lib, forecasts) in itertools.product(sizes, LIBS.items()):
            for values in itertools.product(*grid.values()):
                p = dict(zip(grid, values, strict=True))
                t0 = time.perf_counter()
                for r, y_hat in forecasts(task, units, p, 0, "val", ridges).items():
                    stage1.append(
                        {"lib": lib, "units": units, **p, "ridge": r, **task.score("val", y_hat)}
                    )
                print(f"{lib} {units} {p} {time.perf_counter() - t0:.1f}s", flush=True)
    stage2 = []
    for units, lib in itertools.product(sizes, LIBS):
        sel = [r for r in stage1 if r["lib"] == lib and r["units"] == units]
        for r in sorted(sel, key=lambda r: r["nrmse84"])[: 2 if quick else 8]:
            p = {k: r[k] for k in (*GRID, "ridge")}
            scores = [
                task.score("val", LIBS[lib](task, units, p, seed, "val")[p["ridge"]])["nrmse84"]
                for seed in TUNE_SEEDS
            ]
            stage2.append(
                {
                    "lib": lib,
                    "units": units,
                    **p,
                    "stage1": r["nrmse84"],
                    "per_seed": scores,
                    "nrmse84_mean": float(np.mean(scores)),
                }
            )
    best = [
        min(
            (r for r in stage2 if r["lib"] == lib and r["units"] == units),
            key=lambda r: r["nrmse84_mean"],
        )
        for units, lib in itertools.product(sizes, LIBS)
    ]
    cols = ["lib", "units", *GRID, "ridge", "stage1", "nrmse84_mean"]
    print_table(best, cols, f"Winners: mean validation NRMSE84 over network seeds {TUNE_SEEDS}")
    return {"stage1": stage1, "stage2": stage2}


def evaluate(task: Task, sizes, seeds) -> list[dict]:
    rows = []
    for units, lib in itertools.product(sizes, LIBS):
        p = CHOSEN[lib][units]
        for seed in seeds:
            t0 = time.perf_counter()
            y_hat = LIBS[lib](task, units, p, seed, "test")[p["ridge"]]
            s = task.score("test", y_hat)
            rows.append(
                {"lib": lib, "units": units, "seed": seed, **s, "seconds": time.perf_counter() - t0}
            )
    return rows


def main() -> None:
    parser = arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--tune", action="store_true", help="grid search on validation starts")
    parser.add_argument("--stage1", type=Path, help="reuse stage 1 from this --tune JSON")
    parser.add_argument("--dtesn-weights", choices=("random", "grouped"), default="random")
    args = parser.parse_args()
    DTESN_WEIGHTS["weights"] = args.dtesn_weights
    sizes = (400,) if args.quick else (400, 1000)
    seeds = SEEDS[:1] if args.quick else SEEDS
    info = machine_info(THREADS)
    task = Task()
    payload = {
        "machine": info,
        "quick": args.quick,
        "protocol": {
            "washout": WASHOUT,
            "train": TRAIN,
            "teacher_forced_before_each_start": WARM,
            "horizon": HORIZON,
            "val_starts": N_VAL,
            "test_starts": N_TEST,
            "stride": STRIDE,
            "connectivity": CONNECTIVITY,
            "dtesn_weights": args.dtesn_weights,
            "squash": "y = tanh(x - 1)",
            "sigma_x": task.sigma,
            "nrmse84": "error at the 84th closed-loop step, RMS over test starts, / std(x)",
        },
    }
    if args.tune:
        payload["tuning"] = tune(task, sizes, args.quick, args.stage1)
        write_json("mackey_glass_tuning", payload, args.out)
        return
    rows = evaluate(task, sizes, seeds)
    print_table(
        rows,
        ["lib", "units", "seed", "nrmse84", "nrmse_all84", "seconds"],
        f"Mackey-Glass NRMSE84 on {N_TEST} test starts",
    )
    summary = []
    for units in sizes:
        line = {"units": units, "target": TARGETS[units]}
        for lib in LIBS:
            vals = [r["nrmse84"] for r in rows if r["lib"] == lib and r["units"] == units]
            line[f"{lib}_seed0"] = vals[0]
            line[f"{lib}_mean"] = float(np.mean(vals))
        line["met_seed0"] = line["dtesn_seed0"] <= line["target"]
        line["met_mean"] = line["dtesn_mean"] <= line["target"]
        summary.append(line)
    print_table(summary, list(summary[0]), "Targets (NRMSE84)")
    info["loadavg_end"] = list(os.getloadavg())
    write_json(
        "mackey_glass", {**payload, "chosen": CHOSEN, "rows": rows, "targets": summary}, args.out
    )


if __name__ == "__main__":
    main()
