"""What a model's training data looked like: per-column statistics and a drift sample.

A :class:`Reference` is learned once from the arrays a model was trained on (inputs and,
optionally, targets), one :class:`Profile` per array. :mod:`dtecho.registry.quality`
screens new rows against it; :mod:`dtecho.registry.drift` compares windows of new inputs
with its drift sample. Every piece of state round-trips through JSON-safe dicts
(``to_dict``/``from_dict``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["FORMAT_VERSION", "Profile", "Reference", "check_format_version"]

FORMAT_VERSION = 1
"""Version of the dicts written by ``to_dict``; ``from_dict`` refuses any other."""


def check_format_version(data: dict[str, Any], what: str) -> None:
    """ValueError unless ``data`` (a dict from some ``to_dict``) has this FORMAT_VERSION."""
    if data.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{what}: version {data.get('version')!r} is not {FORMAT_VERSION}, the one this "
            "code reads"
        )


@dataclass(frozen=True, eq=False)
class Profile:
    """Per-column summary of one training array (the inputs, or the targets).

    The per-column statistics are float64 arrays of shape (width,): ``minimum``,
    ``maximum``, ``mean``, ``std`` (population, ddof=0), ``q_low``/``q_high`` (the ``tail``
    and 1 − ``tail`` quantiles, 0.1% and 99.9% by default) and ``q25``/``q75``.

    ``sample`` has shape (k, width), k = min(sample_size, n_rows): for each column, its
    training values at k evenly spaced ranks (the order statistics nearest the quantiles
    (i + ½)/k). The columns are sorted and independent of one another — the drift tests
    compare one column at a time. This subsample is deterministic and its empirical
    distribution is within 1/(2k) (Kolmogorov distance) of the full column's; a random sample
    of the same size would be within about 1/√k.

    ``ndim`` records whether the training array was (T,) (rows are scalars) or (T, d).
    """

    n_rows: int
    ndim: int
    tail: float
    minimum: np.ndarray
    maximum: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    q_low: np.ndarray
    q25: np.ndarray
    q75: np.ndarray
    q_high: np.ndarray
    sample: np.ndarray

    @classmethod
    def fit(
        cls,
        values: Any,
        *,
        name: str = "values",
        sample_size: int = 2000,
        tail: float = 0.001,
    ) -> Profile:
        """Learn the profile of ``values``, an array of shape (T,) or (T, d) of finite numbers.

        ``name`` only labels error messages. Raises ValueError for an empty, non-numeric or
        non-finite array, or for parameters out of range.
        """
        if sample_size < 1:
            raise ValueError(f"sample_size must be >= 1, got {sample_size}")
        if not 0.0 < tail < 0.25:
            raise ValueError(f"tail must be in (0, 0.25), got {tail}")
        array = np.asarray(values)
        if array.dtype.kind not in "iuf":
            raise ValueError(f"{name} must be an array of numbers, got dtype {array.dtype}")
        if array.ndim not in (1, 2):
            raise ValueError(f"{name} must have shape (T,) or (T, d), got {array.shape}")
        if array.size == 0:
            raise ValueError(f"{name} is empty (shape {array.shape}); nothing to learn from")
        ndim = array.ndim
        x = array.astype(np.float64).reshape(array.shape[0], -1)
        bad = ~np.isfinite(x)
        if bad.any():
            row, col = (int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"{name} has {int(bad.sum())} non-finite values (first at row {row}, column "
                f"{col}); a reference is learned from finite data"
            )
        ordered = np.sort(x, axis=0)
        n = x.shape[0]
        k = min(sample_size, n)
        ranks = ((np.arange(k) + 0.5) * (n / k)).astype(np.int64)
        q_low, q25, q75, q_high = np.quantile(x, [tail, 0.25, 0.75, 1.0 - tail], axis=0)
        return cls(
            n_rows=n,
            ndim=ndim,
            tail=float(tail),
            minimum=ordered[0].copy(),
            maximum=ordered[-1].copy(),
            mean=x.mean(axis=0),
            std=x.std(axis=0),
            q_low=q_low,
            q25=q25,
            q75=q75,
            q_high=q_high,
            sample=ordered[ranks],
        )

    @property
    def width(self) -> int:
        """Number of columns (1 for a (T,) training array)."""
        return int(self.minimum.shape[0])

    @property
    def iqr(self) -> np.ndarray:
        """Interquartile range per column, q75 − q25."""
        return self.q75 - self.q25

    _STATS = ("minimum", "maximum", "mean", "std", "q_low", "q25", "q75", "q_high")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe state: plain ints, floats and lists (``sample`` is column-major)."""
        out: dict[str, Any] = {
            "version": FORMAT_VERSION,
            "n_rows": self.n_rows,
            "ndim": self.ndim,
            "tail": self.tail,
        }
        for key in self._STATS:
            out[key] = getattr(self, key).tolist()
        out["sample"] = self.sample.T.tolist()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        """Rebuild a profile written by :meth:`to_dict`; ValueError if it is inconsistent."""
        check_format_version(data, "profile")
        stats = {key: np.asarray(data[key], dtype=np.float64) for key in cls._STATS}
        sample = np.asarray(data["sample"], dtype=np.float64)
        width = stats["minimum"].shape
        if (
            len(width) != 1
            or any(v.shape != width for v in stats.values())
            or sample.ndim != 2
            or sample.shape[0] != width[0]
            or int(data["ndim"]) not in (1, 2)
            or (int(data["ndim"]) == 1 and width[0] != 1)
        ):
            raise ValueError("profile: the statistics and the sample disagree on the width")
        return cls(
            n_rows=int(data["n_rows"]),
            ndim=int(data["ndim"]),
            tail=float(data["tail"]),
            sample=np.ascontiguousarray(sample.T),
            **stats,
        )


@dataclass(frozen=True, eq=False)
class Reference:
    """What a model's training data looked like: a :class:`Profile` of the inputs and,
    when the model was trained on targets, one of the targets."""

    inputs: Profile
    targets: Profile | None = None

    @classmethod
    def fit(
        cls,
        inputs: Any,
        targets: Any | None = None,
        *,
        sample_size: int = 2000,
        tail: float = 0.001,
    ) -> Reference:
        """Learn from training ``inputs`` (T,) or (T, d) and optional ``targets`` (T,) or
        (T, k) with the same T. ``sample_size`` bounds the drift sample per column;
        ``tail`` sets the outer quantiles (``tail`` and 1 − ``tail``)."""
        profile_inputs = Profile.fit(inputs, name="inputs", sample_size=sample_size, tail=tail)
        profile_targets = None
        if targets is not None:
            profile_targets = Profile.fit(
                targets, name="targets", sample_size=sample_size, tail=tail
            )
            if profile_targets.n_rows != profile_inputs.n_rows:
                raise ValueError(
                    f"inputs has {profile_inputs.n_rows} rows but targets has "
                    f"{profile_targets.n_rows}"
                )
        return cls(profile_inputs, profile_targets)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe state."""
        return {
            "version": FORMAT_VERSION,
            "inputs": self.inputs.to_dict(),
            "targets": None if self.targets is None else self.targets.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Reference:
        """Rebuild a reference written by :meth:`to_dict`."""
        check_format_version(data, "reference")
        targets = data.get("targets")
        return cls(
            Profile.from_dict(data["inputs"]),
            None if targets is None else Profile.from_dict(targets),
        )
