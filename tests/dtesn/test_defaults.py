"""The study-chosen defaults' machinery: initialisers, input standardisation, ridge="auto",
weights="auto", n_jobs=None and the per-family presets."""

from __future__ import annotations

import numpy as np
import pytest

from dtecho.dtesn import DTESN, datasets
from dtecho.dtesn.readout import RidgeReadout, ridge_path

RNG = np.random.default_rng(0)
U, Y = datasets.narma(1500, order=10, seed=3)
X, T = U[:-1, None], Y[1:, None]


@pytest.mark.parametrize("init", ["uniform", "normal", "bernoulli"])
def test_input_initialisers_draw_from_their_distribution(init):
    model = DTESN(400, input_init=init, input_scaling=0.5, input_norm="none", input_connectivity=1)
    W_in = model.run(np.zeros((1, 3))) is not None and model.reservoir_.W_in
    values = W_in.ravel() / 0.5
    if init == "bernoulli":
        assert set(np.unique(values)) == {-1.0, 1.0}
    elif init == "uniform":
        assert values.min() >= -1 and values.max() <= 1 and abs(values.std() - 1 / 3**0.5) < 0.03
    else:
        assert values.min() < -2.5 and abs(values.std() - 1) < 0.05


def test_recurrent_initialiser_keeps_the_exact_spectral_radius():
    for init in ("uniform", "normal", "bernoulli"):
        model = DTESN(200, recurrent_init=init, spectral_radius=0.7)
        assert abs(model.esp_check(50).spectral_radius - 0.7) < 1e-6  # float32-rounded W
    bern = DTESN(200, recurrent_init="bernoulli", weights="random")
    bern.run(np.zeros((1, 1)))
    assert len(np.unique(np.abs(bern.reservoir_.W.data))) == 1  # ±c, one magnitude


def test_default_inputs_reach_a_tenth_of_the_units_as_plus_minus_the_scale():
    model = DTESN(2000, input_norm="none")
    model.run(np.zeros((1, 1)))
    W_in = model.reservoir_.W_in[:, 0]
    assert 0.08 < np.mean(W_in != 0) < 0.12
    assert set(np.unique(np.abs(W_in[W_in != 0]))) == {0.05}


def test_bias_connectivity_keeps_that_share_of_biases():
    model = DTESN(2000, bias_scaling=1.0, bias_connectivity=0.25)
    model.run(np.zeros((1, 1)))
    share = np.mean(model.reservoir_.bias != 0)
    assert 0.2 < share < 0.3


def test_bad_initialiser_is_named():
    with pytest.raises(ValueError, match="input_init"):
        DTESN(50, input_init="gaussian").run(np.zeros((3, 1)))


def test_standardised_inputs_equal_raw_inputs_standardised_by_hand():
    """input_norm="standard" folds (u − μ)/σ into W_in and b: the same predictions as an
    input_norm="none" model fitted on standardised data (the readout sees u itself, so
    the readout differs only by the affine change of its u columns)."""
    Z = np.column_stack([X[:, 0] * 40 + 7, X[:, 0] ** 2])
    mu, sd = Z.mean(axis=0), Z.std(axis=0)
    auto = DTESN(80, ridge=1e-6, seed=2).fit(Z, T, warmup=50)
    manual = DTESN(80, ridge=1e-6, seed=2, input_norm="none")
    S_manual = manual.run((Z - mu) / sd)
    np.testing.assert_allclose(auto.run(Z), S_manual, atol=1e-12)


def test_refit_on_other_data_restandardises_and_save_load_keeps_it(tmp_path):
    model = DTESN(60, seed=1).fit(X, T, warmup=50)
    before = model.run(X[:100])
    model.fit(X * 10, T, warmup=50)  # ten times the scale: the same standardised inputs
    np.testing.assert_allclose(model.run(X[:100] * 10), before, atol=1e-12)
    model.save(tmp_path / "m.npz")
    loaded = DTESN.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(loaded.predict(X * 10), model.predict(X * 10))


def test_ridge_path_equals_explicit_fits():
    model = DTESN(60, seed=3, input_norm="none")
    S = model.run(X)
    rows = slice(50, 1000)
    held = slice(1000, len(X))
    train = RidgeReadout(0.0).accumulate([X[rows], S[rows]], T[rows])
    holdout = RidgeReadout(0.0).accumulate([X[held], S[held]], T[held])
    best, path = ridge_path(train, holdout)
    for ridge, mse in path[::6]:
        ro = RidgeReadout(ridge).accumulate([X[rows], S[rows]], T[rows]).solve()
        err = np.mean((ro.predict([X[held], S[held]]) - T[held]) ** 2)
        assert abs(err - mse) <= 1e-6 * err
    least_ridge, least = min(path, key=lambda r: r[1])
    chosen = dict(path)[best]
    # the most regular readout within the slack: never a smaller ridge than the least-MSE one
    assert best >= least_ridge and least <= chosen <= 2 * least


def test_auto_ridge_keeps_a_mackey_glass_free_run_bounded():
    """The least-MSE ridge of this nearly noiseless series is tiny, and its closed loop
    diverges (shown with every unit hearing the input, where it does); the ridge="auto"
    rule's slack keeps the free run on the attractor, there and at the defaults."""
    series = datasets.mackey_glass(1200)
    X, Y = series[:999, None], series[1:1000, None]
    dense_input = {"input_connectivity": 1.0, "input_init": "uniform"}
    for units, kw in [(u, dense_input) for u in (200, 500)] + [(u, {}) for u in (60, 200, 500)]:
        model = DTESN(units, **kw).fit(X, Y)
        free = model.generate(300, warmup=series[:600, None])
        assert np.all(np.abs(free) < 2.0), (units, kw)  # the attractor lies in (0.4, 1.35)
        if kw:
            least = min(model.ridge_path_, key=lambda r: r[1])[0]
            tiny = DTESN(units, ridge=least, **kw).fit(X, Y)
            assert not np.all(np.abs(tiny.generate(300, series[:600, None])) < 2.0)


def test_auto_ridge_refits_on_all_rows_with_the_chosen_ridge():
    auto = DTESN(60, seed=3).fit(X, T, warmup=50)
    assert auto.ridge_path_ and auto.ridge_ > 0
    fixed = DTESN(60, seed=3, ridge=auto.ridge_).fit(X, T, warmup=50)
    np.testing.assert_allclose(auto.predict(X), fixed.predict(X), atol=1e-9)


def test_auto_ridge_beats_a_far_too_small_and_a_far_too_large_ridge():
    def nrmse(model):
        model.fit(X[:1000], T[:1000], warmup=50)
        p = model.predict(X)[1000:]
        return np.sqrt(np.mean((p - T[1000:]) ** 2)) / T[1000:].std()

    auto = nrmse(DTESN(300, seed=0))
    assert auto <= nrmse(DTESN(300, seed=0, ridge=1e3)) + 1e-9
    assert auto <= nrmse(DTESN(300, seed=0, ridge=1e-14)) + 0.02


def test_auto_ridge_holds_out_whole_sequences_of_a_set():
    seqs = [X[i : i + 200] for i in range(0, 1400, 200)]
    targets = [T[i : i + 200] for i in range(0, 1400, 200)]
    model = DTESN(40).fit(seqs, targets, warmup=20)
    assert model.ridge_path_ and np.isfinite(model.ridge_)


def test_weights_auto_groups_only_where_every_membrane_has_the_in_degree():
    assert DTESN(1000).weights_layout() == "grouped"  # 100 inputs per unit
    assert DTESN(100).weights_layout() == "random"  # 10 per unit: grouping would lose rank
    assert DTESN(1000, depth=4).weights_layout() == "random"  # 125-unit membranes: 12 each


def test_n_jobs_none_uses_the_usable_cores_and_changes_nothing():
    import os

    model = DTESN(300, seed=5)
    S = model.run(X[:200])
    assert model.reservoir_.n_jobs == len(os.sched_getaffinity(0))
    np.testing.assert_array_equal(DTESN(300, seed=5, n_jobs=1).run(X[:200]), S)


def test_for_task_gives_the_family_presets_and_overrides():
    model = DTESN.for_task("forecast", 200, seed=4)
    assert (model.units, model.input_scaling, model.seed) == (200, 0.2, 4)
    assert DTESN.for_task("general", 50).get_params() == DTESN(50).get_params()
    with pytest.raises(ValueError, match="unknown task family"):
        DTESN.for_task("vision")


def test_run_options_give_the_plain_states():
    model = DTESN(120, seed=8)
    batch = RNG.uniform(-1, 1, size=(3, 400, 2))
    full = model.run(batch)
    np.testing.assert_array_equal(model.run(batch, states="last"), full[:, -1])
    np.testing.assert_array_equal(model.run(batch[0], states="last"), full[0, -1])
    as32 = model.run(batch, dtype="float32")
    assert as32.dtype == np.float32
    np.testing.assert_array_equal(as32, full.astype(np.float32))
    out = np.empty_like(full)
    assert model.run(batch, out=out) is out
    np.testing.assert_array_equal(out, full)
    seqs = [batch[0, :50], batch[1], batch[2, :200]]
    last = model.run(seqs, states="last")
    for s, v in zip(seqs, last, strict=True):
        np.testing.assert_array_equal(v, model.run(s)[-1])
    with pytest.raises(ValueError, match="out must have shape"):
        model.run(batch, out=np.empty((3, 400, 7)))
    with pytest.raises(ValueError, match="states"):
        model.run(batch, states="first")
