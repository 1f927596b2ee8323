"""Trainable DTESN models: train (foreground or as a background job), predict, forecast,
update online with recursive least squares, list and delete — persisted in a
:class:`~dtecho.services.model_store.ModelStore`. With ``"config": "auto"`` the training job
first searches the settings (:func:`dtecho.dtesn.search.search`), reporting each trial in the
record's ``progress``; :meth:`ModelService.events` streams a job's progress until it ends.

Predictions go through a :class:`~dtecho.batching.micro.MicroBatcher` when batching is
enabled, keyed by (model id, version, horizon): concurrent predictions on one model version
share a vectorised reservoir run, and a new version never shares a batch with the old one.
:func:`predict_many` makes every sequence's numbers independent of its batch, so batched
and unbatched answers are bit-identical."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from dtecho.batching.micro import BatchObserver, batcher_from_settings
from dtecho.config import BatchingSettings, WorkLimits
from dtecho.dtesn import DTESN
from dtecho.dtesn.reservoir import Reservoir
from dtecho.dtesn.search import DEFAULT_SPACE, TREE_SPACE, TrialProgress, check_folds, search
from dtecho.errors import Conflict, InvalidRequest, NotFound, PayloadTooLarge
from dtecho.protocol.dtesn import ModelConfig, TrainRequest, TuneOptions
from dtecho.registry.versions import PRODUCTION, ModelVersions, data_fingerprint, parse_ref
from dtecho.services.budget import (
    Cost,
    WorkBudget,
    fit_cost,
    predict_cost,
    tune_cost,
    update_cost,
)
from dtecho.services.model_store import ModelStore, new_model_id
from dtecho.services.monitoring import ModelMonitor

__all__ = [
    "ModelService",
    "batch_reservoir",
    "config_from_form",
    "nrmse",
    "parse_table",
    "predict_many",
    "tune_from_form",
]

BACKGROUND_WORK = 20_000_000  # rows × units above which training runs as a background job
MAX_TRAINING_ROWS = 1_000_000
PREVIEW_ROWS = 200
STREAM_CHUNK = 256  # rows per streamed predictions/forecast event
PREDICT_STEPS = 256  # time steps per reservoir call in predict_many: a fixed grid
PREDICT_GROUP_BYTES = 32 * 2**20  # states held at once by predict_many (sequences per group)
EVENTS_POLL_SECONDS = 0.1  # how often an events stream looks at the job's record
EVENTS_HEARTBEAT_SECONDS = 15.0  # an SSE comment this often keeps idle proxies from closing
# The ModelConfig fields the search chooses (a "tree" choice sets depth or tree); the others
# stay at ModelConfig's defaults, so the finished record's config rebuilds the same model.
_SEARCHED = {*DEFAULT_SPACE, *TREE_SPACE, "depth"}


def finite_or_none(value: float) -> float | None:
    """``value``, or None where it is NaN or infinite (JSON has neither)."""
    return value if np.isfinite(value) else None


def nrmse(predicted: np.ndarray, target: np.ndarray) -> float:
    """Root-mean-square error over all outputs divided by the targets' standard deviation."""
    spread = float(np.std(target))
    error = float(np.sqrt(np.mean(np.square(predicted - target))))
    return error / spread if spread > 0 else error


def parse_table(raw: bytes, filename: str) -> np.ndarray:
    """A 2-D float array from an uploaded ``.npy`` or CSV file (an optional header row)."""
    try:
        if filename.endswith(".npy"):
            array = np.load(io.BytesIO(raw), allow_pickle=False)
        else:
            text = raw.decode("utf-8")
            first = text.lstrip().split("\n", 1)[0]
            has_header = any(ch.isalpha() and ch not in "eE" for ch in first)
            array = np.loadtxt(io.StringIO(text), delimiter=",", skiprows=int(has_header), ndmin=2)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"Cannot read the uploaded table: {exc}", param="file") from None
    array = np.asarray(array, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[0] < 2 or not np.isfinite(array).all():
        raise InvalidRequest(
            "The uploaded table must be a finite 2-D array with at least two rows.", param="file"
        )
    return array


def _teacher_forced(
    model: DTESN, inputs: np.ndarray, state: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Predictions for ``inputs`` continuing from ``state``, and the state after them."""
    states = model.run(inputs, initial_state=state)
    return model.readout_.predict([inputs, states]), states[-1]


def _closed_loop(
    model: DTESN, y: np.ndarray, state: np.ndarray, steps: int, include_y: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``steps`` closed-loop outputs (starting with ``y`` itself when ``include_y``): each
    output is fed back as the next input, exactly as ``DTESN.generate`` does."""
    out = [y] if include_y else []
    while len(out) < steps:
        state = model.run(y[None], initial_state=state)[-1]
        y = model.readout_.predict([y[None], state[None]])[0]
        out.append(y)
    return np.array(out), y, state


def batch_reservoir(model: DTESN) -> Reservoir:
    """``model``'s reservoir (same weights) pinned to CSR products for any batch size.

    With ``matrix_format="auto"`` a reservoir switches between BLAS and CSR with the batch
    size, and BLAS rounds a lone row (gemv) differently from a row among others (gemm). CSR
    products (SciPy's or the Numba kernels) sum every row in index order whatever the batch
    width, so a sequence's states are bit-identical alone and batched."""
    res = model.reservoir_
    return Reservoir(
        res.W, res.W_in, res.bias, res.leak,
        tableau=res.tableau, substeps=res.substeps, activation=res.activation,
        dtype=res.dtype.name, matrix_format="sparse", backend=res.backend, n_jobs=res.n_jobs,
    )  # fmt: skip


def predict_many(
    model: DTESN, reservoir: Reservoir, inputs: Sequence[np.ndarray], horizon: int
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Teacher-forced predictions for each (T_i, d) input, and ``horizon`` closed-loop steps
    after it (as ``DTESN.generate``: the first is the prediction at the last input), all
    sequences advancing together (one CSR product per step for the batch).

    Every number of a sequence is computed by operations of the same shapes on the same data
    whatever else is in the batch: inputs are projected per sequence on a fixed time grid of
    :data:`PREDICT_STEPS`, states come from ``reservoir`` (see :func:`batch_reservoir`), the
    readout runs per sequence and chunk (teacher-forced) or per row (closed loop). Hence
    batched == alone, bit for bit; versus ``DTESN.predict`` (BLAS or CSR, batch-shaped
    chunks) the numbers agree to rounding (~1e-15 relative on the states)."""
    readout = model.readout_
    dtype, units = reservoir.dtype, reservoir.units
    n_out = int(model.n_outputs_)
    lengths = np.array([len(u) for u in inputs], dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    predicted = [np.empty((int(length), n_out), dtype) for length in lengths]
    final = np.zeros((len(inputs), units), dtype)
    group = max(1, PREDICT_GROUP_BYTES // (PREDICT_STEPS * units * dtype.itemsize))
    for g0 in range(0, len(inputs), group):
        members = order[g0 : g0 + group]
        lens = lengths[members]
        x = np.zeros((len(members), units), dtype)
        for t0 in range(0, int(lens[0]), PREDICT_STEPS):
            steps = np.clip(lens - t0, 0, PREDICT_STEPS)
            k = int(np.count_nonzero(steps))
            P = np.zeros((k, int(steps[0]), units), dtype)
            for b in range(k):
                piece = inputs[members[b]][t0 : t0 + steps[b]]
                P[b, : steps[b]] = reservoir.project(piece[None])[0]
            S = reservoir.run_projected(P, x0=x[:k], lengths=steps[:k])
            for b in range(k):
                n = int(steps[b])
                U = np.asarray(inputs[members[b]][t0 : t0 + n], dtype)
                predicted[members[b]][t0 : t0 + n] = readout.predict([U, S[b, :n]])
                x[b] = S[b, n - 1]
        final[members] = x
    forecasts: list[np.ndarray | None] = [None] * len(inputs)
    if horizon:
        out = np.empty((len(inputs), horizon, n_out), dtype)
        u = np.stack([np.asarray(seq[-1], dtype) for seq in inputs])
        x = final
        for i in range(horizon):
            if i:
                P = np.stack([reservoir.project(row[None, None])[0] for row in u])
                x = reservoir.run_projected(P, x0=x)[:, 0]
            for b in range(len(inputs)):
                out[b, i] = readout.predict([u[b], x[b]])
            u = out[:, i].copy()
        forecasts = list(out)
    return list(zip(predicted, forecasts, strict=True))


def _shape(config: dict[str, Any] | ModelConfig) -> dict[str, Any]:
    """The settings a cost estimate needs, from a ModelConfig or a record's ``config``."""
    data = config.model_dump() if isinstance(config, ModelConfig) else config
    keys = ("units", "depth", "tree", "connectivity", "integrator")
    return {key: data[key] for key in keys}


def _estimator(config: ModelConfig) -> DTESN:
    return DTESN(**config.model_dump())


class _Interrupted(Exception):
    """Raised in a search's progress callback when the service closes: ends the search."""


class ModelService:
    """Operations on trained models; the numerical work runs in worker threads."""

    def __init__(
        self,
        data_dir: Path,
        batching: BatchingSettings | None = None,
        observer: BatchObserver | None = None,
        limits: WorkLimits | None = None,
        keep_versions: int = 20,
    ) -> None:
        limits = limits or WorkLimits()
        # The registry (versions and aliases in the store), attached once the store is open;
        # without it a model is its latest version.
        self.versions: ModelVersions | None = None
        self.experiments: Any = None  # dtecho.services.experiments.ExperimentService
        self.observations: Any = None  # dtecho.store.observations.ObservationRepository
        self.keep_versions = keep_versions  # unaliased versions kept; older ones archived
        self.budget = WorkBudget(limits.max_sync_cost, limits.max_background_cost)
        self.store = ModelStore(data_dir / "dtesn-models")
        self.monitor = ModelMonitor(self.store)  # data quality and drift after training
        self._locks: dict[str, asyncio.Lock] = {}
        self._jobs: set[asyncio.Task[None]] = set()
        self._reservoirs: OrderedDict[tuple[str, int], tuple[DTESN, Reservoir]] = OrderedDict()
        self._reservoirs_lock = threading.Lock()
        self._closing = False
        self.batcher = batcher_from_settings(self._predict_batch, batching, observer)
        for record in self.store.records():  # a job cannot survive its process
            if record["status"] == "training":
                record.update(status="failed", error="interrupted by a restart")
                self.store.put_record(record)

    def attach_versions(self, versions: ModelVersions) -> None:
        """Record every version in the registry and resolve ``model@ref`` through it."""
        self.versions = versions

    async def close(self) -> None:
        self._closing = True  # a search running in a thread stops at its next trial
        for job in list(self._jobs):
            job.cancel()

    # ---- training -----------------------------------------------------------------------

    async def train(
        self,
        request: TrainRequest,
        inputs: np.ndarray,
        targets: np.ndarray,
        creator: str | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Create a model; returns (record, runs_in_background). Its first version becomes
        ``production``; ``creator`` (a principal id) is recorded with it."""
        rows = inputs.shape[0]
        if targets.shape[0] != rows:
            raise InvalidRequest(
                f"targets has {targets.shape[0]} rows but inputs has {rows}.", param="targets"
            )
        if rows > MAX_TRAINING_ROWS:
            raise PayloadTooLarge(f"At most {MAX_TRAINING_ROWS} rows.", param="inputs")
        if request.warmup >= rows:
            raise InvalidRequest(
                f"warmup {request.warmup} leaves no rows of the {rows} to train on.",
                param="warmup",
            )
        tuning = request.tuning
        estimator: DTESN | None = None
        background = request.background
        width = int(inputs.shape[1])
        if tuning is None:
            assert isinstance(request.config, ModelConfig)
            try:
                estimator = _estimator(request.config)
                _ = estimator.membranes  # checks units against the structure before any work
            except ValueError as exc:
                raise InvalidRequest(str(exc), param="config") from None
            cost = fit_cost(rows, input_dim=width, **_shape(request.config))
            if background is None:  # large trainings answer at once and run as jobs
                background = (
                    rows * request.config.units > BACKGROUND_WORK
                    or cost.seconds > self.budget.max_sync_cost
                )
            self.budget.check(
                cost,
                background=background,
                alternative='Send it with "background": true to train it as a job '
                f"(202; poll the model), within work_limits.max_background_cost "
                f"({self.budget.max_background_cost:g}).",
            )
        else:
            try:  # enough rows for the folds: a 400 now, not a failed job later
                check_folds(inputs, targets, folds=tuning.folds, warmup=request.warmup)
            except ValueError as exc:
                raise InvalidRequest(
                    f"Cannot tune on this data: {exc}.", param="tune.folds"
                ) from None
            search_cost = tune_cost(rows, trials=tuning.trials, folds=tuning.folds,
                                    units=tuning.units, input_dim=width)  # fmt: skip
            self.budget.check(search_cost, background=True)
        now = int(time.time())
        record: dict[str, Any] = {
            "id": new_model_id(),
            "object": "dtesn.model",
            "name": request.name,
            "created": now,
            "updated": now,
            "status": "training",
            "version": 0,
            "config": "auto" if tuning else request.config.model_dump(),  # type: ignore[union-attr]
            "input_dim": int(inputs.shape[1]),
            "output_dim": int(targets.shape[1]),
            "warmup": request.warmup,
            "versions": [],
        }
        if tuning is not None:
            record["tuning"] = tuning.model_dump()
        self.store.put_record(record)
        if tuning is not None:  # a search is many fits: always a background job
            self._start(self._tune_job(record, tuning, inputs, targets, creator))
            return record, True
        assert estimator is not None and isinstance(request.config, ModelConfig)
        if background:
            self._start(self._train_job(record, estimator, inputs, targets, creator))
            return record, True
        await self._fit(record, estimator, inputs, targets, creator)
        return record, False

    def _start(self, work: Any) -> None:
        job = asyncio.create_task(work)
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    async def _train_job(
        self, record: dict[str, Any], estimator: DTESN, X, Y, creator: str | None
    ) -> None:
        try:
            await self._fit(record, estimator, X, Y, creator)
        except Exception as exc:  # a failed job is recorded, not raised into the void
            self._failed(record, exc)

    def _failed(self, record: dict[str, Any], exc: BaseException) -> None:
        record.pop("progress", None)
        message = "interrupted by a shutdown" if isinstance(exc, _Interrupted) else None
        record.update(status="failed", error=message or f"{type(exc).__name__}: {exc}")
        self.store.put_record(record)

    async def _tune_job(
        self, record: dict[str, Any], options: TuneOptions, X, Y, creator: str | None
    ) -> None:
        """Search the settings, then fit, evaluate and save the best as ``_fit`` does."""
        try:
            estimator = await asyncio.to_thread(self._tune, record, options, X, Y)
            await self._fit(record, estimator, X, Y, creator, kind="tune")
        except Exception as exc:  # _Interrupted too: close() cancels jobs after setting it
            self._failed(record, exc)

    def _tune(self, record: dict[str, Any], options: TuneOptions, X, Y) -> DTESN:
        """The search (in a worker thread): each trial's progress is saved in the record."""
        wall = time.time()
        base = {
            k: v
            for k, v in ModelConfig(units=options.units).model_dump().items()
            if k not in _SEARCHED
        }

        def report(step: TrialProgress) -> None:
            if self._closing:
                raise _Interrupted
            record["progress"] = {
                "phase": "tuning",
                "trial": step.done,
                "trials": step.total,
                "state": step.row["state"],
                "best_score": step.best_score,
                "elapsed_seconds": round(time.time() - wall, 3),
            }
            self.store.put_record(record)

        record["progress"] = {"phase": "tuning", "trial": 0, "trials": options.trials,
                              "best_score": None, "elapsed_seconds": 0.0}  # fmt: skip
        self.store.put_record(record)
        result = search(
            X, Y, n_trials=options.trials, folds=options.folds, warmup=record["warmup"],
            seed=options.seed, base=base, trees=options.trees, progress=report, refit=False,
        )  # fmt: skip
        config = ModelConfig.model_validate(result.params)
        record["config"] = config.model_dump()
        record["tuning"] = {**options.model_dump(), "result": result.summary(top=5)}
        self.store.put_record(record)
        return _estimator(config)

    def _phase(self, record: dict[str, Any], phase: str, started: float) -> None:
        """Record where a training is (``fitting``, ``evaluating``, ``saving``) for pollers."""
        record["progress"] = {"phase": phase, "elapsed_seconds": round(time.time() - started, 3)}
        self.store.put_record(record)

    async def _fit(
        self,
        record: dict[str, Any],
        estimator: DTESN,
        X,
        Y,
        creator: str | None = None,
        kind: str = "fit",
    ) -> None:
        started, wall = time.perf_counter(), time.time()
        warm = record["warmup"]
        self._phase(record, "fitting", wall)
        await asyncio.to_thread(estimator.fit, X, Y, warm)
        self._phase(record, "evaluating", wall)
        predicted = await asyncio.to_thread(estimator.predict, X)
        score = nrmse(predicted[warm:], Y[warm:])
        self._phase(record, "saving", wall)
        tail = slice(max(record["warmup"], X.shape[0] - PREVIEW_ROWS), None)
        self.store.save_version(record["id"], 1, estimator)
        # What later observations are checked against: ranges, quantiles, a drift sample.
        await asyncio.to_thread(self.monitor.learn_reference, record["id"], X, Y)
        record.pop("progress", None)
        record.update(
            status="ready",
            version=1,
            updated=int(time.time()),
            training={
                "nrmse": score,
                "rows": int(X.shape[0]),
                "seconds": round(time.perf_counter() - started, 3),
                # The end of the fit, first output only: what the model page plots.
                "preview": {
                    "target": Y[tail, 0].tolist(),
                    "prediction": predicted[tail, 0].tolist(),
                },
            },
        )
        record["versions"].append(
            {"version": 1, "kind": "fit", "created": record["updated"], "nrmse": score}
        )
        # In the registry before the record says ready: a reader never sees a ready model
        # without its version.
        await self._record_version(
            record, 1, parent=None, kind=kind, data=(X, Y), creator=creator,
            metrics={"nrmse": score, "rows": int(X.shape[0])}, promote=True,
        )  # fmt: skip
        self.store.put_record(record)

    async def _record_version(
        self,
        record: dict[str, Any],
        version: int,
        *,
        parent: int | None,
        kind: str,
        data: tuple[np.ndarray, np.ndarray],
        metrics: dict[str, Any],
        creator: str | None,
        promote: bool,
    ) -> None:
        """The version in the registry (and ``production`` moved to it when ``promote``),
        then the oldest unaliased versions past ``keep_versions`` archived."""
        if self.versions is None:
            return
        model_id = record["id"]
        await self.versions.record(
            model_id, version, parent=parent, kind=kind, config=record["config"],
            fingerprint=data_fingerprint(*data), metrics=metrics, creator=creator,
        )  # fmt: skip
        if promote:
            await self.versions.move(model_id, PRODUCTION, version, actor=creator)
        aliased = await self.versions.aliased_versions(model_id)
        available = [
            v.version
            for v in await self.versions.versions(model_id)
            if v.status == "available" and v.version not in aliased and v.version != version
        ]
        for old in available[: max(0, len(available) - self.keep_versions)]:
            await self.versions.archive(model_id, old)
            self.store.delete_version(model_id, old)

    # ---- reading ------------------------------------------------------------------------

    async def events(self, model_id: str) -> AsyncIterator[tuple[str, dict[str, Any]] | None]:
        """Check the model exists now; then its job's ``progress`` events (each change of the
        record's ``progress``: phase, trial k of n, best score) and a ``done`` event with the
        final status once it is no longer training (at once for a finished model). None in
        between is a heartbeat. The record in the store is the source, so a job running in
        another worker process is followed too."""
        record = self.store.record(model_id)
        return self._events(model_id, record)

    async def _events(
        self, model_id: str, record: dict[str, Any]
    ) -> AsyncIterator[tuple[str, dict[str, Any]] | None]:
        last: Any = None
        quiet = 0.0
        while True:
            progress = record.get("progress")
            if progress is not None and progress != last:
                yield "progress", {"id": model_id, **progress}
                last, quiet = progress, 0.0
            if record["status"] != "training":
                done = {"id": model_id, "status": record["status"], "version": record["version"]}
                for key in ("error", "training", "config"):
                    if key in record:
                        done[key] = record[key]
                if isinstance(record.get("tuning"), dict) and "result" in record["tuning"]:
                    done["tuning"] = record["tuning"]["result"]
                yield "done", done
                return
            await asyncio.sleep(EVENTS_POLL_SECONDS)
            quiet += EVENTS_POLL_SECONDS
            if quiet >= EVENTS_HEARTBEAT_SECONDS:
                yield None
                quiet = 0.0
            try:
                record = self.store.record(model_id)
            except NotFound:  # deleted while followed
                yield "done", {"id": model_id, "status": "deleted", "version": record["version"]}
                return

    def get(self, model_id: str) -> dict[str, Any]:
        return self.store.record(parse_ref(model_id).model_id)

    async def resolve(self, reference: str) -> tuple[dict[str, Any], int]:
        """The ready model ``reference`` names (``dm-…``, ``dm-…@3``, ``dm-…@alias``) and the
        version it names now: the bare id is ``production`` when that alias is set, else
        the latest version."""
        ref = parse_ref(reference)
        record = self._ready(ref.model_id)
        latest = int(record["version"])
        if self.versions is None:
            if ref.alias is not None:
                raise NotFound(f"Model '{ref.model_id}' has no alias '{ref.alias}'.",
                               param="alias", code="alias_not_found")  # fmt: skip
            if ref.version is not None and not 1 <= ref.version <= latest:
                raise NotFound(f"Model '{ref.model_id}' has no version {ref.version}.",
                               param="version", code="version_not_found")  # fmt: skip
            return record, ref.version or latest
        version = await self.versions.resolve(ref, latest)
        if ref.version is not None:
            await self.versions.check_servable(ref.model_id, version)
        return record, version

    async def _estimator_of(self, model_id: str, version: int) -> DTESN:
        """The loaded estimator of a version (read from disk in a thread the first time)."""
        model = self.store.loaded(model_id, version)
        if model is None:
            model = await asyncio.to_thread(self.store.load, model_id, version)
        return model

    def list(self) -> list[dict[str, Any]]:
        return self.store.records()

    async def delete(self, model_id: str) -> None:
        """The model, every version's weights, its registry entries and observations."""
        self.store.delete(model_id)
        if self.versions is not None:
            await self.versions.forget(model_id)
        if self.observations is not None:
            await self.observations.delete_model(model_id)

    async def set_learning(self, model_id: str, settings: dict[str, Any]) -> dict[str, Any]:
        """Turn continuous learning on or off (the rounds keep their place)."""
        lock = self._locks.setdefault(model_id, asyncio.Lock())
        async with lock:
            record = self._ready(model_id)
            if self.observations is None:
                raise Conflict("This server stores no observations.",
                               code="observations_unavailable")  # fmt: skip
            previous = record.get("learning") or {}
            record["learning"] = {
                **settings,
                "last_observation_id": previous.get("last_observation_id", 0),
                "rounds": previous.get("rounds", 0),
                "last_round": previous.get("last_round"),
            }
            self.store.put_record(record)
            return record

    def _ready(self, model_id: str) -> dict[str, Any]:
        record = self.store.record(model_id)
        if record["status"] != "ready":
            raise Conflict(
                f"Model '{model_id}' is {record['status']}"
                + (f": {record['error']}" if record.get("error") else "."),
                code="model_not_ready",
            )
        return record

    def _check_width(self, record: dict[str, Any], array: np.ndarray, param: str) -> None:
        key = "input_dim" if param == "inputs" else "output_dim"
        if array.shape[1] != record[key]:
            raise InvalidRequest(
                f"'{param}' rows have {array.shape[1]} values; the model expects {record[key]}.",
                param=param,
            )

    # ---- predicting and updating --------------------------------------------------------

    def _reservoir(self, model_id: str, version: int, model: DTESN) -> Reservoir:
        """The CSR-pinned reservoir of a loaded model version (a few kept)."""
        with self._reservoirs_lock:
            cached = self._reservoirs.get((model_id, version))
            if cached is not None and cached[0] is model:
                self._reservoirs.move_to_end((model_id, version))
                return cached[1]
        reservoir = batch_reservoir(model)
        with self._reservoirs_lock:
            self._reservoirs[model_id, version] = (model, reservoir)
            while len(self._reservoirs) > 16:
                self._reservoirs.popitem(last=False)
        return reservoir

    @staticmethod
    def _predict_cost(record: dict[str, Any], inputs: np.ndarray, horizon: int) -> Cost:
        return predict_cost(
            len(inputs), horizon, input_dim=record["input_dim"], **_shape(record["config"])
        )

    def _predict_batch(
        self, key: tuple[str, int, int], items: list[tuple[DTESN, np.ndarray]]
    ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Predictions of one model version (every item holds the same model object)."""
        model_id, version, horizon = key
        model = items[0][0]
        reservoir = self._reservoir(model_id, version, model)
        return predict_many(model, reservoir, [inputs for _, inputs in items], horizon)

    async def predict(
        self, model_id: str, inputs: np.ndarray, horizon: int, version: int | None = None
    ) -> dict[str, Any]:
        """Teacher-forced outputs for ``inputs``, then ``horizon`` closed-loop steps, by the
        version ``model_id`` names (a reference: ``dm-…@3``) unless ``version`` is given."""
        if version is None:
            record, version = await self.resolve(model_id)
        else:
            record = self._ready(parse_ref(model_id).model_id)
        model_id = record["id"]
        self._check_width(record, inputs, "inputs")
        if horizon and record["input_dim"] != record["output_dim"]:
            raise InvalidRequest(
                "Closed-loop forecasting feeds outputs back as inputs, so it needs "
                f"output_dim == input_dim (here {record['output_dim']} and {record['input_dim']}).",
                param="horizon",
            )
        if len(inputs) == 0:
            raise InvalidRequest("'inputs' has no rows.", param="inputs")
        self.budget.check(
            self._predict_cost(record, inputs, horizon),
            alternative='With "stream": true the predictions arrive as they are computed, '
            f"within work_limits.max_background_cost ({self.budget.max_background_cost:g}).",
        )
        model = await self._estimator_of(model_id, version)
        if self.batcher is not None:
            # The version is part of the key: an update never shares a batch with the old one.
            key = (model_id, version, horizon)
            predicted, forecast = await self.batcher.submit(key, (model, inputs))
        else:
            batch = [(model, inputs)]
            ((predicted, forecast),) = await asyncio.to_thread(
                self._predict_batch, (model_id, version, horizon), batch
            )
        return {
            "object": "dtesn.prediction",
            "model": model_id,
            "version": version,
            "predictions": predicted.tolist(),
            "forecast": forecast.tolist() if forecast is not None else None,
        }

    async def predict_stream(
        self, model_id: str, inputs: np.ndarray, horizon: int
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Validate now; then (event, payload) pairs computed as they stream: ``predictions``
        per chunk of inputs, ``forecast`` per chunk of closed-loop steps, then ``done``. The
        numbers are those of :meth:`predict` up to floating-point rounding."""
        record, version = await self.resolve(model_id)
        self._check_width(record, inputs, "inputs")
        if horizon and record["input_dim"] != record["output_dim"]:
            raise InvalidRequest(
                "Closed-loop forecasting needs output_dim == input_dim.", param="horizon"
            )
        self.budget.check(self._predict_cost(record, inputs, horizon), background=True)
        model = await self._estimator_of(record["id"], version)
        return self._prediction_events(model, version, inputs, horizon)

    async def _prediction_events(
        self, model: DTESN, version: int, inputs: np.ndarray, horizon: int
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        state: np.ndarray | None = None
        for start in range(0, len(inputs), STREAM_CHUNK):
            chunk = inputs[start : start + STREAM_CHUNK]

            predicted, state = await asyncio.to_thread(_teacher_forced, model, chunk, state)
            yield "predictions", {"start": start, "values": predicted.tolist()}
        if horizon:
            y, done = predicted[-1], 0
            while done < horizon:
                steps = min(STREAM_CHUNK, horizon - done)
                values, y, state = await asyncio.to_thread(
                    _closed_loop, model, y, state, steps, done == 0
                )
                yield "forecast", {"start": done, "values": values.tolist()}
                done += len(values)
        yield "done", {"version": version, "steps": len(inputs), "horizon": horizon}

    async def update(
        self,
        model_id: str,
        inputs: np.ndarray,
        targets: np.ndarray,
        warmup: int,
        *,
        promote: bool = True,
        creator: str | None = None,
    ) -> dict[str, Any]:
        """An RLS update of the version ``model_id`` names (production by default) with new
        data: a new version (the latest + 1, its parent that one), ``production`` moved to it
        when ``promote``. Returns the model's record."""
        reference = model_id
        model_id = parse_ref(reference).model_id
        lock = self._locks.setdefault(model_id, asyncio.Lock())
        async with lock:
            record, base = await self.resolve(reference)
            self._check_width(record, inputs, "inputs")
            self._check_width(record, targets, "targets")
            if targets.shape[0] != inputs.shape[0]:
                raise InvalidRequest("targets and inputs differ in length.", param="targets")
            if warmup >= inputs.shape[0]:
                raise InvalidRequest("warmup leaves no rows to learn from.", param="warmup")
            cost = update_cost(
                len(inputs), input_dim=record["input_dim"], **_shape(record["config"])
            )
            self.budget.check(cost)
            model = await asyncio.to_thread(self.store.fresh_copy, model_id, base)

            def work() -> tuple[float, float]:
                before = nrmse(model.predict(inputs)[warmup:], targets[warmup:])
                model.partial_fit(inputs, targets, warmup=warmup)
                return before, nrmse(model.predict(inputs)[warmup:], targets[warmup:])

            before, after = await asyncio.to_thread(work)
            version = record["version"] + 1
            self.store.save_version(model_id, version, model)
            metrics = {
                "rows": int(inputs.shape[0]),
                "nrmse_before": finite_or_none(before),
                "nrmse_after": finite_or_none(after),
            }
            await self._record_version(
                record, version, parent=base, kind="rls_update", data=(inputs, targets),
                metrics=metrics, creator=creator, promote=promote,
            )  # fmt: skip
            record.update(version=version, updated=int(time.time()))
            record["versions"].append(
                {"version": version, "kind": "rls_update", "created": record["updated"],
                 "parent": base, **metrics}
            )  # fmt: skip
            self.store.put_record(record)
            return record

    # ---- observations -------------------------------------------------------------------

    async def observe(
        self,
        model_id: str,
        targets: np.ndarray,
        inputs: np.ndarray | None,
        request_id: str | None,
        subject: str | None = None,
    ) -> dict[str, Any]:
        """Ground truth: rows checked against the training reference (anomalous ones
        quarantined), the clean inputs added to the drift window, production's squared
        error fed to error drift, and a running experiment's arms scored."""
        record = self._ready(model_id)
        self._check_width(record, targets, "targets")
        quarantined: list[dict[str, Any]] = []
        known: dict[int, np.ndarray] = {}
        if inputs is not None:
            self._check_width(record, inputs, "inputs")
            # Scored on production and on two arms: three predictions' work at most.
            cost = self._predict_cost(record, inputs, 0)
            self.budget.check(replace(cost, fixed=3 * cost.fixed, per_item=3 * cost.per_item))
            mask, quarantined = self.monitor.check(model_id, inputs, targets)
            inputs, targets = inputs[mask], targets[mask]
            if len(inputs) and self.observations is not None:  # what the learner learns from
                await self.observations.add(
                    model_id, inputs.tolist(), targets.tolist(),
                    subject=subject, request_id=request_id,
                )  # fmt: skip
            if len(inputs):
                answer = await self.predict(model_id, inputs, 0)
                predicted = np.asarray(answer["predictions"])
                known[int(answer["version"])] = predicted  # an arm of that version reuses it
                self.monitor.errors(model_id, np.mean((predicted - targets) ** 2, axis=1))
        result: dict[str, Any] = {"object": "dtesn.observation", "model": model_id,
                                  "experiment": None, "scored": {}}  # fmt: skip
        if self.experiments is not None and (inputs is None or len(inputs)):
            result = await self.experiments.observe(
                model_id, targets, inputs, request_id, predicted=known
            )
        result["accepted"] = len(targets) if inputs is not None else None
        result["quarantined"] = quarantined
        result["monitoring"] = self.monitor.status(model_id)
        return result

    # ---- versions and aliases -----------------------------------------------------------

    def _registry(self) -> ModelVersions:
        if self.versions is None:
            raise Conflict("This server keeps no model registry.", code="registry_unavailable")
        return self.versions

    async def list_versions(self, model_id: str) -> list[dict[str, Any]]:
        """Every version, oldest first, each with the aliases naming it."""
        self.store.record(model_id)  # 404 for an unknown model
        registry = self._registry()
        aliased = await registry.aliased_versions(model_id)
        return [
            {**v.as_dict(), "aliases": sorted(aliased.get(v.version, []))}
            for v in await registry.versions(model_id)
        ]

    async def get_version(self, model_id: str, version: int) -> dict[str, Any]:
        self.store.record(model_id)
        registry = self._registry()
        found = await registry.version(model_id, version)
        aliased = await registry.aliased_versions(model_id)
        return {**found.as_dict(), "aliases": sorted(aliased.get(version, []))}

    async def archive_version(self, model_id: str, version: int) -> dict[str, Any]:
        """Delete a version's weights, keeping its record (409 while an alias names it)."""
        self.store.record(model_id)
        await self._registry().archive(model_id, version)
        self.store.delete_version(model_id, version)
        return await self.get_version(model_id, version)

    async def list_aliases(self, model_id: str) -> list[dict[str, Any]]:
        self.store.record(model_id)
        return [alias.as_dict() for alias in await self._registry().aliases(model_id)]

    async def move_alias(
        self, model_id: str, alias: str, version: int, actor: str | None = None
    ) -> dict[str, Any]:
        """Point ``alias`` at ``version``, loaded first: the first request after the move
        does not wait for the weights, and never meets a half-loaded model."""
        self._ready(model_id)
        self._check_not_in_experiment(model_id, alias)
        registry = self._registry()
        await registry.version(model_id, version)  # 404, and 409 when archived, before
        await registry.check_servable(model_id, version)  # the disk is touched
        await self._estimator_of(model_id, version)
        return (await registry.move(model_id, alias, version, actor=actor)).as_dict()

    async def rollback_alias(
        self, model_id: str, alias: str, actor: str | None = None
    ) -> dict[str, Any]:
        """Point ``alias`` back at the version it named before its last move."""
        self._ready(model_id)
        self._check_not_in_experiment(model_id, alias)
        registry = self._registry()
        current = await registry.alias(model_id, alias, fresh=True)
        if current is not None and current.previous is not None:
            await self._estimator_of(model_id, current.previous)
        return (await registry.rollback(model_id, alias, actor=actor)).as_dict()

    async def delete_alias(self, model_id: str, alias: str) -> None:
        self.store.record(model_id)
        self._check_not_in_experiment(model_id, alias)
        await self._registry().delete_alias(model_id, alias)

    def _check_not_in_experiment(self, model_id: str, alias: str) -> None:
        """A running experiment pinned its arms when it started; moving the alias one was
        named by would make the experiment's name lie (409: stop it first)."""
        if self.experiments is not None and alias in self.experiments.aliases_in_use(model_id):
            raise Conflict(
                f"Alias '{alias}' is an arm of a running experiment of '{model_id}'; stop "
                "the experiment (or let it end) first.",
                code="alias_in_experiment",
            )


def config_from_form(text: str | None) -> ModelConfig | str:
    """The ``config`` form field of an upload: a JSON object (or empty), or ``auto``."""
    if text is not None and text.strip() in ("auto", '"auto"'):
        return "auto"
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        raise InvalidRequest(
            "The 'config' field must be a JSON object or auto.", param="config"
        ) from None
    return ModelConfig.model_validate(data)


def tune_from_form(text: str | None) -> dict[str, Any] | None:
    """The ``tune`` form field of an upload (with ``config=auto``): a JSON object, or absent."""
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise InvalidRequest("The 'tune' field must be a JSON object.", param="tune")
    return data
