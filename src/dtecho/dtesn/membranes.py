"""Membrane structure of a DTESN: a rooted tree of reservoirs, their units and time constants.

The skin (root) membrane touches the environment; every other membrane sits inside its
parent. A structure comes either from an explicit tree in nested-parentheses form, or from
a depth d, where level k holds A000081(k) membranes (1, 1, 2, 4, 9, 20, 48, 115, …), the
j-th of them attached to membrane j mod A000081(k−1) of level k−1 (round robin).

Membranes are numbered breadth-first (level by level); that order is also the order of
their blocks in the state vector, so a parent always comes before its children and the
parent→child coupling is block lower-triangular.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import trees

__all__ = ["Membrane", "build_membranes", "membrane_layout", "split_units"]


@dataclass(frozen=True, slots=True)
class Membrane:
    """One membrane: a reservoir of ``units`` state variables.

    ``id`` is its breadth-first index; ``path`` the child indices from the skin (() for the
    skin); ``level`` 1 for the skin; ``parent`` the parent's id (None for the skin);
    ``start`` its first unit in the network state vector; ``tau`` its time constant in
    input-sampling intervals (the skin's is 1/leak_rate).
    """

    id: int
    path: tuple[int, ...]
    level: int
    parent: int | None
    units: int
    start: int
    tau: float

    @property
    def stop(self) -> int:
        """One past its last unit in the state vector."""
        return self.start + self.units

    def as_dict(self) -> dict[str, object]:
        """JSON-ready description (the path as a list)."""
        return {
            "id": self.id,
            "path": list(self.path),
            "level": self.level,
            "parent": self.parent,
            "units": self.units,
            "start": self.start,
            "tau": self.tau,
        }


def membrane_layout(
    depth: int | None = 1, tree: str | None = None
) -> list[tuple[tuple[int, ...], int, int | None]]:
    """(path, level, parent id) per membrane, breadth-first, from ``tree`` or else ``depth``."""
    if tree is not None:
        if not isinstance(tree, str):
            raise TypeError(f"tree must be a nested-parentheses string, got {type(tree).__name__}")
        ids: dict[tuple[int, ...], int] = {}
        layout: list[tuple[tuple[int, ...], int, int | None]] = []
        for node in trees.parse(tree).nodes():
            ids[node.path] = len(layout)
            parent = None if node.parent is None else ids[node.parent]
            layout.append((node.path, node.level, parent))
        return layout
    if depth is None or isinstance(depth, bool) or int(depth) != depth or depth < 1:
        raise ValueError(f"depth must be an integer >= 1 (or give a tree), got {depth!r}")
    layout = [((), 1, None)]
    previous = [0]  # ids on the level above
    n_children: dict[int, int] = {}
    for level in range(2, int(depth) + 1):
        current = []
        for j in range(trees.count(level)):
            parent = previous[j % len(previous)]
            k = n_children.get(parent, 0)
            n_children[parent] = k + 1
            current.append(len(layout))
            layout.append(((*layout[parent][0], k), level, parent))
        previous = current
    return layout


def split_units(units: int, n_membranes: int) -> list[int]:
    """Units per membrane: as equal as possible, the remainder one each to the earliest."""
    if isinstance(units, bool) or int(units) != units or units < 1:
        raise ValueError(f"units must be a positive integer, got {units!r}")
    if units < n_membranes:
        raise ValueError(
            f"units={units} is too small for {n_membranes} membranes: every membrane needs at "
            f"least one unit (use units >= {n_membranes}, or a smaller depth/tree)"
        )
    base, extra = divmod(int(units), n_membranes)
    return [base + (1 if i < extra else 0) for i in range(n_membranes)]


def build_membranes(
    units: int,
    *,
    depth: int | None = 1,
    tree: str | None = None,
    leak_rate: float = 0.3,
    tau_scaling: float = 1.0,
) -> tuple[Membrane, ...]:
    """The membranes of a network with ``units`` state variables in total.

    Time constants (in input-sampling intervals): τ = tau_scaling^(level−1) / leak_rate, so
    with the default tau_scaling = 1 every membrane leaks at ``leak_rate`` per sample, and
    tau_scaling > 1 makes each level slower than the one outside it.
    """
    if not 0.0 < leak_rate <= 1.0:
        raise ValueError(f"leak_rate must be in (0, 1], got {leak_rate}")
    if not tau_scaling > 0:
        raise ValueError(f"tau_scaling must be > 0, got {tau_scaling}")
    layout = membrane_layout(depth, tree)
    sizes = split_units(units, len(layout))
    out = []
    start = 0
    for i, ((path, level, parent), size) in enumerate(zip(layout, sizes, strict=True)):
        tau = float(tau_scaling) ** (level - 1) / float(leak_rate)
        out.append(Membrane(i, path, level, parent, size, start, tau))
        start += size
    return tuple(out)
