"""Cache keys: one key per distinct request, whatever order its parameters come in."""

import json
import subprocess
import sys

import pytest

from dtecho.cache import cache_key, canonical_json

BASE = {"input": "hello", "esn_size": 512, "temperature": 0.7, "options": {"a": 1, "b": [1, 2]}}


def key(params=BASE, *, route="/v1/dtesn/process", model="dtesn-echo", version="3"):
    return cache_key("ns", route, model, version, params)


def test_key_is_namespace_version_and_sha256_hex():
    prefix, version, digest = key().split(":")
    assert (prefix, version) == ("ns", "v1")
    assert len(digest) == 64 and int(digest, 16) >= 0


def test_same_params_in_any_order_give_the_same_key():
    shuffled = {"options": {"b": [1, 2], "a": 1}, "temperature": 0.7, "esn_size": 512}
    shuffled["input"] = "hello"
    assert key(shuffled) == key(BASE)


@pytest.mark.parametrize(
    "change",
    [
        {"input": "hello!"},
        {"esn_size": 513},
        {"temperature": 0.7000000000000001},
        {"options": {"a": 1, "b": [2, 1]}},
        {"options": {"a": 1, "b": [1, 2], "c": None}},
        {"extra": False},
    ],
)
def test_any_changed_parameter_changes_the_key(change):
    assert key({**BASE, **change}) != key(BASE)


def test_model_version_route_and_namespace_are_part_of_the_key():
    assert key(version="4") != key()
    assert key(model="other") != key()
    assert key(route="/v1/embeddings") != key()
    assert cache_key("other", "/v1/dtesn/process", "dtesn-echo", "3", BASE) != key()


def test_integral_floats_and_integers_share_a_key_but_bools_do_not():
    assert key({"t": 0}) == key({"t": 0.0}) == key({"t": -0.0})
    assert key({"t": 1}) != key({"t": True})
    assert key({"xs": (1, 2)}) == key({"xs": [1, 2]})


def test_canonical_json_is_compact_sorted_and_stable():
    assert canonical_json({"b": 0.1, "a": [1.5, "é"]}) == '{"a":[1.5,"é"],"b":0.1}'
    assert json.loads(canonical_json({"x": 1e-300})) == {"x": 1e-300}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_infinity_are_refused(bad):
    with pytest.raises(ValueError, match="NaN"):
        key({"temperature": bad})


@pytest.mark.parametrize("bad", [{1, 2}, b"bytes", object(), {1: "non-string key"}])
def test_ambiguous_types_are_refused(bad):
    with pytest.raises(TypeError):
        key({"p": bad})


@pytest.mark.parametrize("namespace", ["", "has space", "x" * 65, "glob*", "a:b"])
def test_bad_namespaces_are_refused(namespace):
    with pytest.raises(ValueError, match="namespace"):
        cache_key(namespace, "/r", None, None, {})


def test_the_cache_package_imports_nothing_from_the_web_stack():
    code = (
        "import json, sys\nimport dtecho.cache\n"
        "print(json.dumps([m for m in ('fastapi', 'starlette', 'uvicorn', 'httpx')"
        " if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
