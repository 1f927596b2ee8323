"""dtesn-embed: batched embeddings are bit-identical to unbatched ones."""

from __future__ import annotations

import asyncio

import numpy as np

from dtecho.batching.micro import BatchObserver
from dtecho.config import DtesnModelSpec, Settings
from dtecho.engines.dtesn import DtesnEngine


class Recorder(BatchObserver):
    def __init__(self) -> None:
        self.sizes: list[int] = []

    def batch(self, key, size, seconds) -> None:
        self.sizes.append(size)


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
