"""The ``openai`` upstream engine, relaying to a second real ``dtecho serve`` process."""

from __future__ import annotations

import time

import openai
import pytest

from support import ServerProcess, free_port

pytestmark = pytest.mark.e2e

CHAT = [{"role": "user", "content": "Return the value of"}]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> ServerProcess:
    from support import start_server

    server = start_server(tmp_path_factory.mktemp("upstream"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, upstream: ServerProcess) -> ServerProcess:
    from support import start_server

    base = f"{upstream.base_url}/v1"
    config = {
        "models": [
            {"name": "relayed-echo", "engine": "openai", "base_url": base,
             "upstream_model": "dtesn-echo", "api_key_env": "DTECHO_TEST_UPSTREAM_KEY"},
            {"name": "dtesn-embed", "engine": "openai", "base_url": base},
            {"name": "down", "engine": "openai",
             "base_url": f"http://127.0.0.1:{free_port()}/v1"},
        ]
    }  # fmt: skip
    server = start_server(
        tmp_path_factory.mktemp("gateway"),
        config,
        env={"DTECHO_TEST_UPSTREAM_KEY": "sk-upstream-secret"},
    )
    yield server
    server.stop()


def sdk(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


def test_models_are_the_gateways_own(gateway: ServerProcess) -> None:
    assert [m.id for m in sdk(gateway).models.list()] == ["relayed-echo", "dtesn-embed", "down"]


def test_non_streaming_chat_is_relayed(gateway: ServerProcess, upstream: ServerProcess) -> None:
    direct = sdk(upstream).chat.completions.create(
        model="dtesn-echo", messages=CHAT, max_tokens=24, seed=31
    )
    relayed = sdk(gateway).chat.completions.create(
        model="relayed-echo", messages=CHAT, max_tokens=24, seed=31
    )
    assert relayed.choices[0].message.content == direct.choices[0].message.content
    assert relayed.usage == direct.usage


def test_streaming_chat_is_relayed_chunk_by_chunk(
    gateway: ServerProcess, upstream: ServerProcess
) -> None:
    direct = sdk(upstream).chat.completions.create(
        model="dtesn-echo", messages=CHAT, max_tokens=40, seed=5
    )
    stream = sdk(gateway).chat.completions.create(
        model="relayed-echo", messages=CHAT, max_tokens=40, seed=5, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    assert len(chunks) > 3
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == direct.choices[0].message.content
    assert chunks[-1].usage == direct.usage


def test_completions_and_embeddings_are_relayed(
    gateway: ServerProcess, upstream: ServerProcess
) -> None:
    relayed = sdk(gateway).completions.create(
        model="relayed-echo", prompt="import ", max_tokens=10, seed=2
    )
    direct = sdk(upstream).completions.create(
        model="dtesn-echo", prompt="import ", max_tokens=10, seed=2
    )
    assert relayed.choices[0].text == direct.choices[0].text
    vectors = sdk(gateway).embeddings.create(model="dtesn-embed", input=["x", "y"])
    assert len(vectors.data) == 2


def test_upstream_errors_keep_status_and_body(gateway: ServerProcess) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk(gateway).chat.completions.create(model="relayed-echo", messages=CHAT, n=100)
    assert info.value.status_code == 400
    assert info.value.param == "n"  # the upstream's own judgement, carried over


def test_upstream_down_is_502_quickly(gateway: ServerProcess) -> None:
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        sdk(gateway).chat.completions.create(model="down", messages=CHAT)
    assert info.value.status_code == 502
    assert info.value.code == "upstream_unreachable"
    assert time.monotonic() - started < 10


def test_upstream_key_is_not_logged(gateway: ServerProcess) -> None:
    sdk(gateway).chat.completions.create(model="relayed-echo", messages=CHAT, max_tokens=2)
    assert "sk-upstream-secret" not in gateway.logs()
