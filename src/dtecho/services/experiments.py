"""Experiments on trained DTESN models: start, route, score, analyse, roll back.

The definitions and statuses live in the store (every replica sees a rollback within a
second); each process keeps its own arms' numbers and analyses its own traffic
(:mod:`dtecho.registry.experiments`). See docs/lifecycle.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog

from dtecho.errors import Conflict, InvalidRequest, NotFound
from dtecho.protocol.dtesn import ExperimentRequest
from dtecho.registry.experiments import Arm, RunningExperiment
from dtecho.registry.versions import ModelRef
from dtecho.store.experiments import ExperimentRecord, ExperimentRepository

if TYPE_CHECKING:
    from dtecho.services.dtesn_models import ModelService

__all__ = ["ExperimentService"]

_log = structlog.get_logger("dtecho.registry")
REFRESH_SECONDS = 0.5  # how often running experiments are read again from the store


def _not_found(experiment_id: str) -> NotFound:
    return NotFound(f"No experiment '{experiment_id}'.", param="experiment_id",
                    code="experiment_not_found")  # fmt: skip


class ExperimentService:
    """The experiments of one :class:`ModelService`."""

    def __init__(
        self,
        models: ModelService,
        repository: ExperimentRepository,
        *,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.models = models
        self.repository = repository
        self.on_event = on_event  # (action, details) for the audit log
        self._running: dict[str, RunningExperiment] = {}  # by model id
        self._task: asyncio.Task[None] | None = None
        self._shadows: set[asyncio.Task[None]] = set()
        self.counts: dict[tuple[str], int] = {}  # (event,): started, stopped, rolled_back

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self._refresh()
        self._task = asyncio.create_task(self._loop(), name="dtecho-experiments")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._shadows):
            task.cancel()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            try:
                await self._refresh()
                for experiment in list(self._running.values()):
                    if experiment.due():
                        await self._analyse(experiment)
            except Exception as exc:
                _log.warning("experiments_loop_failed", error=str(exc))

    async def _refresh(self) -> None:
        """Running experiments as the store says: another replica's rollback ends ours."""
        running = {r.model_id: r for r in await self.repository.list(status="running")}
        for model_id in list(self._running):
            if model_id not in running or running[model_id].id != self._running[model_id].id:
                del self._running[model_id]
        for model_id, record in running.items():
            if model_id not in self._running:
                self._running[model_id] = self._view(record)

    @staticmethod
    def _view(record: ExperimentRecord) -> RunningExperiment:
        spec = record.spec
        return RunningExperiment(
            record.id,
            record.model_id,
            spec,
            control_version=int(spec["control_version"]),
            candidate_version=int(spec["candidate_version"]),
        )

    # -- the API ---------------------------------------------------------------------------

    async def create(
        self, model_id: str, request: ExperimentRequest, creator: str | None
    ) -> dict[str, Any]:
        """Start an experiment: 409 when the model already runs one."""
        record = self.models._ready(model_id)
        if model_id in self._running or await self.repository.list(model_id, "running"):
            raise Conflict(
                f"Model '{model_id}' already runs an experiment; stop it first.",
                code="experiment_running",
            )
        control = await self._version(record, request.control, "control")
        candidate = await self._version(record, request.candidate, "candidate")
        if control == candidate:
            raise InvalidRequest(
                f"control and candidate are both version {control}.", param="candidate"
            )
        spec = {
            **request.model_dump(mode="json"),
            "control_version": control,
            "candidate_version": candidate,
        }
        stored = ExperimentRecord(
            id=f"exp-{uuid.uuid4().hex[:16]}",
            model_id=model_id,
            name=request.name,
            status="running",
            spec=spec,
            created_at=datetime.now(UTC),
            created_by=creator,
        )
        # Both versions in memory before the first request is routed to either.
        for version in (control, candidate):
            await self.models._estimator_of(model_id, version)
        await self.repository.add(stored)
        self._running[model_id] = self._view(stored)
        self._event("experiment.started", stored, creator)
        return await self.get(stored.id)

    async def _version(self, record: dict[str, Any], reference: int | str, param: str) -> int:
        ref = (
            ModelRef(record["id"], version=reference)
            if isinstance(reference, int)
            else ModelRef(record["id"], alias=str(reference))
        )
        try:
            version = await self.models._registry().resolve(ref, int(record["version"]))
            await self.models._registry().check_servable(record["id"], version)
        except (NotFound, Conflict) as exc:
            exc.param = param
            raise
        return version

    async def get(self, experiment_id: str) -> dict[str, Any]:
        found = await self.repository.get(experiment_id)
        if found is None:
            raise _not_found(experiment_id)
        return self._describe(found)

    async def list(self, model_id: str) -> list[dict[str, Any]]:
        self.models.store.record(model_id)
        return [self._describe(r) for r in await self.repository.list(model_id)]

    def _describe(self, record: ExperimentRecord) -> dict[str, Any]:
        live = self._running.get(record.model_id)
        described = {
            "object": "dtesn.experiment",
            "id": record.id,
            "model": record.model_id,
            "name": record.name,
            "status": record.status,
            "spec": record.spec,
            "created": int(record.created_at.timestamp()),
            "created_by": record.created_by,
            "ended": int(record.ended_at.timestamp()) if record.ended_at else None,
            "reason": record.reason,
            "analysis": record.analysis,
        }
        if live is not None and live.id == record.id:
            described["live"] = live.as_dict()  # this replica's own numbers
        return described

    async def stop(self, experiment_id: str, actor: str | None) -> dict[str, Any]:
        found = await self.repository.get(experiment_id)
        if found is None:
            raise _not_found(experiment_id)
        if not await self.repository.end(experiment_id, "stopped", "stopped by request"):
            raise Conflict(f"Experiment '{experiment_id}' is {found.status}.",
                           code="experiment_ended")  # fmt: skip
        self._running.pop(found.model_id, None)
        self._event("experiment.stopped", found, actor)
        return await self.get(experiment_id)

    def aliases_in_use(self, model_id: str) -> set[str]:
        """Aliases a running experiment of the model was started from."""
        experiment = self._running.get(model_id)
        if experiment is None:
            return set()
        return {
            str(experiment.spec[arm])
            for arm in ("control", "candidate")
            if isinstance(experiment.spec[arm], str)
        }

    # -- serving ---------------------------------------------------------------------------

    def running(self, model_id: str) -> RunningExperiment | None:
        """The experiment routing the bare model id's requests, if one runs (in memory)."""
        return self._running.get(model_id)

    def mirror(
        self, experiment: RunningExperiment, inputs: np.ndarray, horizon: int, request_id: str
    ) -> None:
        """Send a copy of a request to the candidate in the background (shadow mode)."""
        task = asyncio.create_task(self._shadow(experiment, inputs, horizon, request_id))
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def _shadow(
        self, experiment: RunningExperiment, inputs: np.ndarray, horizon: int, request_id: str
    ) -> None:
        started = time.perf_counter()
        try:
            answer = await self.models.predict(
                experiment.model_id, inputs, horizon, version=experiment.candidate_version
            )
        except Exception:
            experiment.record("candidate", (time.perf_counter() - started) * 1e3, True)
            return
        experiment.record("candidate", (time.perf_counter() - started) * 1e3, False)
        experiment.remember(request_id, "candidate", np.asarray(answer["predictions"]))

    async def observe(
        self,
        model_id: str,
        targets: np.ndarray,
        inputs: np.ndarray | None,
        request_id: str | None,
        predicted: dict[int, np.ndarray] | None = None,
    ) -> dict[str, Any]:
        """Score ground truth (already checked by the caller): the prediction that answered
        ``request_id`` (and its shadow), and, given ``inputs``, both arms on them —
        ``predicted`` holds predictions of ``inputs`` by version already made."""
        experiment = self._running.get(model_id)
        scored: dict[str, float] = {}
        if experiment is None:
            return {"object": "dtesn.observation", "model": model_id, "experiment": None,
                    "scored": scored}  # fmt: skip
        if request_id is not None:
            for arm in experiment.score_request(request_id, targets):
                scored[f"request:{arm}"] = float("nan")
        if inputs is not None:
            known = dict(predicted or {})
            arms: tuple[Arm, Arm] = ("control", "candidate")
            for arm in arms:
                version = experiment.version_of(arm)
                if version not in known:
                    answer = await self.models.predict(model_id, inputs, 0, version=version)
                    known[version] = np.asarray(answer["predictions"])
                scored[arm] = experiment.score(arm, known[version], targets)
        return {
            "object": "dtesn.observation",
            "model": model_id,
            "experiment": experiment.id,
            "scored": {k: (None if v != v else v) for k, v in scored.items()},  # NaN: JSON null
        }

    def rate(self, request_id: str, score: float) -> tuple[str, str] | None:
        """Credit a client's score to the arm that answered ``request_id``: (experiment, arm),
        or None when no running experiment here answered it."""
        for experiment in self._running.values():
            arm = experiment.arm_of(request_id)
            if arm is not None:
                experiment.rate(arm, score)
                return experiment.id, arm
        return None

    # -- analysis --------------------------------------------------------------------------

    async def _analyse(self, experiment: RunningExperiment) -> None:
        if not any(s.requests or s.scored for s in experiment.stats.values()):
            experiment.last_analysis = time.monotonic()  # nothing seen here: nothing to say
            return
        snapshot = experiment.analyse()
        await self.repository.save_analysis(experiment.id, snapshot)
        if not snapshot["rollback"]:
            return
        reason = "rolled back: " + "; ".join(snapshot["reasons"])
        if await self.repository.end(experiment.id, "rolled_back", reason):
            found = await self.repository.get(experiment.id)
            if found is not None:
                self._event("experiment.rolled_back", found, None, reasons=snapshot["reasons"])
            _log.warning("experiment_rolled_back", experiment=experiment.id, reason=reason)
        self._running.pop(experiment.model_id, None)

    def _event(
        self, action: str, record: ExperimentRecord, actor: str | None, **details: Any
    ) -> None:
        event = action.split(".", 1)[1]
        self.counts[(event,)] = self.counts.get((event,), 0) + 1
        if self.on_event is not None:
            self.on_event(
                action,
                {"experiment": record.id, "model": record.model_id, "actor": actor, **details},
            )
