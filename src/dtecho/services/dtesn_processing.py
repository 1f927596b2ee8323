"""``/v1/dtesn/process``: run an input through a DTESN and describe what every membrane did.

A network is a pure function of its configuration (depth, size, integrator, seed, input
width), so built networks are kept in a small LRU and reused. Inputs are integrated in chunks
of :data:`CHUNK_STEPS` samples, carrying the state across chunks: memory stays O(chunk · N)
however long the input, progress can be reported between chunks, and a cancelled request stops
at the next chunk.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dtecho.batching.micro import usable_cpus
from dtecho.dtesn import DTESN, bseries
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
            # CSR products accumulate every row in the same order whatever the batch width,
            # so a sequence gives bit-identical numbers alone or batched with others. That
            # holds for SciPy's products and for the compiled Numba kernels (the ``fast``
            # extra; used when installed: ~2× faster), which agree with each other to ~1e-15
            # — so the numbers of one server never depend on batching, but may differ in
            # the last bits between an install with Numba and one without.
            matrix_format="sparse",
            weights="random",  # pinned: the library's "auto" would change a served network
            backend="auto",
            # A batch of ≥ 16 sequences is split over this many threads in the compiled loop
            # (the numbers do not depend on it); one sequence always runs on one thread.
            n_jobs=usable_cpus(),
        )


@dataclass
class _Network:
    model: DTESN
    spectral_radius: float
    order: int
    conditions_checked: int
    table: np.ndarray | None  # (256, N) W_in[:, byte] + b for byte inputs: a row gather


@dataclass
class ProcessResult:
    """The real outcome of one run, JSON-ready through :meth:`as_dict`."""

    config: NetworkConfig
    steps: int
    membranes: list[dict[str, Any]]
    features: list[float]
    final_state: np.ndarray
    trajectory: list[list[float]] | None
    spectral_radius: float
    order: int
    conditions_checked: int
    processing_time_ms: float

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


class Processor:
    """Builds (and caches) networks and runs inputs through them. Thread-safe."""

    def __init__(self, max_networks: int = 8) -> None:
        self._networks: OrderedDict[NetworkConfig, _Network] = OrderedDict()
        self._max = max_networks
        self._lock = threading.Lock()

    def network(self, config: NetworkConfig) -> _Network:
        """The built network for ``config`` (raises ValueError for impossible configurations)."""
        with self._lock:
            cached = self._networks.get(config)
            if cached is not None:
                self._networks.move_to_end(config)
                return cached
        model = config.model()
        model._ensure_reservoir(config.input_dim)
        tableau = bseries.TABLEAUX[config.integrator]
        order = bseries.order(tableau)
        reservoir = model.reservoir_
        table = None
        if config.input_dim == VOCAB:  # the rows project_bytes gathers, built once
            table = np.ascontiguousarray(reservoir.W_in.T, dtype=reservoir.dtype)
            if reservoir.bias.any():
                table += reservoir.bias.astype(reservoir.dtype)
        built = _Network(
            model=model,
            spectral_radius=spectral_radius(reservoir.W),
            order=order,
            conditions_checked=len(bseries.order_conditions(min(order + 1, 8))),
            table=table,
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
        membranes = network.model.membranes_
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
            states = reservoir.run_projected(P, x0=x[:active], lengths=live)
            x[:active] = states[np.arange(active), live - 1]
            for b in range(active):
                for t in wanted[b][(wanted[b] >= start) & (wanted[b] < start + steps[b])]:
                    row = states[b, t - start]
                    trajectories[b].append([_rms(row[m.start : m.stop]) for m in membranes])
                if steps[b] < width:  # rows past a sequence's end hold inputs: add zeros
                    states[b, steps[b] :] = 0
            # Whole-batch reductions over time (each sums a sequence's rows in time order,
            # as alone): few large NumPy calls, so the worker thread rarely gives up the GIL
            # — each time it does, it may wait a switch interval (5 ms) for the event loop.
            sum_state[:active] += states.sum(axis=1)
            sum_abs[:active] += np.abs(states, out=states).sum(axis=1)
            if progress is not None:
                progress(min(start + CHUNK_STEPS, total), total)
        elapsed = round((time.perf_counter() - started) * 1000, 3)
        results: list[ProcessResult | None] = [None] * batch
        for b, original in enumerate(order):
            results[original] = self._describe(
                config, network, int(lengths[b]), x[b], sum_abs[b], sum_state[b],
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
        sum_abs: np.ndarray,
        sum_state: np.ndarray,
        trajectory: list[list[float]] | None,
        elapsed_ms: float,
    ) -> ProcessResult:
        steps = max(total, 1)
        final = state.astype(np.float64)
        described, features = [], []
        for m in network.model.membranes_:
            block = slice(m.start, m.stop)
            mean_abs = float(sum_abs[block].sum() / (steps * m.units))
            mean_act = float(sum_state[block].sum() / (steps * m.units))
            norm = float(np.linalg.norm(final[block]))
            described.append(
                {**m.as_dict(), "final_state_norm": norm, "mean_abs_activation": mean_abs}
            )
            features += [mean_act, mean_abs, norm / np.sqrt(m.units)]
        return ProcessResult(
            config=config,
            steps=total,
            membranes=described,
            features=features,
            final_state=final,
            trajectory=trajectory,
            spectral_radius=network.spectral_radius,
            order=network.order,
            conditions_checked=network.conditions_checked,
            processing_time_ms=elapsed_ms,
        )


def _rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(values)))) if values.size else 0.0


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
