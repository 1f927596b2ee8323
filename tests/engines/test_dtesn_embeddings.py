"""dtesn-embed: batched embeddings are bit-identical to unbatched ones."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from dtecho.batching.micro import BatchObserver
from dtecho.config import DtesnModelSpec, Settings
from dtecho.dtesn.lm import TextFeatures
from dtecho.engines.dtesn import DtesnEngine, embed_texts


class Recorder(BatchObserver):
    def __init__(self) -> None:
        self.sizes: list[int] = []

    def batch(self, key, size, seconds) -> None:
        self.sizes.append(size)


@pytest.fixture(scope="module")
def features() -> TextFeatures:
    return TextFeatures(units=128, seed=3)


def texts(count: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 700, count)
    return [bytes(rng.integers(32, 127, int(n), dtype=np.uint8)) for n in lengths]


def test_a_text_gets_the_same_bits_alone_and_in_any_batch(features: TextFeatures) -> None:
    batch = [*texts(90), b""]  # more than one reservoir group, an empty text
    together = embed_texts(features, batch, [128] * len(batch))
    for text, row in zip(batch, together, strict=True):
        np.testing.assert_array_equal(embed_texts(features, [text], [128])[0], row)
    shuffled = embed_texts(features, batch[::-1], [128] * len(batch))
    for a, b in zip(together, shuffled[::-1], strict=True):
        np.testing.assert_array_equal(a, b)


def test_it_agrees_with_text_features_transform(features: TextFeatures) -> None:
    batch = texts(12, seed=1)
    for d in (128, 16):
        rows = np.stack(embed_texts(features, batch, [d] * len(batch)))
        np.testing.assert_allclose(rows, features.transform(batch, d), atol=1e-6)


def engine(batching: bool) -> DtesnEngine:
    settings = Settings(batching={"enabled": batching, "max_wait_ms": 5})
    return DtesnEngine(DtesnModelSpec(name="dtesn-embed", task="embed"), settings)


async def test_concurrent_requests_share_batches_and_equal_unbatched() -> None:
    on, off = engine(True), engine(False)
    recorder = Recorder()
    on.observe_batches(recorder)
    await on.start()
    await off.start()
    requests = [
        (["first text", "second, longer text " * (i + 1)], None if i % 3 else 32) for i in range(16)
    ]
    batched = await asyncio.gather(*(on.embed(inputs, d) for inputs, d in requests))
    for (inputs, d), result in zip(requests, batched, strict=True):
        alone = await off.embed(inputs, d)
        assert result.vectors.shape == (2, d or 512)
        assert result.vectors.dtype == np.float32
        np.testing.assert_array_equal(result.vectors, alone.vectors)
        assert result.prompt_tokens == alone.prompt_tokens
    assert sum(recorder.sizes) == len(requests)
    assert max(recorder.sizes) > 1
