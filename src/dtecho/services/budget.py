"""What a DTESN request will cost before it runs, and the budget that refuses the costliest.

Every estimate is in *reference seconds*: the single-core seconds the work takes on the
machine where ``benchmarks/request_cost.py`` measured the coefficients below (it prints them,
with how well they predict its own measurements). On another machine the seconds differ by
a roughly constant factor, which is what the configurable budgets absorb.

The models follow the work the code does:

- a reservoir step is, per integrator stage, one sparse product over the recurrent matrix's
  nonzeros plus elementwise work per unit (leak, tanh): ``stages · (A·nnz + B·units)``, with
  ``nnz`` counted from the membrane structure exactly as :func:`dtecho.dtesn.reservoir.
  build_weights` draws it (connectivity · units inputs per row of every recurrent and
  coupling block) — a single membrane of 4,096 units has about 100 times the nonzeros of
  the same units split into depth 8's 200 membranes, and runs many times slower;
- building a network (drawing W, its spectral radii) costs ``C·nnz``;
- training runs the reservoir over the rows twice (fit, then the fit's evaluation), then
  accumulates the readout's normal equations (``D·rows·F²``, F = units + inputs + 1 features)
  and solves them on the ridge path (``E·F³``);
- a closed-loop forecast step adds a fixed Python overhead (``L``) to its reservoir step;
- an RLS update costs ``G·F²`` per row on top of its reservoir runs.

Nothing here imports the server: services call :meth:`WorkBudget.check` and raise
:class:`~dtecho.errors.RequestTooCostly`, which the server maps to a 400.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from dtecho.dtesn import bseries
from dtecho.dtesn.membranes import build_membranes
from dtecho.errors import RequestTooCostly

__all__ = [
    "COEFFICIENTS",
    "Coefficients",
    "Cost",
    "WorkBudget",
    "batch_cost",
    "fit_cost",
    "predict_cost",
    "process_cost",
    "recurrent_nonzeros",
    "tune_cost",
    "update_cost",
]


@dataclass(frozen=True, slots=True)
class Coefficients:
    """Reference seconds per elementary operation (see the module docstring's letters)."""

    sparse_mac: float  # A: one recurrent nonzero, one stage of one step
    unit_stage: float  # B: one unit, one stage of one step (leak, activation, input)
    build_nonzero: float  # C: drawing and normalising one nonzero of W
    gram_mac: float  # D: one multiply-add of the readout's normal equations
    solve_flop: float  # E: per F³ of the ridge path's eigendecomposition and solve
    loop_step: float  # L: Python overhead of one closed-loop forecast step
    rls_mac: float  # G: one F² term of one RLS row


# Measured by ``benchmarks/request_cost.py`` (results/request_cost.json), rounded up.
COEFFICIENTS = Coefficients(
    sparse_mac=6.0e-10,
    unit_stage=1.2e-8,
    build_nonzero=7.0e-6,
    gram_mac=2.0e-10,
    solve_flop=1.0e-9,
    loop_step=1.0e-4,
    rls_mac=2.0e-9,
)

_PROCESSING = {"connectivity": 0.1, "coupling": 1.0, "feedback": 0.0}  # NetworkConfig's DTESN


def _in_degree(connectivity: float, cols: int) -> int:
    # as dtecho.dtesn.reservoir._in_degree: the nonzeros each row of a block draws
    return max(1, min(cols, round(connectivity * cols)))


def recurrent_nonzeros(
    units: int,
    *,
    depth: int | None = 1,
    tree: str | None = None,
    connectivity: float = 0.1,
    coupling: float = 1.0,
    feedback: float = 0.0,
) -> int:
    """Nonzeros of the recurrent matrix W of a network with these settings (no weights drawn).

    Raises ValueError where the network cannot be built (fewer units than membranes)."""
    membranes = build_membranes(units, depth=depth, tree=tree)
    total = 0
    for m in membranes:
        total += m.units * _in_degree(connectivity, m.units)
        if m.parent is not None:
            parent = membranes[m.parent]
            if coupling:
                total += m.units * _in_degree(connectivity, parent.units)
            if feedback:
                total += parent.units * _in_degree(connectivity, m.units)
    return total


def _step_seconds(units: int, nonzeros: int, integrator: str, k: Coefficients) -> float:
    stages = bseries.TABLEAUX[integrator].stages
    return stages * (k.sparse_mac * nonzeros + k.unit_stage * units)


@dataclass(frozen=True, slots=True)
class Cost:
    """An estimate: ``fixed + per_item · items`` reference seconds.

    ``items`` counts what the client can shorten (steps of an input, rows, forecast steps),
    named by ``length_param``; ``size_param`` names the fields that set ``per_item`` and
    ``fixed`` (the network's size and shape)."""

    operation: str
    fixed: float
    per_item: float
    items: int
    length_param: str
    size_param: str
    item_name: str = "steps"

    @property
    def seconds(self) -> float:
        """The estimated reference seconds."""
        return self.fixed + self.per_item * self.items

    def max_items(self, limit: float) -> int:
        """The most items that fit ``limit`` with this request's settings (0 if none do)."""
        if self.per_item <= 0:
            return self.items if self.fixed <= limit else 0
        return max(0, math.floor((limit - self.fixed) / self.per_item))


def process_cost(
    steps: int,
    *,
    esn_size: int,
    membrane_depth: int,
    integrator: str = "euler",
    length_param: str = "input",
    built: bool = False,
    k: Coefficients = COEFFICIENTS,
) -> Cost:
    """``/v1/dtesn/process`` and ``/stream``: build the network (unless ``built``: the
    service keeps recent ones), integrate ``steps`` inputs."""
    nonzeros = recurrent_nonzeros(esn_size, depth=membrane_depth, **_PROCESSING)
    return Cost(
        "process",
        fixed=0.0 if built else k.build_nonzero * nonzeros,
        per_item=_step_seconds(esn_size, nonzeros, integrator, k),
        items=int(steps),
        length_param=length_param,
        size_param="esn_size, membrane_depth, integrator",
    )


def batch_cost(
    lengths: Iterable[int],
    *,
    esn_size: int,
    membrane_depth: int,
    integrator: str = "euler",
    built: bool = False,
    k: Coefficients = COEFFICIENTS,
) -> Cost:
    """``/v1/dtesn/batch``: one network, the sum of its items' steps."""
    return process_cost(
        sum(lengths), esn_size=esn_size, membrane_depth=membrane_depth,
        integrator=integrator, length_param="inputs", built=built, k=k,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Readout:
    nonzeros: int
    step: float  # reference seconds of one reservoir step
    features: int  # F: units + input_dim + 1


def _readout(
    units: int, input_dim: int, *, depth: int | None, tree: str | None, connectivity: float,
    integrator: str, k: Coefficients,
) -> _Readout:  # fmt: skip
    nonzeros = recurrent_nonzeros(units, depth=depth, tree=tree, connectivity=connectivity)
    return _Readout(
        nonzeros, _step_seconds(units, nonzeros, integrator, k), units + int(input_dim) + 1
    )


def fit_cost(
    rows: int,
    *,
    units: int,
    input_dim: int,
    depth: int | None = 1,
    tree: str | None = None,
    connectivity: float = 0.1,
    integrator: str = "euler",
    k: Coefficients = COEFFICIENTS,
) -> Cost:
    """``POST /v1/dtesn/models``: build, run the rows (fit and evaluation), normal equations
    (rows · F²) and the ridge path's solve (F³)."""
    r = _readout(units, input_dim, depth=depth, tree=tree, connectivity=connectivity,
                 integrator=integrator, k=k)  # fmt: skip
    return Cost(
        "train",
        fixed=k.build_nonzero * r.nonzeros + k.solve_flop * r.features**3,
        per_item=2 * r.step + k.gram_mac * r.features**2,
        items=int(rows),
        length_param="inputs",
        size_param="config.units, config.depth, config.tree, config.connectivity, "
        "config.integrator",
        item_name="rows",
    )


def tune_cost(
    rows: int,
    *,
    trials: int,
    folds: int,
    units: int,
    input_dim: int,
    k: Coefficients = COEFFICIENTS,
) -> Cost:
    """``"config": "auto"``: ``trials`` searched settings, each a reservoir run over the rows
    and a readout per fold, then the final fit. Costed at depth 1, the searched structure
    with the most nonzeros."""
    one = fit_cost(rows, units=units, input_dim=input_dim, k=k)
    r = _readout(units, input_dim, depth=1, tree=None, connectivity=0.1,
                 integrator="euler", k=k)  # fmt: skip
    trial = Cost(
        "tune",
        fixed=k.build_nonzero * r.nonzeros + folds * k.solve_flop * r.features**3,
        per_item=r.step + k.gram_mac * r.features**2,
        items=int(rows),
        length_param="inputs",
        size_param="tune.trials, tune.folds, tune.units",
        item_name="rows",
    )
    return Cost(
        "tune",
        fixed=trials * trial.fixed + one.fixed,
        per_item=trials * trial.per_item + one.per_item,
        items=int(rows),
        length_param="inputs",
        size_param=trial.size_param,
        item_name="rows",
    )


def predict_cost(
    rows: int,
    horizon: int,
    *,
    units: int,
    input_dim: int,
    depth: int | None = 1,
    tree: str | None = None,
    connectivity: float = 0.1,
    integrator: str = "euler",
    k: Coefficients = COEFFICIENTS,
) -> Cost:
    """``/predict``: a reservoir step and a readout per input row, then per forecast step a
    reservoir step with its fixed closed-loop overhead. The longer part names the param."""
    r = _readout(units, input_dim, depth=depth, tree=tree, connectivity=connectivity,
                 integrator=integrator, k=k)  # fmt: skip
    row = r.step + k.gram_mac * r.features
    forecast = r.step + k.loop_step + k.gram_mac * r.features
    if horizon * forecast > rows * row:
        return Cost("predict", rows * row, forecast, int(horizon), "horizon", "the model's size")
    return Cost("predict", horizon * forecast, row, int(rows), "inputs", "the model's size",
                item_name="rows")  # fmt: skip


def update_cost(
    rows: int,
    *,
    units: int,
    input_dim: int,
    depth: int | None = 1,
    tree: str | None = None,
    connectivity: float = 0.1,
    integrator: str = "euler",
    k: Coefficients = COEFFICIENTS,
) -> Cost:
    """``/update``: predictions before and after plus the RLS pass (three reservoir runs) and
    an F² RLS update per row."""
    r = _readout(units, input_dim, depth=depth, tree=tree, connectivity=connectivity,
                 integrator=integrator, k=k)  # fmt: skip
    return Cost("update", 0.0, 3 * r.step + k.rls_mac * r.features**2, int(rows), "inputs",
                "the model's size", item_name="rows")  # fmt: skip


@dataclass(frozen=True, slots=True)
class WorkBudget:
    """The limits a request's :class:`Cost` is checked against, in reference seconds."""

    max_sync_cost: float
    max_background_cost: float

    def check(
        self, cost: Cost, *, background: bool = False, alternative: str | None = None
    ) -> None:
        """Raise :class:`~dtecho.errors.RequestTooCostly` if ``cost`` exceeds its limit.

        ``alternative`` says how to ask for the work as a background job or stream (it is
        only offered when the work fits that larger budget)."""
        limit = self.max_background_cost if background else self.max_sync_cost
        estimate = cost.seconds
        if estimate <= limit:
            return
        setting = "max_background_cost" if background else "max_sync_cost"
        kind = "background" if background else "synchronous"
        fits = cost.max_items(limit)
        if fits >= 1:
            param = cost.length_param
            advice = f"at most {fits} {cost.item_name} of '{param}' fit with these settings"
        else:
            param = cost.size_param.split(",")[0]
            advice = f"reduce {cost.size_param}"
        message = (
            f"This {cost.operation} request is estimated at {estimate:.3g} reference seconds "
            f"of work ({cost.items} {cost.item_name}; driven by '{cost.length_param}' and "
            f"{cost.size_param}); the {kind} limit is {limit:.3g} (work_limits.{setting}): "
            f"{advice}."
        )
        if alternative and not background and estimate <= self.max_background_cost:
            message += f" {alternative}"
        raise RequestTooCostly(
            message, param=param, limit=limit, estimate=estimate, setting=setting
        )
