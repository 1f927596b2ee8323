"""The byte-level echo language model, its bigram baseline and the text features."""

from __future__ import annotations

import json
import platform

import numpy as np
import pytest
from scipy.special import logsumexp

from dtecho.corpus import split, stdlib_docstrings
from dtecho.dtesn.features import TextFeatures
from dtecho.dtesn.lm import BigramByteModel, EchoLanguageModel
from dtecho.dtesn.model import NotFittedError

LN2 = np.log(2.0)
TOKENS = (b"pax ", b"qay ", b"raz ")  # the byte after "a" depends on the byte before it


def tiny(**kw) -> EchoLanguageModel:
    params = dict(units=48, depth=2, dtype="float64", epochs=6, batch_size=128, streams=4)
    return EchoLanguageModel(**{**params, **kw})


def token_text(n: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return b"".join(TOKENS[i] for i in rng.integers(0, len(TOKENS), n))


@pytest.fixture(scope="module")
def model() -> EchoLanguageModel:
    return tiny().fit(token_text(800, 0), heldout=token_text(200, 1))


def codes(text: bytes) -> np.ndarray:
    return np.frombuffer(text, np.uint8)


def test_feeding_bytes_one_at_a_time_equals_feeding_them_at_once(model):
    data = codes(b"qay pax raz")[None]
    whole_state, whole_lp = model.feed(model.initial_state(1), data)
    state = model.initial_state(1)
    for t in range(data.shape[1]):
        state, lp = model.feed(state, data[:, t : t + 1])
    np.testing.assert_allclose(state, whole_state, rtol=0, atol=1e-10)
    np.testing.assert_allclose(lp, whole_lp, rtol=0, atol=1e-10)


def test_feed_returns_normalised_logprobs_and_leaves_inputs_alone(model):
    data = codes(b"pax qa")[None].repeat(2, axis=0)
    state = np.random.default_rng(0).uniform(-0.5, 0.5, (2, model.reservoir_.units))
    before = (state.copy(), data.copy())
    new, lp = model.feed(state, data)
    assert new.shape == state.shape and lp.shape == (2, 256) and lp.dtype == np.float64
    np.testing.assert_allclose(logsumexp(lp, axis=1), 0.0, atol=1e-12)
    np.testing.assert_array_equal(state, before[0])
    np.testing.assert_array_equal(data, before[1])


def test_batch_rows_are_independent(model):
    texts = [b"raz pax", b"qay qay", b"pax raz"]
    batch = np.stack([codes(t) for t in texts])
    states, lps = model.feed(model.initial_state(3), batch)
    for i, t in enumerate(texts):
        s, lp = model.feed(model.initial_state(1), codes(t)[None])
        np.testing.assert_allclose(states[i], s[0], atol=1e-12)
        np.testing.assert_allclose(lps[i], lp[0], atol=1e-10)


def test_feed_validates_its_inputs(model):
    with pytest.raises(ValueError, match="uint8"):
        model.feed(model.initial_state(1), np.zeros((1, 0), np.uint8))
    with pytest.raises(ValueError, match="state"):
        model.feed(model.initial_state(2), np.zeros((1, 3), np.uint8))
    with pytest.raises(NotFittedError):
        tiny().feed(np.zeros((1, 48)), np.zeros((1, 1), np.uint8))


def test_logprobs_of_and_bits_per_byte_agree_with_the_feed_loop(model):
    text = token_text(30, 5)
    state = model.initial_state(1)
    expected = []
    for t in range(len(text) - 1):
        state, lp = model.feed(state, codes(text)[None, t : t + 1])
        expected.append(lp[0, text[t + 1]])
    got = model.logprobs_of(text)
    assert got.shape == (len(text) - 1,)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)
    assert model.bits_per_byte(text) == pytest.approx(-np.mean(expected) / LN2, abs=1e-12)


def test_save_load_round_trip_is_bit_identical(model, tmp_path):
    model.save(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["metadata"] == model.metadata
    loaded = EchoLanguageModel.load(tmp_path)
    text = token_text(40, 9)
    np.testing.assert_array_equal(loaded.logprobs_of(text), model.logprobs_of(text))
    a = model.feed(model.initial_state(1), codes(text)[None])
    b = loaded.feed(loaded.initial_state(1), codes(text)[None])
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_a_float32_model_also_round_trips_bit_identically(tmp_path):
    m = tiny(dtype="float32", epochs=1).fit(token_text(200, 4))
    m.save(tmp_path)
    loaded = EchoLanguageModel.load(tmp_path)
    assert loaded.state_weights_.dtype == np.float32
    text = token_text(20, 2)
    np.testing.assert_array_equal(loaded.logprobs_of(text), m.logprobs_of(text))


def test_training_is_deterministic_given_the_seed():
    text = token_text(300, 3)
    a, b, c = tiny(epochs=2).fit(text), tiny(epochs=2).fit(text), tiny(epochs=2, seed=1).fit(text)
    np.testing.assert_array_equal(a.state_weights_, b.state_weights_)
    np.testing.assert_array_equal(a.logprobs_of(text[:50]), b.logprobs_of(text[:50]))
    assert not np.array_equal(a.logprobs_of(text[:50]), c.logprobs_of(text[:50]))


def test_a_periodic_text_is_learned_to_near_zero_bits():
    period = b"hello world. "  # a bigram cannot tell which byte follows "l" or "o"
    m = tiny(epochs=8).fit(period * 300, heldout=period * 20)
    assert m.metadata["bits_per_byte"] < 0.05
    assert m.metadata["bigram_bits_per_byte"] > 0.3


def test_the_reservoir_beats_the_bigram_on_longer_range_structure(model):
    # Optimal: log2(3) bits for each token's first byte, nothing for the other three.
    optimum = np.log2(3) / 4
    meta = model.metadata
    assert meta["bigram_bits_per_byte"] > optimum + 0.3
    assert meta["bits_per_byte"] < optimum + 0.05
    assert meta["heldout_bytes"] == 800 and meta["unigram_bits_per_byte"] > 1.5


def test_the_packaged_model_meets_its_quality_target_and_its_metadata_holds():
    m = EchoLanguageModel.default()
    meta = m.metadata
    assert meta["bits_per_byte"] <= 3.0
    assert meta["bits_per_byte"] < meta["bigram_bits_per_byte"]
    assert meta["unigram_bits_per_byte"] > meta["bigram_bits_per_byte"]
    json.dumps(meta)
    if meta.get("python") != platform.python_version():
        pytest.skip("the stdlib corpus differs on this Python; its held-out text is unknown")
    text = stdlib_docstrings()
    assert len(text) == meta["corpus_bytes"]
    train, _, test = split(text, meta["split"])
    assert len(test) == meta["heldout_bytes"]
    piece = test[:6000]
    bpb = m.bits_per_byte(piece)
    assert abs(bpb - meta["bits_per_byte"]) < 0.4
    assert bpb < BigramByteModel().fit(train).bits_per_byte(piece)


def test_bigram_on_uniform_bytes_costs_about_eight_bits():
    rng = np.random.default_rng(0)
    train, test = (rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in (300_000, 20_000))
    bigram = BigramByteModel().fit(train)
    assert 7.95 < bigram.bits_per_byte(test) < 8.3
    assert bigram.unigram_bits_per_byte(test) == pytest.approx(8.0, abs=0.02)


def test_bigram_learns_a_deterministic_successor_map():
    cycle = np.random.default_rng(1).permutation(256).astype(np.uint8)
    text = np.tile(cycle, 400).tobytes()  # every byte has exactly one successor
    bigram = BigramByteModel().fit(text)
    assert bigram.bits_per_byte(text[:2000]) < 0.01
    rows = np.exp(bigram.logprobs_).sum(axis=1)
    np.testing.assert_allclose(rows, 1.0, atol=1e-12)


@pytest.fixture(scope="module")
def features() -> TextFeatures:
    return TextFeatures(units=128, seed=0)


def test_text_features_are_normalised_float32_of_the_native_size(features):
    texts = [b"hello", "caf\u00e9 au lait", b"", b"x" * 700]
    out = features.transform(texts)
    assert out.shape == (4, features.dimensions) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert np.all(np.isfinite(out))


def test_text_features_are_deterministic_and_batch_equals_single(features):
    texts = [b"the quick brown fox", b"jumps", b"", b"the quick brown fox"]
    batch = features.transform(texts)
    np.testing.assert_array_equal(batch[0], batch[3])
    np.testing.assert_array_equal(batch, TextFeatures(units=128, seed=0).transform(texts))
    for i, t in enumerate(texts):
        np.testing.assert_allclose(batch[i], features.transform([t])[0], atol=1e-5)


def test_text_features_honour_dimensions_by_truncating_and_renormalising(features):
    texts = [b"alpha beta", b"gamma"]
    full = features.transform(texts)
    short = features.transform(texts, dimensions=16)
    assert short.shape == (2, 16)
    expected = full[:, :16] / np.linalg.norm(full[:, :16], axis=1, keepdims=True)
    np.testing.assert_allclose(short, expected, atol=1e-5)
    with pytest.raises(ValueError, match="dimensions"):
        features.transform(texts, dimensions=features.dimensions + 1)
    with pytest.raises(ValueError, match="dimensions"):
        features.transform(texts, dimensions=0)


def test_similar_texts_are_closer_than_unrelated_ones(features):
    a, b, c = features.transform([
        b"Return the number of items in the list.",
        b"Return the number of elements in a list.",
        b"import numpy as np; x = np.zeros((3, 4)) ** 2",
    ])  # fmt: skip
    assert a @ b > 0.7
    assert a @ c < 0.4 and b @ c < 0.4
