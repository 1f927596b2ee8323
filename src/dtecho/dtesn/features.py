"""Deterministic text features from reservoir states (the ``dtesn-embed`` model).

A text's UTF-8 bytes drive a byte reservoir; its feature vector is the mean state, centred on
a fixed reference text, rotated and L2-normalised (see :class:`TextFeatures`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .byte_reservoir import byte_reservoir, byte_table
from .text import byte_codes

__all__ = ["TextFeatures"]

_GROUP = 64  # texts per reservoir call at most
_STEPS = 256  # time steps per reservoir call: a fixed grid, whatever the batch

# Our own sample of prose, docstring and code: its mean state is the direction every text
# shares, which is removed before comparing (it otherwise gives any two texts cosine ≈ 0.8).
_REFERENCE_TEXT = (
    b"Return a new list with the items of the sequence in sorted order. The key function is "
    b"called once for each element; if the value is None, the elements are compared directly. "
    b"Raise ValueError when the argument is empty, and TypeError when two items cannot be "
    b"compared.\n\n"
    b"The server reads its settings from a file at start-up and answers requests over HTTP. "
    b"Each model has a name, an engine and a few options. When a client disconnects, the "
    b"running generation is cancelled and its resources are released.\n\n"
    b"Yesterday the weather was cold and wet, so we stayed inside, made tea and read old "
    b"letters from our grandparents. In the evening the rain stopped; the streets were quiet "
    b"and the sky turned a deep shade of blue over the hills.\n\n"
    b'def mean(values):\n    """Arithmetic mean of a non-empty sequence."""\n'
    b"    total = 0.0\n    for v in values:\n        total += v\n"
    b"    return total / len(values)\n\n"
    b"for i, name in enumerate(names):\n    if name.startswith('_'):\n        continue\n"
    b'    print(f"{i:3d} {name}")\n'
)


class TextFeatures:
    """Deterministic text feature vectors from reservoir states, for /v1/embeddings.

    A text's UTF-8 bytes drive a reservoir (parameters as in ``EchoLanguageModel``, slower
    leak so the state integrates over words). Its feature: the mean state over the text,
    minus the mean state of a fixed built-in reference text (``_REFERENCE_TEXT``), rotated by
    a fixed seeded Haar-orthogonal matrix and L2-normalised; ``dimensions`` = units. For
    d < units the first d rotated coordinates are kept and renormalised: the rotation spreads
    the information evenly, so any prefix is a Johnson–Lindenstrauss projection of the full
    vector, and truncating a full vector gives the same answer. A text with nothing left
    after centring (the empty text) maps to e₀ rotated. No training; the reservoir is built
    in the constructor (a pure function of the parameters).
    """

    def __init__(self, units: int = 512, depth: int = 2, *, spectral_radius: float = 0.9,
                 leak_rate: float = 0.5, tau_scaling: float = 2.0, input_scaling: float = 1.0,
                 bias_scaling: float = 0.1, connectivity: float = 0.1, coupling: float = 1.0,
                 seed: int = 0) -> None:  # fmt: skip
        params = dict(locals())
        del params["self"]
        for name, value in params.items():
            setattr(self, name, value)
        self.reservoir_ = byte_reservoir({**params, "dtype": "float32"})
        self._table = byte_table(self.reservoir_)
        rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[1])
        q, r = np.linalg.qr(rng.standard_normal((units, units)))
        self._rotation = q * np.sign(np.diag(r))
        self._center = self._mean_states([_REFERENCE_TEXT])[0][0]

    @property
    def dimensions(self) -> int:
        """Native output size (= units)."""
        return int(self.units)

    def _mean_states(self, texts: Sequence[bytes | str]) -> tuple[np.ndarray, np.ndarray]:
        """(n, N) float64 mean state of each text (zeros if empty) and the lengths.

        Texts run longest first in groups of ``_GROUP``, time in chunks of ``_STEPS``. A
        text's states do not depend on its batch (the CSR products sum every row in the
        same order for one sequence or many) and its sum runs over the same fixed time grid,
        row by row in time order, so its mean is bit-identical alone and in any batch."""
        res = self.reservoir_
        codes = [byte_codes(t) for t in texts]
        n = len(codes)
        lengths = np.array([len(c) for c in codes], dtype=np.int64)
        order = np.argsort(-lengths, kind="stable")
        total = np.zeros((n, res.units))
        for g0 in range(0, n, _GROUP):
            members = order[g0 : g0 + _GROUP]
            lens = lengths[members]
            x = np.zeros((len(members), res.units), res.dtype)
            for t0 in range(0, int(lens[0]), _STEPS):
                steps = np.clip(lens - t0, 0, _STEPS)
                k = int(np.count_nonzero(steps))
                P = np.zeros((k, int(steps[0]), res.units), res.dtype)
                for b in range(k):
                    window = codes[members[b]][t0 : t0 + steps[b]]
                    np.take(self._table, window, axis=0, out=P[b, : steps[b]])
                S = res.run_projected(P, x0=x[:k], lengths=steps[:k])
                for b in range(k):
                    valid = S[b, : steps[b]]
                    x[b] = valid[-1]
                    total[members[b]] += np.add.reduce(valid, axis=0, dtype=np.float64)
        return total / np.maximum(lengths, 1)[:, None], lengths

    def transform_each(
        self, texts: Sequence[bytes | str], dimensions: Sequence[int]
    ) -> list[np.ndarray]:
        """One float32 L2-normalised row per text, of ``dimensions[i]`` coordinates each.

        Every row is a function of its own text only: the same bits whatever other texts
        share the call (so requests can be batched freely). Raises ValueError unless every
        1 ≤ d ≤ the native size."""
        if len(dimensions) != len(texts):
            raise ValueError("one dimension per text is needed")
        for d in dimensions:
            if not 1 <= d <= self.dimensions:
                raise ValueError(f"dimensions must be between 1 and {self.dimensions}, got {d}")
        mean, lengths = self._mean_states(texts)
        threshold = 1e-5 * np.linalg.norm(self._center)
        rows = []
        for i, d in enumerate(dimensions):
            x = mean[i] - self._center
            if lengths[i] == 0 or np.linalg.norm(x) < threshold:
                # Nothing left after centring (the empty text, or the reference text itself):
                # below 1e-5 the rest is rounding noise, not a direction.
                x = np.zeros_like(x)
                x[0] = 1.0
            out = x @ self._rotation[:, :d]
            rows.append((out / np.linalg.norm(out)).astype(np.float32))
        return rows

    def transform(self, texts: Sequence[bytes | str], dimensions: int | None = None) -> np.ndarray:
        """(len(texts), d) float32 L2-normalised rows, d = ``dimensions`` or the native size.

        Raises ValueError unless 1 ≤ d ≤ the native size."""
        d = self.dimensions if dimensions is None else int(dimensions)
        if not 1 <= d <= self.dimensions:
            raise ValueError(
                f"dimensions must be between 1 and {self.dimensions}, got {dimensions}"
            )
        if not texts:
            return np.zeros((0, d), np.float32)
        return np.stack(self.transform_each(texts, [d] * len(texts)))
