"""``/v1/dtesn/process``'s computation: a batch gives every input exactly its own result, and
the JSON the service writes itself is the JSON of the result's dict."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dtecho.dtesn.text import one_hot
from dtecho.services.dtesn_processing import CHUNK_STEPS, NetworkConfig, Processor


def encoded(value: dict) -> bytes:
    """The routes' JSON encoding (``dtecho.server.caching.encode_json``)."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def text(seed: int, length: int) -> bytes:
    rng = np.random.default_rng(seed)
    return bytes(rng.integers(32, 127, length, dtype=np.uint8))


CONFIGS = [
    NetworkConfig(membrane_depth=3, esn_size=97, seed=3),  # membranes of unequal sizes
    NetworkConfig(membrane_depth=2, esn_size=64, integrator="rk4"),  # the NumPy RK loop
]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("points", [0, 7])
def test_a_batch_gives_each_input_its_own_result(config: NetworkConfig, points: int) -> None:
    processor = Processor()
    lengths = [40, 1, 40, 17, CHUNK_STEPS + 9, 3]  # ragged, one across a chunk boundary
    inputs = [text(i, n) for i, n in enumerate(lengths)]
    together = processor.process_many(config, inputs, trajectory_points=points)
    for data, result in zip(inputs, together, strict=True):
        alone = processor.process(config, data, trajectory_points=points)
        result.processing_time_ms = alone.processing_time_ms = 0.0
        assert result.to_json(include_states=True) == alone.to_json(include_states=True)
        assert result.steps == len(data)
        assert (result.trajectory is None) == (points == 0)


@pytest.mark.parametrize("include_states", [False, True])
def test_the_written_json_is_the_json_of_the_dict(include_states: bool) -> None:
    processor = Processor()
    vectors = np.random.default_rng(0).uniform(-1, 1, (30, 3))
    cases = [
        (CONFIGS[0], text(0, 50), 5),
        (CONFIGS[1], text(1, 2), 0),
        (NetworkConfig(membrane_depth=2, esn_size=48, input_dim=3), vectors, 4),
    ]
    for config, data, points in cases:
        result = processor.process(config, data, trajectory_points=points)
        value = result.as_dict(include_states)
        assert result.to_json(include_states) == encoded(value)
        assert json.loads(result.to_json(include_states)) == value


def test_the_statistics_are_those_of_the_states() -> None:
    config = NetworkConfig(membrane_depth=3, esn_size=97, seed=3)
    data = text(5, 60)
    result = Processor().process(config, data, trajectory_points=3)
    states = config.model().run(one_hot(data.decode()))
    membranes = result.membranes
    assert len(result.features) == 3 * len(membranes)
    for index, m in enumerate(membranes):
        block = states[:, m["start"] : m["start"] + m["units"]]
        assert m["mean_abs_activation"] == pytest.approx(np.abs(block).mean(), rel=1e-9)
        assert m["final_state_norm"] == pytest.approx(np.linalg.norm(block[-1]), rel=1e-9)
        mean, mean_abs, rms = result.features[3 * index : 3 * index + 3]
        assert mean == pytest.approx(block.mean(), rel=1e-9, abs=1e-12)
        assert mean_abs == m["mean_abs_activation"]
        assert rms == pytest.approx(np.linalg.norm(block[-1]) / np.sqrt(m["units"]), rel=1e-9)
    assert result.trajectory is not None and len(result.trajectory) == 3
    last = states[-1]
    expected = [
        np.sqrt(np.mean(last[m["start"] : m["start"] + m["units"]] ** 2)) for m in membranes
    ]
    np.testing.assert_allclose(result.trajectory[-1], expected, rtol=1e-9)
