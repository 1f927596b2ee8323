"""Micro-batched embeddings (dtesn-embed) and model predictions over real HTTP: concurrent
requests share batches and get exactly the numbers of a server with batching off."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dtecho.dtesn import datasets
from support import ServerProcess, start_server

pytestmark = pytest.mark.e2e

SERIES = datasets.mackey_glass(2400)
TRAIN = {
    "inputs": SERIES[:799, None].tolist(),
    "targets": SERIES[1:800, None].tolist(),
    "warmup": 100,
    "config": {"units": 120, "seed": 5, "leak_rate": 0.4, "forgetting": 0.99},
}


def histogram(server: ServerProcess, name: str) -> tuple[float, float]:
    """(sum, count) of a batch-size histogram on ``/metrics``."""
    values = {}
    for family in text_string_to_metric_families(httpx.get(f"{server.base_url}/metrics").text):
        for sample in family.samples:
            if sample.name in (f"{name}_sum", f"{name}_count"):
                values[sample.name] = sample.value
    return values[f"{name}_sum"], values[f"{name}_count"]


async def post_all(server: ServerProcess, requests: list[tuple[str, dict]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as client:
        return await asyncio.gather(*(client.post(path, json=body) for path, body in requests))


def embedding_body(index: int) -> dict:
    inputs = [f"text {index}: " + "the quick brown fox " * (index % 7 + 1), f"short {index}"]
    body = {"model": "dtesn-embed", "input": inputs, "enable_caching": False}
    if index % 3 == 0:
        body["dimensions"] = 64
    if index % 4 == 1:
        body["input"] = inputs[0]  # one string
        body["encoding_format"] = "base64"
    return body


@pytest.fixture(scope="module")
def unbatched(tmp_path_factory: pytest.TempPathFactory):
    process = start_server(
        tmp_path_factory.mktemp("unbatched"), env={"DTECHO_BATCHING_ENABLED": "false"}
    )
    yield process
    process.stop()


def test_concurrent_embeddings_are_batched_and_equal_unbatched(
    server: ServerProcess, unbatched: ServerProcess
) -> None:
    requests = [("/v1/embeddings", embedding_body(i)) for i in range(32)]
    before = histogram(server, "dtecho_embedding_batch_size")
    batched = asyncio.run(post_all(server, requests))
    after = histogram(server, "dtecho_embedding_batch_size")
    alone = [httpx.post(f"{unbatched.base_url}{p}", json=b, timeout=60) for p, b in requests]
    for on, off in zip(batched, alone, strict=True):
        assert on.status_code == off.status_code == 200, on.text
        assert on.json() == off.json()  # bit-identical vectors, same shape and usage
    assert after[0] - before[0] == len(requests)
    assert after[1] - before[1] < len(requests), "concurrent requests should share batches"


def train(server: ServerProcess) -> str:
    created = httpx.post(f"{server.base_url}/v1/dtesn/models", json=TRAIN, timeout=120)
    assert created.status_code == 201, created.text
    return created.json()["id"]


def predict_body(index: int, horizon: int = 0) -> dict:
    start, length = 37 * index, 50 + 23 * index  # ragged lengths in one batch
    inputs = SERIES[start : start + length].tolist()
    return {"inputs": inputs, "horizon": horizon, "enable_caching": False}


def test_concurrent_predictions_are_batched_and_equal_unbatched(
    server: ServerProcess, unbatched: ServerProcess
) -> None:
    on_id, off_id = train(server), train(unbatched)
    bodies = [predict_body(i, horizon=(i % 2) * 6) for i in range(24)]  # two horizons: 2 keys
    before = histogram(server, "dtecho_dtesn_predict_batch_size")
    batched = asyncio.run(
        post_all(server, [(f"/v1/dtesn/models/{on_id}/predict", b) for b in bodies])
    )
    after = histogram(server, "dtecho_dtesn_predict_batch_size")
    path = f"{unbatched.base_url}/v1/dtesn/models/{off_id}/predict"
    for body, on in zip(bodies, batched, strict=True):
        off = httpx.post(path, json=body, timeout=60).json()
        assert on.status_code == 200, on.text
        result = on.json()
        assert result["predictions"] == off["predictions"]  # bit-identical
        assert result["forecast"] == off["forecast"]
        assert len(result["predictions"]) == len(body["inputs"])
        assert (result["forecast"] is None) == (body["horizon"] == 0)
    assert after[0] - before[0] == len(bodies)
    assert after[1] - before[1] < len(bodies), "concurrent predictions should share batches"


def test_a_model_update_never_shares_a_batch_with_the_old_version(server: ServerProcess) -> None:
    model_id = train(server)
    base = f"{server.base_url}/v1/dtesn/models/{model_id}"
    bodies = [predict_body(i) for i in range(8)]

    def sequential() -> list[dict]:
        return [httpx.post(f"{base}/predict", json=b, timeout=60).json() for b in bodies]

    v1 = sequential()
    update = {
        "inputs": SERIES[800:1400, None].tolist(),
        "targets": (2 * SERIES[801:1401, None]).tolist(),
    }

    async def mixed() -> tuple[list[httpx.Response], httpx.Response]:
        async with httpx.AsyncClient(base_url=base, timeout=120) as client:
            early = [client.post("/predict", json=b) for b in bodies]
            late = [client.post("/predict", json=b) for b in bodies * 3]
            results = await asyncio.gather(*early, client.post("/update", json=update), *late)
        return [*results[: len(early)], *results[len(early) + 1 :]], results[len(early)]

    responses, updated = asyncio.run(mixed())
    assert updated.status_code == 200 and updated.json()["version"] == 2
    v2 = sequential()
    assert all(r["version"] == 2 for r in v2)
    assert v1[0]["predictions"] != v2[0]["predictions"]
    expected = {1: v1 * 4, 2: v2 * 4}
    for index, response in enumerate(responses):
        result = response.json()
        # Each answer is exactly its version's numbers: no batch mixed the two models.
        assert result["predictions"] == expected[result["version"]][index]["predictions"]
