"""The request cost estimators and the budget check (``dtecho.services.budget``)."""

from __future__ import annotations

import pytest

from dtecho.dtesn.model import DTESN
from dtecho.errors import RequestTooCostly
from dtecho.services.budget import (
    WorkBudget,
    batch_cost,
    fit_cost,
    predict_cost,
    process_cost,
    recurrent_nonzeros,
    tune_cost,
    update_cost,
)


@pytest.mark.parametrize(
    ("units", "depth", "connectivity"),
    [(512, 1, 0.1), (512, 4, 0.1), (1000, 3, 0.05), (300, 8, 0.1), (64, 2, 1.0)],
)
def test_nonzeros_are_counted_as_the_network_draws_them(
    units: int, depth: int, connectivity: float
) -> None:
    model = DTESN(units, depth, connectivity=connectivity, weights="random", input_norm="none")
    model._ensure_reservoir(1)
    assert recurrent_nonzeros(units, depth=depth, connectivity=connectivity) == (
        model.reservoir_.W.nnz
    )


def test_processing_cost_is_linear_in_the_steps() -> None:
    one = process_cost(1000, esn_size=512, membrane_depth=4, built=True)
    two = process_cost(2000, esn_size=512, membrane_depth=4, built=True)
    assert two.seconds == pytest.approx(2 * one.seconds)


def test_rk4_costs_four_times_euler_and_dopri5_seven() -> None:
    euler = process_cost(5000, esn_size=1024, membrane_depth=2, built=True)
    rk4 = process_cost(5000, esn_size=1024, membrane_depth=2, integrator="rk4", built=True)
    dopri5 = process_cost(5000, esn_size=1024, membrane_depth=2, integrator="dopri5", built=True)
    assert rk4.seconds == pytest.approx(4 * euler.seconds)
    assert dopri5.seconds == pytest.approx(7 * euler.seconds)


def test_one_membrane_costs_more_than_the_same_units_split_into_a_deep_tree() -> None:
    flat = process_cost(1000, esn_size=4096, membrane_depth=1)
    deep = process_cost(1000, esn_size=4096, membrane_depth=8)
    assert flat.seconds > 4 * deep.seconds


def test_a_built_network_skips_the_build() -> None:
    fresh = process_cost(100, esn_size=2048, membrane_depth=1)
    built = process_cost(100, esn_size=2048, membrane_depth=1, built=True)
    assert built.fixed == 0 and fresh.fixed > 0
    assert fresh.per_item == built.per_item


def test_a_batch_costs_its_items_steps_together() -> None:
    batch = batch_cost([100, 200, 700], esn_size=512, membrane_depth=4)
    alone = process_cost(1000, esn_size=512, membrane_depth=4)
    assert batch.seconds == pytest.approx(alone.seconds)
    assert batch.length_param == "inputs"


def test_training_cost_grows_with_rows_and_faster_than_the_square_of_units() -> None:
    small = fit_cost(1000, units=400, input_dim=1)
    double_rows = fit_cost(2000, units=400, input_dim=1)
    assert double_rows.seconds - small.seconds == pytest.approx(small.per_item * 1000)
    big = fit_cost(1000, units=4000, input_dim=1)
    # 10× the units: 100× the nonzeros to draw, ~1000× the solve
    assert big.fixed > 100 * small.fixed


def test_a_search_costs_at_least_its_trials_times_a_fit() -> None:
    fit = fit_cost(3000, units=400, input_dim=1)
    search = tune_cost(3000, trials=30, folds=3, units=400, input_dim=1)
    assert search.seconds > 30 * (fit.seconds - fit.fixed)
    assert tune_cost(3000, trials=60, folds=3, units=400, input_dim=1).seconds > search.seconds


def test_prediction_cost_counts_the_horizon_and_names_the_longer_part() -> None:
    rows_only = predict_cost(5000, 0, units=400, input_dim=1)
    forecast = predict_cost(10, 50_000, units=400, input_dim=1)
    assert rows_only.length_param == "inputs" and forecast.length_param == "horizon"
    more = predict_cost(10, 100_000, units=400, input_dim=1)
    assert more.seconds - forecast.seconds == pytest.approx(forecast.per_item * 50_000)


def test_an_update_costs_more_per_row_than_a_prediction() -> None:
    update = update_cost(1000, units=400, input_dim=1)
    predict = predict_cost(1000, 0, units=400, input_dim=1)
    assert update.seconds > predict.seconds


def test_the_budget_refuses_with_the_limit_the_estimate_and_the_field() -> None:
    budget = WorkBudget(max_sync_cost=1.0, max_background_cost=100.0)
    cost = process_cost(100_000, esn_size=4096, membrane_depth=4, built=True)
    assert 1.0 < cost.seconds < 100.0
    with pytest.raises(RequestTooCostly) as refused:
        budget.check(cost, alternative="Use the stream.")
    error = refused.value
    assert (error.status_code, error.code, error.param) == (400, "request_too_costly", "input")
    assert error.limit == 1.0 and error.estimate == pytest.approx(cost.seconds)
    assert "max_sync_cost" in error.message and "Use the stream." in error.message
    fits = cost.max_items(1.0)
    assert f"at most {fits} steps" in error.message
    budget.check(process_cost(fits, esn_size=4096, membrane_depth=4, built=True))
    budget.check(cost, background=True)  # the larger budget


def test_work_that_no_length_makes_small_enough_names_the_size() -> None:
    budget = WorkBudget(max_sync_cost=1.0, max_background_cost=2.0)
    with pytest.raises(RequestTooCostly) as refused:
        budget.check(fit_cost(10, units=8192, input_dim=1), background=True)
    assert refused.value.param == "config.units"
    assert "max_background_cost" in refused.value.message


def test_the_alternative_is_offered_only_when_it_fits_its_budget() -> None:
    budget = WorkBudget(max_sync_cost=1.0, max_background_cost=1.5)
    cost = process_cost(1_000_000, esn_size=4096, membrane_depth=1, built=True)
    with pytest.raises(RequestTooCostly) as refused:
        budget.check(cost, alternative="Use the stream.")
    assert "Use the stream." not in refused.value.message


def test_a_refusal_can_be_renamed_for_another_request_shape() -> None:
    budget = WorkBudget(max_sync_cost=0.5, max_background_cost=1.0)
    with pytest.raises(RequestTooCostly) as refused:
        budget.check(process_cost(100_000, esn_size=512, membrane_depth=4))
    renamed = refused.value.renamed({"input": "messages", "esn_size": "dtesn_esn_size"})
    assert renamed.param == "messages"
    assert "'messages'" in renamed.message and "dtesn_esn_size" in renamed.message
