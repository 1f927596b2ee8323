"""Continuous learning: a trained model keeps learning from the observations it is sent.

Each round (once ``batch_rows`` new clean rows are stored) copies the ``production`` version,
applies recursive-least-squares updates on all but the newest ``holdout_rows`` of them, and
records the result as a new version named ``candidate``. The candidate and production then
predict the held-out rows (after the same ``warmup`` rows of context); the candidate becomes
``production`` only when its NRMSE there is below production's × (1 − ``margin``) — and,
with ``block_on_drift``, only while the inputs have not drifted. The held-out rows are
learned from in the next round. Serving never waits: the work runs in a thread, and an
alias move is atomic (docs/lifecycle.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog

from dtecho.registry.versions import PRODUCTION
from dtecho.services.dtesn_models import finite_or_none, nrmse
from dtecho.store.leases import LeaseRepository
from dtecho.store.observations import ObservationRepository

if TYPE_CHECKING:
    from dtecho.services.dtesn_models import ModelService

__all__ = ["ContinuousLearner"]

_log = structlog.get_logger("dtecho.registry")
CANDIDATE = "candidate"
LEASE = "dtesn-learner"
LEASE_SECONDS = 10.0  # a holder that stops renewing hands over after this


class ContinuousLearner:
    """The learning rounds of one :class:`ModelService`'s models."""

    def __init__(
        self,
        models: ModelService,
        observations: ObservationRepository,
        leases: LeaseRepository | None = None,
        interval: float = 1.0,
        retention_seconds: float | None = None,
    ) -> None:
        self.models = models
        self.observations = observations
        self.leases = leases  # one replica learns at a time (the others would race it)
        self.holder = f"learner-{uuid.uuid4().hex[:12]}"
        self.interval = interval
        self.retention_seconds = retention_seconds  # observations (and feedback) older go
        self.feedback: Any = None  # dtecho.store.feedback.FeedbackRepository, purged alike
        self._purged_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self.counts: dict[tuple[str], int] = {}  # (outcome,): promoted, kept, failed

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="dtecho-learner")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            learning = [
                record
                for record in self.models.list()
                if record.get("status") == "ready" and (record.get("learning") or {}).get("enabled")
            ]
            purge_due = (
                self.retention_seconds is not None and time.monotonic() - self._purged_at >= 60
            )
            if not learning and not purge_due:
                continue  # nothing to do: no lease taken, no store written
            if self.leases is not None:
                try:
                    held = await self.leases.acquire(LEASE, self.holder, LEASE_SECONDS)
                except Exception as exc:
                    _log.warning("learner_lease_failed", error=str(exc))
                    continue
                if not held:
                    continue
            await self._purge()
            for record in learning:
                try:
                    await self.round(record["id"])
                except Exception as exc:
                    self._count("failed")
                    _log.warning("learning_round_failed", model=record["id"], error=str(exc))

    async def _purge(self) -> None:
        """Delete observations past their retention, once a minute."""
        if self.retention_seconds is None or time.monotonic() - self._purged_at < 60:
            return
        self._purged_at = time.monotonic()
        before = datetime.now(UTC) - timedelta(seconds=self.retention_seconds)
        try:
            removed = await self.observations.expire(before)
            if self.feedback is not None:
                removed += await self.feedback.expire(before)
        except Exception as exc:
            _log.warning("observation_purge_failed", error=str(exc))
            return
        if removed:
            _log.info("observations_expired", rows=removed)

    async def round(self, model_id: str) -> dict[str, Any] | None:
        """One round if enough rows arrived (see the module docstring); its summary."""
        lock = self.models._locks.setdefault(model_id, asyncio.Lock())
        async with lock:
            record = self.models._ready(model_id)
            settings = record["learning"]
            pending = await self.observations.after(
                model_id, int(settings.get("last_observation_id", 0))
            )
            rows = sum(len(o.targets) for o in pending)
            if rows < settings["batch_rows"] + settings["holdout_rows"]:
                return None
            # Whole batches: the newest ones holding at least holdout_rows are held out.
            held: list[Any] = []
            while pending and sum(len(o.targets) for o in held) < settings["holdout_rows"]:
                held.insert(0, pending.pop())
            X = np.asarray([row for o in pending for row in o.inputs], dtype=float)
            Y = np.asarray([row for o in pending for row in o.targets], dtype=float)
            HX = np.asarray([row for o in held for row in o.inputs], dtype=float)
            HY = np.asarray([row for o in held for row in o.targets], dtype=float)
            _, production = await self.models.resolve(model_id)
            summary = await asyncio.to_thread(
                self._learn, model_id, production, X, Y, HX, HY, settings["warmup"]
            )
            candidate_model, scores = summary
            version = int(record["version"]) + 1
            self.models.store.save_version(model_id, version, candidate_model)
            drifted = bool(
                (self.models.monitor.status(model_id)["input_drift"] or {}).get("drifted")
            )
            # A score that is not a number (an overflow on wild data) never wins.
            better = bool(
                np.isfinite(scores["candidate"])
                and np.isfinite(scores["production"])
                and scores["candidate"] < scores["production"] * (1.0 - settings["margin"])
            )
            promote = better and not (settings.get("block_on_drift") and drifted)
            metrics = {
                "rows": len(X),
                "holdout_rows": len(HX),
                "nrmse_production": finite_or_none(scores["production"]),
                "nrmse_candidate": finite_or_none(scores["candidate"]),
                "promoted": promote,
                "blocked_by_drift": better and not promote,
            }
            await self.models._record_version(
                record, version, parent=production, kind="learner", data=(X, Y),
                metrics=metrics, creator="learner", promote=promote,
            )  # fmt: skip
            registry = self.models.versions
            if registry is not None:
                await registry.move(model_id, CANDIDATE, version, actor="learner")
            record = self.models.store.record(model_id)  # fresh: the aliases moved meanwhile
            record.update(version=version, updated=int(time.time()))
            record["versions"].append({"version": version, "kind": "learner",
                                       "created": record["updated"], "parent": production,
                                       **metrics})  # fmt: skip
            learning = record["learning"]
            learning["last_observation_id"] = pending[-1].id
            learning["last_round"] = {"version": version, "at": record["updated"], **metrics}
            learning["rounds"] = int(learning.get("rounds", 0)) + 1
            self.models.store.put_record(record)
            self._count("promoted" if promote else "kept")
            _log.info("learning_round", model=model_id, version=version,
                      production=PRODUCTION if promote else production, **metrics)  # fmt: skip
            return learning["last_round"]

    def _learn(
        self,
        model_id: str,
        production: int,
        X: np.ndarray,
        Y: np.ndarray,
        HX: np.ndarray,
        HY: np.ndarray,
        warmup: int,
    ) -> tuple[Any, dict[str, float]]:
        """(the candidate, both NRMSEs on the held-out rows) — in a worker thread."""
        current = self.models.store.load(model_id, production)
        candidate = self.models.store.fresh_copy(model_id, production)
        candidate.partial_fit(X, Y, warmup=min(warmup, len(X) - 1))
        # The held-out rows follow the training ones: predict them after their context.
        context = min(warmup, len(X))
        EX = np.concatenate([X[len(X) - context :], HX])
        scores = {
            "production": nrmse(current.predict(EX)[context:], HY),
            "candidate": nrmse(candidate.predict(EX)[context:], HY),
        }
        return candidate, scores

    def _count(self, outcome: str) -> None:
        self.counts[(outcome,)] = self.counts.get((outcome,), 0) + 1
