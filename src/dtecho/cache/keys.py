"""Cache keys: a SHA-256 of the canonical JSON of everything that changes a response."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["KEY_VERSION", "cache_key", "canonical_json", "check_namespace"]

KEY_VERSION = "v1"
"""Bumped when the key derivation changes, so old entries can never be read as new ones."""

# No ":": it separates the namespace from the rest of a key, so a namespace "a" must not be a
# prefix of another namespace's keys ("a:b:…"), or clearing "a" would reach into "a:b".
_NAMESPACE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# Integral floats within this bound are written as integers: 2**53 is where doubles stop
# representing every integer, so beyond it "1e20" and the integer 10**20 are not the same value.
_EXACT_INTEGER_LIMIT = 2.0**53


def check_namespace(namespace: str) -> str:
    """Return ``namespace`` if it is a valid key prefix (the same rule as ``CacheSettings``)."""
    if not isinstance(namespace, str) or not _NAMESPACE.match(namespace):
        raise ValueError(
            f"cache namespace must be 1-64 characters of A-Z a-z 0-9 _ . - (got {namespace!r})"
        )
    return namespace


def _normalise(value: Any, path: str) -> Any:
    """Reduce ``value`` to JSON types with one spelling per value; reject what has none."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise ValueError(f"cache key parameter {path} is {value!r}: NaN/infinity refused")
        # 1 and 1.0 (or 0 and -0.0) ask for the same computation: give them one key.
        if value.is_integer() and abs(value) <= _EXACT_INTEGER_LIMIT:
            return int(value)
        return value  # json writes repr(), the shortest string that round-trips: stable
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"cache key parameter {path} has a non-string key {key!r}")
            out[key] = _normalise(item, f"{path}.{key}")
        return out
    if isinstance(value, (list, tuple)):
        return [_normalise(item, f"{path}[{index}]") for index, item in enumerate(value)]
    raise TypeError(
        f"cache key parameter {path} has type {type(value).__name__}; "
        "use None, bool, int, float, str, lists and string-keyed mappings"
    )


def canonical_json(value: Any) -> str:
    """One JSON text per value: sorted keys, no whitespace, integral floats as integers.

    Raises ``ValueError`` for NaN or infinity and ``TypeError`` for types JSON cannot hold
    unambiguously (sets, bytes, objects, non-string mapping keys).
    """
    return json.dumps(
        _normalise(value, "$"),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )


def cache_key(
    namespace: str,
    route: str,
    model: str | None,
    model_version: str | int | None,
    params: Mapping[str, Any],
) -> str:
    """The cache key of one request: ``"<namespace>:v1:<sha256 hex>"``.

    ``route`` names the operation (e.g. ``"/v1/dtesn/process"``), ``model`` and
    ``model_version`` the model that answers (a new version gives new keys, so entries of an
    old model are never served), ``params`` every request field that changes the output.
    Parameters in any order give the same key; any changed value gives a different key.
    """
    check_namespace(namespace)
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a mapping (got {type(params).__name__})")
    document = {"route": route, "model": model, "model_version": model_version, "params": params}
    digest = hashlib.sha256(canonical_json(document).encode("utf-8")).hexdigest()
    return f"{namespace}:{KEY_VERSION}:{digest}"
