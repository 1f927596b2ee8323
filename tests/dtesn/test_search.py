"""The hyperparameter search and its ridge path, through the public interface."""

import numpy as np
import pytest

from dtecho.dtesn import DTESN, datasets
from dtecho.dtesn.search import TrialProgress, score_folds, search

U, Y_NARMA = datasets.narma(1601, seed=1)
X, Y = U[:-1, None], Y_NARMA[1:, None]


def _nrmse(predicted, target):
    return float(np.sqrt(np.mean((predicted - target) ** 2) / np.var(target)))


def test_ridge_path_equals_explicit_fits_on_each_fold():
    params = {"units": 60, "seed": 2, "bias_scaling": 0.5, "input_scaling": 0.3}
    params["input_norm"] = "none"  # a fit on a fold's rows would standardise on those rows
    ridges = [1e-4, 1e-2, 1.0]
    path = score_folds(DTESN(**params), X, Y, folds=3, warmup=50, ridges=ridges)
    assert path.split == "time" and path.scores.shape == (3, 3)
    starts = [start for _, start, _ in path.blocks]
    assert starts[0] == 50 and path.blocks[-1][2] == len(X)
    for k in range(1, 4):
        _, start, stop = path.blocks[k]
        for j, ridge in enumerate(ridges):
            model = DTESN(**params, ridge=ridge).fit(X[:start], Y[:start], warmup=50)
            explicit = _nrmse(model.predict(X[:stop])[start:], Y[start:stop])
            assert path.scores[k - 1, j] == pytest.approx(explicit, rel=1e-8)


def test_ridge_path_scores_the_states_of_the_model_fitted_on_all_data():
    # input_norm="standard": fit folds the inputs' statistics over all of X into the
    # reservoir; the path must score exactly those states (known truth: least squares)
    params = {"units": 40, "seed": 1, "input_scaling": 0.5}
    ridge = 1e-3
    path = score_folds(DTESN(**params), X, Y, folds=2, warmup=50, ridges=[ridge])
    fitted = DTESN(**params, ridge=ridge).fit(X, Y, warmup=50)
    features = np.hstack([X, fitted.run(X)])
    for k in (1, 2):
        _, start, stop = path.blocks[k]
        train = slice(50, start)
        mean, mean_y = features[train].mean(axis=0), Y[train].mean(axis=0)
        A = features[train] - mean
        augmented = np.vstack([A, np.sqrt(ridge) * np.eye(A.shape[1])])
        rhs = np.vstack([Y[train] - mean_y, np.zeros((A.shape[1], 1))])
        w = np.linalg.lstsq(augmented, rhs, rcond=None)[0]
        predicted = (features[start:stop] - mean) @ w + mean_y
        assert path.scores[k - 1, 0] == pytest.approx(_nrmse(predicted, Y[start:stop]), rel=1e-8)


def test_sequence_folds_keep_sequences_whole_and_in_order():
    sequences = [X[i * 200 : (i + 1) * 200] for i in range(8)]
    targets = [Y[i * 200 : (i + 1) * 200] for i in range(8)]
    params = {"units": 30, "seed": 0, "input_norm": "none"}
    path = score_folds(DTESN(**params), sequences, targets, folds=3, warmup=20, ridges=[1e-3])
    assert path.split == "sequences"
    groups = [seqs for seqs, _, _ in path.blocks]
    assert [i for g in groups for i in g] == list(range(8)) and all(groups)
    # fold 2: trained on the first two groups, validated on the third
    train = [i for g in groups[:2] for i in g]
    model = DTESN(**params, ridge=1e-3).fit(
        [sequences[i] for i in train], [targets[i] for i in train], warmup=20
    )
    val = groups[2]
    predicted = np.concatenate([model.predict(sequences[i])[20:] for i in val])
    truth = np.concatenate([targets[i][20:] for i in val])
    assert path.scores[1, 0] == pytest.approx(_nrmse(predicted, truth), rel=1e-8)


def test_the_same_seed_gives_the_same_table_and_another_seed_another():
    kw = {"n_trials": 6, "base": {"units": 30}, "warmup": 50, "refit": False}
    first = search(X, Y, seed=3, **kw)
    again = search(X, Y, seed=3, **kw)
    other = search(X, Y, seed=4, **kw)
    assert first.table == again.table and first.best_params == again.best_params
    assert first.table != other.table


def test_tuned_model_beats_an_obviously_bad_setting_on_narma10():
    u, y = datasets.narma(3201, seed=5)
    Xn, Yn = u[:-1, None], y[1:, None]
    train, test = slice(0, 2000), slice(2000, None)
    bad = DTESN(units=80, leak_rate=0.01, spectral_radius=0.1, input_scaling=10.0, ridge=1.0)
    bad.fit(Xn[train], Yn[train])
    result = DTESN(units=80).tune(Xn[train], Yn[train], n_trials=15, seed=0)
    tuned_score = _nrmse(result.model.predict(Xn)[test], Yn[test])
    bad_score = _nrmse(bad.predict(Xn)[test], Yn[test])
    assert tuned_score < 0.8 * bad_score, (tuned_score, bad_score)
    assert result.best_score < 0.6  # a known answer: a tuned 80-unit reservoir is near 0.3


def test_tune_sets_the_best_on_the_instance_and_keeps_its_own_settings():
    model = DTESN(units=40, seed=7)
    result = model.tune(X, Y, n_trials=4, warmup=50, seed=0)
    fitted, table = result
    assert fitted is model and result.model is model and len(table) == 4
    assert model.units == 40 and model.seed == 7
    assert all("units" not in row and "seed" not in row for row in table)
    assert model.ridge == result.best_params["ridge"]
    for key, value in result.best_params.items():
        if key != "tree":
            assert getattr(model, key) == value
    rebuilt = DTESN(**result.params).fit(X, Y, warmup=50)
    np.testing.assert_allclose(rebuilt.predict(X), model.predict(X), rtol=1e-12, atol=1e-12)


def test_table_has_one_row_per_trial_and_marks_pruned_ones():
    calls: list[TrialProgress] = []
    result = search(
        X, Y, n_trials=12, folds=3, warmup=50, base={"units": 20}, seed=1, progress=calls.append
    )
    table = result.table
    assert [row["trial"] for row in table] == list(range(12))
    assert [c.done for c in calls] == list(range(1, 13)) and calls[-1].total == 12
    states = {row["state"] for row in table}
    assert "pruned" in states and "complete" in states
    for row in table:
        if row["state"] == "complete":
            assert len(row["folds"]) == 3 and row["score"] == pytest.approx(np.mean(row["folds"]))
        elif row["state"] == "pruned":
            assert len(row["folds"]) < 3
    best = min((r for r in table if r["state"] == "complete"), key=lambda r: r["score"])
    assert result.best_score == best["score"]
    assert calls[-1].best_score == result.best_score
    text = table.to_text(sort=True)
    assert len(text.splitlines()) == 13 and "pruned" in text
    summary = result.summary(top=2)
    assert summary["trials"] == 12 and len(summary["top"]) == 2
    assert summary["complete"] + summary["pruned"] + summary["failed"] == 12


def test_the_first_trial_is_the_constructor_defaults():
    result = search(X, Y, n_trials=1, warmup=50, base={"units": 20}, refit=False)
    row = result.table[0]
    defaults = DTESN().get_params()
    for key in ("spectral_radius", "leak_rate", "input_scaling", "bias_scaling"):
        assert row[key] == defaults[key]


def test_a_raising_progress_callback_stops_the_search():
    def stop(progress: TrialProgress) -> None:
        if progress.done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        search(X, Y, n_trials=10, warmup=50, base={"units": 20}, progress=stop)


def test_a_space_entry_replaces_the_default_range():
    result = search(
        X, Y, n_trials=5, warmup=50, base={"units": 20}, refit=False,
        space={"leak_rate": (0.5, 0.6), "tree": [1], "ridge": [1e-3, 1e-1]},
    )  # fmt: skip
    for row in result.table:
        assert 0.5 <= row["leak_rate"] <= 0.6 and row["tree"] == 1
        assert row["ridge"] in (1e-3, 1e-1)
        assert "tau_scaling" not in row  # one membrane: nothing to slow down


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"n_trials": 0}, "n_trials"),
        ({"folds": 0}, "folds"),
        ({"warmup": -1}, "warmup"),
        ({"metric": "mae"}, "metric"),
        ({"split": "random"}, "split"),
        ({"timeout": 0}, "timeout"),
        ({"seed": "x"}, "seed"),
        ({"n_jobs": 0}, "n_jobs"),
        ({"base": {"colour": 1}}, "base"),
        ({"base": {"connectivity": 2.0}}, "connectivity"),
        ({"space": {"colour": (0, 1)}}, "space"),
        ({"space": {"leak_rate": (1.0, 0.1)}}, "leak_rate"),
        ({"space": {"leak_rate": (0.0, 1.0, "log")}}, "leak_rate"),
        ({"space": {"tree": ["(("]}}, "tree"),
        ({"space": {"ridge": [-1.0]}}, "ridge"),
        ({"folds": 200}, "folds"),
        ({"warmup": 1590}, "warmup"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_them(kwargs, named):
    with pytest.raises(ValueError, match=named):
        search(X, Y, **{"n_trials": 2, "base": {"units": 10}, **kwargs})


def test_bad_data_raise_value_errors():
    with pytest.raises(ValueError, match="Y"):
        search(X, Y[:-1], n_trials=1)
    with pytest.raises(ValueError, match="NaN"):
        search(np.full_like(X, np.nan), Y, n_trials=1)


def test_importing_the_search_loads_neither_optuna_nor_the_web_stack():
    import json
    import subprocess
    import sys

    code = (
        "import json, sys\n"
        "import dtecho.dtesn.search\n"
        "names = ['optuna', 'redis', 'fastapi', 'starlette', 'pydantic', 'httpx']\n"
        "print(json.dumps([m for m in names if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_trees_add_the_membrane_structure_and_its_conditional_settings():
    result = search(X, Y, n_trials=10, warmup=50, base={"units": 24}, trees=True, refit=False)
    trees = {row["tree"] for row in result.table}
    assert len(trees) > 1 and trees <= {1, 2, 3, "(()())", "((()))"}
    for row in result.table:
        several = row["tree"] != 1
        assert ("tau_scaling" in row) == several and ("input_to" in row) == several
    plain = search(X, Y, n_trials=3, warmup=50, base={"units": 24}, refit=False)
    assert all("tree" not in row for row in plain.table)
