"""The DTESN estimator through its public interface."""

import numpy as np
import pytest

from dtecho.dtesn import DTESN, NotFittedError, bseries, datasets

MG = datasets.mackey_glass(2700)
X, Y = MG[:-1, None], MG[1:, None]


def _nrmse(pred, target):
    return float(np.sqrt(np.mean((pred - target) ** 2)) / target.std())


@pytest.fixture(scope="module")
def mg_model():
    return DTESN(units=400, seed=0).fit(X[:2000], Y[:2000], warmup=100)


def test_fit_learns_mackey_glass_one_step_ahead(mg_model):
    assert mg_model.fit(X[:2000], Y[:2000], warmup=100) is mg_model
    pred = mg_model.predict(X[2000:])
    assert pred.shape == (len(X) - 2000, 1)
    assert _nrmse(pred[100:], Y[2100:]) < 1e-2


def test_generate_feeds_outputs_back_and_follows_the_series(mg_model):
    out = mg_model.generate(30, warmup=X[:2000])
    assert out.shape == (30, 1)
    # out[0] is the teacher-forced prediction of x[2000]; later values are closed loop
    np.testing.assert_allclose(out[0], mg_model.predict(X[:2000])[-1], atol=1e-12)
    assert np.abs(out[:, 0] - MG[2000:2030]).max() < 0.05
    batch = mg_model.generate(5, warmup=np.stack([X[:2000], X[100:2100]]))
    assert batch.shape == (2, 5, 1)
    np.testing.assert_allclose(batch[0], out[:5], atol=1e-12)


def test_save_load_gives_bit_identical_predictions(mg_model, tmp_path):
    path = tmp_path / "model.dtesn"
    mg_model.save(path)
    assert path.exists()  # saved under the exact name given
    loaded = DTESN.load(path)
    np.testing.assert_array_equal(loaded.predict(X[2000:]), mg_model.predict(X[2000:]))
    assert loaded.get_params() == mg_model.get_params()
    assert loaded.membranes == mg_model.membranes


def test_load_rejects_unknown_format_versions(mg_model, tmp_path):
    path = tmp_path / "m.npz"
    mg_model.save(path)
    with np.load(path) as z:
        arrays = dict(z)
    config = bytes(arrays["config"]).decode().replace('"format_version": 1', '"format_version": 99')
    arrays["config"] = np.frombuffer(config.encode(), dtype=np.uint8)
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="unsupported DTESN format version 99"):
        DTESN.load(path)


def test_save_load_round_trips_rls_and_structure(tmp_path):
    u = np.random.default_rng(0).uniform(-1, 1, (300, 2))
    y = np.roll(u, 1, axis=0)
    model = DTESN(60, depth=3, tau_scaling=2.0, integrator="rk4", dtype="float32", seed=4)
    model.partial_fit(u, y)
    model.save(tmp_path / "rls.npz")
    loaded = DTESN.load(tmp_path / "rls.npz")
    np.testing.assert_array_equal(loaded.predict(u), model.predict(u))
    loaded.partial_fit(u[:50], y[:50])
    model.partial_fit(u[:50], y[:50])
    np.testing.assert_array_equal(loaded.readout_.coef_, model.readout_.coef_)


def test_same_seed_same_predictions_different_seed_different():
    def fitted(seed):
        return DTESN(60, seed=seed).fit(X[:500], Y[:500], warmup=50).predict(X[500:700])

    np.testing.assert_array_equal(fitted(1), fitted(1))
    assert not np.allclose(fitted(1), fitted(2))


def test_batched_and_variable_length_inputs_follow_the_input_layout():
    seqs = [X[:300], X[300:500], X[500:900]]
    targets = [Y[:300], Y[300:500], Y[500:900]]
    model = DTESN(50, depth=2).fit(seqs, targets, warmup=20)
    preds = model.predict(seqs)
    assert [p.shape for p in preds] == [(300, 1), (200, 1), (400, 1)]
    for s, p in zip(seqs, preds, strict=True):
        np.testing.assert_allclose(p, model.predict(s), atol=1e-12)
    block = np.stack([X[:200], X[200:400]])
    assert model.predict(block).shape == (2, 200, 1)
    assert model.run(block).shape == (2, 200, 50)
    assert model.run(MG[:100]).shape == (100, 50)  # 1-D input is one feature


def test_partial_fit_after_fit_continues_the_ridge_solution():
    # input_norm="none": the reservoir must not depend on which rows the first fit saw
    full = DTESN(40, ridge=1e-6, input_norm="none").fit(X[:800], Y[:800], warmup=0)
    online = DTESN(40, ridge=1e-6, input_norm="none").fit(X[:400], Y[:400], warmup=0)
    online.partial_fit([X[400:800]], [Y[400:800]], initial_state=online.run(X[:400])[-1])
    # same solution up to the rounding of 400 rank-one updates on ill-conditioned features
    np.testing.assert_allclose(online.predict(X[800:900]), full.predict(X[800:900]), atol=1e-7)
    np.testing.assert_allclose(online.readout_.coef_, full.readout_.coef_, rtol=1e-4, atol=1e-6)


def test_predict_before_fit_is_a_clear_error():
    with pytest.raises(NotFittedError, match="not fitted"):
        DTESN(20).predict(X[:10])


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"integrator": "rk7"}, "unknown integrator 'rk7'"),
        ({"dt": 0.3}, "dt must be 1/k"),
        ({"units": 5, "depth": 4}, "too small"),
        ({"input_to": "core"}, "input_to"),
        ({"leak_rate": 0.0}, "leak_rate"),
    ],
)
def test_invalid_parameters_raise_value_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        DTESN(**{"units": 20, **kw}).fit(X[:50], Y[:50], warmup=5)


def test_invalid_inputs_raise_value_errors():
    model = DTESN(20)
    bad = X[:50].copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.fit(bad, Y[:50], warmup=5)
    with pytest.raises(ValueError, match="same layout and lengths"):
        model.fit(X[:50], Y[:40], warmup=5)
    with pytest.raises(ValueError, match="no training rows"):
        model.fit(X[:50], Y[:50], warmup=50)
    with pytest.raises(ValueError, match=r"\(T,\), \(T, d\) or \(B, T, d\)"):
        model.run(np.zeros((2, 2, 2, 2)))
    model.fit(X[:50], Y[:50], warmup=5)
    with pytest.raises(ValueError, match="features"):
        model.predict(np.zeros((10, 3)))


def test_custom_tableau_and_higher_order_integrators_run():
    ralston = bseries.TABLEAUX["ralston"]
    custom = bseries.Tableau("my-heun", [[0, 0], [1, 0]], [0.5, 0.5])
    a = DTESN(30, integrator=ralston).fit(X[:300], Y[:300], warmup=20).predict(X[300:400])
    b = DTESN(30, integrator=custom).fit(X[:300], Y[:300], warmup=20)
    assert np.all(np.isfinite(a))
    assert _nrmse(b.predict(X[300:500])[50:], Y[350:500]) < 0.05
