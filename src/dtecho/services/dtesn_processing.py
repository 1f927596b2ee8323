"""``/v1/dtesn/process``: run an input through a DTESN and describe what every membrane did.

A network is a pure function of its configuration (depth, size, integrator, seed, input
width), so built networks are kept in a small LRU and reused. Inputs are integrated in chunks
of :data:`CHUNK_STEPS` samples, carrying the state across chunks: memory stays O(chunk · N)
however long the input, progress can be reported between chunks, and a cancelled request stops
at the next chunk.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dtecho.dtesn import DTESN, bseries
from dtecho.dtesn.membranes import Membrane
from dtecho.dtesn.reservoir import spectral_radius
from dtecho.dtesn.text import VOCAB, project_bytes

__all__ = ["CHUNK_STEPS", "NetworkConfig", "ProcessCancelled", "ProcessResult", "Processor"]

CHUNK_STEPS = 1024


class ProcessCancelled(Exception):
    """The caller went away; the computation stopped between chunks."""


@dataclass(frozen=True)
class NetworkConfig:
    """Everything that determines a network's weights."""

    membrane_depth: int = 4
    esn_size: int = 512
    integrator: str = "euler"
    seed: int = 0
    input_dim: int = VOCAB  # 256: UTF-8 bytes (one-hot by lookup); otherwise vector width

    def model(self) -> DTESN:
        return DTESN(
            units=self.esn_size,
            depth=self.membrane_depth,
            integrator=self.integrator,
            seed=self.seed,
            spectral_radius=0.9,
            leak_rate=0.5,
            tau_scaling=2.0,  # each level inward integrates twice as slowly
            input_scaling=1.0,
            bias_scaling=0.1,
            # pinned (the library's defaults changed after its defaults study): a served
            # network's numbers must not change with them
            input_connectivity=1.0,
            input_init="uniform",
            input_norm="none",
            # CSR products accumulate every row in the same order whatever the batch width,
            # so a sequence gives bit-identical numbers alone or batched with others. That
            # holds for SciPy's products and for the compiled Numba kernels (the ``fast``
            # extra; used when installed: ~2× faster), which agree with each other to ~1e-15
            # — so the numbers of one server never depend on batching, but may differ in
            # the last bits between an install with Numba and one without.
            matrix_format="sparse",
            weights="random",  # pinned: the library's "auto" would change a served network
            backend="auto",
            # One thread per run: the service spreads work over the cores itself, a batch
            # per core (the micro-batcher's lanes, the batch route's chunks). Split over
            # threads, a batch of 32 became two of 16, which cost ~1.4× as much per sequence
            # (the 32-sequence register tiles went unused), plus two thread starts per run.
            n_jobs=1,
        )


def _json(value: Any) -> str:
    """JSON text as the routes write it (compact, UTF-8 as is, no NaN)."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _floats(values: Sequence[float]) -> str:
    """``values`` as the comma-separated JSON numbers ``json.dumps`` writes (``float.__repr__``)."""
    text = ",".join(map(float.__repr__, values))
    if "n" in text:  # only "nan" and "inf" hold an n: json.dumps(allow_nan=False) refuses them
        raise ValueError("Out of range float values are not JSON compliant")
    return text


@dataclass(frozen=True)
class _Layout:
    """What every result of one network has in common: the membranes' descriptions, their
    blocks of units, and the JSON text around the numbers (encoded once, not per request)."""

    membranes: tuple[dict[str, Any], ...]  # Membrane.as_dict() of each
    blocks: tuple[tuple[int, int, int], ...]  # (start, stop, units) of each
    roots: tuple[float, ...]  # sqrt(units) of each
    head: str  # after "steps": the configuration, up to the first membrane
    membrane_heads: tuple[str, ...]  # '{"id":…,"tau":…,"final_state_norm":' (',' first after 0)
    tail: str  # after the features: the B-series, spectral radius and "processing_time_ms":

    @classmethod
    def of(cls, config: NetworkConfig, membranes: Sequence[Membrane], radius: float,
           order: int, checked: int) -> _Layout:  # fmt: skip
        described = tuple(m.as_dict() for m in membranes)
        config_part = _json(
            {"membrane_depth": config.membrane_depth, "esn_size": config.esn_size,
             "seed": config.seed}
        )  # fmt: skip
        bseries_part = _json(
            {"integrator": config.integrator, "order": order, "order_conditions_checked": checked}
        )
        return cls(
            membranes=described,
            blocks=tuple((m.start, m.stop, m.units) for m in membranes),
            roots=tuple(math.sqrt(m.units) for m in membranes),
            head="," + config_part[1:-1] + ',"membranes":[',
            membrane_heads=tuple(
                ("," if i else "") + _json(d)[:-1] + ',"final_state_norm":'
                for i, d in enumerate(described)
            ),
            tail=f'],"bseries":{bseries_part},"spectral_radius":{_floats([radius])}'
            ',"processing_time_ms":',
        )


@dataclass
class _Network:
    model: DTESN
    spectral_radius: float
    order: int
    conditions_checked: int
    table: np.ndarray | None  # (256, N) W_in[:, byte] + b for byte inputs: a row gather
    layout: _Layout


@dataclass
class ProcessResult:
    """The real outcome of one run, JSON-ready through :meth:`as_dict` (or JSON itself through
    :meth:`to_json`)."""

    config: NetworkConfig
    steps: int
    norms: list[float]  # per membrane: the final state's norm…
    mean_abs: list[float]  # …the mean |activation| over steps and units
    features: list[float]
    final_state: np.ndarray
    trajectory: list[list[float]] | None
    spectral_radius: float
    order: int
    conditions_checked: int
    processing_time_ms: float
    layout: _Layout

    @property
    def membranes(self) -> list[dict[str, Any]]:
        """Each membrane's description with its ``final_state_norm`` and
        ``mean_abs_activation``."""
        return [
            {**described, "final_state_norm": norm, "mean_abs_activation": mean_abs}
            for described, norm, mean_abs in zip(
                self.layout.membranes, self.norms, self.mean_abs, strict=True
            )
        ]

    def as_dict(self, include_states: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "steps": self.steps,
            "membrane_depth": self.config.membrane_depth,
            "esn_size": self.config.esn_size,
            "seed": self.config.seed,
            "membranes": self.membranes,
            "features": self.features,
            "bseries": {
                "integrator": self.config.integrator,
                "order": self.order,
                "order_conditions_checked": self.conditions_checked,
            },
            "spectral_radius": self.spectral_radius,
            "processing_time_ms": self.processing_time_ms,
        }
        if include_states:
            out["esn_state"] = self.final_state.tolist()
        if self.trajectory is not None:
            out["trajectory"] = self.trajectory
        return out

    def to_json(self, include_states: bool = False) -> bytes:
        """``as_dict(include_states)`` as the routes' JSON, byte for byte, written from the
        network's pre-encoded text and the numbers (``json.dumps`` of the dict took about
        twice as long; what remains is mostly ``float.__repr__``, which it calls too)."""
        layout = self.layout
        m = len(self.norms)
        numbers = [*self.norms, *self.mean_abs, *self.features, self.processing_time_ms]
        text = list(map(float.__repr__, numbers))
        if not all(map(math.isfinite, numbers)):  # as json.dumps(allow_nan=False)
            raise ValueError("Out of range float values are not JSON compliant")
        parts = ['{"steps":', str(self.steps), layout.head]
        for i, head in enumerate(layout.membrane_heads):
            parts += (head, text[i], ',"mean_abs_activation":', text[m + i], "}")
        parts += ('],"features":[', ",".join(text[2 * m : -1]), layout.tail, text[-1])
        if include_states:
            parts += (',"esn_state":[', _floats(self.final_state.tolist()), "]")
        if self.trajectory is not None:
            rows = ",".join(f"[{_floats(row)}]" for row in self.trajectory)
            parts += (',"trajectory":[', rows, "]")
        parts.append("}")
        return "".join(parts).encode()


class Processor:
    """Builds (and caches) networks and runs inputs through them. Thread-safe."""

    def __init__(self, max_networks: int = 8) -> None:
        self._networks: OrderedDict[NetworkConfig, _Network] = OrderedDict()
        self._max = max_networks
        self._lock = threading.Lock()

    def is_built(self, config: NetworkConfig) -> bool:
        """Whether ``config``'s network is cached (a request for it skips the build's cost)."""
        with self._lock:
            return config in self._networks

    def network(self, config: NetworkConfig) -> _Network:
        """The built network for ``config`` (raises ValueError for impossible configurations)."""
        with self._lock:
            cached = self._networks.get(config)
            if cached is not None:
                self._networks.move_to_end(config)
                return cached
        model = config.model()
        assert not model.feedback  # what makes W block-triangular (_block_triangular_radius)
        model._ensure_reservoir(config.input_dim)
        tableau = bseries.TABLEAUX[config.integrator]
        order = bseries.order(tableau)
        reservoir = model.reservoir_
        table = None
        if config.input_dim == VOCAB:  # the rows project_bytes gathers, built once
            table = np.ascontiguousarray(reservoir.W_in.T, dtype=reservoir.dtype)
            if reservoir.bias.any():
                table += reservoir.bias.astype(reservoir.dtype)
        radius = _block_triangular_radius(reservoir.W, model.membranes_)
        checked = len(bseries.order_conditions(min(order + 1, 8)))
        built = _Network(
            model=model,
            spectral_radius=radius,
            order=order,
            conditions_checked=checked,
            table=table,
            layout=_Layout.of(config, model.membranes_, radius, order, checked),
        )
        with self._lock:
            self._networks[config] = built
            while len(self._networks) > self._max:
                self._networks.popitem(last=False)
        return built

    def process(
        self,
        config: NetworkConfig,
        data: bytes | np.ndarray,
        *,
        trajectory_points: int = 0,
        progress: Callable[[int, int], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> ProcessResult:
        """Integrate ``data`` (bytes, or a (T, input_dim) float array) from the zero state."""
        return self.process_many(
            config,
            [data],
            trajectory_points=trajectory_points,
            progress=progress,
            cancelled=cancelled,
        )[0]

    def process_many(
        self,
        config: NetworkConfig,
        inputs: Sequence[bytes | np.ndarray],
        *,
        trajectory_points: int = 0,
        progress: Callable[[int, int], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> list[ProcessResult]:
        """Integrate several inputs of one configuration as one batch: every step advances all
        still-running sequences with one (B×N)·(N×N) product. Sequences run longest first so
        the running ones are always a prefix (the reservoir's masking convention); each
        result is exactly what the sequence gives alone. ``progress`` counts steps of the
        longest input."""
        started = time.perf_counter()
        network = self.network(config)
        reservoir = network.model.reservoir_
        blocks = network.layout.blocks
        order = sorted(range(len(inputs)), key=lambda b: -len(inputs[b]))
        seqs = [inputs[b] for b in order]
        lengths = np.array([len(seq) for seq in seqs])
        batch, n, total = len(seqs), reservoir.units, int(lengths.max(initial=0))
        x = np.zeros((batch, n), reservoir.dtype)
        sum_abs = np.zeros((batch, n))
        sum_state = np.zeros((batch, n))
        wanted = [_trajectory_steps(int(length), trajectory_points) for length in lengths]
        trajectories: list[list[list[float]]] = [[] for _ in seqs]
        for start in range(0, total, CHUNK_STEPS):
            if cancelled is not None and cancelled():
                raise ProcessCancelled
            steps = np.clip(lengths - start, 0, CHUNK_STEPS)
            active = int(np.count_nonzero(steps))
            width = int(steps[0])
            live = steps[:active]
            P = self._project(network, seqs[:active], start, live, width)
            # Lengths only when they differ (sorted: the last is the shortest): the same
            # states either way, but the reservoir counts the running sequences of every
            # step from them in Python (~1 µs a step, as much as a step of the product).
            ragged = int(live[-1]) != width
            states = reservoir.run_projected(P, x0=x[:active], lengths=live if ragged else None)
            x[:active] = states[np.arange(active), live - 1]
            for b in range(active):
                times = wanted[b][(wanted[b] >= start) & (wanted[b] < start + steps[b])]
                if times.size:
                    trajectories[b] += _rms_rows(states[b, times - start], blocks)
                if steps[b] < width:  # rows past a sequence's end hold inputs: add zeros
                    states[b, steps[b] :] = 0
            # Whole-batch reductions over time (each sums a sequence's rows in time order,
            # as alone): few large NumPy calls, so the worker thread rarely gives up the GIL
            # — each time it does, it may wait a switch interval (5 ms) for the event loop.
            sum_state[:active] += states.sum(axis=1)
            sum_abs[:active] += np.abs(states, out=states).sum(axis=1)
            if progress is not None:
                progress(min(start + CHUNK_STEPS, total), total)
        # Per-membrane statistics of the whole batch at once: each membrane's block of a
        # row reduces exactly as that row's block alone would (the same pairwise sum).
        counts = np.maximum(lengths, 1)
        mean_act = [sum_state[:, lo:hi].sum(axis=1) / (counts * units) for lo, hi, units in blocks]
        mean_abs = [sum_abs[:, lo:hi].sum(axis=1) / (counts * units) for lo, hi, units in blocks]
        act_rows = np.stack(mean_act, axis=1).tolist()
        abs_rows = np.stack(mean_abs, axis=1).tolist()
        elapsed = round((time.perf_counter() - started) * 1000, 3)
        results: list[ProcessResult | None] = [None] * batch
        for b, original in enumerate(order):
            results[original] = self._describe(
                config, network, int(lengths[b]), x[b], act_rows[b], abs_rows[b],
                trajectories[b] if trajectory_points else None, elapsed,
            )  # fmt: skip
        return results  # type: ignore[return-value]

    @staticmethod
    def _project(
        network: _Network,
        seqs: Sequence[bytes | np.ndarray],
        start: int,
        steps: np.ndarray,
        width: int,
    ) -> np.ndarray:
        """(B, width, N) projected inputs W_in·u + b of steps ``start …`` of each sequence
        (``steps[b]`` of them); rows past a sequence's end are finite filler."""
        reservoir = network.model.reservoir_
        if network.table is not None and all(isinstance(seq, bytes) for seq in seqs):
            # = project_bytes(piece, W_in, bias) for every piece, bit for bit: one row
            # gather from the prebuilt table (rebuilding it per call cost more than the run)
            codes = np.zeros((len(seqs), width), np.uint8)
            for b, seq in enumerate(seqs):
                codes[b, : steps[b]] = np.frombuffer(seq, np.uint8, int(steps[b]), start)
            return network.table[codes]
        P = np.zeros((len(seqs), width, reservoir.units), reservoir.dtype)
        for b, seq in enumerate(seqs):
            piece = seq[start : start + steps[b]]
            if isinstance(piece, bytes):
                P[b, : steps[b]] = project_bytes(
                    piece, reservoir.W_in, reservoir.bias, dtype=reservoir.dtype.name
                )
            else:
                P[b, : steps[b]] = reservoir.project(np.asarray(piece)[None])[0]
        return P

    @staticmethod
    def _describe(
        config: NetworkConfig,
        network: _Network,
        total: int,
        state: np.ndarray,
        mean_act: list[float],
        mean_abs: list[float],
        trajectory: list[list[float]] | None,
        elapsed_ms: float,
    ) -> ProcessResult:
        final = state.astype(np.float64)
        layout = network.layout
        # ‖v‖ as np.linalg.norm computes it for a real vector: sqrt(v·v), one dot product
        norms = [math.sqrt(final[lo:hi].dot(final[lo:hi])) for lo, hi, _ in layout.blocks]
        features: list[float] = []
        for act, absolute, norm, root in zip(mean_act, mean_abs, norms, layout.roots, strict=True):
            features += (act, absolute, norm / root)
        return ProcessResult(
            config=config,
            steps=total,
            norms=norms,
            mean_abs=mean_abs,
            features=features,
            final_state=final,
            trajectory=trajectory,
            spectral_radius=network.spectral_radius,
            order=network.order,
            conditions_checked=network.conditions_checked,
            processing_time_ms=elapsed_ms,
            layout=layout,
        )


def _block_triangular_radius(W: Any, membranes: Sequence[Membrane]) -> float:
    """ρ(W) of a network without feedback: W is block lower-triangular (membranes on the
    diagonal, parent→child couplings below), so its eigenvalues are its diagonal blocks'.

    Exact, and bounded: ARPACK on the whole W of a deep tree (hundreds of blocks, all of
    radius 1 before scaling) converged so slowly that a depth-8 network of 1,024 units took
    80 s to build (512 units: 23 s), and returned 0.9008 for 0.9."""
    W = W.tocsr()
    return max(
        (spectral_radius(W[m.start : m.stop, m.start : m.stop]) for m in membranes),
        default=0.0,
    )


def _rms_rows(rows: np.ndarray, blocks: Sequence[tuple[int, int, int]]) -> list[list[float]]:
    """Per row (a state), the RMS of each membrane's block: sqrt(mean(square)), the same
    pairwise sum per block as for one block alone."""
    columns = [np.sqrt(np.square(rows[:, lo:hi]).sum(axis=1) / units) for lo, hi, units in blocks]
    return np.stack(columns, axis=1).tolist()  # type: ignore[no-any-return]


def _trajectory_steps(total: int, points: int) -> np.ndarray:
    """At most ``points`` evenly spaced step indices, always including the last."""
    if points <= 0 or total == 0:
        return np.empty(0, dtype=np.int64)
    if total <= points:
        return np.arange(total)
    return np.unique(np.linspace(0, total - 1, points).round().astype(np.int64))


def parse_input(value: str | list[list[float]]) -> tuple[bytes | np.ndarray, int]:
    """A validated request input as (data, input width): UTF-8 bytes (width 256) or vectors."""
    if isinstance(value, str):
        return value.encode("utf-8"), VOCAB
    array = np.asarray(value, dtype=np.float64)
    return array, array.shape[1]
