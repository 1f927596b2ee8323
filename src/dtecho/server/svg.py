"""Inline SVG for server-rendered pages: the membrane tree, magnitude bars and line plots.

Only numbers and fixed markup are produced here; any text goes through Jinja2's escaping.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["LinePlot", "TimeChart", "TreeLayout", "line_plot", "time_chart", "tree_layout"]


@dataclass
class TreeLayout:
    """Node positions and edges of a membrane tree, for an SVG of ``width`` × ``height``."""

    width: int
    height: int
    nodes: list[dict[str, Any]]
    edges: list[tuple[float, float, float, float]]


def tree_layout(membranes: Sequence[dict[str, Any]], width: int = 640) -> TreeLayout:
    """Membranes laid out by level (rows), in breadth-first order within a level."""
    levels: dict[int, list[dict[str, Any]]] = {}
    for membrane in membranes:
        levels.setdefault(membrane["level"], []).append(membrane)
    row_height = 70
    height = row_height * len(levels) + 20
    peak = max((m.get("mean_abs_activation", 0.0) for m in membranes), default=0.0) or 1.0
    positions: dict[int, tuple[float, float]] = {}
    nodes = []
    for level, row in sorted(levels.items()):
        y = 30 + (level - 1) * row_height
        for index, membrane in enumerate(row):
            x = width * (index + 1) / (len(row) + 1)
            positions[membrane["id"]] = (x, y)
            strength = membrane.get("mean_abs_activation", 0.0) / peak
            radius = 6 + 10 * strength if len(row) < 40 else 4
            nodes.append({**membrane, "x": x, "y": y, "r": radius, "shade": 0.25 + 0.75 * strength})
    edges = [
        (*positions[m["parent"]], *positions[m["id"]])
        for m in membranes
        if m.get("parent") is not None and m["parent"] in positions
    ]
    return TreeLayout(width, height, nodes, edges)


@dataclass
class LinePlot:
    """Polylines scaled into a ``width`` × ``height`` box, with the value range."""

    width: int
    height: int
    series: list[dict[str, str]]
    low: float
    high: float


def line_plot(series: dict[str, Sequence[float]], width: int = 640, height: int = 220) -> LinePlot:
    """Named series as SVG polyline ``points`` strings sharing one scale."""
    values = [v for points in series.values() for v in points]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    span = (high - low) or 1.0
    pad = 10
    lines = []
    for name, points in series.items():
        count = max(len(points) - 1, 1)
        coords = " ".join(
            f"{pad + (width - 2 * pad) * i / count:.1f},"
            f"{height - pad - (height - 2 * pad) * (v - low) / span:.1f}"
            for i, v in enumerate(points)
        )
        lines.append({"name": name, "points": coords})
    return LinePlot(width, height, lines, low, high)


@dataclass
class TimeChart:
    """Time series over a fixed window as polylines (gaps where a value is missing), with a
    y axis from 0 to ``high`` and the window's extent in seconds."""

    width: int
    height: int
    series: list[dict[str, Any]]  # name, segments: polyline ``points`` strings
    high: float
    window_seconds: float
    empty: bool


def time_chart(
    at: Sequence[float],
    series: dict[str, Sequence[float | None]],
    *,
    now: float,
    window_seconds: float = 3600.0,
    width: int = 640,
    height: int = 160,
) -> TimeChart:
    """Series sampled at the times ``at`` (seconds), placed on the window ending at ``now``.

    The y axis starts at 0 (rates, latencies and ratios are never negative), so two charts
    of the same quantity read alike; ``None`` values break the line instead of being drawn
    as zero.
    """
    values = [v for points in series.values() for v in points if v is not None]
    high = max(values, default=0.0) or 1.0
    pad = 8
    start = now - window_seconds
    lines = []
    for name, points in series.items():
        segments: list[str] = []
        current: list[str] = []
        for t, v in zip(at, points, strict=True):
            if v is None or t < start:
                if current:
                    segments.append(" ".join(current))
                    current = []
                continue
            x = pad + (width - 2 * pad) * (t - start) / window_seconds
            y = height - pad - (height - 2 * pad) * v / high
            current.append(f"{x:.1f},{y:.1f}")
        if current:
            segments.append(" ".join(current))
        lines.append({"name": name, "segments": segments})
    return TimeChart(width, height, lines, high, window_seconds, empty=not values)
