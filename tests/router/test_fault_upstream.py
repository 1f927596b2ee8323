"""The fault-injecting upstream (``benchmarks/_fault_upstream.py``) that the router's tests and
resilience benchmark stand on, run as a real process and read with the official ``openai``
client: its answers are valid OpenAI shapes, and every fault does what it says."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from support import FAULT_UPSTREAM_SCRIPT, FaultUpstream, wait_until

MESSAGES: list[Any] = [{"role": "user", "content": "Hello?"}]
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def upstream() -> Iterator[FaultUpstream]:
    """One upstream shared by the module; no random tail, so that only the tail test is slow."""
    with FaultUpstream("up-a", latency_ms=1, tail_share=0, chunk_interval_ms=1) as up:
        yield up


@pytest.fixture(autouse=True)
def _fresh_knobs(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "upstream" in request.fixturenames:
        request.getfixturevalue("upstream").reset()


@pytest.fixture
def client(upstream: FaultUpstream) -> Iterator[openai.OpenAI]:
    # No retries: each test counts exactly the requests it sends.
    with openai.OpenAI(base_url=upstream.url, api_key="x", max_retries=0, timeout=10) as sdk:
        yield sdk


def _data_frames(lines: Iterator[str]) -> list[str]:
    return [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]


def test_chat_completion_is_an_openai_answer_naming_the_upstream(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES)
    answer = raw.parse()
    assert raw.headers["x-fault-upstream"] == "up-a"
    assert answer.object == "chat.completion"
    assert answer.model == "gpt-test"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content is not None
    assert answer.choices[0].message.content.startswith("served by up-a")
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


def test_text_completion_is_an_openai_answer_naming_the_upstream(client: openai.OpenAI) -> None:
    answer = client.completions.create(model="text-test", prompt="Hello?")
    assert answer.object == "text_completion"
    assert answer.model == "text-test"
    assert answer.choices[0].text.startswith("served by up-a")
    assert answer.choices[0].finish_reason == "stop"


def test_chat_stream_is_chunks_then_finish_then_usage_then_done(
    upstream: FaultUpstream, client: openai.OpenAI
) -> None:
    chunks = list(
        client.chat.completions.create(
            model="gpt-test",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert {chunk.object for chunk in chunks} == {"chat.completion.chunk"}
    assert {chunk.model for chunk in chunks} == {"gpt-test"}
    *content, finish, usage = chunks
    assert len(content) == 8  # stream_chunks' default
    assert content[0].choices[0].delta.role == "assistant"
    assert all(chunk.choices[0].finish_reason is None for chunk in content)
    assert finish.choices[0].finish_reason == "stop"
    assert usage.choices == []
    assert usage.usage is not None
    assert usage.usage.completion_tokens == 8
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in content)
    whole = client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert streamed == whole.choices[0].message.content
    assert streamed.startswith("served by up-a")

    # The wire itself ends in [DONE], which the SDK swallows.
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", upstream.url + "/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        frames = _data_frames(response.iter_lines())
    assert frames[-1] == "[DONE]"
    assert "usage" not in json.loads(frames[0])  # only with stream_options.include_usage
    assert upstream.stats()["streams_completed"] == 2


def test_text_completion_stream_is_openai_chunks(client: openai.OpenAI) -> None:
    chunks = list(client.completions.create(model="text-test", prompt="Hello?", stream=True))
    assert {chunk.object for chunk in chunks} == {"text_completion"}
    assert "".join(chunk.choices[0].text for chunk in chunks).startswith("served by up-a")
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_error_share_one_fails_every_request_with_an_openai_error(
    upstream: FaultUpstream, client: openai.OpenAI
) -> None:
    upstream.control(error_share=1.0)
    for _ in range(5):
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model="m", messages=MESSAGES)
        assert caught.value.status_code == 503
        assert caught.value.response.headers["retry-after"] == "1"
        assert isinstance(caught.value.body, dict)
        assert "up-a" in caught.value.body["message"]
    upstream.control(error_status=429)
    with pytest.raises(openai.RateLimitError) as limited:
        client.completions.create(model="m", prompt="Hello?")
    assert limited.value.code == "rate_limit_exceeded"
    assert limited.value.response.headers["retry-after"] == "1"
    upstream.control(error_status=500)
    with pytest.raises(openai.InternalServerError) as failed:
        client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    assert failed.value.status_code == 500
    assert "retry-after" not in failed.value.response.headers
    requests = upstream.stats()["requests"]
    assert requests[CHAT] == {"503": 5, "500": 1}
    assert requests["/v1/completions"] == {"429": 1}


def test_a_burst_fails_requests_while_it_lasts_then_stops(
    upstream: FaultUpstream, client: openai.OpenAI
) -> None:
    started = time.monotonic()
    upstream.control(burst_every_s=60, burst_length_s=0.5)  # a burst starts now
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="m", messages=MESSAGES)

    def answers() -> bool:
        try:
            client.chat.completions.create(model="m", messages=MESSAGES)
        except openai.InternalServerError:
            return False
        return True

    wait_until(answers, timeout=10, interval=0.05)
    assert time.monotonic() - started >= 0.5


def test_the_tail_makes_a_seeded_share_of_requests_slow(upstream: FaultUpstream) -> None:
    fast_ms, factor = 10, 30
    upstream.control(latency_ms=fast_ms, tail_share=0.5, tail_factor=factor, seed=3)
    latencies, elapsed = [], []
    with httpx.Client(base_url=upstream.url, timeout=10) as http:
        for _ in range(10):
            started = time.monotonic()
            response = http.post("/chat/completions", json={"model": "m", "messages": MESSAGES})
            elapsed.append(time.monotonic() - started)
            assert response.status_code == 200
            latencies.append(float(response.headers["x-fault-latency-ms"]))
        slow = [latency == fast_ms * factor for latency in latencies]
        assert set(latencies) == {fast_ms, fast_ms * factor}  # some of each
        # Generous bounds: a slow one takes at least 10x the fast latency, a fast one less.
        timed = list(zip(elapsed, slow, strict=True))
        assert all(took >= 10 * fast_ms / 1000 for took, is_slow in timed if is_slow)
        assert min(took for took, is_slow in timed if not is_slow) < 0.1

        # The same seed draws the same requests slow (latency 0.1 ms, to keep this quick).
        upstream.control(latency_ms=0.1, seed=3)
        again = []
        for _ in range(10):
            response = http.post("/chat/completions", json={"model": "m", "messages": MESSAGES})
            again.append(float(response.headers["x-fault-latency-ms"]) > 0.1)
    assert again == slow


def test_the_context_length_knob_answers_openais_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="m", messages=MESSAGES, metadata={"fault": "context_length"}
        )
    assert caught.value.status_code == 400
    body = caught.value.body
    assert isinstance(body, dict)
    assert set(body) == {"message", "type", "param", "code"}
    assert body["type"] == "invalid_request_error"
    assert body["param"] == "messages"
    assert body["code"] == "context_length_exceeded"
    assert "maximum context length" in body["message"]


def test_the_content_policy_knob_answers_a_400_from_a_header(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(
            model="m", prompt="Hello?", extra_headers={"x-fault": "content_policy"}
        )
    assert caught.value.code == "content_policy_violation"
    assert caught.value.type == "invalid_request_error"


def test_a_forced_status_and_a_forced_delay_apply_to_one_request(
    upstream: FaultUpstream, client: openai.OpenAI
) -> None:
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(
            model="m", messages=MESSAGES, metadata={"fault_status": "429"}
        )
    with pytest.raises(openai.APIStatusError) as caught:
        client.completions.create(
            model="m", prompt="Hello?", extra_headers={"x-fault-status": "502"}
        )
    assert caught.value.status_code == 502
    started = time.monotonic()
    raw = client.chat.completions.with_raw_response.create(
        model="m", messages=MESSAGES, extra_headers={"x-fault-delay-ms": "300"}
    )
    assert time.monotonic() - started >= 0.3
    assert raw.headers["x-fault-latency-ms"] == "300"
    client.chat.completions.create(model="m", messages=MESSAGES)  # the next one is normal again
    assert upstream.stats()["requests"][CHAT] == {"429": 1, "200": 2}


def test_faults_with_a_target_apply_only_on_the_named_upstream(client: openai.OpenAI) -> None:
    elsewhere = {"fault_status": "500", "fault_target": "up-b"}
    answer = client.chat.completions.create(model="m", messages=MESSAGES, metadata=elsewhere)
    assert answer.choices[0].message.content is not None
    with pytest.raises(openai.InternalServerError):
        here = {"fault_status": "500", "fault_target": "up-a"}
        client.chat.completions.create(model="m", messages=MESSAGES, metadata=here)


def test_a_bad_fault_value_is_an_openai_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="m", messages=MESSAGES, metadata={"fault": "nope"})
    assert "context_length" in caught.value.message


def test_a_client_that_leaves_while_waiting_is_counted(upstream: FaultUpstream) -> None:
    upstream.control(latency_ms=5000)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(upstream.url + "/completions", json={"model": "m", "prompt": "x"}, timeout=0.3)
    stats = wait_until(lambda: (s := upstream.stats())["disconnected"] == 1 and s)
    assert stats["in_flight"] == 0
    assert stats["dropped"] == 0
    assert stats["requests"]["/v1/completions"] == {"none": 1}


def test_a_client_that_leaves_mid_stream_is_counted(upstream: FaultUpstream) -> None:
    upstream.control(chunk_interval_ms=200)
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", upstream.url + "/chat/completions", json=body) as response:
        first = next(response.iter_lines())
        assert "served by up-a" in first
    # Leaving the block closes the connection with the stream still going.
    stats = wait_until(lambda: (s := upstream.stats())["disconnected"] == 1 and s)
    assert stats["streams_completed"] == 0
    assert stats["streams_broken"] == 0
    assert stats["requests"][CHAT] == {"200": 1}
    assert stats["in_flight"] == 0


def test_a_stream_broken_after_k_chunks_is_broken_for_the_client(
    upstream: FaultUpstream, client: openai.OpenAI
) -> None:
    body = {
        "model": "m",
        "messages": MESSAGES,
        "stream": True,
        "metadata": {"fault_break_after": "3"},
    }
    frames: list[str] = []
    with (
        httpx.stream("POST", upstream.url + "/chat/completions", json=body) as response,
        pytest.raises(httpx.RemoteProtocolError),
    ):
        # One line at a time: the frames before the break must survive the exception.
        for line in response.iter_lines():
            if line.startswith("data: "):
                frames.append(line.removeprefix("data: "))
    assert response.status_code == 200
    # iter_lines yields whole lines only: exactly the three chunks sent, no finish, no [DONE].
    assert len(frames) == 3
    assert all(json.loads(frame)["choices"][0]["finish_reason"] is None for frame in frames)

    seen: list[Any] = []
    stream = client.chat.completions.create(
        model="m", messages=MESSAGES, stream=True, extra_headers={"x-fault-break-after": "2"}
    )
    with pytest.raises(openai.APIConnectionError):
        for chunk in stream:
            seen.append(chunk)
    assert len(seen) == 2
    stats = upstream.stats()
    assert stats["streams_broken"] == 2
    assert stats["dropped"] == 2
    assert stats["disconnected"] == 0  # the upstream broke them, not the client


def test_the_disconnect_fault_closes_the_connection_without_an_answer(
    upstream: FaultUpstream, client: openai.OpenAI
) -> None:
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(
            model="m", messages=MESSAGES, metadata={"fault": "disconnect"}
        )
    stats = upstream.stats()
    assert stats["requests"][CHAT] == {"none": 1}
    assert stats["dropped"] == 1


def test_control_changes_take_effect_and_bad_knobs_change_nothing(
    upstream: FaultUpstream, client: openai.OpenAI
) -> None:
    knobs = upstream.control(latency_ms=200, stream_chunks=3)
    assert knobs["latency_ms"] == 200
    assert httpx.get(upstream.base_url + "/_control").json() == knobs
    started = time.monotonic()
    chunks = list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
    assert time.monotonic() - started >= 0.2
    assert len(chunks) == 3 + 1  # three content chunks and the finish chunk

    for bad in ({"latency_ms": -1}, {"tail_share": 2}, {"no_such_knob": 1}, {"stream_chunks": 1.5}):
        refused = httpx.post(upstream.base_url + "/_control", json=bad)
        assert refused.status_code == 400
        assert refused.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(upstream.base_url + "/_control").json() == knobs

    upstream.control(health_status=503)
    assert httpx.get(upstream.base_url + "/health").status_code == 503
    assert upstream.reset()["latency_ms"] == 1
    assert httpx.get(upstream.base_url + "/health").json() == {"status": "ok", "name": "up-a"}
    # Control traffic is not counted; the health checks are.
    assert upstream.stats()["requests"] == {"/health": {"200": 1}}


def test_models_lists_one_model_and_unknown_paths_are_openai_404s(
    upstream: FaultUpstream, client: openai.OpenAI
) -> None:
    assert [model.id for model in client.models.list()] == ["fault-upstream"]
    missing = httpx.get(upstream.url + "/embeddings")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    not_json = httpx.post(upstream.url + "/chat/completions", content=b"{")
    assert not_json.status_code == 400


def test_sigkill_refuses_connections_until_it_starts_again_on_its_port() -> None:
    with FaultUpstream("up-k", latency_ms=1) as up:
        sdk = openai.OpenAI(base_url=up.url, api_key="x", max_retries=0, timeout=5)
        assert sdk.models.list().data
        port = up.port
        up.kill()
        with pytest.raises(httpx.ConnectError):
            httpx.get(up.base_url + "/health")
        with pytest.raises(openai.APIConnectionError):
            sdk.chat.completions.create(model="m", messages=MESSAGES)
        up.start()
        assert up.port == port
        content = sdk.chat.completions.create(model="m", messages=MESSAGES).choices[0].message
        assert content.content is not None
        assert content.content.startswith("served by up-k")


def test_sigterm_exits_promptly_with_an_answer_in_flight() -> None:
    up = FaultUpstream("up-t", latency_ms=30_000).start()
    outcome: list[BaseException] = []

    def wait_for_answer() -> None:
        try:
            httpx.post(up.url + "/completions", json={"model": "m", "prompt": "x"}, timeout=60)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=wait_for_answer)
    waiter.start()
    wait_until(lambda: up.stats()["in_flight"] == 1)
    started = time.monotonic()
    assert up.stop(timeout=30) == 0
    assert time.monotonic() - started < 5
    waiter.join(10)
    assert outcome  # the answer in flight was abandoned, not awaited


def test_the_command_line_refuses_a_bad_knob() -> None:
    command = [sys.executable, str(FAULT_UPSTREAM_SCRIPT), "--port", "0", "--tail-share", "2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "tail_share" in result.stderr
