"""The execution of one run: every (item, model) pair, a few at a time, each result stored as
soon as it is known.

A failed call is a result too (its OpenAI error object), never the end of the run; the run
fails only when the runner itself cannot go on (the store is gone, say).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import structlog
from pydantic import ValidationError

from dtecho.errors import DtechoError, EngineUnavailable, InvalidRequest
from dtecho.modules.types.evaluation.metrics import exact_match, nrmse
from dtecho.modules.types.evaluation.repository import RunRepository
from dtecho.modules.types.evaluation.schema import Plan, PromptItem, SeriesItem, field_path
from dtecho.services.model_calls import call_model

__all__ = ["MAX_STORED_ROWS", "Runner", "error_object"]

_log = structlog.get_logger("dtecho.modules.evaluation")
MAX_STORED_ROWS = 1000  # rows of a series answer kept with its result (the score uses all)


def error_object(exc: BaseException) -> dict[str, Any]:
    """The OpenAI error object of a failed call; an unexpected exception shows only its
    class (the details go to the log, never to a caller)."""
    if isinstance(exc, DtechoError):
        return {"message": exc.message, "type": exc.error_type, "param": exc.param,
                "code": exc.code}  # fmt: skip
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        param = field_path(first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        return {"message": f"Invalid value for '{param}': {message}.", "param": param,
                "type": "invalid_request_error", "code": "invalid_value"}  # fmt: skip
    return {"message": f"The call failed unexpectedly ({type(exc).__name__}).",
            "type": "server_error", "param": None, "code": "internal_error"}  # fmt: skip


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _text(endpoint: str, answer: dict[str, Any]) -> tuple[str, str | None]:
    choice = (answer.get("choices") or [{}])[0]
    if endpoint == "chat/completions":
        text = (choice.get("message") or {}).get("content")
    else:
        text = choice.get("text")
    return (text if isinstance(text, str) else ""), choice.get("finish_reason")


class Runner:
    """Runs plans against the server's models and stores what they answer."""

    def __init__(
        self,
        repository: RunRepository,
        models: Callable[[], Any],
        dtesn_models: Callable[[], Any],
        *,
        owner: str,
    ) -> None:
        self._repository = repository
        self._models = models  # the current ModelRegistry (a reload may replace it)
        self._dtesn_models = dtesn_models  # the ModelService of trained DTESN models, or None
        self._owner = owner

    async def run(self, run_id: str, plan: Plan) -> None:
        """Execute ``plan`` as run ``run_id`` (created queued by this owner) to its end.

        Cancellation propagates (whoever cancels marks the run); any other failure of the
        runner ends the run ``failed``.
        """
        pairs: Iterator[tuple[int, int]] = (
            (item, model) for item in range(len(plan.items)) for model in range(len(plan.models))
        )
        stop = asyncio.Event()

        async def worker() -> None:
            for item_index, model_index in pairs:  # one shared iterator: each pair once
                if stop.is_set():
                    return
                output, metrics, error = await self._evaluate(run_id, plan, item_index, model_index)
                stored = await self._repository.add_result(
                    run_id, self._owner, item_index, model_index,
                    output=output, metrics=metrics, error=error,
                )  # fmt: skip
                if not stored:  # the run was ended elsewhere (interrupted as stale)
                    stop.set()
                    return

        try:
            await self._repository.start(run_id, self._owner)
            if plan.warm_up:  # unscored, one model at a time; a failure shows when scored
                for model_index in range(len(plan.models)):
                    await self._evaluate(run_id, plan, 0, model_index)
            async with asyncio.TaskGroup() as group:
                for _ in range(min(plan.concurrency, len(plan.items) * len(plan.models))):
                    group.create_task(worker())
            await self._repository.end(run_id, "completed", owner=self._owner)
        except Exception as exc:
            cause = _first_leaf(exc)
            _log.error("evaluation run failed", run_id=run_id, exc_info=cause)
            try:
                await self._repository.end(
                    run_id,
                    "failed",
                    error=f"The run stopped on an internal error ({type(cause).__name__}).",
                    owner=self._owner,
                )
            except Exception as again:  # the store itself: the stale heartbeat marks it later
                _log.error("cannot mark a run failed", run_id=run_id, exc_info=again)

    async def _evaluate(
        self, run_id: str, plan: Plan, item_index: int, model_index: int
    ) -> tuple[Any, dict[str, Any], dict[str, Any] | None]:
        """(output, metrics, error) of one item on one model; exceptions become errors."""
        try:
            if plan.kind == "prompts":
                return await self._prompt(run_id, plan, item_index, model_index)
            return await self._series(plan, item_index, model_index)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not isinstance(exc, DtechoError | ValidationError):
                _log.warning(
                    "evaluation call failed", run_id=run_id, item=item_index,
                    model=plan.models[model_index].model, exc_info=exc,
                )  # fmt: skip
            return None, {}, error_object(exc)

    async def _prompt(
        self, run_id: str, plan: Plan, item_index: int, model_index: int
    ) -> tuple[Any, dict[str, Any], None]:
        item = plan.items[item_index]
        assert isinstance(item, PromptItem)
        endpoint, body = plan.request(model_index, item_index)
        started = time.perf_counter()
        answer = await call_model(
            self._models(), endpoint, body, request_id=f"{run_id}/{item_index}/{model_index}"
        )
        latency_ms = (time.perf_counter() - started) * 1000.0
        text, finish_reason = _text(endpoint, answer)
        usage = answer.get("usage") or {}
        metrics: dict[str, Any] = {}
        for metric in plan.metrics:
            if metric == "exact_match":
                metrics[metric] = (
                    exact_match(text, item.expected) if item.expected is not None else None
                )
            elif metric == "latency_ms":
                metrics[metric] = latency_ms
            else:  # prompt_tokens, completion_tokens: as the model reported them
                value = usage.get(metric)
                metrics[metric] = int(value) if isinstance(value, int | float) else None
        return {"text": text, "finish_reason": finish_reason}, metrics, None

    async def _series(
        self, plan: Plan, item_index: int, model_index: int
    ) -> tuple[Any, dict[str, Any], None]:
        item = plan.items[item_index]
        assert isinstance(item, SeriesItem)
        service = self._dtesn_models()
        if service is None:
            raise EngineUnavailable("This server gives modules no DTESN model service.")
        entry = plan.models[model_index]
        horizon = item.horizon or 0
        inputs = np.asarray(item.context(), dtype=np.float64)
        started = time.perf_counter()
        answer = await service.predict(entry.model, inputs, horizon)
        latency_ms = (time.perf_counter() - started) * 1000.0
        if horizon:
            predicted = np.asarray(answer["forecast"], dtype=np.float64)
            field = "series"
        else:
            predicted = np.asarray(answer["predictions"], dtype=np.float64)[item.warmup :]
            field = "targets"
        truth = np.asarray(item.truth(), dtype=np.float64)
        if predicted.shape != truth.shape:
            raise InvalidRequest(
                f"The model answers {predicted.shape[-1]} values per step; the item's "
                f"{field} has {truth.shape[-1]}.",
                param=f"items[{item_index}].{field}",
                code="shape_mismatch",
            )
        if not np.isfinite(predicted).all():
            raise DtechoError(
                "The model's output holds non-finite numbers (it diverged).",
                code="non_finite_output",
            )
        metrics: dict[str, Any] = {}
        for metric in plan.metrics:
            if metric == "nrmse":
                score = nrmse(predicted, truth)
                metrics[metric] = score if score is None or math.isfinite(score) else None
            elif metric == "latency_ms":
                metrics[metric] = latency_ms
        output = {
            "values": predicted[:MAX_STORED_ROWS].tolist(),
            "rows": int(predicted.shape[0]),
            "truncated": predicted.shape[0] > MAX_STORED_ROWS,
            "version": answer.get("version"),
        }
        return output, metrics, None
