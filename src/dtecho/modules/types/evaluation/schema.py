"""The body of ``POST /runs``, validated into a :class:`Plan` (no services involved).

Every refusal is an :class:`~dtecho.errors.InvalidRequest` (or ``PayloadTooLarge``) whose
``param`` names the field: ``items[3].horizon``, ``models[1].parameters.temperature``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dtecho.errors import InvalidRequest, PayloadTooLarge
from dtecho.modules.types.evaluation.config import OWNED_PARAMETERS, Config
from dtecho.modules.types.evaluation.metrics import METRICS
from dtecho.protocol.openai import ChatCompletionRequest, CompletionRequest

__all__ = [
    "ModelEntry",
    "Plan",
    "PromptItem",
    "RunRequest",
    "SeriesItem",
    "field_path",
    "parse_run",
]

_PROBES: dict[str, tuple[type[BaseModel], dict[str, Any]]] = {
    "chat/completions": (ChatCompletionRequest, {"messages": [{"role": "user", "content": "."}]}),
    "completions": (CompletionRequest, {"prompt": "."}),
}


class _FieldError(ValueError):
    """A model validator's complaint about one field: the error's path ends in ``field``."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name


def field_path(loc: tuple[int | str, ...] | list[int | str]) -> str | None:
    """A validation location as an OpenAI-style field path: ``items[0].messages[1].role``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or None


def _refuse(exc: ValidationError, prefix: tuple[int | str, ...] = ()) -> NoReturn:
    """Raise the first error of ``exc`` as the 400 the API gives, naming its field."""
    first = exc.errors()[0]
    loc = (*prefix, *first["loc"])
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, _FieldError):
        loc = (*loc, cause.field)
    param = field_path(loc)
    kind = first["type"]
    if kind == "missing":
        raise InvalidRequest(
            f"Missing required parameter: '{param}'.", param=param, code="missing_required"
        )
    if kind == "extra_forbidden":
        raise InvalidRequest(
            f"Unrecognized request argument supplied: '{param}'.",
            param=param,
            code="unknown_parameter",
        )
    message = str(first["msg"]).removeprefix("Value error, ")
    where = f"'{param}'" if param else "the request body"
    raise InvalidRequest(f"Invalid value for {where}: {message}.", param=param)


def _validate(model: type[BaseModel], data: Any, prefix: tuple[int | str, ...] = ()) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        _refuse(exc, prefix)


def _rows(value: Any, name: str) -> list[list[float]]:
    """A series as rows: a list of numbers is one column; rows must be equally long."""
    if not isinstance(value, list) or not value:
        raise _FieldError(name, "must be a non-empty list of numbers or of equally long rows")
    rows = [row if isinstance(row, list) else [row] for row in value]
    width = len(rows[0])
    for index, row in enumerate(rows):
        if not row or len(row) != width:
            raise _FieldError(name, f"row {index} has {len(row)} values, row 0 has {width}")
        for number in row:
            if isinstance(number, bool) or not isinstance(number, int | float):
                raise _FieldError(name, f"row {index} holds a non-number: {number!r}")
            if not math.isfinite(number):
                raise _FieldError(name, f"row {index} holds a non-finite number")
    return [[float(number) for number in row] for row in rows]


class ModelEntry(BaseModel):
    """One compared model: a served model (prompts) or a trained DTESN model id (series),
    with its own ``label`` (default: the model) and sampling ``parameters`` (prompts only)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=200)
    label: str | None = Field(None, min_length=1, max_length=200)
    parameters: dict[str, Any] = Field(default_factory=dict)

    @property
    def name(self) -> str:
        """How results and pages call this entry."""
        return self.label or self.model


class PromptItem(BaseModel):
    """A chat (``messages``) or completions (``prompt``) input and, optionally, the answer."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, max_length=200)
    messages: list[dict[str, Any]] | None = Field(None, min_length=1)
    prompt: str | None = None
    expected: str | list[str] | None = None

    @model_validator(mode="after")
    def _one_input(self) -> PromptItem:
        if (self.messages is None) == (self.prompt is None):
            raise _FieldError("messages", "give exactly one of 'messages' and 'prompt'")
        if isinstance(self.expected, list) and not self.expected:
            raise _FieldError("expected", "an empty list matches nothing")
        return self

    @property
    def endpoint(self) -> Literal["chat/completions", "completions"]:
        return "chat/completions" if self.messages is not None else "completions"


class SeriesItem(BaseModel):
    """A forecast (``series`` and ``horizon``: the model reads all but the last ``horizon``
    steps and forecasts those, closed loop) or a regression (``inputs`` and ``targets`` of
    equal length: teacher-forced predictions; the first ``warmup`` rows are not scored)."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, max_length=200)
    series: Any = None
    horizon: int | None = Field(None, ge=1, le=100_000)
    inputs: Any = None
    targets: Any = None
    warmup: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _one_form(self) -> SeriesItem:
        if self.series is not None:
            if self.inputs is not None or self.targets is not None:
                raise _FieldError(
                    "series", "give 'series' and 'horizon', or 'inputs' and 'targets', not both"
                )
            if self.horizon is None:
                raise _FieldError("horizon", "a forecast needs the steps to forecast")
            self.series = _rows(self.series, "series")
            if self.horizon >= len(self.series):
                raise _FieldError(
                    "horizon",
                    f"{self.horizon} leaves none of the series' {len(self.series)} steps to read",
                )
            if self.warmup:
                raise _FieldError("warmup", "goes with 'inputs' and 'targets'")
            return self
        if self.inputs is None or self.targets is None:
            missing = "inputs" if self.inputs is None else "targets"
            raise _FieldError(missing, "give 'series' and 'horizon', or 'inputs' and 'targets'")
        if self.horizon is not None:
            raise _FieldError("horizon", "goes with 'series' (a forecast)")
        self.inputs = _rows(self.inputs, "inputs")
        self.targets = _rows(self.targets, "targets")
        if len(self.targets) != len(self.inputs):
            raise _FieldError(
                "targets", f"has {len(self.targets)} rows but inputs has {len(self.inputs)}"
            )
        if self.warmup >= len(self.inputs):
            raise _FieldError("warmup", f"leaves none of the {len(self.inputs)} rows to score")
        return self

    def context(self) -> list[list[float]]:
        """What the model reads."""
        return self.series[: -self.horizon] if self.series is not None else self.inputs

    def truth(self) -> list[list[float]]:
        """What its output is scored against."""
        if self.series is not None:
            assert self.horizon is not None
            return self.series[-self.horizon :]
        return self.targets[self.warmup :]


class RunRequest(BaseModel):
    """``POST /runs``: items and models are checked against ``kind`` afterwards, so that
    errors name ``items[3].horizon`` rather than a branch of a union."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("", max_length=200)
    kind: Literal["prompts", "series"] = "prompts"
    models: list[Any] | None = None
    items: list[Any] = Field(min_length=1)
    metrics: list[str] | None = Field(None, min_length=1)
    parameters: dict[str, Any] = Field(default_factory=dict)
    wait: bool = False  # answer when the run has ended (201) rather than at once (202)
    # Each model answers the first item once, unscored, before the timed calls: a cold
    # engine's first call (loading, compiling) is not its latency.
    warm_up: bool = True
    # Calls in flight at once (at most the module's concurrency; 1 times each call alone).
    concurrency: int | None = Field(None, ge=1)


@dataclass
class Plan:
    """A validated run: what to ask whom, and what to measure."""

    name: str
    kind: Literal["prompts", "series"]
    models: list[ModelEntry]
    items: list[PromptItem] | list[SeriesItem]
    metrics: list[str]
    parameters: dict[str, Any] = field(default_factory=dict)  # config's, then the run's
    wait: bool = False
    warm_up: bool = True
    concurrency: int = 1

    def item_id(self, index: int) -> str:
        """The item's own id, else its position."""
        own = self.items[index].id
        return own if own is not None else str(index)

    def request(
        self, model_index: int, item_index: int
    ) -> tuple[Literal["chat/completions", "completions"], dict[str, Any]]:
        """The endpoint and OpenAI body of one prompt call."""
        item = self.items[item_index]
        assert isinstance(item, PromptItem)
        entry = self.models[model_index]
        body: dict[str, Any] = {**self.parameters, **entry.parameters, "model": entry.model}
        if item.messages is not None:
            body["messages"] = item.messages
        else:
            body["prompt"] = item.prompt
        return item.endpoint, body

    def options(self) -> dict[str, Any]:
        """How the run executes, stored with it."""
        return {"warm_up": self.warm_up, "concurrency": self.concurrency}

    def stored_items(self) -> list[dict[str, Any]]:
        """The dataset as stored with the run (normalised, defaults left out)."""
        return [item.model_dump(exclude_none=True, exclude_defaults=True) for item in self.items]


def _entries(models: list[Any] | None, config: Config) -> list[ModelEntry]:
    if models is None:
        if not config.models:
            raise InvalidRequest(
                "Missing required parameter: 'models' (this module has no default models).",
                param="models",
                code="missing_required",
            )
        models = list(config.models)
    if not models:
        raise InvalidRequest("'models' must name at least one model.", param="models")
    if len(models) > config.max_models:
        raise InvalidRequest(
            f"'models' names {len(models)} models; this module compares at most "
            f"{config.max_models}.",
            param="models",
        )
    entries = []
    for index, value in enumerate(models):
        if isinstance(value, str):
            value = {"model": value}
        entries.append(_validate(ModelEntry, value, ("models", index)))
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        if entry.name in seen:
            raise InvalidRequest(
                f"'models[{index}]' repeats '{entry.name}'; give each entry its own 'label'.",
                param=f"models[{index}]",
            )
        seen.add(entry.name)
    return entries


def _check_parameters(plan: Plan, run_parameters: dict[str, Any]) -> None:
    """Each model's parameters as the OpenAI request would validate them; then each item."""
    for key in run_parameters:
        if key in OWNED_PARAMETERS:
            raise InvalidRequest(
                f"'parameters.{key}' is set by the run itself.", param=f"parameters.{key}"
            )
    for index, entry in enumerate(plan.models):
        for key in entry.parameters:
            if key in OWNED_PARAMETERS:
                param = f"models[{index}].parameters.{key}"
                raise InvalidRequest(f"'{param}' is set by the run itself.", param=param)
    endpoints = {item.endpoint for item in plan.items if isinstance(item, PromptItem)}
    for index, entry in enumerate(plan.models):
        for endpoint in sorted(endpoints):
            request_class, probe = _PROBES[endpoint]
            body = {**plan.parameters, **entry.parameters, "model": entry.model, **probe}
            try:
                request_class.model_validate(body)
            except ValidationError as exc:
                key = exc.errors()[0]["loc"][0] if exc.errors()[0]["loc"] else ""
                if key in entry.parameters:
                    _refuse(exc, ("models", index, "parameters"))
                _refuse(exc, ("parameters",))
    for index in range(len(plan.items)):
        endpoint, body = plan.request(0, index)
        request_class, _ = _PROBES[endpoint]
        _validate(request_class, body, ("items", index))


def parse_run(data: Any, config: Config) -> Plan:
    """The plan of a ``POST /runs`` body, or the 400 (413) that refuses it."""
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_type")
    request: RunRequest = _validate(RunRequest, data)
    if len(request.items) > config.max_items:
        raise PayloadTooLarge(
            f"'items' has {len(request.items)} items; this module runs at most "
            f"{config.max_items} per run.",
            param="items",
        )
    entries = _entries(request.models, config)
    item_class: type[BaseModel] = PromptItem if request.kind == "prompts" else SeriesItem
    items = [
        _validate(item_class, value, ("items", index)) for index, value in enumerate(request.items)
    ]
    known = METRICS[request.kind]
    if request.metrics is None:
        has_expected = any(getattr(item, "expected", None) is not None for item in items)
        metrics = [m for m in known if m != "exact_match" or has_expected]
    else:
        metrics = []
        for index, metric in enumerate(request.metrics):
            if metric not in known:
                raise InvalidRequest(
                    f"Unknown metric '{metric}' for {request.kind} runs; choose from "
                    f"{', '.join(known)}.",
                    param=f"metrics[{index}]",
                )
            if metric not in metrics:
                metrics.append(metric)
        if "exact_match" in metrics and not any(item.expected is not None for item in items):
            raise InvalidRequest(
                "exact_match needs 'expected' on at least one item.",
                param=f"metrics[{request.metrics.index('exact_match')}]",
            )
    plan = Plan(
        name=request.name,
        kind=request.kind,
        models=entries,
        items=items,
        metrics=metrics,
        wait=request.wait,
        warm_up=request.warm_up,
        concurrency=request.concurrency or config.concurrency,
    )
    if plan.concurrency > config.concurrency:
        raise InvalidRequest(
            f"'concurrency' is at most {config.concurrency} in this module.", param="concurrency"
        )
    if request.kind == "series":
        if request.parameters:
            raise InvalidRequest("'parameters' go with prompt runs.", param="parameters")
        for index, entry in enumerate(entries):
            if entry.parameters:
                raise InvalidRequest(
                    "'parameters' go with prompt runs.", param=f"models[{index}].parameters"
                )
        return plan
    plan.parameters = {**config.parameters, **request.parameters}
    _check_parameters(plan, request.parameters)
    return plan
