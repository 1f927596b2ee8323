"""Rooted trees: counts, enumeration, canonical form, σ, γ and parsing, against known truths."""

from __future__ import annotations

import copy
import itertools
import math
import pickle
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtecho.dtesn import trees
from dtecho.dtesn.trees import RootedTree

# OEIS A000081, n = 0 … 20.
A000081 = [
    0, 1, 1, 2, 4, 9, 20, 48, 115, 286, 719, 1842, 4766, 12486, 32973, 87811, 235381,
    634847, 1721159, 4688676, 12826228,
]  # fmt: skip


def bushy(n: int) -> str:
    return "(" + "()" * (n - 1) + ")"


def tall(n: int) -> str:
    return "(" * n + ")" * n


# -- counting and enumeration -------------------------------------------------------------


def test_count_matches_a000081_for_n_up_to_20() -> None:
    assert [trees.count(n) for n in range(len(A000081))] == A000081


def test_count_and_enumerate_reject_negative_n() -> None:
    with pytest.raises(ValueError):
        trees.count(-1)
    with pytest.raises(ValueError):
        trees.enumerate(-1)


def test_enumerate_zero_is_empty() -> None:
    assert trees.enumerate(0) == []


@pytest.mark.parametrize("n", range(1, 14))
def test_enumerate_lists_every_tree_once(n: int) -> None:
    found = trees.enumerate(n)
    assert len(found) == A000081[n]
    assert len({str(t) for t in found}) == len(found)
    assert all(t.order == n for t in found)
    assert found == sorted(found)


def test_enumerate_order_four_is_bushy_first_tall_last() -> None:
    assert [str(t) for t in trees.enumerate(4)] == ["(()()())", "(()(()))", "((()()))", "(((())))"]
    assert [t.butcher for t in trees.enumerate(4)] == ["[τ τ τ]", "[τ [τ]]", "[[τ τ]]", "[[[τ]]]"]


def test_enumerate_returns_a_fresh_list() -> None:
    trees.enumerate(3).clear()
    assert len(trees.enumerate(3)) == 2


def _labelled_tree(parent: tuple[int, ...]) -> RootedTree:
    """The tree of a parent map on nodes 1 … n−1 (node 0 is the root)."""
    kids: dict[int, list[int]] = {}
    for child, par in enumerate(parent, start=1):
        kids.setdefault(par, []).append(child)

    def build(node: int) -> RootedTree:
        return RootedTree(build(k) for k in kids.get(node, []))

    return build(0)


def _is_acyclic(parent: tuple[int, ...]) -> bool:
    for start in range(1, len(parent) + 1):
        node, steps = start, 0
        while node != 0:
            node = parent[node - 1]
            steps += 1
            if steps > len(parent):
                return False
    return True


@pytest.mark.parametrize("n", range(2, 7))
def test_symmetry_and_completeness_against_brute_force_labellings(n: int) -> None:
    # Each unlabelled tree t has (n−1)!/σ(t) labellings with the root labelled 0. Counting
    # every labelled tree (all acyclic parent maps) checks σ and that enumerate misses none.
    classes = Counter(
        _labelled_tree(p)
        for p in itertools.product(range(n), repeat=n - 1)
        if all(p[i] != i + 1 for i in range(n - 1)) and _is_acyclic(p)
    )
    assert sum(classes.values()) == n ** (n - 2)  # Cayley
    assert set(classes) == set(trees.enumerate(n))
    for tree, labellings in classes.items():
        assert tree.symmetry * labellings == math.factorial(n - 1), str(tree)


# -- σ and γ ------------------------------------------------------------------------------


@pytest.mark.parametrize("n", range(1, 10))
def test_labelled_rooted_trees_sum_to_cayley(n: int) -> None:
    # n!/σ(t) labelled versions of each t; n^(n−1) labelled rooted trees in all.
    assert sum(math.factorial(n) // t.symmetry for t in trees.enumerate(n)) == n ** (n - 1)


@pytest.mark.parametrize("n", range(1, 10))
def test_increasing_labellings_sum_to_n_minus_one_factorial(n: int) -> None:
    # n!/(σ(t)γ(t)) heap-ordered labellings of t; (n−1)! recursive trees in all.
    total = sum(math.factorial(n) // (t.symmetry * t.density) for t in trees.enumerate(n))
    assert total == math.factorial(n - 1)


@pytest.mark.parametrize("n", range(2, 12))
def test_planted_trees_correspond_to_trees_one_smaller(n: int) -> None:
    planted = [t for t in trees.enumerate(n) if len(t.children) == 1]
    assert [t.children[0] for t in planted] == trees.enumerate(n - 1)


@pytest.mark.parametrize(
    ("text", "sigma", "gamma"),
    [
        ("()", 1, 1),
        ("(())", 1, 2),
        ("(()())", 2, 3),
        ("((()))", 1, 6),
        ("(()(()))", 1, 8),
        ("((()()))", 2, 12),
        ("((())(()))", 2, 20),
        ("(()()(()))", 2, 10),
        ("((()())(()()))", 8, 63),
    ],
)
def test_symmetry_and_density_of_small_trees(text: str, sigma: int, gamma: int) -> None:
    tree = trees.parse(text)
    assert (tree.symmetry, tree.density) == (sigma, gamma)


@pytest.mark.parametrize("n", range(1, 10))
def test_bushy_and_tall_trees(n: int) -> None:
    b, t = trees.parse(bushy(n)), trees.parse(tall(n))
    assert (b.symmetry, b.density, b.height) == (math.factorial(n - 1), n, min(n, 2))
    assert (t.symmetry, t.density, t.height) == (1, math.factorial(n), n)
    assert trees.enumerate(n)[0] == b
    assert trees.enumerate(n)[-1] == t


# -- structure ----------------------------------------------------------------------------


def test_nodes_are_breadth_first_with_paths_levels_and_parents() -> None:
    tree = trees.parse("(()(()))")
    rows = [(n.path, n.level, n.parent, str(n.subtree)) for n in tree.nodes()]
    assert rows == [
        ((), 1, None, "(()(()))"),
        ((0,), 2, (), "()"),
        ((1,), 2, (), "(())"),
        ((1, 0), 3, (1,), "()"),
    ]
    assert tree.height == 3
    assert trees.parse("()").height == 1


@pytest.mark.parametrize("n", range(1, 8))
def test_nodes_cover_every_node_once_and_levels_never_decrease(n: int) -> None:
    for tree in trees.enumerate(n):
        nodes = list(tree.nodes())
        assert len(nodes) == tree.order
        assert len({node.path for node in nodes}) == tree.order
        assert [node.level for node in nodes] == sorted(node.level for node in nodes)
        assert max(node.level for node in nodes) == tree.height
        assert all(node.level == len(node.path) + 1 for node in nodes)


def test_constructor_sorts_children_and_equality_is_isomorphism() -> None:
    tau = RootedTree()
    assert str(tau) == "()"
    t1 = RootedTree([RootedTree([tau]), tau])
    t2 = RootedTree([tau, RootedTree([tau])])
    assert t1 == t2 == trees.parse("((())())")
    assert hash(t1) == hash(t2)
    assert str(t1) == "(()(()))"
    assert t1.children == (tau, RootedTree([tau]))
    assert len({t1, t2, trees.parse("(()(()))")}) == 1


def test_trees_are_immutable_and_pickle_and_copy_to_equal_trees() -> None:
    tree = trees.parse("(()(()))")
    with pytest.raises(AttributeError):
        tree._order = 7  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(tree)) == tree
    assert copy.deepcopy(tree) is tree


def test_constructor_rejects_strings_and_non_trees() -> None:
    with pytest.raises(TypeError, match="parse"):
        RootedTree("(())")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        RootedTree([1])  # type: ignore[list-item]


def test_ordering_is_by_order_first() -> None:
    assert trees.parse(tall(3)) < trees.parse(bushy(4))
    assert sorted([trees.parse("(())"), trees.parse("()")]) == [
        trees.parse("()"),
        trees.parse("(())"),
    ]


# -- parsing ------------------------------------------------------------------------------

Nested = tuple["Nested", ...]
nested_trees = st.recursive(
    st.just(()), lambda kids: st.lists(kids, max_size=4).map(tuple), max_leaves=25
)


def render(node: Nested) -> str:
    return "(" + "".join(render(kid) for kid in node) + ")"


def shuffled(node: Nested, rnd: random.Random) -> Nested:
    kids = [shuffled(kid, rnd) for kid in node]
    rnd.shuffle(kids)
    return tuple(kids)


def size_and_density(node: Nested) -> tuple[int, int]:
    parts = [size_and_density(kid) for kid in node]
    size = 1 + sum(s for s, _ in parts)
    return size, size * math.prod(g for _, g in parts)


def depth(node: Nested) -> int:
    return 1 + max((depth(kid) for kid in node), default=0)


@settings(deadline=None, max_examples=150)
@given(nested_trees, st.randoms(use_true_random=False))
def test_canonical_string_is_invariant_under_child_order_and_round_trips(
    node: Nested, rnd: random.Random
) -> None:
    tree = trees.parse(render(node))
    other = trees.parse(render(shuffled(node, rnd)))
    assert str(tree) == str(other)
    assert tree == other
    assert tree.symmetry == other.symmetry
    assert trees.parse(str(tree)) == tree
    assert str(trees.parse(str(tree))) == str(tree)
    assert (tree.order, tree.density) == size_and_density(node)
    assert tree.height == depth(node)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("(", "unbalanced '\\(' at position 0"),
        ("(()", "unbalanced '\\(' at position 0"),
        (")", "unbalanced '\\)' at position 0"),
        ("())", "unbalanced '\\)' at position 2"),
        ("()()", "second tree starts at position 2"),
        ("(a)", "unexpected character 'a' at position 1"),
        ("(() ())", "unexpected character ' ' at position 3"),
        ("[]", "unexpected character '\\[' at position 0"),
    ],
)
def test_parse_rejects_malformed_strings(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        trees.parse(text)


def test_parse_ignores_surrounding_whitespace_and_reports_positions_in_the_input() -> None:
    assert trees.parse("  (()) \n") == trees.parse("(())")
    with pytest.raises(ValueError, match="position 4"):
        trees.parse("  ()x")


def test_parse_rejects_non_strings() -> None:
    with pytest.raises(TypeError):
        trees.parse(b"()")  # type: ignore[arg-type]


def test_parse_handles_deep_trees_without_recursion() -> None:
    assert trees.parse(tall(5000)).height == 5000
