"""Sticky assignment: GrowthBook's hash v2, weighted splits, stability, ramps, sampling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import unicodedata
from collections import Counter
from pathlib import Path

import pytest

from dtecho.registry.assignment import (
    assign,
    bucket,
    fnv1a32,
    in_sample,
    variant_ranges,
)

UNITS = [f"user-{i}" for i in range(10_000)]

# GrowthBook's shared SDK test vectors for hash version 2 (packages/sdk-js/test/cases.json,
# "hash"), plus two buckets from its feature cases ("experiment"/"holdout" keys, id "1").
GROWTHBOOK_V2 = [
    ("seed", "a", 0.0505),
    ("seed", "b", 0.2696),
    ("foo", "ab", 0.2575),
    ("foo", "def", 0.2019),
    ("89123klj", "8952klfjas09ujkasdf", 0.124),
    ("90850943850283058242805", "123", 0.7516),
    ("()**(%$##$%#$#", '___)((*":&', 0.0128),
    ("experiment", "1", 0.4413),
    ("holdout", "1", 0.8043),
]


def _reference_fnv1a32(data: bytes) -> int:
    # Written from the FNV definition, independently of the module: XOR a byte, multiply.
    h = 2166136261
    for b in data:
        h ^= b
        h = (h * 16777619) % 2**32
    return h


@pytest.mark.parametrize(
    ("data", "expected"), [(b"", 0x811C9DC5), (b"a", 0xE40C292C), (b"foobar", 0xBF9CF968)]
)
def test_fnv1a32_known_answers(data: bytes, expected: int) -> None:
    assert fnv1a32(data) == expected


@pytest.mark.parametrize(("seed", "unit", "expected"), GROWTHBOOK_V2)
def test_bucket_is_growthbook_hash_v2(seed: str, unit: str, expected: float) -> None:
    assert bucket(seed, unit) == expected


def test_bucket_hashes_utf8_bytes_without_normalising() -> None:
    unit = "user-é-日本"
    inner = _reference_fnv1a32(("exp" + unit).encode("utf-8"))
    expected = (_reference_fnv1a32(str(inner).encode()) % 10_000) / 10_000
    assert bucket("exp", unit) == expected
    # Ids are opaque: the composed and decomposed "é" are different byte strings.
    nfc, nfd = unicodedata.normalize("NFC", "é"), unicodedata.normalize("NFD", "é")
    assert nfc != nfd
    assert bucket("exp", nfc) != bucket("exp", nfd)
    with pytest.raises(ValueError, match="Unicode"):
        bucket("exp", "\ud800")


def test_buckets_are_uniform_over_ten_thousand_values() -> None:
    values = [bucket("uniformity", u) for u in UNITS]
    assert all(0.0 <= b < 1.0 and abs(b * 10_000 - round(b * 10_000)) < 1e-6 for b in values)
    deciles = Counter(int(b * 10) for b in values)
    assert all(abs(deciles[d] - 1000) < 110 for d in range(10)), deciles  # ~3.5 sd


@pytest.mark.parametrize(
    "weights",
    [
        [("control", 0.7), ("candidate", 0.3)],
        [("control", 70), ("candidate", 30)],
        [("a", 0.5), ("b", 0.25), ("c", 0.25)],
    ],
)
def test_split_lands_within_two_percent_of_weights(weights: list[tuple[str, float]]) -> None:
    counts = Counter(assign("split-test", u, weights) for u in UNITS)
    total = sum(w for _, w in weights)
    for name, w in weights:
        assert abs(counts[name] / len(UNITS) - w / total) <= 0.02, counts


def test_same_unit_same_variant_every_time() -> None:
    weights = [("a", 0.5), ("b", 0.25), ("c", 0.25)]
    first = [assign("sticky", u, weights) for u in UNITS[:500]]
    again = [assign("sticky", u, weights) for u in UNITS[:500]]
    assert first == again


def test_same_unit_same_variant_in_another_process() -> None:
    weights = [("a", 0.5), ("b", 0.25), ("c", 0.25)]
    units = [*UNITS[:1000], "ünïcode-ユーザー", "x" * 500]
    here = [assign("cross-process", u, weights) for u in units]
    code = (
        "import json, sys\n"
        "from dtecho.registry.assignment import assign\n"
        "units, weights = json.load(sys.stdin)\n"
        "print(json.dumps([assign('cross-process', u, [tuple(w) for w in weights])"
        " for u in units]))\n"
    )
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": src}
    out = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps([units, weights]),
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    assert json.loads(out.stdout) == here


def test_raising_the_last_variant_keeps_its_units_and_moves_only_the_difference() -> None:
    before = {u: assign("ramp", u, [("a", 0.9), ("b", 0.1)]) for u in UNITS}
    after = {u: assign("ramp", u, [("a", 0.8), ("b", 0.2)]) for u in UNITS}
    assert all(after[u] == "b" for u in UNITS if before[u] == "b")
    moved = [u for u in UNITS if before[u] != after[u]]
    assert all(before[u] == "a" and after[u] == "b" for u in moved)
    assert abs(len(moved) / len(UNITS) - 0.10) <= 0.01
    # Exactly the units whose bucket lies in the range that changed hands.
    assert set(moved) == {u for u in UNITS if 0.8 <= bucket("ramp", u) < 0.9}
    # Lowering it back is the exact inverse.
    assert {u: assign("ramp", u, [("a", 0.9), ("b", 0.1)]) for u in UNITS} == before


def test_ramping_the_last_of_three_keeps_its_units() -> None:
    before = {u: assign("ramp3", u, [("a", 0.45), ("b", 0.45), ("c", 0.1)]) for u in UNITS}
    after = {u: assign("ramp3", u, [("a", 0.4), ("b", 0.4), ("c", 0.2)]) for u in UNITS}
    assert all(after[u] == "c" for u in UNITS if before[u] == "c")
    # Documented: the ranges before it shift too, so some a-units become b-units.
    assert any(before[u] == "a" and after[u] == "b" for u in UNITS)


def test_a_zero_weight_variant_gets_no_units_and_moves_nobody() -> None:
    two = [("a", 0.5), ("b", 0.5)]
    three = [*two, ("c", 0.0)]
    assert all(assign("zero", u, two) == assign("zero", u, three) for u in UNITS[:2000])
    assert variant_ranges(three)[-1] == ("c", 1.0, 1.0)


def test_ranges_are_whole_buckets_from_zero_to_one() -> None:
    assert variant_ranges([("a", 0.1), ("b", 0.2), ("c", 0.7)]) == [
        ("a", 0.0, 0.1),
        ("b", 0.1, 0.3),
        ("c", 0.3, 1.0),
    ]
    thirds = variant_ranges([("a", 1), ("b", 1), ("c", 1)])
    assert [r[2] for r in thirds] == [0.3333, 0.6667, 1.0]


def test_seed_defaults_to_the_key_and_a_new_seed_reshuffles() -> None:
    weights = [("a", 0.5), ("b", 0.5)]
    units = UNITS[:2000]
    assert all(assign("k", u, weights) == assign("other", u, weights, seed="k") for u in units)
    changed = sum(assign("k", u, weights) != assign("k", u, weights, seed="k2") for u in units)
    assert 0.4 < changed / len(units) < 0.6


def test_in_sample_share_monotone_and_independent_of_the_split() -> None:
    weights = [("control", 0.7), ("candidate", 0.3)]
    variant = {u: assign("shadow-exp", u, weights) for u in UNITS}
    sampled = {u for u in UNITS if in_sample("shadow-exp", u, 0.2)}
    assert abs(len(sampled) / len(UNITS) - 0.2) <= 0.02
    for name in ("control", "candidate"):
        members = [u for u in UNITS if variant[u] == name]
        share = sum(u in sampled for u in members) / len(members)
        assert abs(share - 0.2) <= 0.03, (name, share)
    wider = {u for u in UNITS if in_sample("shadow-exp", u, 0.3)}
    assert sampled <= wider
    assert not any(in_sample("shadow-exp", u, 0.0) for u in UNITS[:1000])
    assert all(in_sample("shadow-exp", u, 1.0) for u in UNITS[:1000])


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        ([], "empty"),
        ([("a", -0.1), ("b", 1.1)], "negative"),
        ([("a", float("nan")), ("b", 1)], "not finite"),
        ([("a", float("inf")), ("b", 1)], "not finite"),
        ([("a", 0), ("b", 0.0)], "sum to 0"),
        ([("a", 0.5), ("a", 0.5)], "more than once"),
        ([("", 1.0)], "non-empty string"),
        ([(3, 1.0)], "non-empty string"),
        ([("a", "0.5")], "not a number"),
        ([("a", True)], "not a number"),
        ([("a", 0.5, 1)], "pair"),
        ("ab", "sequence"),
    ],
)
def test_invalid_variants_raise_value_error_naming_the_problem(
    variants: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        assign("exp", "user-1", variants)  # type: ignore[arg-type]


def test_invalid_ids_and_shares() -> None:
    with pytest.raises(ValueError, match="experiment_key is empty"):
        assign("", "u", [("a", 1)])
    with pytest.raises(ValueError, match="unit is empty"):
        assign("e", "", [("a", 1)])
    with pytest.raises(TypeError, match="unit must be a string"):
        assign("e", 42, [("a", 1)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed is empty"):
        assign("e", "u", [("a", 1)], seed="")
    for share in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"share must be in \[0, 1\]"):
            in_sample("e", "u", share)
    with pytest.raises(ValueError, match="share is not a number"):
        in_sample("e", "u", "0.5")  # type: ignore[arg-type]
