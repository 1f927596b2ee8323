"""Membrane structure: levels from depth (A000081), explicit trees, unit split, time constants."""

from collections import Counter

import pytest

from dtecho.dtesn import DTESN
from dtecho.dtesn.membranes import build_membranes, membrane_layout, split_units


def test_depth_gives_a000081_membranes_per_level():
    mem = build_membranes(1000, depth=6)
    per_level = Counter(m.level for m in mem)
    assert [per_level[k] for k in range(1, 7)] == [1, 1, 2, 4, 9, 20]


def test_depth_parents_are_round_robin_on_the_level_above():
    mem = build_membranes(500, depth=5)
    for level in range(2, 6):
        here = [m for m in mem if m.level == level]
        above = [m.id for m in mem if m.level == level - 1]
        assert [m.parent for m in here] == [above[j % len(above)] for j in range(len(here))]
        for m in here:
            assert m.path[:-1] == mem[m.parent].path


def test_tree_string_gives_parents_levels_and_paths():
    mem = build_membranes(40, tree="(()(()))")
    assert [(m.path, m.level, m.parent) for m in mem] == [
        ((), 1, None),
        ((0,), 2, 0),
        ((1,), 2, 0),
        ((1, 0), 3, 2),
    ]


def test_tree_overrides_depth_and_reaches_the_model():
    model = DTESN(units=30, depth=4, tree="((())())")
    assert len(model.membranes) == 4
    assert sorted(m.level for m in model.membranes) == [1, 2, 2, 3]


def test_units_split_sums_to_total_and_is_as_equal_as_possible():
    sizes = split_units(103, 8)
    assert sum(sizes) == 103
    assert sizes == [13] * 7 + [12]
    mem = build_membranes(103, depth=4)
    assert sum(m.units for m in mem) == 103
    assert [m.start for m in mem] == [sum(sizes[:i]) for i in range(8)]
    assert mem[-1].stop == 103


def test_too_few_units_for_the_membranes_is_a_value_error():
    with pytest.raises(ValueError, match="too small for 8 membranes"):
        build_membranes(7, depth=4)
    with pytest.raises(ValueError, match="too small"):
        DTESN(units=3, depth=4).fit([[0.0]] * 20, [[0.0]] * 20, warmup=0)


def test_bad_structures_are_rejected():
    with pytest.raises(ValueError, match="depth"):
        membrane_layout(0)
    with pytest.raises(ValueError):
        membrane_layout(tree="(()")


def test_inner_membranes_are_slower_with_tau_scaling():
    mem = build_membranes(100, depth=3, leak_rate=0.5, tau_scaling=2.0)
    assert [m.tau for m in mem] == [2.0, 4.0, 8.0, 8.0]
    assert {m.tau for m in build_membranes(100, depth=3, leak_rate=0.5)} == {2.0}
