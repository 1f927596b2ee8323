"""Data quality: which new rows do not fit a model's training data.

A :class:`~dtecho.registry.reference.Reference` (re-exported here) is learned once from the
arrays a model was trained on (inputs and, optionally, targets). :func:`check_rows` then
screens new rows — say, data offered for
continuous learning — and returns a :class:`QualityReport` naming each row to quarantine and
why (``inputs[3][1]: 812.0 is outside the training range [-1.2, 1.4] widened by …``).

Three checks, in order: the schema (each row has as many values as the training data had
columns, and they are numbers), finiteness, and range. A value is out of range when it lies
outside the training range widened by ``margin`` × the column's interquartile range (a
:class:`RangeRule`). Starting from the training minimum and maximum makes the check free of
distributional assumptions: a fresh value from the training distribution falls beyond the
maximum of T training values with probability 1/(T + 1), whatever the distribution, and the
margin shrinks that further (see docs/lifecycle-drift.md).

Everything here is NumPy; the rule and the report round-trip through JSON-safe dicts
(``to_dict``/``from_dict``).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any, Literal

import numpy as np

from dtecho.registry.reference import FORMAT_VERSION, Profile, Reference, check_format_version

__all__ = [
    "Issue",
    "Profile",
    "QualityReport",
    "RangeRule",
    "Reference",
    "check_rows",
]

IssueKind = Literal["schema", "not_a_number", "non_finite", "out_of_range"]


@dataclass(frozen=True)
class RangeRule:
    """How far outside the training data a value may lie before it is flagged.

    The allowed interval of a column is [lo − w, hi + w] where (lo, hi) is the training
    range (``basis="range"``, the default) or the ``tail`` quantiles (``basis="quantiles"``,
    for training data that itself holds a few wild values), and w = ``margin`` × the
    column's IQR — or × (hi − lo) for a column whose IQR is 0, such as a mostly constant
    one. A relative slack of 1e-9 keeps rounding from flagging a column's own extremes.

    The default margin of 1.5 IQR (Tukey's, but applied beyond the extremes rather than the
    quartiles) keeps the normal tails of the training distribution: a Gaussian column is
    flagged beyond about ±6σ when T = 10⁴.
    """

    margin: float = 1.5
    basis: Literal["range", "quantiles"] = "range"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.margin) and self.margin >= 0):
            raise ValueError(f"margin must be a finite number >= 0, got {self.margin}")
        if self.basis not in ("range", "quantiles"):
            raise ValueError(f"basis must be 'range' or 'quantiles', got {self.basis!r}")

    def limits(self, profile: Profile) -> tuple[np.ndarray, np.ndarray]:
        """The allowed interval [lo, hi] of every column of ``profile``: two (width,)
        arrays."""
        bounds = self._bounds(profile)
        return bounds.lo, bounds.hi

    def _bounds(self, profile: Profile) -> _Bounds:
        if self.basis == "range":
            lo, hi = profile.minimum, profile.maximum
        else:
            lo, hi = profile.q_low, profile.q_high
        iqr = profile.iqr
        by_iqr = iqr > 0
        scale = np.where(by_iqr, iqr, hi - lo)
        slack = 1e-9 * np.maximum(1.0, np.maximum(np.abs(lo), np.abs(hi)))
        widen = self.margin * scale
        return _Bounds(self, profile, lo, hi, widen, by_iqr, lo - widen - slack, hi + widen + slack)

    def to_dict(self) -> dict[str, Any]:
        return {"margin": self.margin, "basis": self.basis}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RangeRule:
        return cls(margin=float(data["margin"]), basis=data["basis"])


@dataclass(frozen=True, eq=False)
class _Bounds:
    rule: RangeRule
    profile: Profile
    base_lo: np.ndarray
    base_hi: np.ndarray
    widen: np.ndarray
    by_iqr: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    def explain(self, value: float, column: int) -> str:
        j = column
        if self.rule.basis == "range":
            basis = "the training range"
        else:
            t = self.profile.tail * 100
            basis = f"the training {t:g}%–{100 - t:g}% quantile range"
        scale = "IQR" if self.by_iqr[j] else "range"
        return (
            f"{_num(value)} is outside {basis} [{_num(self.base_lo[j])}, "
            f"{_num(self.base_hi[j])}] widened by {self.rule.margin:g} × {scale} "
            f"({_num(self.widen[j])}) to [{_num(self.base_lo[j] - self.widen[j])}, "
            f"{_num(self.base_hi[j] + self.widen[j])}]"
        )


def _num(x: float) -> str:
    return f"{float(x):.6g}"


@dataclass(frozen=True)
class Issue:
    """One reason a row is anomalous: ``field`` is "inputs" or "targets", ``column`` is
    None for a problem with the whole row (schema)."""

    row: int
    field: str
    column: int | None
    kind: IssueKind
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "row": self.row,
            "field": self.field,
            "column": self.column,
            "kind": self.kind,
            "message": self.message,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Issue:
        column = data["column"]
        return cls(
            row=int(data["row"]),
            field=str(data["field"]),
            column=None if column is None else int(column),
            kind=data["kind"],
            message=str(data["message"]),
        )


@dataclass(frozen=True)
class QualityReport:
    """Which of ``n_rows`` rows are anomalous (to quarantine) and why.

    ``anomalous`` lists row indices in increasing order; ``issues`` holds at most
    ``max_issues`` of the reasons (ordered by row, inputs before targets, then column) and
    ``issues_left_off`` counts the rest. Every anomalous row has at least one issue unless
    issues were left off.
    """

    n_rows: int
    anomalous: tuple[int, ...]
    issues: tuple[Issue, ...]
    issues_left_off: int = 0

    @property
    def clean(self) -> tuple[int, ...]:
        """Indices of the rows that passed every check, in increasing order."""
        return tuple(int(i) for i in np.flatnonzero(self.clean_mask()))

    @property
    def ok(self) -> bool:
        """True when no row is anomalous."""
        return not self.anomalous

    def clean_mask(self) -> np.ndarray:
        """Boolean array of shape (n_rows,), True for clean rows (for indexing arrays)."""
        mask = np.ones(self.n_rows, dtype=bool)
        mask[list(self.anomalous)] = False
        return mask

    def reasons(self, row: int) -> list[str]:
        """The messages recorded for ``row`` (empty for a clean row)."""
        return [issue.message for issue in self.issues if issue.row == row]

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION,
            "n_rows": self.n_rows,
            "clean": list(self.clean),
            "anomalous": list(self.anomalous),
            "issues": [issue.to_dict() for issue in self.issues],
            "issues_left_off": self.issues_left_off,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QualityReport:
        check_format_version(data, "quality report")
        return cls(
            n_rows=int(data["n_rows"]),
            anomalous=tuple(int(i) for i in data["anomalous"]),
            issues=tuple(Issue.from_dict(d) for d in data["issues"]),
            issues_left_off=int(data.get("issues_left_off", 0)),
        )


def check_rows(
    reference: Reference,
    inputs: Any,
    targets: Any | None = None,
    *,
    rule: RangeRule | None = None,
    max_issues: int = 1000,
) -> QualityReport:
    """Screen new rows against ``reference``; see the module docstring for the checks.

    ``inputs`` (and ``targets``, checked only when given) are arrays or sequences of rows
    shaped like the training arrays: (n,) or (n, d). Sequences may be ragged or hold
    non-numbers (parsed JSON, say): such rows are reported, not raised. Raises ValueError
    when ``targets`` has a different number of rows than ``inputs``, or is given to a
    reference learned without targets.
    """
    rule = RangeRule() if rule is None else rule
    if max_issues < 0:
        raise ValueError(f"max_issues must be >= 0, got {max_issues}")
    n = _row_count(inputs, "inputs")
    fields: list[tuple[str, Profile, Any]] = [("inputs", reference.inputs, inputs)]
    if targets is not None:
        if reference.targets is None:
            raise ValueError("targets given, but the reference was learned without targets")
        if _row_count(targets, "targets") != n:
            raise ValueError(f"inputs has {n} rows but targets has {len(targets)}")
        fields.append(("targets", reference.targets, targets))

    bad = np.zeros(n, dtype=bool)
    streams: list[Iterator[Issue]] = []
    total = 0
    for field, profile, values in fields:
        field_bad, field_total, field_issues = _check_field(field, profile, values, n, rule)
        bad |= field_bad
        total += field_total
        streams.append(field_issues)
    order = {name: i for i, (name, _, _) in enumerate(fields)}
    merged = heapq.merge(
        *streams,
        key=lambda s: (s.row, order[s.field], -1 if s.column is None else s.column),
    )
    kept = tuple(islice(merged, max_issues))
    return QualityReport(
        n_rows=n,
        anomalous=tuple(int(i) for i in np.flatnonzero(bad)),
        issues=kept,
        issues_left_off=total - len(kept),
    )


def _row_count(values: Any, field: str) -> int:
    try:
        return len(values)
    except TypeError:
        raise ValueError(
            f"{field} must be a sequence of rows, got {type(values).__name__}"
        ) from None


def _check_field(
    field: str, profile: Profile, values: Any, n: int, rule: RangeRule
) -> tuple[np.ndarray, int, Iterator[Issue]]:
    """(rows with an issue, how many issues in all, the issues by row and column — lazily,
    so that only those kept are formatted)."""
    array = _as_matrix(values, profile)
    schema: list[Issue] = []
    if array is None:
        array, schema = _parse_rows(field, profile, values, n)
    schema_rows = np.zeros(n, dtype=bool)
    schema_rows[[issue.row for issue in schema]] = True

    bounds = rule._bounds(profile)
    finite = np.isfinite(array)
    outside = finite & ((array < bounds.lo) | (array > bounds.hi))
    flagged = (~finite | outside) & ~schema_rows[:, None]
    bad = schema_rows | flagged.any(axis=1)
    total = len(schema) + int(flagged.sum())

    def cell_issues() -> Iterator[Issue]:
        for i, j in np.argwhere(flagged):
            row, col = int(i), int(j)
            value = float(array[row, col])
            where = f"{field}[{row}]" if profile.ndim == 1 else f"{field}[{row}][{col}]"
            if not finite[row, col]:
                yield Issue(row, field, col, "non_finite", f"{where}: {value} is not finite")
            else:
                text = bounds.explain(value, col)
                yield Issue(row, field, col, "out_of_range", f"{where}: {text}")

    def by_column(issue: Issue) -> tuple[int, int]:
        return issue.row, -1 if issue.column is None else issue.column

    return bad, total, heapq.merge(schema, cell_issues(), key=by_column)


def _as_matrix(values: Any, profile: Profile) -> np.ndarray | None:
    """``values`` as an (n, width) float array when it is a well-formed numeric array, else
    None (the rows are then parsed one at a time)."""
    try:
        array = np.asarray(values)
    except (ValueError, TypeError):
        return None
    if array.dtype.kind not in "iuf":
        return None
    if array.ndim == 1 and profile.width == 1:
        return array.astype(np.float64).reshape(-1, 1)
    if array.ndim == 2 and array.shape[1] == profile.width:
        return array.astype(np.float64)
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _parse_rows(
    field: str, profile: Profile, values: Sequence[Any], n: int
) -> tuple[np.ndarray, list[Issue]]:
    """Rows one at a time: an (n, width) float array (NaN in rows with a schema issue) and
    the schema issues, at most one per row."""
    width = profile.width
    out = np.full((n, width), np.nan)
    issues: list[Issue] = []
    for i, row in enumerate(values):
        if profile.ndim == 1 or (width == 1 and _is_number(row)):
            cells = row if not _is_number(row) and _is_sequence(row) else [row]
        elif _is_sequence(row):
            cells = row
        else:
            message = f"{field}[{i}]: {_describe(row)} is not a row of {width} numbers"
            issues.append(Issue(i, field, None, "schema", message))
            continue
        cells = list(cells)
        if len(cells) != width:
            noun = "column" if width == 1 else "columns"
            message = f"{field}[{i}]: {len(cells)} values, the training data has {width} {noun}"
            issues.append(Issue(i, field, None, "schema", message))
            continue
        for j, cell in enumerate(cells):
            if not _is_number(cell):
                where = f"{field}[{i}]" if profile.ndim == 1 else f"{field}[{i}][{j}]"
                message = f"{where}: {_describe(cell)} is not a number"
                issues.append(Issue(i, field, j, "not_a_number", message))
                break
        else:
            out[i] = np.asarray(cells, dtype=np.float64)
    return out, issues


def _is_sequence(value: Any) -> bool:
    return isinstance(value, Sequence | np.ndarray) and not isinstance(value, str | bytes)
