"""Serialisation with msgpack, a data format: never pickle.

Redis is shared, so whatever it holds must be treated as untrusted input. Pickle would turn a
poisoned Redis into code execution in every replica; msgpack can only ever produce data
(dicts, lists, strings, bytes, numbers), and bytes that do not decode are reported as
:class:`CorruptEntry` so the caller can treat them as a miss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack

__all__ = [
    "ENVELOPE_VERSION",
    "CorruptEntry",
    "decode_envelope",
    "encode_envelope",
    "pack_value",
    "unpack_value",
]

ENVELOPE_VERSION = 1

# Every error msgpack raises for malformed input is one of these (UnicodeDecodeError, ExtraData,
# FormatError and StackError are ValueErrors; unhashable map keys are TypeErrors).
_DECODE_ERRORS = (ValueError, TypeError, msgpack.UnpackException)


class CorruptEntry(ValueError):
    """Bytes read back from a tier are not something this cache wrote."""


def pack_value(value: Any) -> bytes:
    """Serialise a response value; ``TypeError`` if msgpack cannot represent it."""
    return msgpack.packb(value, use_bin_type=True)


def unpack_value(data: bytes) -> Any:
    """The value :func:`pack_value` wrote; :class:`CorruptEntry` for anything else."""
    try:
        # strict_map_key=False: values may legitimately use integer keys; map keys that
        # cannot be hashed (arrays decode to lists) still fail, as a TypeError.
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except _DECODE_ERRORS as exc:
        raise CorruptEntry(f"undecodable cache value: {exc}") from None


def encode_envelope(payload: bytes, tags: Sequence[str], model: str | None) -> bytes:
    """What is stored in Redis: the packed value with the tags and model it was stored under.

    The tags and model travel with the value so that a replica promoting it from Redis into
    its memory tiers can still find it when an invalidation by tag or model arrives.
    """
    return msgpack.packb([ENVELOPE_VERSION, list(tags), model, payload], use_bin_type=True)


def decode_envelope(data: bytes) -> tuple[bytes, tuple[str, ...], str | None]:
    """``(payload, tags, model)`` from :func:`encode_envelope`'s output; else :class:`CorruptEntry`.

    Only the envelope is checked here; the payload is decoded by :func:`unpack_value` when the
    value is served.
    """
    try:
        decoded = msgpack.unpackb(data, raw=False)
    except _DECODE_ERRORS as exc:
        raise CorruptEntry(f"undecodable cache envelope: {exc}") from None
    if not (isinstance(decoded, list) and len(decoded) == 4 and decoded[0] == ENVELOPE_VERSION):
        raise CorruptEntry("cache envelope has an unknown layout")
    _, tags, model, payload = decoded
    if not (
        isinstance(payload, bytes)
        and isinstance(tags, list)
        and all(isinstance(tag, str) for tag in tags)
        and (model is None or isinstance(model, str))
    ):
        raise CorruptEntry("cache envelope has fields of the wrong type")
    return payload, tuple(tags), model
