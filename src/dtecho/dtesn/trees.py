"""Unlabelled rooted trees: counting, exact enumeration, canonical form, σ(t) and γ(t).

Butcher's notation: τ is the single node, and [t1 … tm] is the tree whose root has the
subtrees t1 … tm as children. Trees are written here as nested parentheses whose outermost
pair is the root::

    τ = "()"    [τ] = "(())"    [τ τ] = "(()())"    [τ [τ]] = "(()(()))"

Canonical form and order. Every tree has one canonical string: the children of each node
are written in ascending tree order. Trees are totally ordered by ``(order, code)``, where
``code`` is the canonical string with "(" read as 1 and ")" as 0. Among trees of one order
the bushy tree [τ … τ] therefore comes first and the tall tree [[…[τ]…]] last; for order 4
the sequence is [τ τ τ], [τ [τ]], [[τ τ]], [[[τ]]], the order of Butcher's tables.
Equality is isomorphism, because isomorphic trees share their canonical string.

Levels: the root is level 1 (the skin membrane of a DTESN), so ``height`` counts levels and
the single node τ has height 1.
"""

from __future__ import annotations

import builtins
import itertools
import math
import operator
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any, NoReturn

__all__ = ["RootedTree", "TreeNode", "count", "enumerate", "enumerate_trees", "parse"]

# "(" > ")" in the ordering key, which puts bushy trees before tall ones (see module doc).
_CODE = str.maketrans("()", "10")
_sort_key = operator.attrgetter("_key")


class RootedTree:
    """An immutable unlabelled rooted tree, compared and hashed up to isomorphism.

    ``RootedTree()`` is τ; ``RootedTree([t1, …, tm])`` is [t1 … tm] (children in any order).
    Use :func:`parse` to build a tree from its nested-parentheses string.
    """

    __slots__ = (
        "_children",
        "_density",
        "_hash",
        "_height",
        "_key",
        "_order",
        "_string",
        "_symmetry",
    )

    def __init__(self, children: Iterable[RootedTree] = ()) -> None:
        if isinstance(children, str):
            raise TypeError("RootedTree() takes child trees; use trees.parse() for a string")
        kids = tuple(children)
        for kid in kids:
            if not isinstance(kid, RootedTree):
                raise TypeError(f"children must be RootedTree, got {type(kid).__name__}")
        self._init(tuple(sorted(kids, key=_sort_key)))

    @classmethod
    def _from_sorted(cls, kids: tuple[RootedTree, ...]) -> RootedTree:
        """Build from children already in canonical order (skips the sort)."""
        tree = object.__new__(cls)
        tree._init(kids)
        return tree

    def _init(self, kids: tuple[RootedTree, ...]) -> None:
        order = 1 + sum(kid._order for kid in kids)
        string = "(" + "".join(kid._string for kid in kids) + ")"
        # σ: automorphisms of each child, times every permutation of identical siblings
        # (identical siblings are adjacent because the children are sorted).
        symmetry = math.prod(kid._symmetry for kid in kids)
        for _, group in itertools.groupby(kids, key=_sort_key):
            symmetry *= math.factorial(sum(1 for _ in group))
        setter = object.__setattr__
        setter(self, "_children", kids)
        setter(self, "_order", order)
        setter(self, "_string", string)
        setter(self, "_key", (order, string.translate(_CODE)))
        setter(self, "_symmetry", symmetry)
        setter(self, "_density", order * math.prod(kid._density for kid in kids))
        setter(self, "_height", 1 + max((kid._height for kid in kids), default=0))
        setter(self, "_hash", hash(string))

    # -- read-only properties -------------------------------------------------------------

    @property
    def children(self) -> tuple[RootedTree, ...]:
        """The root's subtrees t1 … tm in canonical (ascending) order; () for τ."""
        return self._children

    @property
    def order(self) -> int:
        """|t|, the number of nodes."""
        return self._order

    @property
    def symmetry(self) -> int:
        """σ(t), the size of the automorphism group; σ([t1^k1 … tm^km]) = Π ki! σ(ti)^ki."""
        return self._symmetry

    @property
    def density(self) -> int:
        """γ(t), the product over all nodes of the order of the subtree rooted there."""
        return self._density

    @property
    def height(self) -> int:
        """The number of levels: τ has height 1, [τ] height 2 (the largest node level)."""
        return self._height

    @property
    def butcher(self) -> str:
        """Butcher's notation, e.g. ``"[τ [τ]]"`` for ``"(()(()))"`` and ``"τ"`` for ``"()"``."""
        out: list[str] = []
        s = self._string
        i = 0
        while i < len(s):
            if s[i] == ")":
                out.append("]")
                i += 1
                continue
            if out and out[-1] in ("τ", "]"):
                out.append(" ")  # a sibling follows a finished subtree
            if s[i + 1] == ")":
                out.append("τ")
                i += 2
            else:
                out.append("[")
                i += 1
        return "".join(out)

    def nodes(self) -> Iterator[TreeNode]:
        """Every node in breadth-first order (level by level, children in canonical order).

        The root has path (), level 1 and parent None; the node reached from the root by
        taking child i, then child j, has path (i, j), level 3 and parent (i,).
        """
        queue: deque[tuple[tuple[int, ...], int, tuple[int, ...] | None, RootedTree]]
        queue = deque([((), 1, None, self)])
        while queue:
            path, level, parent, subtree = queue.popleft()
            yield TreeNode(path=path, level=level, parent=parent, subtree=subtree)
            for i, kid in builtins.enumerate(subtree._children):
                queue.append(((*path, i), level + 1, path, kid))

    # -- identity, ordering, immutability -------------------------------------------------

    def __str__(self) -> str:
        return self._string

    def __repr__(self) -> str:
        return f"RootedTree({self._string!r})"

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RootedTree):
            return self._string == other._string
        return NotImplemented

    def __lt__(self, other: RootedTree) -> bool:
        if isinstance(other, RootedTree):
            return self._key < other._key
        return NotImplemented

    def __le__(self, other: RootedTree) -> bool:
        if isinstance(other, RootedTree):
            return self._key <= other._key
        return NotImplemented

    def __gt__(self, other: RootedTree) -> bool:
        if isinstance(other, RootedTree):
            return self._key > other._key
        return NotImplemented

    def __ge__(self, other: RootedTree) -> bool:
        if isinstance(other, RootedTree):
            return self._key >= other._key
        return NotImplemented

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        raise AttributeError("RootedTree is immutable")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError("RootedTree is immutable")

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (parse, (self._string,))

    def __copy__(self) -> RootedTree:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> RootedTree:
        return self


@dataclass(frozen=True, slots=True)
class TreeNode:
    """One node of a tree as seen from its root (see :meth:`RootedTree.nodes`).

    ``path`` lists the child indices taken from the root, ``level`` is 1 for the root,
    ``parent`` is the parent's path (None for the root) and ``subtree`` is the tree rooted
    at this node.
    """

    path: tuple[int, ...]
    level: int
    parent: tuple[int, ...] | None
    subtree: RootedTree


def parse(text: str) -> RootedTree:
    """Parse a nested-parentheses string, e.g. ``"(()(()))"`` = [τ [τ]].

    The outermost pair is the root and ``"()"`` is τ; children may appear in any order.
    Surrounding whitespace is ignored. Raises ValueError, naming the position (0-based, in
    ``text``), for an empty string, unbalanced parentheses, a second top-level tree or any
    character other than "(" and ")".
    """
    if not isinstance(text, str):
        raise TypeError(f"parse() expects a str, got {type(text).__name__}")
    offset = len(text) - len(text.lstrip())
    body = text.strip()
    if not body:
        raise ValueError("empty tree string: the smallest tree is '()'")
    open_at: list[int] = []
    stack: list[list[RootedTree]] = []
    root: RootedTree | None = None
    for i, ch in builtins.enumerate(body, start=offset):
        if ch not in "()":
            raise ValueError(
                f"unexpected character {ch!r} at position {i}: only '(' and ')' are allowed"
            )
        if root is not None and ch == ")":
            raise ValueError(f"unbalanced ')' at position {i}: there is no '(' to close")
        if root is not None:
            raise ValueError(
                f"second tree starts at position {i}: the root closed at position {i - 1}; "
                "a tree has exactly one outermost pair of parentheses"
            )
        if ch == "(":
            open_at.append(i)
            stack.append([])
            continue
        if not stack:
            raise ValueError(f"unbalanced ')' at position {i}: there is no '(' to close")
        open_at.pop()
        node = RootedTree(stack.pop())
        if stack:
            stack[-1].append(node)
        else:
            root = node
    if root is None:
        raise ValueError(
            f"unbalanced '(' at position {open_at[-1]}: {len(open_at)} parenthes"
            f"{'is' if len(open_at) == 1 else 'es'} never closed"
        )
    return root


def _check_n(n: int) -> int:
    if isinstance(n, bool):
        raise TypeError("n must be an int, not bool")
    n = operator.index(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return n


@cache
def count(n: int) -> int:
    """The number of unlabelled rooted trees with n nodes (OEIS A000081); count(0) == 0.

    Uses the recurrence a(m+1) = (1/m) Σ_{k=1..m} (Σ_{d|k} d·a(d)) · a(m−k+1), a(1) = 1,
    in exact integer arithmetic, so it works for any n >= 0 without enumerating trees.
    """
    n = _check_n(n)
    if n == 0:
        return 0
    a = [0, 1]  # a[m] = count(m)
    s = [0]  # s[k] = Σ_{d|k} d·a(d)
    for m in range(1, n):
        s.append(sum(d * a[d] for d in range(1, m + 1) if m % d == 0))
        a.append(sum(s[k] * a[m - k + 1] for k in range(1, m + 1)) // m)
    return a[n]


def enumerate(n: int) -> list[RootedTree]:
    """Every unlabelled rooted tree with n nodes, each exactly once, in ascending order.

    Returns a new list of length ``count(n)`` (empty for n == 0), sorted by the canonical
    order of the module docstring. Results are cached; n = 13 (12486 trees, together with
    all smaller orders) takes well under a second, and the cost grows about 3× per node.
    """
    n = _check_n(n)
    return list(_trees_of_order(n)) if n else []


enumerate_trees = enumerate


@cache
def _trees_of_order(n: int) -> tuple[RootedTree, ...]:
    if n == 1:
        return (RootedTree._from_sorted(()),)
    # A tree of order n is a root over a multiset of trees whose orders sum to n − 1. Each
    # multiset is generated once, as a non-decreasing run through the sorted pool.
    pool = tuple(itertools.chain.from_iterable(_trees_of_order(k) for k in range(1, n)))
    found = [RootedTree._from_sorted(kids) for kids in _forests(pool, n - 1, 0)]
    found.sort(key=_sort_key)
    return tuple(found)


def _forests(
    pool: tuple[RootedTree, ...], total: int, start: int
) -> Iterator[tuple[RootedTree, ...]]:
    """Ascending tuples of trees from ``pool[start:]`` (repeats allowed) of total order."""
    if total == 0:
        yield ()
        return
    for i in range(start, len(pool)):
        first = pool[i]
        if first._order > total:
            break  # the pool is sorted by order first
        for rest in _forests(pool, total - first._order, i):
            yield (first, *rest)
