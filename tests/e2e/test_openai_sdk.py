"""The official ``openai`` SDK against a real ``dtecho serve`` process (native DTESN models)."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import httpx
import numpy as np
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from support import ServerProcess

pytestmark = pytest.mark.e2e

CHAT = [{"role": "user", "content": "Return the value of"}]


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


@pytest.fixture
def async_client(server: ServerProcess) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


def chat(client: openai.OpenAI, **kwargs):
    # Computed afresh: these tests check the engine, not the response cache.
    kwargs.setdefault("extra_body", {"enable_caching": False})
    return client.chat.completions.create(model="dtesn-echo", messages=CHAT, **kwargs)


# ---- models ---------------------------------------------------------------------------------


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    ids = [model.id for model in client.models.list()]
    assert ids == ["dtesn-echo", "dtesn-embed"]
    model = client.models.retrieve("dtesn-echo")
    assert model.id == "dtesn-echo" and model.object == "model"
    extra = model.model_extra or {}
    assert extra["bits_per_byte"] <= 3.0
    assert extra["bits_per_byte"] < extra["bigram_bits_per_byte"]


def test_retrieve_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("no-such-model")
    assert info.value.code == "model_not_found"


# ---- chat completions -----------------------------------------------------------------------


def test_chat_completion_shape_and_usage(client: openai.OpenAI) -> None:
    response = chat(client, max_tokens=20, seed=1)
    assert response.object == "chat.completion" and response.id.startswith("chatcmpl-")
    assert response.model == "dtesn-echo"
    (choice,) = response.choices
    assert choice.index == 0 and choice.message.role == "assistant"
    assert choice.finish_reason in {"stop", "length"}
    usage = response.usage
    assert usage.completion_tokens <= 20
    assert usage.prompt_tokens == len(b"User: Return the value of\nAssistant:")
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_max_tokens_limit_gives_length(client: openai.OpenAI) -> None:
    response = chat(client, max_tokens=7, seed=3)
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 7
    assert len(response.choices[0].message.content.encode()) <= 7
    newer = chat(client, max_completion_tokens=7, seed=3)
    assert newer.choices[0].message.content == response.choices[0].message.content


def test_same_seed_same_text_and_greedy_is_deterministic(client: openai.OpenAI) -> None:
    first = chat(client, max_tokens=40, seed=11).choices[0].message.content
    again = chat(client, max_tokens=40, seed=11).choices[0].message.content
    other = chat(client, max_tokens=40, seed=12).choices[0].message.content
    assert first == again
    assert first != other
    greedy = {chat(client, max_tokens=30, temperature=0).choices[0].message.content for _ in "ab"}
    assert len(greedy) == 1


def test_negative_and_huge_seeds_are_seeds_too(client: openai.OpenAI) -> None:
    # OpenAI's seed is any 64-bit integer.
    texts = {
        seed: chat(client, max_tokens=20, seed=seed).choices[0].message.content
        for seed in (-1, 1, -(2**63), 2**63 - 1)
    }
    assert texts[-1] == chat(client, max_tokens=20, seed=-1).choices[0].message.content
    assert texts[-1] != texts[1]


def test_n_choices(client: openai.OpenAI) -> None:
    response = chat(client, max_tokens=16, n=2, seed=5)
    assert [choice.index for choice in response.choices] == [0, 1]
    assert response.choices[0].message.content != response.choices[1].message.content


def test_stop_sequence_cuts_before_it(client: openai.OpenAI) -> None:
    full = chat(client, max_tokens=60, seed=21).choices[0].message.content
    assert len(full) > 10
    stop = full[6:8]
    cut = chat(client, max_tokens=60, seed=21, stop=[stop, "\u2603\u2603"]).choices[0]
    assert cut.finish_reason == "stop"
    assert cut.message.content == full[: full.index(stop)]


def test_chat_logprobs(client: openai.OpenAI) -> None:
    response = chat(client, max_tokens=10, seed=2, logprobs=True, top_logprobs=3)
    content = response.choices[0].logprobs.content
    assert len(content) == response.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        top = [alt.logprob for alt in entry.top_logprobs]
        assert top == sorted(top, reverse=True)
        assert entry.logprob <= top[0] + 1e-9
        assert sum(np.exp(top)) <= 1 + 1e-6


def test_streaming_with_usage_matches_non_streaming(client: openai.OpenAI) -> None:
    expected = chat(client, max_tokens=30, seed=9)
    stream = chat(
        client, max_tokens=30, seed=9, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    content_chunks = [c for c in chunks if c.choices]
    assert content_chunks[-1].choices[0].finish_reason == expected.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in content_chunks[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in content_chunks)
    assert text == expected.choices[0].message.content
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1]
    assert chunks[-1].choices == []
    assert usage_chunks[0].usage.model_dump() == expected.usage.model_dump()


def test_streaming_n2_interleaves_by_index(client: openai.OpenAI) -> None:
    expected = chat(client, max_tokens=40, n=2, seed=4)
    chunks = list(chat(client, max_tokens=40, n=2, seed=4, stream=True))
    order = [c.choices[0].index for c in chunks if c.choices]
    first_of_one = order.index(1)
    assert 0 in order[first_of_one:], "choices should interleave, not arrive one after another"
    for index in (0, 1):
        text = "".join(
            c.choices[0].delta.content or "" for c in chunks if c.choices[0].index == index
        )
        assert text == expected.choices[index].message.content


def test_raw_stream_ends_with_done(server: ServerProcess) -> None:
    body = {"model": "dtesn-echo", "messages": CHAT, "max_tokens": 5, "stream": True}
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        frames = [line for line in response.iter_lines() if line]
    assert frames[-1] == "data: [DONE]"
    assert all(frame.startswith("data: ") for frame in frames)
    json.loads(frames[0][len("data: ") :])


# ---- completions ----------------------------------------------------------------------------


def test_completion_with_prompt_list_echo_and_logprobs(client: openai.OpenAI) -> None:
    response = client.completions.create(
        model="dtesn-echo", prompt=["def f(x):", "import "], max_tokens=8, seed=1, logprobs=2
    )
    assert response.object == "text_completion"
    assert [c.index for c in response.choices] == [0, 1]
    for choice in response.choices:
        assert len(choice.logprobs.tokens) == len(choice.text.encode())
        assert all(len(top) <= 2 for top in choice.logprobs.top_logprobs)
    echoed = client.completions.create(
        model="dtesn-echo", prompt="def f(x):", max_tokens=8, seed=1, echo=True
    )
    assert echoed.choices[0].text == "def f(x):" + response.choices[0].text


def test_completion_stream_and_token_prompt(client: openai.OpenAI) -> None:
    expected = client.completions.create(model="dtesn-echo", prompt="Return", max_tokens=12, seed=8)
    streamed = client.completions.create(
        model="dtesn-echo", prompt=list(b"Return"), max_tokens=12, seed=8, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == expected.choices[0].text


# ---- embeddings -----------------------------------------------------------------------------


def test_embeddings_float_and_base64_agree(client: openai.OpenAI) -> None:
    inputs = ["reservoir computing", "echo state network", "a different sentence entirely"]
    floats = client.embeddings.create(model="dtesn-embed", input=inputs, encoding_format="float")
    encoded = client.embeddings.create(model="dtesn-embed", input=inputs, encoding_format="base64")
    assert [d.index for d in floats.data] == [0, 1, 2]
    for as_float, as_b64 in zip(floats.data, encoded.data, strict=True):
        decoded = np.frombuffer(base64.b64decode(as_b64.embedding), dtype="<f4")
        np.testing.assert_array_equal(np.asarray(as_float.embedding, dtype=np.float32), decoded)
        assert abs(np.linalg.norm(decoded) - 1) < 1e-5
    assert floats.usage.prompt_tokens == sum(len(t.encode()) for t in inputs)


def test_embeddings_dimensions(client: openai.OpenAI) -> None:
    response = client.embeddings.create(model="dtesn-embed", input="hello", dimensions=64)
    assert len(response.data[0].embedding) == 64
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="dtesn-embed", input="hello", dimensions=10**6)
    assert info.value.param == "dimensions"


# ---- errors ---------------------------------------------------------------------------------


def test_unknown_model_is_404_model_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-imaginary", messages=CHAT)
    assert info.value.code == "model_not_found"
    assert info.value.body["param"] == "model"


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"temperature": 5}, "temperature"),
        ({"n": 100}, "n"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"top_logprobs": 2}, "top_logprobs"),
    ],
)
def test_invalid_parameters_are_400_naming_the_field(client, kwargs, param) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, **kwargs)
    assert info.value.status_code == 400
    assert info.value.param == param


def test_embedding_model_cannot_chat(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="dtesn-embed", messages=CHAT)
    assert info.value.param == "model"


# ---- async client, cancellation, concurrency -------------------------------------------------


async def test_async_client_stream_and_embeddings(async_client: openai.AsyncOpenAI) -> None:
    stream = await async_client.chat.completions.create(
        model="dtesn-echo", messages=CHAT, max_tokens=12, seed=9, stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert len(text.encode()) <= 12
    embedded = await async_client.embeddings.create(model="dtesn-embed", input=["a", "b"])
    assert len(embedded.data) == 2
    await async_client.close()


def generation_count(server: ServerProcess, outcome: str) -> float:
    text = httpx.get(f"{server.base_url}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "dtecho_engine_generations_total" and sample.labels == {
                "model": "dtesn-echo",
                "outcome": outcome,
            }:
                return sample.value
    return 0.0


def test_client_disconnect_cancels_generation(server: ServerProcess) -> None:
    before = generation_count(server, "cancelled")
    # The most the model generates for one request (max_output_tokens): seconds of work, far
    # longer than noticing the client left after its first chunk.
    body = {"model": "dtesn-echo", "messages": CHAT, "max_tokens": 4096, "stream": True}
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
    deadline = time.monotonic() + 30
    while generation_count(server, "cancelled") <= before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert generation_count(server, "cancelled") == before + 1


async def test_concurrent_streams_do_not_stall_each_other_or_liveness(
    server: ServerProcess,
) -> None:
    body = {"model": "dtesn-echo", "messages": CHAT, "max_tokens": 200, "stream": True}

    async def consume(client: httpx.AsyncClient) -> int:
        frames = 0
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                frames += line.startswith("data: ")
        return frames

    async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as client:
        streams = [asyncio.create_task(consume(client)) for _ in range(8)]
        await asyncio.sleep(0.2)
        live = await client.get("/health/live", timeout=10)
        assert live.status_code == 200
        counts = await asyncio.gather(*streams)
    assert all(count > 2 for count in counts)
