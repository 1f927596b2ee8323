"""Delivery over real HTTP: compression by Accept-Encoding, ETags, 304s and Cache-Control."""

from __future__ import annotations

import gzip
import time

import httpx
import msgpack
import pytest
import zstandard
from prometheus_client.parser import text_string_to_metric_families

from support import ServerProcess, sse_events

pytestmark = pytest.mark.e2e

# include_states makes the answer about 12 KB, the size the issue started from.
PROCESS = {
    "input": "Deep Tree Echo delivers its answers compressed.",
    "esn_size": 512,
    "membrane_depth": 2,
    "include_states": True,
}
DECODE = {"gzip": gzip.decompress, "zstd": zstandard.ZstdDecompressor().decompress}


def raw(
    server: ServerProcess, method: str, path: str, *, headers: dict[str, str], **kwargs
) -> tuple[httpx.Response, bytes]:
    """The response and its body exactly as sent (not decoded)."""
    with (
        httpx.Client(base_url=server.base_url, timeout=60) as client,
        client.stream(method, path, headers=headers, **kwargs) as response,
    ):
        return response, b"".join(response.iter_raw())


def vary(response: httpx.Response) -> set[str]:
    fields = response.headers.get_list("vary", split_commas=True)
    return {field.strip().lower() for field in fields}


@pytest.mark.parametrize("coding", ["gzip", "zstd"])
def test_compressed_process_answer_decodes_to_the_identity_body(
    server: ServerProcess, coding: str
) -> None:
    plain, identity = raw(
        server, "POST", "/v1/dtesn/process", json=PROCESS, headers={"accept-encoding": "identity"}
    )
    assert plain.status_code == 200 and len(identity) > 10_000
    assert "content-encoding" not in plain.headers
    # The same request again is a fast-path cache hit: compressed too, since compression
    # sits outside the fast path.
    response, body = raw(
        server, "POST", "/v1/dtesn/process", json=PROCESS, headers={"accept-encoding": coding}
    )
    assert response.headers["x-cache"].startswith("HIT")
    assert response.headers["content-encoding"] == coding
    assert int(response.headers["content-length"]) == len(body) < 0.75 * len(identity)
    assert DECODE[coding](body) == identity
    assert {"accept", "accept-encoding"} <= vary(response)


def test_html_and_xml_representations_are_compressed_too(server: ServerProcess) -> None:
    for accept in ("text/html", "application/xml"):
        headers = {"accept": accept, "accept-encoding": "identity"}
        _, identity = raw(server, "POST", "/v1/dtesn/process", json=PROCESS, headers=headers)
        headers["accept-encoding"] = "gzip"
        response, body = raw(server, "POST", "/v1/dtesn/process", json=PROCESS, headers=headers)
        assert response.headers["content-type"].startswith(accept)
        assert response.headers["content-encoding"] == "gzip"
        assert gzip.decompress(body) == identity


def test_msgpack_is_sent_as_it_is(server: ServerProcess) -> None:
    headers = {"accept": "application/msgpack", "accept-encoding": "gzip, zstd"}
    response, body = raw(server, "POST", "/v1/dtesn/process", json=PROCESS, headers=headers)
    assert "content-encoding" not in response.headers
    assert len(msgpack.unpackb(body)["membranes"]) == 2


def test_bodies_under_the_threshold_are_not_compressed(server: ServerProcess) -> None:
    headers = {"accept-encoding": "gzip"}
    response, body = raw(server, "GET", "/v1/models/dtesn-echo", headers=headers)
    assert response.status_code == 200 and 0 < len(body) < 1024
    assert "content-encoding" not in response.headers
    assert "accept-encoding" not in vary(response)
    assert int(response.headers["content-length"]) == len(body)


@pytest.mark.parametrize(
    ("accept_encoding", "expected"),
    [
        ("gzip;q=0", None),
        ("gzip;q=0, zstd;q=0", None),
        ("zstd;q=0, gzip", "gzip"),
        ("zstd;q=0.5, gzip;q=0.9", "gzip"),
        ("gzip, zstd", "zstd"),
        ("*", "zstd"),
        ("*;q=0.1, zstd;q=0", "gzip"),
        ("identity;q=1, gzip;q=0.5", None),
        ("identity", None),
        ("br", None),
    ],
)
def test_accept_encoding_q_values_are_honoured(
    server: ServerProcess, accept_encoding: str, expected: str | None
) -> None:
    response, body = raw(
        server,
        "GET",
        "/v1/dtesn/bseries",
        params={"order": 5},
        headers={"accept-encoding": accept_encoding},
    )
    assert response.headers.get("content-encoding") == expected
    decoded = DECODE[expected](body) if expected else body
    assert decoded == httpx.get(f"{server.base_url}/v1/dtesn/bseries?order=5").content


def stream_operations(server: ServerProcess, outcome: str) -> float:
    text = httpx.get(f"{server.base_url}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "dtecho_dtesn_operations_total" and sample.labels == {
                "operation": "stream",
                "outcome": outcome,
            }:
                return sample.value
    return 0.0


def test_sse_events_arrive_while_the_stream_is_still_produced(server: ServerProcess) -> None:
    """A client that accepts every coding reads the first event, then leaves; the server
    counts the stream as cancelled, which it only can if that event reached the client
    before the computation ended (a buffered or compressed-to-the-end stream would have
    completed first)."""
    before = stream_operations(server, "cancelled")
    body = {"input": "z" * 100_000, "esn_size": 2048, "membrane_depth": 3}
    headers = {"accept-encoding": "gzip, zstd, *"}
    with httpx.stream(
        "POST", f"{server.base_url}/v1/dtesn/stream", json=body, headers=headers, timeout=60
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert "content-encoding" not in response.headers
        name, payload = next(sse_events(response))
        assert name == "progress" and payload["steps_done"] < payload["steps_total"]
    deadline = time.monotonic() + 60
    while stream_operations(server, "cancelled") == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stream_operations(server, "cancelled") == before + 1


def test_a_chat_stream_is_not_compressed(server: ServerProcess) -> None:
    body = {
        "model": "dtesn-echo",
        "stream": True,
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "echo " * 400}],
    }
    headers = {"accept-encoding": "gzip, zstd"}
    with httpx.stream(
        "POST", f"{server.base_url}/v1/chat/completions", json=body, headers=headers, timeout=60
    ) as response:
        assert response.status_code == 200
        assert "content-encoding" not in response.headers
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"


def trained_model(server: ServerProcess) -> str:
    body = {
        "inputs": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        "targets": [0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
        "warmup": 0,
        "config": {"units": 10, "forgetting": 0.99},
    }
    created = httpx.post(f"{server.base_url}/v1/dtesn/models", json=body, timeout=60)
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


CACHEABLE = [
    ("/v1/models", {}, "private, no-cache"),
    ("/v1/models/dtesn-echo", {}, "private, no-cache"),
    ("/v1/dtesn/models", {}, "private, no-cache"),
    ("/v1/dtesn/models/{id}", {}, "private, no-cache"),
    ("/v1/dtesn/models/{id}", {"accept": "text/html"}, "private, no-cache"),
    ("/dtesn/models/{id}", {}, "private, no-cache"),
    ("/v1/dtesn/bseries?order=5", {}, "public, max-age=86400"),
    ("/dtesn", {}, "no-cache"),
]


@pytest.mark.parametrize("accept_encoding", ["identity", "gzip, zstd"])
@pytest.mark.parametrize(("path", "extra", "cache_control"), CACHEABLE)
def test_a_matching_if_none_match_is_answered_304(
    server: ServerProcess, path: str, extra: dict, cache_control: str, accept_encoding: str
) -> None:
    path = path.replace("{id}", trained_model(server)) if "{id}" in path else path
    headers = {**extra, "accept-encoding": accept_encoding}
    first, body = raw(server, "GET", path, headers=headers)
    assert first.status_code == 200 and body
    assert first.headers["cache-control"] == cache_control
    tag = first.headers["etag"]
    strong = tag.removeprefix("W/")
    # Compressed representations carry the weak form of the identity's tag.
    assert tag == (f"W/{strong}" if "content-encoding" in first.headers else strong)
    for validator in (tag, strong, f"W/{strong}", f'"other", {tag}', "*"):
        again, empty = raw(server, "GET", path, headers={**headers, "if-none-match": validator})
        assert again.status_code == 304 and empty == b""
        assert again.headers["etag"].removeprefix("W/") == strong
        assert again.headers["cache-control"] == cache_control
        assert "content-length" not in again.headers and "content-encoding" not in again.headers
        assert vary(again) >= vary(first) - {"accept-encoding"}
    stale, fresh = raw(server, "GET", path, headers={**headers, "if-none-match": '"other"'})
    assert stale.status_code == 200 and fresh == body and stale.headers["etag"] == tag


def test_negotiated_representations_have_their_own_tags(server: ServerProcess) -> None:
    tags = set()
    for accept in ("application/json", "application/xml", "application/msgpack"):
        response = httpx.get(f"{server.base_url}/v1/models", headers={"accept": accept})
        assert response.headers["content-type"].startswith(accept)
        assert "accept" in vary(response)
        tags.add(response.headers["etag"])
    assert len(tags) == 3
    json_tag = httpx.get(f"{server.base_url}/v1/models").headers["etag"]
    as_xml = httpx.get(
        f"{server.base_url}/v1/models",
        headers={"accept": "application/xml", "if-none-match": json_tag},
    )
    assert as_xml.status_code == 200 and as_xml.content.startswith(b"<?xml")


def test_bseries_tags_differ_by_query(server: ServerProcess) -> None:
    url = f"{server.base_url}/v1/dtesn/bseries"
    four = httpx.get(url, params={"order": 4}).headers["etag"]
    five = httpx.get(url, params={"order": 5})
    assert five.headers["etag"] != four
    assert httpx.get(url, params={"order": 4}).headers["etag"] == four  # stable
    other = httpx.get(url, params={"order": 5}, headers={"if-none-match": four})
    assert other.status_code == 200 and other.json()["order"] == 5


def test_a_model_tag_changes_when_the_model_changes(server: ServerProcess) -> None:
    model_id = trained_model(server)
    url = f"{server.base_url}/v1/dtesn/models/{model_id}"
    before = httpx.get(url)
    listed = httpx.get(f"{server.base_url}/v1/dtesn/models").headers["etag"]
    update = {"inputs": [0.5, 0.4, 0.3, 0.2], "targets": [0.4, 0.3, 0.2, 0.1], "warmup": 0}
    assert httpx.post(f"{url}/update", json=update, timeout=60).status_code == 200
    after = httpx.get(url, headers={"if-none-match": before.headers["etag"]})
    assert after.status_code == 200 and after.json()["version"] == before.json()["version"] + 1
    assert after.headers["etag"] != before.headers["etag"]
    assert httpx.get(url, headers={"if-none-match": after.headers["etag"]}).status_code == 304
    trained_model(server)  # one more model: the list is another resource now
    relisted = httpx.get(f"{server.base_url}/v1/dtesn/models", headers={"if-none-match": listed})
    assert relisted.status_code == 200 and relisted.headers["etag"] != listed
    assert httpx.delete(url).status_code == 200
    gone = httpx.get(url, headers={"if-none-match": after.headers["etag"]})
    assert gone.status_code == 404 and "etag" not in gone.headers


@pytest.mark.parametrize("path", ["/", "/status", "/upstreams"])
def test_live_pages_are_never_stored(server: ServerProcess, path: str) -> None:
    for accept in ("application/json", "text/html"):
        response = httpx.get(f"{server.base_url}{path}", headers={"accept": accept})
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        assert "etag" not in response.headers
        assert "accept" in vary(response)


def test_delivery_settings(server_factory) -> None:
    server = server_factory(
        {
            "delivery": {
                "compression_min_bytes": 0,
                "zstd": False,
                "etags": False,
                "public_max_age_seconds": 60,
            }
        }
    )
    response, body = raw(
        server, "GET", "/v1/models/dtesn-echo", headers={"accept-encoding": "zstd, gzip"}
    )
    assert response.headers["content-encoding"] == "gzip"
    assert b'"dtesn-echo"' in gzip.decompress(body)
    assert "etag" not in response.headers
    assert response.headers["cache-control"] == "private, no-cache"
    bseries = httpx.get(f"{server.base_url}/v1/dtesn/bseries")
    assert bseries.headers["cache-control"] == "public, max-age=60"
