"""Text features: each row depends on its own text only, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from dtecho.dtesn.features import TextFeatures


@pytest.fixture(scope="module")
def features() -> TextFeatures:
    return TextFeatures(units=128, seed=3)


def texts(count: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 700, count)
    return [bytes(rng.integers(32, 127, int(n), dtype=np.uint8)) for n in lengths]


def test_a_text_gets_the_same_bits_alone_and_in_any_batch(features: TextFeatures) -> None:
    batch = [*texts(90), b""]  # more than one reservoir group, an empty text
    together = features.transform_each(batch, [128] * len(batch))
    for text, row in zip(batch, together, strict=True):
        np.testing.assert_array_equal(features.transform_each([text], [128])[0], row)
    shuffled = features.transform_each(batch[::-1], [128] * len(batch))
    for a, b in zip(together, shuffled[::-1], strict=True):
        np.testing.assert_array_equal(a, b)


def test_texts_of_one_call_may_ask_for_different_sizes(features: TextFeatures) -> None:
    batch = texts(12, seed=1)
    sizes = [128, 16, 1, 64] * 3
    mixed = features.transform_each(batch, sizes)
    for text, d, row in zip(batch, sizes, mixed, strict=True):
        assert row.shape == (d,) and row.dtype == np.float32
        np.testing.assert_array_equal(row, features.transform([text], d)[0])
        np.testing.assert_allclose(np.linalg.norm(row), 1.0, rtol=1e-6)
