"""The response cache over real HTTP: tiers in X-Cache, policy per route, invalidation across
server processes sharing a real Redis, and no failed request when that Redis dies."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator

import httpx
import msgpack
import numpy as np
import openai
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from support import RedisProcess, ServerProcess, wait_until

pytestmark = pytest.mark.e2e

CHAT = [{"role": "user", "content": "Say something about trees."}]


def unique_text() -> str:
    """An input no other test sends, so hits and misses are this test's own."""
    return f"cache test {uuid.uuid4().hex} " * 8


def process(server: ServerProcess, body: dict, **headers: str) -> httpx.Response:
    response = httpx.post(
        f"{server.base_url}/v1/dtesn/process", json=body, headers=headers, timeout=60
    )
    assert response.status_code == 200, response.text
    return response


def metrics(server: ServerProcess) -> dict:
    return httpx.get(f"{server.base_url}/v1/dtesn/cache/metrics", timeout=10).json()


def control(server: ServerProcess, **body: object) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/dtesn/cache/control", json=body, timeout=10)


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    """A namespace of this test's own in the shared Redis, removed afterwards."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{name}:*", count=1000))
    if keys:
        client.unlink(*keys)
    client.close()


# ---- one server ------------------------------------------------------------------------------


def test_process_miss_then_l1_hit_with_the_same_body(server: ServerProcess) -> None:
    body = {"input": unique_text(), "esn_size": 64, "membrane_depth": 2}
    first = process(server, body)
    second = process(server, body)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT-L1")
    assert second.content == first.content  # the stored bytes, processing_time_ms included
    changed = process(server, {**body, "seed": 1})
    assert changed.headers["x-cache"] == "MISS"
    assert changed.json()["features"] != first.json()["features"]


def test_hits_are_served_in_every_negotiated_representation(server: ServerProcess) -> None:
    body = {"input": unique_text(), "esn_size": 64, "membrane_depth": 2}
    expected = process(server, body).json()
    packed = process(server, body, accept="application/msgpack")
    assert packed.headers["x-cache"] == "HIT-L1"
    assert msgpack.unpackb(packed.content) == expected
    xml = process(server, body, accept="application/xml")
    assert xml.headers["content-type"].startswith("application/xml")
    assert b"<process>" in xml.content and xml.headers["x-cache"] == "HIT-L1"
    page = process(server, body, accept="text/html")
    assert page.headers["content-type"].startswith("text/html")
    assert f"{expected['steps']} steps · {len(expected['membranes'])} membranes" in page.text


def test_opting_out_bypasses_reading_and_writing(server: ServerProcess) -> None:
    body = {"input": unique_text(), "esn_size": 64, "membrane_depth": 2}
    assert process(server, {**body, "enable_caching": False}).headers["x-cache"] == "BYPASS"
    assert process(server, body, **{"cache-control": "no-store"}).headers["x-cache"] == "BYPASS"
    assert process(server, body).headers["x-cache"] == "MISS"  # nothing was stored before
    assert process(server, body).headers["x-cache"] == "HIT-L1"
    # Once stored, opting out still bypasses it, whichever path the request takes.
    assert process(server, body, **{"cache-control": "no-store"}).headers["x-cache"] == "BYPASS"
    assert process(server, {**body, "enable_caching": False}).headers["x-cache"] == "BYPASS"


def test_requests_that_mean_the_same_share_an_entry(server: ServerProcess) -> None:
    text = unique_text()
    first = process(server, {"input": text, "esn_size": 64, "membrane_depth": 2})
    reordered = json.dumps({"membrane_depth": 2, "seed": 0, "esn_size": 64, "input": text})
    response = httpx.post(
        f"{server.base_url}/v1/dtesn/process",
        content=reordered.replace(",", " ,  "),
        headers={"content-type": "application/json"},
    )
    assert response.headers["x-cache"] == "HIT-L1" and response.content == first.content


def test_hits_answered_before_routing_are_still_served_properly(server: ServerProcess) -> None:
    body = {"input": unique_text(), "esn_size": 64, "membrane_depth": 2}
    first = process(server, body, **{"x-request-id": "first-1"})
    hit = process(server, body, **{"x-request-id": "hit-1"})
    assert hit.headers["x-cache"] == "HIT-L1" and hit.content == first.content
    assert hit.headers["x-request-id"] == "hit-1"  # the serving middleware still wraps it
    assert hit.headers["x-content-type-options"] == "nosniff"
    assert hit.headers["content-type"] == first.headers["content-type"]
    assert hit.headers["vary"] == "Accept" and hit.headers["server-timing"].startswith("app;dur=")
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    counted = [
        sample
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "dtecho_http_requests_total"
        and sample.labels["route"] == "/v1/dtesn/process"
        and sample.labels["status"] == "200"
    ]
    assert len(counted) == 1 and counted[0].value >= 2


def test_tag_and_model_invalidation(server: ServerProcess) -> None:
    tag = f"tag-{uuid.uuid4().hex[:8]}"
    tagged = {"input": unique_text(), "esn_size": 64, "membrane_depth": 2,
              "invalidation_tags": [tag]}  # fmt: skip
    untagged = {"input": unique_text(), "esn_size": 64, "membrane_depth": 2}
    process(server, tagged), process(server, untagged)
    answer = control(server, action="invalidate_tags", targets=[tag])
    assert answer.status_code == 200 and answer.json()["invalidated"] == 1
    assert process(server, tagged).headers["x-cache"] == "MISS"
    assert process(server, untagged).headers["x-cache"] == "HIT-L1"
    # Every process/batch result is labelled with the model "dtesn".
    assert control(server, action="invalidate_model", targets=["dtesn"]).json()["invalidated"] >= 2
    assert process(server, untagged).headers["x-cache"] == "MISS"


def test_batch_results_are_cached(server: ServerProcess) -> None:
    body = {"inputs": [unique_text(), "", unique_text()], "esn_size": 64, "membrane_depth": 2}
    url = f"{server.base_url}/v1/dtesn/batch"
    first, second = httpx.post(url, json=body, timeout=60), httpx.post(url, json=body, timeout=60)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT-L1")
    assert second.json() == first.json()
    assert first.json()["data"][1]["error"]["param"] == "inputs[1]"  # per-item error, cached too


def test_embeddings_are_cached(server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
    text = unique_text()
    first = client.embeddings.with_raw_response.create(model="dtesn-embed", input=[text, "x"])
    second = client.embeddings.with_raw_response.create(model="dtesn-embed", input=[text, "x"])
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT-L1")
    assert second.parse().data[0].embedding == first.parse().data[0].embedding
    alone = client.embeddings.create(
        model="dtesn-embed", input=[text, "x"], extra_body={"enable_caching": False}
    )
    assert alone.data[1].embedding == first.parse().data[1].embedding


def test_completion_policy(server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": unique_text()}]

    def chat(**kwargs):
        raw = client.chat.completions.with_raw_response.create(
            model="dtesn-echo", messages=messages, max_tokens=12, **kwargs
        )
        return raw.headers["x-cache"], raw.parse()

    # Sampled without a seed: never cached unless the request asks for it.
    assert chat(temperature=1.0)[0] == "BYPASS"
    assert chat()[0] == "BYPASS"
    # Deterministic: greedy, or seeded.
    (tier1, greedy), (tier2, again) = chat(temperature=0), chat(temperature=0)
    assert (tier1, tier2) == ("MISS", "HIT-L1")
    assert again.choices[0].message.content == greedy.choices[0].message.content
    assert [chat(seed=3)[0], chat(seed=3)[0], chat(seed=4)[0]] == ["MISS", "HIT-L1", "MISS"]
    # Opting in and out.
    opted_in = [chat(temperature=1.0, extra_body={"enable_caching": True})[0] for _ in "ab"]
    assert opted_in == ["MISS", "HIT-L1"]
    assert chat(temperature=0, extra_body={"enable_caching": False})[0] == "BYPASS"


def stream_chat(server: ServerProcess, body: dict) -> tuple[str, list[bytes], str]:
    """(X-Cache, raw SSE frames, the text the deltas spell) of one streamed chat."""
    with httpx.stream(
        "POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=60
    ) as response:
        assert response.status_code == 200
        raw = b"".join(response.iter_bytes())
        tier = response.headers["x-cache"]
    frames = [frame for frame in raw.split(b"\n\n") if frame]
    text = ""
    for frame in frames[:-1]:
        chunk = json.loads(frame.removeprefix(b"data: "))
        text += "".join(choice["delta"].get("content", "") for choice in chunk["choices"])
    return tier, frames, text


def test_a_stream_is_replayed_as_the_same_stream(server: ServerProcess) -> None:
    body = {"model": "dtesn-echo", "messages": [{"role": "user", "content": unique_text()}],
            "max_tokens": 24, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    tier, frames, text = stream_chat(server, body)
    assert tier == "MISS" and frames[-1] == b"data: [DONE]"
    replay_tier, replayed, replayed_text = stream_chat(server, body)
    assert replay_tier == "HIT-L1"
    assert replayed == frames and replayed_text == text and text
    # The stream and the JSON answer are separate entries with the same content.
    plain = httpx.post(
        f"{server.base_url}/v1/chat/completions", json={**body, "stream": False,
        "stream_options": None}, timeout=60,
    )  # fmt: skip
    assert plain.headers["x-cache"] == "MISS"
    assert plain.json()["choices"][0]["message"]["content"] == text


def test_an_abandoned_stream_is_not_stored(server: ServerProcess) -> None:
    body = {"model": "dtesn-echo", "messages": [{"role": "user", "content": unique_text()}],
            "max_tokens": 2000, "temperature": 0, "stream": True}  # fmt: skip
    with httpx.stream(
        "POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=60
    ) as response:
        next(response.iter_bytes())  # one piece, then hang up
    assert stream_chat(server, {**body, "max_tokens": 2000})[0] == "MISS"


def test_dtesn_chat_says_whether_the_completion_was_a_hit(server: ServerProcess) -> None:
    body = {"model": "dtesn-echo", "messages": [{"role": "user", "content": unique_text()}],
            "max_tokens": 8, "temperature": 0, "dtesn_esn_size": 64,
            "dtesn_membrane_depth": 2}  # fmt: skip
    url = f"{server.base_url}/v1/dtesn/chat/completions"
    first, second = httpx.post(url, json=body, timeout=60), httpx.post(url, json=body, timeout=60)
    assert (first.headers["x-cache-hit"], second.headers["x-cache-hit"]) == ("false", "true")
    assert second.json()["dtesn"] == first.json()["dtesn"]
    assert second.json()["choices"] == first.json()["choices"]
    bypassed = httpx.post(url, json={**body, "enable_caching": False}, timeout=60)
    assert bypassed.headers["x-cache-hit"] == "false" and bypassed.headers["x-cache"] == "BYPASS"


def test_a_model_update_is_never_answered_from_the_old_version(server: ServerProcess) -> None:
    rng = np.random.default_rng(0)
    inputs = rng.uniform(-1, 1, (400, 1))
    targets = np.roll(inputs, 1, axis=0)
    api = httpx.Client(base_url=f"{server.base_url}/v1/dtesn/models/", timeout=60)
    training = {"inputs": inputs.tolist(), "targets": targets.tolist(), "warmup": 20,
                "config": {"units": 40}}  # fmt: skip
    created = api.post(f"{server.base_url}/v1/dtesn/models", json=training)
    model_id = created.json()["id"]
    query = {"inputs": inputs[:50].tolist()}
    first, second = (
        api.post(f"{model_id}/predict", json=query),
        api.post(f"{model_id}/predict", json=query),
    )
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT-L1")
    assert second.json() == first.json()
    updated = api.post(f"{model_id}/update", json={"inputs": (inputs * 2).tolist(),
                                                    "targets": targets.tolist()})  # fmt: skip
    assert updated.status_code == 200 and updated.json()["version"] == 2
    after = api.post(f"{model_id}/predict", json=query)
    assert after.headers["x-cache"] == "MISS"
    assert after.json()["version"] == 2
    assert after.json()["predictions"] != first.json()["predictions"]


def test_cache_metrics_and_control_errors(server: ServerProcess) -> None:
    before = metrics(server)
    body = {"input": unique_text(), "esn_size": 64, "membrane_depth": 2}
    process(server, body), process(server, body), process(server, body)
    after = metrics(server)
    assert after["misses"] - before["misses"] == 1
    assert after["hits"]["L1"] - before["hits"]["L1"] == 2
    assert after["total_requests"] - before["total_requests"] == 3
    assert 0 < after["hit_ratio"] <= 1
    assert after["mean_miss_compute_ms"] > 0 and after["mean_hit_ms"] > 0
    assert after["entries"]["L1"] >= 1 and after["bytes"]["L1"] > 0
    assert after["entries"]["L3"] is None and after["l3_errors"] == 0  # no Redis configured
    assert control(server, action="get_metrics").json()["misses"] == after["misses"]

    for bad, param in [
        ({"action": "explode"}, "action"),
        ({"action": "clear"}, "force"),
        ({"action": "invalidate_tags"}, "targets"),
        ({"action": "invalidate_model", "targets": [""]}, "targets[0]"),
        ({"action": "clear", "force": True, "surprise": 1}, "surprise"),
    ]:
        answer = control(server, **bad)
        assert answer.status_code == 400, (bad, answer.text)
        assert answer.json()["error"]["param"] == param

    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    samples = {
        (sample.labels.get("event"), sample.labels.get("tier")): sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "dtecho_cache_events"
        for sample in family.samples
        if sample.name.endswith("_total")
    }
    assert samples[("hit", "L1")] >= 2 and samples[("miss", "")] >= 1


def test_clear_with_force_empties_the_cache(server_factory) -> None:
    own = server_factory()
    body = {"input": unique_text(), "esn_size": 64, "membrane_depth": 2}
    process(own, body)
    assert control(own, action="clear", force=True).json()["invalidated"] == 1
    assert process(own, body).headers["x-cache"] == "MISS"


def test_disabled_cache_bypasses_everything(server_factory) -> None:
    off = server_factory(env={"DTESN_CACHE_ENABLED": "false"})
    body = {"input": unique_text(), "esn_size": 64, "membrane_depth": 2}
    assert [process(off, body).headers["x-cache"] for _ in "ab"] == ["BYPASS", "BYPASS"]
    assert metrics(off)["enabled"] is False


# ---- two servers sharing one Redis -----------------------------------------------------------


def test_a_result_computed_on_one_replica_is_an_l3_hit_on_another(
    server_factory, redis_url: str, namespace: str
) -> None:
    config = {"cache": {"redis_url": redis_url, "namespace": namespace}}
    a, b = server_factory(config, name="a"), server_factory(config, name="b")
    tag = "shared"
    body = {"input": unique_text(), "esn_size": 64, "membrane_depth": 2,
            "invalidation_tags": [tag]}  # fmt: skip
    computed = process(a, body)
    assert computed.headers["x-cache"] == "MISS"
    on_b = process(b, body)
    assert on_b.headers["x-cache"] == "HIT-L3" and on_b.content == computed.content
    assert process(b, body).headers["x-cache"] == "HIT-L1"
    assert metrics(b)["entries"]["L3"] == 1

    # An invalidation on A reaches B's memory (pub/sub) and the shared Redis.
    assert control(a, action="invalidate_tags", targets=[tag]).json()["invalidated"] >= 1
    wait_until(lambda: metrics(b)["entries"]["L1"] == 0)
    assert metrics(b)["entries"]["L3"] == 0
    assert process(b, body).headers["x-cache"] == "MISS"
    assert process(a, body).headers["x-cache"] == "HIT-L3"


def test_a_model_update_on_one_replica_is_seen_by_the_other(
    server_factory, redis_url: str, namespace: str, tmp_path
) -> None:
    data_dir = str(tmp_path / "shared-models")  # both replicas serve the same model store
    config = {"cache": {"redis_url": redis_url, "namespace": namespace}, "data_dir": data_dir}
    a, b = server_factory(config, name="a"), server_factory(config, name="b")
    rng = np.random.default_rng(1)
    inputs = rng.uniform(-1, 1, (300, 1))
    created = httpx.post(f"{a.base_url}/v1/dtesn/models", timeout=60, json={
        "inputs": inputs.tolist(), "targets": np.roll(inputs, 1).tolist(), "warmup": 10,
        "config": {"units": 30}})  # fmt: skip
    model_id = created.json()["id"]
    query = {"inputs": inputs[:20].tolist()}
    predict = f"/v1/dtesn/models/{model_id}/predict"
    assert httpx.post(a.base_url + predict, json=query).headers["x-cache"] == "MISS"
    assert httpx.post(b.base_url + predict, json=query).headers["x-cache"] == "HIT-L3"
    control(a, action="invalidate_model", targets=[model_id])
    wait_until(lambda: metrics(b)["entries"]["L1"] == 0)
    assert httpx.post(b.base_url + predict, json=query).headers["x-cache"] == "MISS"


# ---- Redis dies mid-test ---------------------------------------------------------------------


def test_killing_redis_fails_no_request(server_factory) -> None:
    store = RedisProcess()
    store.start()
    try:
        served = server_factory({"cache": {"redis_url": store.url}})
        bodies = [{"input": unique_text(), "esn_size": 64, "membrane_depth": 2} for _ in range(6)]
        statuses: list[int] = []
        tiers: list[str] = []
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(base_url=served.base_url, timeout=30) as client:
                index = 0
                while not stop.is_set():
                    body = bodies[index % len(bodies)] if index % 3 else {
                        "input": unique_text(), "esn_size": 64, "membrane_depth": 2}  # fmt: skip
                    response = client.post("/v1/dtesn/process", json=body)
                    statuses.append(response.status_code)
                    tiers.append(response.headers.get("x-cache", ""))
                    index += 1

        worker = threading.Thread(target=load)
        worker.start()
        try:
            wait_until(lambda: len(statuses) >= 20)
            store.kill()
            dead_at = len(statuses)
            wait_until(lambda: len(statuses) >= dead_at + 30)
            assert metrics(served)["l3_errors"] > 0
            store.start()  # the same port: the cache reconnects by itself
            wait_until(lambda: metrics(served)["l3_available"] is True)
            alive_at = len(statuses)
            wait_until(lambda: len(statuses) >= alive_at + 10)
        finally:
            stop.set()
            worker.join()
        assert statuses and set(statuses) == {200}
        assert set(tiers) <= {"MISS", "HIT-L1", "HIT-L2", "HIT-L3"}
        assert "HIT-L1" in tiers[dead_at:]  # answered from memory while Redis was down
    finally:
        store.kill()


def test_concurrent_identical_misses_are_computed_once(server: ServerProcess) -> None:

    body = {"input": unique_text() * 20, "esn_size": 256, "membrane_depth": 2}
    before = metrics(server)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
            return await asyncio.gather(
                *(client.post("/v1/dtesn/process", json=body) for _ in range(8))
            )

    responses = asyncio.run(burst())
    after = metrics(server)
    assert {r.status_code for r in responses} == {200}
    assert len({r.content for r in responses}) == 1
    assert after["computations"] - before["computations"] == 1
    # The others waited on that computation (or, arriving after it, hit L1).
    waited = after["coalesced"] - before["coalesced"]
    hits = after["hits"]["L1"] - before["hits"]["L1"]
    assert waited + hits == 7
