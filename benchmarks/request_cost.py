"""Calibrate the request cost model of ``dtecho.services.budget``: seconds per operation.

Times the code the services run — ``Processor.process`` (``/v1/dtesn/process``), building a
network, ``DTESN.fit`` + ``predict`` as a training does, ``predict_many`` with a closed-loop
horizon (``/predict``), ``partial_fit`` (``/update``) — over a grid of sizes, fits each
coefficient of the model (the module docstring of ``dtecho.services.budget`` names them) by
least squares on relative error, and prints, per measurement, the measured seconds, the
estimate of the fitted coefficients and of the coefficients shipped in ``budget.py``
(``COEFFICIENTS``), and their ratios. The shipped ones should never be far below the
measurement (an underestimate admits work slower than the budget says).

    .venv/bin/python benchmarks/request_cost.py [--quick]

Writes ``benchmarks/results/request_cost.json``.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from _common import arg_parser, machine_info, pin_threads, print_table, write_json

pin_threads(sys.argv[1:])

import numpy as np  # noqa: E402

from dtecho.dtesn import DTESN, bseries  # noqa: E402
from dtecho.protocol.dtesn import ModelConfig  # noqa: E402
from dtecho.services import budget  # noqa: E402
from dtecho.services.dtesn_models import batch_reservoir, predict_many  # noqa: E402
from dtecho.services.dtesn_processing import NetworkConfig, Processor  # noqa: E402

PROCESS_GRID = [  # (esn_size, membrane_depth, integrator)
    (512, 4, "euler"), (1024, 1, "euler"), (2048, 1, "euler"), (4096, 1, "euler"),
    (2048, 4, "euler"), (4096, 4, "euler"), (1024, 8, "euler"), (4096, 8, "euler"),
    (1024, 1, "rk4"), (2048, 1, "rk4"), (4096, 4, "rk4"), (2048, 8, "rk4"),
    (1024, 4, "midpoint"), (2048, 2, "dopri5"),
]  # fmt: skip
TRAIN_GRID = [(400, 3000), (1000, 3000), (2000, 2000), (3000, 1500)]  # (units, rows)


def _best(fn: Any, repeats: int) -> float:
    fn()  # compilation, first touch of memory
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _lstsq(rows: list[list[float]], measured: list[float]) -> np.ndarray:
    """Nonnegative-ish least squares on relative error (rows and targets divided by the
    measurement), so a small configuration counts as much as a large one."""
    A = np.array(rows) / np.array(measured)[:, None]
    coef, *_ = np.linalg.lstsq(A, np.ones(len(measured)), rcond=None)
    return np.maximum(coef, 0.0)


def _series(rows: int, width: int = 1) -> np.ndarray:
    t = np.arange(rows + 1, dtype=np.float64)
    signal = np.sin(0.07 * t) + 0.5 * np.sin(0.0131 * t + 1.0)
    return np.repeat(signal[:, None], width, axis=1)


def measure_process(steps: int, repeats: int, grid: list[Any]) -> list[dict[str, Any]]:
    processor = Processor(max_networks=2)
    out = []
    for units, depth, integrator in grid:
        config = NetworkConfig(membrane_depth=depth, esn_size=units, integrator=integrator)
        started = time.perf_counter()
        processor.network(config)
        build = time.perf_counter() - started
        data = bytes(np.random.default_rng(0).integers(32, 127, steps, dtype=np.uint8))
        seconds = _best(lambda c=config, d=data: processor.process(c, d), repeats)
        out.append({
            "esn_size": units, "membrane_depth": depth, "integrator": integrator,
            "stages": bseries.TABLEAUX[integrator].stages, "steps": steps,
            "nonzeros": budget.recurrent_nonzeros(units, depth=depth),
            "build_s": build, "seconds": seconds,
        })  # fmt: skip
    return out


def _train_config(units: int) -> ModelConfig:
    return ModelConfig(units=units)


def measure_train(grid: list[Any]) -> list[dict[str, Any]]:
    warm = _series(300)
    DTESN(**_train_config(100).model_dump()).fit(warm[:-1], warm[1:], 100)  # compilation
    out = []
    for units, rows in grid:
        series = _series(rows)
        X, Y = series[:-1], series[1:]
        model = DTESN(**_train_config(units).model_dump())
        started = time.perf_counter()
        model.fit(X, Y, 100)  # as ModelService._fit: fit, then predict for the score
        model.predict(X)
        out.append({"units": units, "rows": rows, "features": units + 2,
                    "nonzeros": budget.recurrent_nonzeros(units),
                    "seconds": time.perf_counter() - started})  # fmt: skip
    return out


def measure_predict(units: int, rows: int, horizon: int) -> dict[str, Any]:
    series = _series(rows)
    model = DTESN(**_train_config(units).model_dump()).fit(series[:-1], series[1:], 100)
    reservoir = batch_reservoir(model)
    inputs = series[:rows]
    seconds = _best(lambda: predict_many(model, reservoir, [inputs], horizon), 2)
    plain = _best(lambda: predict_many(model, reservoir, [inputs], 0), 2)
    return {"units": units, "rows": rows, "horizon": horizon,
            "nonzeros": budget.recurrent_nonzeros(units), "features": units + 2,
            "seconds": seconds, "without_horizon_s": plain}  # fmt: skip


def measure_update(units: int, rows: int) -> dict[str, Any]:
    series = _series(2 * rows)
    model = DTESN(**_train_config(units).model_dump()).fit(series[:rows], series[1 : rows + 1])
    X, Y = series[rows:-1], series[rows + 1 :]
    started = time.perf_counter()
    model.predict(X)  # as ModelService.update: score before, RLS, score after
    model.partial_fit(X, Y)
    model.predict(X)
    return {"units": units, "rows": len(X), "features": units + 2,
            "nonzeros": budget.recurrent_nonzeros(units),
            "seconds": time.perf_counter() - started}  # fmt: skip


def main() -> None:
    args = arg_parser(__doc__.split("\n")[0]).parse_args()
    quick = args.quick
    repeats = args.repeats or (1 if quick else 2)
    steps = 512 if quick else 2048
    process = measure_process(steps, repeats, PROCESS_GRID[:4] if quick else PROCESS_GRID)
    # A: per nonzero and stage; B: per unit and stage (the step model)
    step_rows = [[r["stages"] * r["nonzeros"], r["stages"] * r["esn_size"]] for r in process]
    A, B = _lstsq(step_rows, [r["seconds"] / r["steps"] for r in process])
    # C: the median build per nonzero (the first build also compiles kernels: left out)
    C = float(np.median([r["build_s"] / r["nonzeros"] for r in process[1:]]))

    train = measure_train(TRAIN_GRID[:2] if quick else TRAIN_GRID)

    # E: the ridge path's solve per F³, from the largest training (the solve dominates it);
    # D: the normal equations per row·F², from the smallest (the rows dominate it); each
    # once the reservoir runs (fit and evaluation) and the other term are taken off.
    def readout(r: dict[str, Any]) -> float:
        return r["seconds"] - 2 * r["rows"] * (A * r["nonzeros"] + B * r["units"])

    big, small = max(train, key=lambda r: r["units"]), min(train, key=lambda r: r["units"])
    E = max(0.0, readout(big) / big["features"] ** 3)
    D = max(0.0, (readout(small) - E * small["features"] ** 3)
            / (small["rows"] * small["features"] ** 2))  # fmt: skip

    forecast = measure_predict(400, 500, 200 if quick else 2000)
    step = A * forecast["nonzeros"] + B * forecast["units"]
    L = max(0.0, (forecast["seconds"] - forecast["without_horizon_s"]) / forecast["horizon"] - step)
    update = measure_update(400, 500 if quick else 2000)
    G = max(
        0.0,
        (update["seconds"] - 3 * update["rows"] * (A * update["nonzeros"] + B * update["units"]))
        / (update["rows"] * update["features"] ** 2),
    )
    fitted = budget.Coefficients(A, B, C, D, E, L, G)
    shipped = budget.COEFFICIENTS

    def estimates(k: budget.Coefficients) -> list[float]:
        out = []
        for r in process:
            cost = budget.process_cost(r["steps"], esn_size=r["esn_size"],
                                       membrane_depth=r["membrane_depth"],
                                       integrator=r["integrator"], k=k)  # fmt: skip
            out.append(cost.seconds - cost.fixed)  # the build was timed apart
        for r in train:
            out.append(budget.fit_cost(r["rows"], units=r["units"], input_dim=1, k=k).seconds)
        f = forecast
        out.append(budget.predict_cost(f["rows"], f["horizon"], units=f["units"],
                                       input_dim=1, k=k).seconds)  # fmt: skip
        out.append(budget.update_cost(update["rows"], units=update["units"], input_dim=1,
                                      k=k).seconds)  # fmt: skip
        return out

    labels = [f"process {r['esn_size']}/d{r['membrane_depth']}/{r['integrator']}" for r in process]
    labels += [f"train {r['units']} units × {r['rows']} rows" for r in train]
    labels += [f"predict 400 units, horizon {forecast['horizon']}", "update 400 units"]
    measured = [r["seconds"] for r in process] + [r["seconds"] for r in train]
    measured += [forecast["seconds"], update["seconds"]]
    rows = [
        {"measurement": label, "measured_s": m, "fitted_s": f, "shipped_s": s,
         "shipped/measured": s / m}
        for label, m, f, s in zip(labels, measured, estimates(fitted), estimates(shipped),
                                  strict=True)
    ]  # fmt: skip
    print_table(rows, ["measurement", "measured_s", "fitted_s", "shipped_s", "shipped/measured"],
                "Request cost: measured against estimated reference seconds")  # fmt: skip
    coefficients = [{"coefficient": name, "fitted": getattr(fitted, name),
                     "shipped": getattr(shipped, name)} for name in fitted.__slots__]  # fmt: skip
    print_table(coefficients, ["coefficient", "fitted", "shipped"], "Seconds per operation")
    # What the defaults admit: the configurations the README and the tests use.
    examples = {
        "process 512/d4/euler, 10,000 steps": budget.process_cost(
            10_000, esn_size=512, membrane_depth=4),
        "process 4096/d8/euler, 100,000 steps": budget.process_cost(
            100_000, esn_size=4096, membrane_depth=8),
        "process 4096/d1/rk4, 100,000 steps": budget.process_cost(
            100_000, esn_size=4096, membrane_depth=1, integrator="rk4"),
        "train 400 units, 5,000 rows": budget.fit_cost(5_000, units=400, input_dim=1),
        "train 8192 units, 20,000 rows": budget.fit_cost(20_000, units=8192, input_dim=1),
    }  # fmt: skip
    print_table([{"request": k, "estimated_s": v.seconds} for k, v in examples.items()],
                ["request", "estimated_s"], "Estimates with the shipped coefficients")  # fmt: skip
    write_json("request_cost", {
        "quick": quick, "machine": machine_info(args.threads), "process": process,
        "train": train, "predict": forecast, "update": update, "comparison": rows,
        "coefficients": coefficients,
        "examples": {k: v.seconds for k, v in examples.items()},
    })  # fmt: skip


if __name__ == "__main__":
    main()
