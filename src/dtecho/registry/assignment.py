"""Sticky assignment of units (users, sessions, API keys) to experiment variants.

A unit's variant is a pure function of the experiment, the unit and the weights: no state,
no randomness, the same answer in every process and on every machine, so a user keeps their
variant across requests, restarts and replicas without anything being stored.

The hash
--------
:func:`bucket` is GrowthBook's ``hash`` version 2 (``packages/sdk-js/src/util.ts`` in
github.com/growthbook/growthbook; its SDKs share the test vectors in
``packages/sdk-js/test/cases.json``, which the tests here reproduce)::

    bucket(seed, unit) = (fnv1a32(decimal(fnv1a32(utf8(seed + unit)))) mod 10000) / 10000

``fnv1a32`` is 32-bit FNV-1a (offset basis 2166136261, prime 16777619) over bytes;
``decimal(n)`` is the unsigned integer written in base 10 without leading zeros. The result
is one of the 10,000 values 0.0000, 0.0001, …, 0.9999. Hashing the decimal digits of the
first hash a second time is what version 2 adds over version 1: FNV-1a mixes only upward (a
multiply carries a change into higher bits, never lower ones), so the low bits of one hash,
which a ``mod`` reads, depend only on the low bits of the input's bytes, and version 1's ``mod
1000`` gave similar ids correlated buckets; the decimal digits of the first hash depend on all
its 32 bits. ``mod 10000`` of a 32-bit value favours the first 7,296 buckets by one part in
429,497 — nothing an experiment can see.

Text is hashed as UTF-8 bytes. GrowthBook's JavaScript SDK hashes UTF-16 code units and its
Python SDK code points, so the three agree exactly on ASCII (UUIDs, numeric ids, key ids) and
differ on other text; ours is the one that does not depend on a language's string type.

``seed`` defaults to the experiment key (as in GrowthBook). It is concatenated with the unit
without a separator, as GrowthBook does: experiment ``exp1`` with unit ``0`` hashes like
experiment ``exp`` with unit ``10``. Keys ending in a separator (``"latency-ab:"``) avoid
correlated assignments across experiments whose keys are prefixes of each other.

Variants and weights
--------------------
Weights are relative (``[("a", 70), ("b", 30)]`` equals ``[("a", 0.7), ("b", 0.3)]``) and
divided by their sum. Variant *i* owns the range ``[c(i-1), c(i))`` of the cumulative shares
``c``, in the order given (GrowthBook's bucket ranges at full coverage); a unit gets the
variant whose range holds its bucket. Consequences for changing weights:

* with two variants, moving traffic moves exactly the changed share and only in one
  direction: raising ``b`` from 10% to 20% moves the units in ``[0.8, 0.9)`` from ``a`` to
  ``b`` and every unit that was in ``b`` stays in ``b``;
* with more variants, changing a weight shifts the ranges of every variant listed after it,
  so put the variant you ramp up or down last, and add new variants at the end;
* a weight of 0 keeps a variant listed (and the ranges of the others in place) with no units.

Shares are resolved at bucket granularity, 1/10,000.

Shadow sampling
---------------
:func:`in_sample` decides which units' requests are mirrored to a shadow model, from a
bucket of the same hash under another seed (``"dtecho-sample/" + key``), so the sample is
independent of the split: a 10% sample takes about 10% of every variant. A unit in the
sample at share *s* is in it at every share above *s*.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

__all__ = [
    "SAMPLE_SALT",
    "assign",
    "bucket",
    "fnv1a32",
    "in_sample",
    "variant_ranges",
]

_FNV_OFFSET_BASIS = 0x811C9DC5
_FNV_PRIME = 0x01000193
_BUCKETS = 10_000

SAMPLE_SALT = "dtecho-sample/"
"""Prefix of the seed :func:`in_sample` hashes with, keeping it independent of the split."""


def fnv1a32(data: bytes) -> int:
    """The 32-bit FNV-1a hash of ``data``, as an unsigned integer."""
    h = _FNV_OFFSET_BASIS
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return h


def bucket(seed: str, unit: str) -> float:
    """GrowthBook hash v2 of ``seed + unit`` (UTF-8): a stable value in ``[0, 1)``.

    One of 0.0000, 0.0001, …, 0.9999; see the module docstring for the exact definition.
    Raises ``TypeError`` if either is not a string and ``ValueError`` if the text cannot be
    encoded as UTF-8 (a lone surrogate).
    """
    if not isinstance(seed, str) or not isinstance(unit, str):
        raise TypeError("seed and unit must be strings")
    return _index(seed, unit) / _BUCKETS


def variant_ranges(variants: Sequence[tuple[str, float]]) -> list[tuple[str, float, float]]:
    """Each variant's bucket range ``(name, start, end)``, start inclusive, end exclusive.

    The weights are validated and normalised to shares; the ranges are consecutive from 0.0
    to 1.0 in the order given, their boundaries whole buckets (multiples of 1/10,000, the
    cumulative share rounded to the nearest bucket), so a share of 0.3 ends at exactly
    0.3 and a variant with a positive weight below 1/20,000 of the total gets no bucket.
    Raises ``ValueError`` naming the problem: no variants, a name that is not a non-empty
    string or is repeated, a weight that is not a finite number ``>= 0``, or weights that
    sum to 0.
    """
    return [(name, start / _BUCKETS, end / _BUCKETS) for name, start, end in _ranges(variants)]


def _ranges(variants: Sequence[tuple[str, float]]) -> list[tuple[str, int, int]]:
    if isinstance(variants, str | bytes) or not isinstance(variants, Sequence):
        raise ValueError("variants must be a sequence of (name, weight) pairs")
    if len(variants) == 0:
        raise ValueError("variants is empty: an experiment needs at least one variant")
    names: list[str] = []
    weights: list[float] = []
    for item in variants:
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise ValueError(f"variant {item!r} is not a (name, weight) pair")
        name, weight = item
        if not isinstance(name, str) or not name:
            raise ValueError(f"variant name {name!r} is not a non-empty string")
        if name in names:
            raise ValueError(f"variant name {name!r} appears more than once")
        if isinstance(weight, bool) or not isinstance(weight, Real):
            raise ValueError(f"weight of variant {name!r} is not a number: {weight!r}")
        w = float(weight)
        if not math.isfinite(w):
            raise ValueError(f"weight of variant {name!r} is not finite: {w!r}")
        if w < 0:
            raise ValueError(f"weight of variant {name!r} is negative: {w!r}")
        names.append(name)
        weights.append(w)
    total = math.fsum(weights)
    if total <= 0:
        raise ValueError("weights sum to 0: at least one variant needs a positive weight")
    # Integer boundaries from exact partial sums: a share of 0.3 ends at bucket 3000, not at
    # a float running sum such as 0.30000000000000004, and the last range ends at 10,000.
    out: list[tuple[str, int, int]] = []
    start = 0
    for i, name in enumerate(names):
        end = round(math.fsum(weights[: i + 1]) / total * _BUCKETS)
        out.append((name, start, end))
        start = end
    return out


def _check_id(name: str, value: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} is empty")


def _index(seed: str, unit: str) -> int:
    try:
        data = (seed + unit).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"seed and unit must be valid Unicode text: {exc.reason}") from None
    return fnv1a32(str(fnv1a32(data)).encode("ascii")) % _BUCKETS


def assign(
    experiment_key: str,
    unit: str,
    variants: Sequence[tuple[str, float]],
    *,
    seed: str | None = None,
) -> str:
    """The variant of ``unit`` in the experiment: the one whose range holds its bucket.

    ``variants`` are ``(name, weight)`` pairs with relative weights (see
    :func:`variant_ranges`); ``seed`` (default: the experiment key) is what the unit is hashed
    with — give an experiment a new seed to reshuffle its units, keep it to keep them.
    Deterministic across processes and machines; never uses Python's ``hash()``. Raises
    ``ValueError`` for an empty key, unit or seed and for invalid variants, ``TypeError`` for
    ids that are not strings.
    """
    _check_id("experiment_key", experiment_key)
    _check_id("unit", unit)
    if seed is not None:
        _check_id("seed", seed)
    ranges = _ranges(variants)
    index = _index(experiment_key if seed is None else seed, unit)
    return next(name for name, _start, end in ranges if index < end)


def in_sample(key: str, unit: str, share: float, *, seed: str | None = None) -> bool:
    """Whether ``unit`` is in the ``share`` (0–1) of units sampled under ``key``.

    For shadow mirroring: the bucket of ``unit`` under the seed ``SAMPLE_SALT + (seed or
    key)`` is below ``share``. Independent of :func:`assign` under the same key; monotone in
    ``share`` (a unit sampled at 5% is sampled at 10%); ``share=0`` samples no unit and
    ``share=1`` every unit. Raises ``ValueError`` for an empty key, unit or seed and for a
    share that is not a number in ``[0, 1]``.
    """
    _check_id("key", key)
    _check_id("unit", unit)
    if seed is not None:
        _check_id("seed", seed)
    if isinstance(share, bool) or not isinstance(share, Real):
        raise ValueError(f"share is not a number: {share!r}")
    s = float(share)
    if not 0.0 <= s <= 1.0:
        raise ValueError(f"share must be in [0, 1], not {s!r}")
    return _index(SAMPLE_SALT + (key if seed is None else seed), unit) / _BUCKETS < s
