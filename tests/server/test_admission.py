"""What the security layer reads from request bodies and responses."""

from __future__ import annotations

import json

from dtecho.server.admission import UsageEventFilter, UsageScanner, read_request


def sse(*events: dict) -> list[bytes]:
    return [b"data: " + json.dumps(event).encode() + b"\n\n" for event in events]


def test_reservation_is_prompt_estimate_plus_max_tokens_times_n() -> None:
    body = json.dumps({"model": "m", "messages": [], "max_tokens": 100, "n": 3}).encode()
    facts = read_request("/v1/chat/completions", body, default_max_tokens=7)
    assert facts.model == "m" and facts.body == body and not facts.strip_usage
    assert facts.reserve_tokens == len(body) // 4 + 1 + 300
    no_max = json.dumps({"model": "m", "prompt": "x"}).encode()
    assert read_request("/v1/completions", no_max, default_max_tokens=7).reserve_tokens == (
        len(no_max) // 4 + 1 + 7
    )
    embed = json.dumps({"model": "e", "input": "hello"}).encode()
    assert read_request("/v1/embeddings", embed, default_max_tokens=7).reserve_tokens == (
        len(embed) // 4 + 1
    )


def test_malformed_bodies_pass_through_untouched() -> None:
    for body in (b"{not json", b"[1, 2]", b"\xff\xfe"):
        facts = read_request("/v1/chat/completions", body, default_max_tokens=5)
        assert facts.model is None and facts.body == body and facts.reserve_tokens == 0


def test_streams_ask_for_usage_only_when_the_client_did_not() -> None:
    body = json.dumps({"model": "m", "stream": True, "stream_options": {"x": 1}}).encode()
    facts = read_request("/v1/chat/completions", body, default_max_tokens=5)
    assert facts.strip_usage
    assert json.loads(facts.body)["stream_options"] == {"x": 1, "include_usage": True}
    asked = json.dumps(
        {"model": "m", "stream": True, "stream_options": {"include_usage": True}}
    ).encode()
    facts = read_request("/v1/chat/completions", asked, default_max_tokens=5)
    assert not facts.strip_usage and facts.body == asked


def test_scanner_finds_the_last_usage_across_chunk_boundaries() -> None:
    usage = {"prompt_tokens": 12, "completion_tokens": 34, "total_tokens": 46,
             "prompt_tokens_details": {"cached_tokens": 0}}  # fmt: skip
    stream = b"".join(
        sse(
            {"choices": [{"delta": {"content": "a"}}], "usage": None},
            {"choices": [], "usage": usage},
        )
    )
    for size in (1, 7, 64, len(stream)):
        scanner = UsageScanner()
        for start in range(0, len(stream), size):
            scanner.feed(stream[start : start + size])
        assert (scanner.prompt_tokens, scanner.completion_tokens) == (12, 34), size
    embedding = UsageScanner()
    embedding.feed(
        json.dumps({"data": [], "usage": {"prompt_tokens": 5, "total_tokens": 5}}).encode()
    )
    assert embedding.total == 5
    assert not UsageScanner().found


def test_filter_removes_only_the_usage_event() -> None:
    content = {"choices": [{"delta": {"content": "hi"}}]}
    stream = b"".join(
        [*sse(content, {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}),
         b"data: [DONE]\n\n"]
    )  # fmt: skip
    expected = b"".join([*sse(content), b"data: [DONE]\n\n"])
    for size in (1, 5, 33, len(stream)):
        events = UsageEventFilter()
        pieces = [stream[i : i + size] for i in range(0, len(stream), size)]
        out = b"".join(events.feed(p, last=i == len(pieces) - 1) for i, p in enumerate(pieces))
        assert out == expected, size
