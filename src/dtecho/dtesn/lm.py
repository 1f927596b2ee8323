"""Byte-level echo language model and its bigram baseline.

``EchoLanguageModel``: UTF-8 bytes drive a DTESN (one-hot input, so the input projection is a
column lookup); a softmax readout over the next byte sees [1, one-hot(current byte), state]:
    log p(· | bytes ≤ t) = log_softmax(b + V[byte_t] + x_t W)        (256 classes, nats).
The readout is multinomial logistic regression trained by mini-batch Adam on reservoir
states of the training text (stored as float16 to halve memory), started from the bigram
log-probabilities in V, then a single temperature fitted on a validation tail of the
training text (never on held-out text). Ridge regression to one-hot targets, turned into
probabilities by a softmax or clipping fitted on validation text, was measured first and
lost ≈0.3 bits/byte to softmax regression (3.47 vs 3.18 with 1000 units on 400 kB).

``BigramByteModel`` is the baseline: interpolated absolute discounting (Kneser–Ney style).
(Text features for embeddings are in ``features.py``.)
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Callable, Iterator
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sps
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from .byte_reservoir import byte_reservoir, byte_reservoir_from, byte_table, scan_bytes
from .membranes import build_membranes
from .model import NotFittedError
from .text import VOCAB, byte_codes

__all__ = ["BigramByteModel", "EchoLanguageModel"]

FORMAT = "dtecho.echo_lm"
FORMAT_VERSION = 1
_LN2 = float(np.log(2.0))


def _sum_rows_by(g: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """(256, k): row j = sum of the rows of g whose key is j (sort + reduceat; ~5× np.add.at)."""
    order = np.argsort(keys, kind="stable")
    ks = keys[order]
    starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
    out = np.zeros((VOCAB, g.shape[1]), g.dtype)
    out[ks[starts]] = np.add.reduceat(g[order], starts, axis=0)
    return out


class BigramByteModel:
    """p(next byte | current byte) with interpolated absolute discounting (Kneser–Ney style).

    p(b | a) = max(c(a, b) − d, 0) / c(a) + d·n₊(a)/c(a) · p_cont(b), with n₊(a) the number of
    distinct successors of a and p_cont(b) ∝ (number of distinct predecessors of b) + ½ (the
    ½ keeps never-seen bytes possible); unseen contexts use p_cont. Also keeps an add-½
    unigram. Learned: ``logprobs_`` (256, 256) natural log, row = current byte;
    ``unigram_logprobs_`` (256,).
    """

    def __init__(self, discount: float = 0.75) -> None:
        self.discount = discount

    def fit(self, corpus: bytes) -> BigramByteModel:
        """Count bigrams of ``corpus`` (needs at least two bytes)."""
        if not 0.0 < self.discount < 1.0:
            raise ValueError(f"discount must be in (0, 1), got {self.discount}")
        x = byte_codes(corpus)
        if x.size < 2:
            raise ValueError("the corpus needs at least two bytes")
        pairs = x[:-1].astype(np.int64) * VOCAB + x[1:]
        C = np.bincount(pairs, minlength=VOCAB * VOCAB).reshape(VOCAB, VOCAB).astype(np.float64)
        cont = (C > 0).sum(axis=0) + 0.5
        p_cont = cont / cont.sum()
        n = C.sum(axis=1, keepdims=True)
        safe = np.maximum(n, 1.0)
        P = np.maximum(C - self.discount, 0.0) / safe
        P += self.discount * (C > 0).sum(axis=1, keepdims=True) / safe * p_cont
        P[n[:, 0] == 0] = p_cont
        self.logprobs_ = np.log(P)
        uni = np.bincount(x, minlength=VOCAB) + 0.5
        self.unigram_logprobs_ = np.log(uni / uni.sum())
        return self

    def logprobs_of(self, data: bytes) -> np.ndarray:
        """(len(data) − 1,) natural-log probability of each byte after the first."""
        if not hasattr(self, "logprobs_"):
            raise NotFittedError("BigramByteModel is not fitted: call fit(corpus) first")
        x = byte_codes(data)
        return self.logprobs_[x[:-1], x[1:]]

    def bits_per_byte(self, data: bytes) -> float:
        """Mean −log₂ p over the bytes after the first (the same bytes the echo LM scores)."""
        return float(-self.logprobs_of(data).mean() / _LN2)

    def unigram_bits_per_byte(self, data: bytes) -> float:
        """The add-½ unigram's mean −log₂ p over the bytes after the first."""
        self.logprobs_of(data[:2])  # raises if not fitted
        return float(-self.unigram_logprobs_[byte_codes(data)[1:]].mean() / _LN2)


class EchoLanguageModel:
    """A DTESN driven by UTF-8 bytes with a readout over the next byte.

    Reservoir parameters as in ``DTESN`` (membranes of a depth-``depth`` tree, every one fed
    by the input; defaults measured best on stdlib docstrings: fast membranes, strong input).
    Readout training: ``epochs`` passes of Adam (``learning_rate`` decaying linearly to a
    tenth, mini-batches of ``batch_size`` rows) with L2 penalty ``ridge`` on the weights;
    the corpus is cut into ``streams`` contiguous pieces run as one batch; its last
    ``validation_fraction`` is held back to fit the softmax temperature. ``dtype`` of the
    dynamics and the stored weights. Learned: ``reservoir_``, ``state_weights_`` (N, 256),
    ``byte_weights_`` (256, 256), ``bias_`` (256,), ``temperature_``, ``metadata``.
    """

    def __init__(self, units: int = 1200, depth: int = 3, *, spectral_radius: float = 1.0,
                 leak_rate: float = 1.0, tau_scaling: float = 1.0, input_scaling: float = 3.0,
                 bias_scaling: float = 0.1, connectivity: float = 0.05, coupling: float = 1.0,
                 ridge: float = 1e-6, epochs: int = 4, batch_size: int = 2048,
                 learning_rate: float = 6e-3, streams: int = 64,
                 validation_fraction: float = 0.05, dtype: str = "float32",
                 seed: int = 0) -> None:  # fmt: skip
        for name, value in locals().items():
            if name != "self":
                setattr(self, name, value)
        self.metadata: dict[str, Any] = {}

    def get_params(self) -> dict[str, Any]:
        """The constructor parameters (JSON-serialisable)."""
        names = inspect.signature(type(self).__init__).parameters
        return {k: getattr(self, k) for k in names if k != "self"}

    # -- training -----------------------------------------------------------------------

    def fit(self, corpus: bytes, *, heldout: bytes | None = None,
            progress: Callable[[float], None] | None = None) -> EchoLanguageModel:  # fmt: skip
        """Train on ``corpus``; if ``heldout`` is given, report bits/byte on it in ``metadata``.

        ``progress`` is called with the fraction done (0…1). Returns self.
        """
        started = time.perf_counter()
        report = progress or (lambda f: None)
        codes = byte_codes(corpus)
        n_val = int(len(codes) * self.validation_fraction)
        train, val = codes[: len(codes) - n_val], codes[len(codes) - n_val :]
        if len(train) < 16:
            raise ValueError(f"the corpus needs at least 16 training bytes, got {len(train)}")
        self.reservoir_ = byte_reservoir(self.get_params())
        self._table = byte_table(self.reservoir_)
        bigram = BigramByteModel().fit(train.tobytes())
        S, cur, nxt = self._training_states(train, lambda f: report(0.3 * f))
        self._train_readout(S, cur, nxt, bigram.logprobs_, lambda f: report(0.3 + 0.6 * f))
        del S
        self.temperature_ = self._calibrate(val)
        report(0.95)
        self.metadata = {
            "units": self.units, "depth": self.depth, "seed": self.seed,
            "membranes": len(build_membranes(self.units, depth=self.depth)),
            "train_bytes": len(train), "validation_bytes": len(val),
            "temperature": self.temperature_,
            "training_seconds": round(time.perf_counter() - started, 1),
        }  # fmt: skip
        if len(val) >= 2:
            self.metadata["validation_bits_per_byte"] = self.bits_per_byte(val.tobytes())
        if heldout is not None and len(heldout) >= 2:
            self.metadata.update(
                bits_per_byte=self.bits_per_byte(heldout),
                bigram_bits_per_byte=bigram.bits_per_byte(heldout),
                unigram_bits_per_byte=bigram.unigram_bits_per_byte(heldout),
                heldout_bytes=len(heldout),
            )
        report(1.0)
        return self

    def _training_states(self, train: np.ndarray, report: Callable[[float], None]):
        """States (rows, N) float16, current and next bytes of ``streams`` contiguous pieces."""
        B = max(1, min(self.streams, (len(train) - 1) // 256))
        L = (len(train) - 1) // B
        cur, nxt = train[: B * L].reshape(B, L), train[1 : B * L + 1].reshape(B, L)
        S = np.empty((B, L, self.units), np.float16)
        for t0, chunk in scan_bytes(self.reservoir_, self._table, cur):
            S[:, t0 : t0 + chunk.shape[1]] = chunk
            report((t0 + chunk.shape[1]) / L)
        return S.reshape(B * L, self.units), cur.reshape(-1), nxt.reshape(-1)

    def _train_readout(self, S, cur, nxt, init_bytes, report) -> None:
        """Mini-batch Adam on the mean cross-entropy + ridge/2·(‖W‖² + ‖V‖²).

        Batches are random sets of 8-row blocks (consecutive bytes of one stream): gathering
        blocks from the float16 state matrix was measured 2× faster than single rows, and
        the batch still mixes ``batch_size``/8 places in the corpus.
        """
        dt = np.dtype(np.float32)
        params = [np.zeros((self.units, VOCAB), dt), init_bytes.astype(dt), np.zeros(VOCAB, dt)]
        m = [np.zeros_like(p) for p in params]
        v = [np.zeros_like(p) for p in params]
        rng = np.random.default_rng(np.random.SeedSequence(self.seed).spawn(2)[1])
        blk = 8 if len(cur) >= 8 * 64 else 1
        nb = len(cur) // blk
        blocks = S[: nb * blk].reshape(nb, blk, self.units)
        cur, nxt = cur[: nb * blk].reshape(nb, blk), nxt[: nb * blk].reshape(nb, blk)
        per = max(1, int(self.batch_size) // blk)
        steps = self.epochs * -(-nb // per)
        k = 0
        for _ in range(self.epochs):
            order = rng.permutation(nb)
            for i in range(0, nb, per):
                idx = np.sort(order[i : i + per])
                s = blocks[idx].reshape(-1, self.units).astype(dt)
                c, y = cur[idx].reshape(-1), nxt[idx].reshape(-1)
                W, V, b = params
                g = s @ W + V[c] + b
                g = np.exp(g - g.max(axis=1, keepdims=True), out=g)
                g /= g.sum(axis=1, keepdims=True)
                g[np.arange(len(y)), y] -= 1.0
                g /= len(y)  # d(mean cross-entropy)/d(logits)
                grads = (s.T @ g + self.ridge * W, _sum_rows_by(g, c) + self.ridge * V,
                         g.sum(axis=0))  # fmt: skip
                k += 1
                lr = self.learning_rate * (1.0 - 0.9 * (k - 1) / steps)
                for p, gr, m_, v_ in zip(params, grads, m, v, strict=True):
                    m_ *= 0.9
                    m_ += 0.1 * gr
                    v_ *= 0.999
                    v_ += 0.001 * gr * gr
                    p -= (lr / (1.0 - 0.9**k)) * m_ / (np.sqrt(v_ / (1.0 - 0.999**k)) + 1e-8)
                report(k / steps)
        out = np.dtype(self.dtype)
        self.state_weights_, self.byte_weights_, self.bias_ = (p.astype(out) for p in params)
        self.temperature_ = 1.0

    def _calibrate(self, val: np.ndarray) -> float:
        """Fit a softmax temperature on the validation bytes, fold 1/T into the weights, → T."""
        if len(val) < 64:
            return 1.0
        Z = np.concatenate([z for _, z in self._logits(val)])
        y = val[1:]

        def nll(beta: float) -> float:
            return float(-log_softmax(beta * Z, axis=1)[np.arange(len(y)), y].mean())

        beta = float(minimize_scalar(nll, bounds=(0.2, 5.0), method="bounded").x)
        for name in ("state_weights_", "byte_weights_", "bias_"):
            setattr(self, name, (getattr(self, name) * beta).astype(self.dtype))
        return 1.0 / beta

    # -- inference ----------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "state_weights_"):
            raise NotFittedError("EchoLanguageModel is not fitted: call fit(corpus) or load()")

    def _readout(self, x: np.ndarray, cur: np.ndarray) -> np.ndarray:
        """float64 logits (…, 256) from states (…, N) and current bytes (…)."""
        return (x @ self.state_weights_ + self.byte_weights_[cur] + self.bias_).astype(np.float64)

    def _logits(self, codes: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """(t0, logits (c, 256)) for the bytes after codes[t0 : t0 + c], one sequence."""
        for t0, S in scan_bytes(self.reservoir_, self._table, codes[None, :-1]):
            yield t0, self._readout(S[0], codes[t0 : t0 + S.shape[1]])

    def initial_state(self, batch: int) -> np.ndarray:
        """Zero state (batch, N) in the model's dtype: the state before any byte."""
        self._check_fitted()
        return np.zeros((batch, self.reservoir_.units), self.reservoir_.dtype)

    def feed(self, state: np.ndarray, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Consume bytes ``data`` (B, T) uint8, T ≥ 1, from ``state`` (B, N).

        Returns (new state (B, N), logprobs (B, 256) float64): natural-log probabilities of
        the byte that follows data[:, -1]. Inputs are not modified.
        """
        self._check_fitted()
        data = np.asarray(data)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] < 1:
            raise ValueError(
                f"data must be uint8 (B, T) with T >= 1, got {data.dtype} {data.shape}"
            )
        N = self.reservoir_.units
        if np.shape(state) != (data.shape[0], N):
            raise ValueError(f"state must have shape ({data.shape[0]}, {N}), got {np.shape(state)}")
        S = self.reservoir_.run_projected(self._table[data], x0=state)  # copies x0
        x = np.ascontiguousarray(S[:, -1])
        z = self._readout(x, data[:, -1])
        z -= z.max(axis=1, keepdims=True)  # by hand: scipy's log_softmax costs 2× at B = 1
        z -= np.log(np.exp(z).sum(axis=1, keepdims=True))
        return x, z

    def logprobs_of(self, data: bytes) -> np.ndarray:
        """(len(data) − 1,) natural-log probability of each byte given the bytes before it."""
        self._check_fitted()
        codes = byte_codes(data)
        if codes.size < 2:
            return np.zeros(0)
        out = [log_softmax(Z, axis=1)[np.arange(len(Z)), codes[t + 1 : t + 1 + len(Z)]]
               for t, Z in self._logits(codes)]  # fmt: skip
        return np.concatenate(out)

    def bits_per_byte(self, data: bytes) -> float:
        """Mean −log₂ p of the bytes of ``data`` after the first (needs len(data) ≥ 2)."""
        if len(data) < 2:
            raise ValueError("bits_per_byte needs at least two bytes")
        return float(-self.logprobs_of(data).mean() / _LN2)

    # -- persistence --------------------------------------------------------------------

    def save(self, directory: str | Path) -> None:
        """Write ``config.json`` (parameters, metadata) and ``weights.npz`` (no pickle)."""
        self._check_fitted()
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        res, dt = self.reservoir_, self.reservoir_.dtype
        config = {"format": FORMAT, "format_version": FORMAT_VERSION, "params": self.get_params(),
                  "temperature": self.temperature_, "metadata": self.metadata}  # fmt: skip
        (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        # Weights in the run dtype: the dynamics cast to it anyway, so predictions after load
        # are bit-identical while a float32 model takes half the space.
        np.savez(out / "weights.npz", W_data=res.W.data.astype(dt), W_indices=res.W.indices,
                 W_indptr=res.W.indptr, W_in=res.W_in.astype(dt), bias=res.bias.astype(dt),
                 leak=res.leak, state_weights=self.state_weights_,
                 byte_weights=self.byte_weights_, bias_out=self.bias_)  # fmt: skip

    @classmethod
    def load(cls, directory: str | Path | Traversable) -> EchoLanguageModel:
        """Read a model written by ``save`` (a path or an importlib.resources Traversable)."""
        d = Path(directory) if isinstance(directory, str) else directory
        config = json.loads((d / "config.json").read_text())
        if config.get("format") != FORMAT or config.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{directory} is not an echo LM of format version {FORMAT_VERSION}")
        model = cls(**config["params"])
        with (d / "weights.npz").open("rb") as f, np.load(f, allow_pickle=False) as z:
            a = {k: z[k] for k in z.files}
        N = a["W_in"].shape[0]
        W = sps.csr_array((a["W_data"].astype(np.float64), a["W_indices"], a["W_indptr"]),
                          shape=(N, N))  # fmt: skip
        model.reservoir_ = byte_reservoir_from(
            W, a["W_in"].astype(np.float64), a["bias"].astype(np.float64), a["leak"], model.dtype
        )
        model._table = byte_table(model.reservoir_)
        model.state_weights_, model.byte_weights_ = a["state_weights"], a["byte_weights"]
        model.bias_, model.temperature_ = a["bias_out"], config["temperature"]
        model.metadata = config["metadata"]
        return model

    @classmethod
    def default(cls) -> EchoLanguageModel:
        """The packaged model (``dtecho/data/echo_lm``), trained by ``dtecho train-lm``."""
        return cls.load(resources.files("dtecho.data") / "echo_lm")
