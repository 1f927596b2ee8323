"""Wire schema of the DTESN routes (``/v1/dtesn/...``)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from dtecho.dtesn import bseries
from dtecho.protocol.json_types import Bool, Float, Int
from dtecho.protocol.openai import CacheOptions, ChatCompletionRequest

__all__ = [
    "INPUT_SCHEMA",
    "SERIES_SCHEMA",
    "BatchRequest",
    "DtesnChatRequest",
    "ExperimentAnalysis",
    "ExperimentRequest",
    "FeedbackRequest",
    "LearningSettings",
    "ModelConfig",
    "MoveAliasRequest",
    "ObservationRequest",
    "PredictRequest",
    "ProcessForm",
    "ProcessOptions",
    "ProcessRequest",
    "TrainRequest",
    "TuneOptions",
    "UpdateRequest",
    "validate_input",
]

MAX_TRAJECTORY_POINTS = 1000
MAX_VECTOR_WIDTH = 1024
MAX_TUNE_TRIALS = 200  # one search's budget through the API (each trial is about one fit)
INTEGRATORS = tuple(bseries.TABLEAUX)

# What JSON Schema can say about an input; the validators below enforce the same and what it
# cannot say (rows of equal length), which the descriptions state.
_VECTOR = {
    "type": "array",
    "minItems": 1,
    "maxItems": MAX_VECTOR_WIDTH,
    "items": {"type": "number"},
}
_ROWS = {
    "type": "array",
    "minItems": 1,
    "items": _VECTOR,
    "description": "Rows of numbers, all of the same length (one time step each).",
}
INPUT_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "minLength": 1, "description": "Text: one time step per UTF-8 byte."},
        _ROWS,
    ],
    "description": "A non-empty string (one step per UTF-8 byte), or a non-empty list of "
    f"numeric vectors of equal length (1–{MAX_VECTOR_WIDTH} components; one step per row). "
    "At most `dtesn.max_input_steps` steps (default 100,000).",
    "examples": ["echo state", [[0.0, 1.0], [0.5, -0.5]]],
}
SERIES_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "array", "minItems": 1, "items": {"type": "number"},
         "description": "One column: a number per time step."},
        _ROWS,
    ],
    "description": "A time series: a list of numbers (one column), or a list of rows of "
    f"numbers, all of the same length (1–{MAX_VECTOR_WIDTH} columns).",
}  # fmt: skip
_INTEGRATOR = Field(
    "euler",
    description="The Runge–Kutta scheme that integrates the membranes "
    "(see `GET /v1/dtesn/bseries` for each one's verified order).",
    json_schema_extra={"enum": list(INTEGRATORS)},
)
_TRAJECTORY = {
    "anyOf": [
        {"type": "boolean"},
        {"type": "integer", "minimum": 0, "maximum": MAX_TRAJECTORY_POINTS},
    ]
}
# membrane_depth d has membranes_for_depth(d) membranes (1, 2, 4, 8, 17, 37, 85, 200), and
# every membrane needs a unit: the least esn_size for the depths where 32 is not enough.
MEMBRANES_AT_DEPTH = {1: 1, 2: 2, 3: 4, 4: 8, 5: 17, 6: 37, 7: 85, 8: 200}  # sums of A000081
_LEAST_SIZE = {d: n for d, n in MEMBRANES_AT_DEPTH.items() if n > 32}


def size_rules(depth: str, size: str) -> list[dict[str, Any]]:
    """JSON Schema rules: ``size`` at least the membrane count of ``depth``."""
    return [
        {
            "if": {"properties": {depth: {"const": d}}, "required": [depth]},
            "then": {"properties": {size: {"minimum": least}}},
        }
        for d, least in _LEAST_SIZE.items()
    ]


def validate_input(value: Any) -> str | list[list[float]]:
    """A string, or a non-empty list of equally long, finite numeric vectors."""
    if isinstance(value, str):
        if not value:
            raise ValueError("must not be empty")
        return value
    if not isinstance(value, list) or not value:
        raise ValueError("must be a string or a non-empty list of numeric vectors")
    width = None
    for row_index, row in enumerate(value):
        if not isinstance(row, list) or not row:
            raise ValueError(f"row {row_index} must be a non-empty list of numbers")
        if width is None:
            width = len(row)
            if width > MAX_VECTOR_WIDTH:
                raise ValueError(f"vectors may have at most {MAX_VECTOR_WIDTH} components")
        elif len(row) != width:
            raise ValueError(f"row {row_index} has {len(row)} components, row 0 has {width}")
        for item in row:
            if isinstance(item, bool) or not isinstance(item, int | float):
                raise ValueError(f"row {row_index} holds a non-number: {item!r}")
            if not math.isfinite(item):
                raise ValueError(f"row {row_index} holds a non-finite number")
    return value


class ProcessOptions(CacheOptions):
    """The network configuration and what to return; shared by a batch's items."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"allOf": size_rules("membrane_depth", "esn_size")}
    )

    membrane_depth: Int = Field(
        4, ge=1, le=8, description="Levels of the membrane tree (A000081: 1, 2, 4, 8, … "
        "membranes); esn_size must give every membrane a unit."
    )  # fmt: skip
    esn_size: Int = Field(512, ge=32, le=4096, description="Reservoir units in all.")
    integrator: str = _INTEGRATOR
    seed: Int = Field(0, ge=0, le=2**32 - 1, description="The network's random seed.")
    include_states: Bool = Field(False, description="Return the final state vector.")
    include_trajectory: Annotated[Bool | Int, WithJsonSchema(_TRAJECTORY)] = Field(
        False, description="True (100 points) or a count of evenly spaced steps."
    )

    @field_validator("esn_size")
    @classmethod
    def _a_unit_per_membrane(cls, value: int, info: ValidationInfo) -> int:
        depth = info.data.get("membrane_depth")
        needed = MEMBRANES_AT_DEPTH.get(depth) if isinstance(depth, int) else None
        if needed is not None and value < needed:
            raise ValueError(
                f"esn_size {value} is too small for membrane_depth {depth}, which has "
                f"{needed} membranes; use at least {needed}"
            )
        return value

    @field_validator("integrator")
    @classmethod
    def _known_integrator(cls, value: str) -> str:
        if value not in bseries.TABLEAUX:
            raise ValueError(f"must be one of {', '.join(bseries.TABLEAUX)}")
        return value

    @field_validator("include_trajectory")
    @classmethod
    def _trajectory_cap(cls, value: bool | int) -> bool | int:
        if not isinstance(value, bool) and not 0 <= value <= MAX_TRAJECTORY_POINTS:
            raise ValueError(f"must be a boolean or 0–{MAX_TRAJECTORY_POINTS}")
        return value

    @property
    def trajectory_points(self) -> int:
        if isinstance(self.include_trajectory, bool):
            return 100 if self.include_trajectory else 0
        return self.include_trajectory


class ProcessRequest(ProcessOptions):
    """``POST /v1/dtesn/process`` and ``/v1/dtesn/stream``.

    Its work is estimated before it runs (``docs/limits.md``); above
    ``work_limits.max_sync_cost`` (default 5 reference seconds, about 5 s on one core) the
    answer is a 400 ``request_too_costly`` naming the field to shorten; the stream's limit
    is ``max_background_cost``.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "allOf": size_rules("membrane_depth", "esn_size"),
            "examples": [{"input": "echo state", "membrane_depth": 3, "esn_size": 128}],
        }
    )

    input: Annotated[Any, WithJsonSchema(INPUT_SCHEMA)]

    @field_validator("input")
    @classmethod
    def _check_input(cls, value: Any) -> str | list[list[float]]:
        return validate_input(value)


class BatchRequest(ProcessOptions):
    """``POST /v1/dtesn/batch``: items are validated one by one, so one bad item fails alone.

    Its work is estimated before it runs (``docs/limits.md``); above
    ``work_limits.max_sync_cost`` (default 5 reference seconds, about 5 s on one core) the
    answer is a 400 ``request_too_costly`` naming the field to shorten.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "allOf": size_rules("membrane_depth", "esn_size"),
            "examples": [{"inputs": ["first", "second", [[0.5], [1.0]]], "esn_size": 128}],
        }
    )

    inputs: list[Any] = Field(
        min_length=1,
        max_length=1000,
        description="1–1000 inputs, each as `input` of `/v1/dtesn/process`. An item that is "
        "not a valid input gets its own error in the answer (`data[i].error`); the others "
        "still run.",
    )


def _as_matrix(value: Any) -> list[list[float]]:
    """A series: a list of numbers (one column) or a list of equally long numeric rows."""
    if (
        isinstance(value, list)
        and value
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        value = [[v] for v in value]
    if isinstance(value, str):
        raise ValueError("must be a list of numbers or of equally long numeric rows")
    return validate_input(value)  # type: ignore[return-value]


class ModelConfig(BaseModel):
    """Hyper-parameters of a trainable DTESN (names and meanings of ``dtecho.dtesn.DTESN``)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "allOf": [
                {
                    "if": {"properties": {"depth": {"const": d}}, "required": ["depth"]},
                    "then": {"properties": {"units": {"minimum": least}}},
                }
                for d, least in {5: 17, **_LEAST_SIZE}.items()
            ]
        },
    )

    units: Int = Field(
        400, ge=8, le=8192, description="Reservoir units; every membrane needs at least one."
    )
    depth: Int = Field(1, ge=1, le=8, description="Levels of the membrane tree.")
    tree: str | None = Field(
        None,
        max_length=4096,
        pattern=r"^\s*\([()]*\)\s*$",
        description="A membrane tree in nested parentheses, e.g. `(()(()))`, instead of depth: "
        "balanced, one tree, and at most `units` membranes.",
    )
    # The library's defaults (chosen by benchmarks/defaults_study.py; docs/dtesn.md)
    spectral_radius: Float = Field(0.9, ge=0, le=10)
    leak_rate: Float = Field(1.0, gt=0, le=1)
    input_scaling: Float = Field(0.05, gt=0, le=100)
    bias_scaling: Float = Field(0.1, ge=0, le=100)
    connectivity: Float = Field(0.1, gt=0, le=1)
    ridge: Annotated[Float, Field(ge=0, le=1e6)] | Literal["auto"] = Field(
        "auto",
        description='L2 penalty of the readout, or "auto": chosen on held-out training rows',
    )
    integrator: str = _INTEGRATOR
    seed: Int = Field(0, ge=0, le=2**32 - 1)
    forgetting: Float = Field(1.0, gt=0, le=1)
    tau_scaling: Float = Field(1.0, gt=0, le=100)
    input_to: Literal["skin", "all"] = "skin"

    _known_integrator = field_validator("integrator")(ProcessOptions._known_integrator.__func__)


class TuneOptions(BaseModel):
    """``"tune"`` with ``"config": "auto"``: the hyperparameter search's budget (trials, each
    about the cost of one fit), its seed, the validation folds and the reservoir size."""

    model_config = ConfigDict(extra="forbid")

    trials: Int = Field(30, ge=1, le=MAX_TUNE_TRIALS)
    seed: Int = Field(0, ge=0, le=2**32 - 1)
    folds: Int = Field(3, ge=1, le=10)
    units: Int = Field(400, ge=8, le=8192)
    trees: Bool = False  # search the membrane tree too (dtecho.dtesn.search.TREE_SPACE)


class TrainRequest(BaseModel):
    """``POST /v1/dtesn/models`` (JSON form): teacher-forced training data and configuration.

    Its work is estimated before it runs (``docs/limits.md``); above
    ``work_limits.max_sync_cost`` (default 5 reference seconds, about 5 s on one core) the
    answer is a 400 ``request_too_costly`` naming the field to shorten; with ``background``
    unset, a training over it runs as a job (202), and jobs and searches have
    ``max_background_cost``.
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "allOf": [
                {  # the search's options go with a search
                    "if": {
                        "properties": {"tune": {"type": "object"}},
                        "required": ["tune"],
                    },
                    "then": {"properties": {"config": {"const": "auto"}}, "required": ["config"]},
                }
            ],
            "examples": [
                {
                    "inputs": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
                    "targets": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
                    "warmup": 2,
                    "config": {"units": 50},
                }
            ],
        },
    )

    name: str | None = Field(None, max_length=128)
    inputs: Annotated[Any, WithJsonSchema(SERIES_SCHEMA)]
    targets: Annotated[Any, WithJsonSchema(SERIES_SCHEMA)] = Field(
        description="As many rows as inputs: what the readout learns to output at each step."
    )
    warmup: Int = Field(
        100, ge=0, description="Leading rows that only settle the state; fewer than the rows."
    )
    config: ModelConfig | Literal["auto"] = Field(default_factory=ModelConfig)
    tune: TuneOptions | None = None
    background: Bool | None = None

    _series = field_validator("inputs", "targets")(lambda cls, v: _as_matrix(v))

    @field_validator("config", mode="wrap")
    @classmethod
    def _config_or_auto(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """Settings, or "auto" (the search chooses them): errors name ``config.<field>``,
        not the branches of a union."""
        if isinstance(value, str):
            if value != "auto":
                raise ValueError('must be an object of settings or "auto"')
            return value
        return value if isinstance(value, ModelConfig) else ModelConfig.model_validate(value)

    @field_validator("tune")
    @classmethod
    def _tune_needs_auto(cls, value: TuneOptions | None, info: ValidationInfo) -> Any:
        if value is not None and info.data.get("config") != "auto":
            raise ValueError('tune options go with "config": "auto"')
        return value

    @property
    def tuning(self) -> TuneOptions | None:
        """The search's options when the settings are to be searched ("config": "auto")."""
        if self.config != "auto":
            return None
        return self.tune or TuneOptions()


class PredictRequest(CacheOptions):
    """``POST /v1/dtesn/models/{id}/predict``.

    Its work is estimated before it runs (``docs/limits.md``); above
    ``work_limits.max_sync_cost`` (default 5 reference seconds, about 5 s on one core) the
    answer is a 400 ``request_too_costly`` naming the field to shorten; ``stream: true`` has
    ``max_background_cost``.
    """

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"inputs": [0.1, 0.2], "horizon": 5}]}
    )

    inputs: Annotated[Any, WithJsonSchema(SERIES_SCHEMA)] = Field(
        description="Rows as wide as the model's input_dim."
    )
    horizon: Int = Field(
        0, ge=0, le=100_000,
        description="Closed-loop steps after the inputs (needs input_dim == output_dim).",
    )  # fmt: skip
    stream: Bool = Field(False, description="Answer as Server-Sent Events.")

    _series = field_validator("inputs")(lambda cls, v: _as_matrix(v))


class UpdateRequest(BaseModel):
    """``POST /v1/dtesn/models/{id}/update``: an online (RLS) update with new data.

    Its work is estimated before it runs (``docs/limits.md``); above
    ``work_limits.max_sync_cost`` (default 5 reference seconds, about 5 s on one core) the
    answer is a 400 ``request_too_costly`` naming the field to shorten.
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"inputs": [0.8, 0.9], "targets": [0.9, 1.0]}]},
    )

    inputs: Annotated[Any, WithJsonSchema(SERIES_SCHEMA)] = Field(
        description="Rows as wide as the model's input_dim."
    )
    targets: Annotated[Any, WithJsonSchema(SERIES_SCHEMA)] = Field(
        description="As many rows as inputs, as wide as the model's output_dim."
    )
    warmup: Int = Field(0, ge=0, description="Leading rows that only settle the state.")
    promote: Bool = Field(
        True,
        description="Move the `production` alias to the new version (false: only record it; "
        "name it with an alias, or `model@version`).",
    )

    _series = field_validator("inputs", "targets")(lambda cls, v: _as_matrix(v))


class ExperimentAnalysis(BaseModel):
    """How an experiment is checked, and when it rolls back."""

    model_config = ConfigDict(extra="forbid")

    interval_seconds: Float = Field(10.0, ge=0.1, le=86400, description="Between checks.")
    min_samples: Int = Field(30, ge=2, le=10**9, description="Values per arm before a test.")
    max_failed_checks: Int = Field(3, ge=1, le=1000, description="Failed checks in a row "
                                   "that roll the experiment back.")  # fmt: skip
    alpha: Float = Field(0.05, gt=0, lt=1, description="Level of the sequential tests.")
    max_latency_ratio: Float = Field(
        3.0, gt=1, le=1000, description="Candidate mean latency over the control's that fails."
    )


class ExperimentRequest(BaseModel):
    """``POST /v1/dtesn/models/{id}/experiments``: a control and a candidate version."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"candidate": "candidate", "candidate_share": 0.2, "mode": "split"}]
        },
    )

    name: str | None = Field(None, max_length=200)
    control: Int | str = Field(
        "production", description="A version number or an alias (resolved when it starts)."
    )
    candidate: Int | str = Field(description="A version number or an alias.")
    mode: Literal["split", "shadow"] = Field(
        "split",
        description="split: the candidate answers candidate_share of the units; shadow: the "
        "control answers all, candidate_share of the units is mirrored to the candidate and "
        "its answers are recorded, never returned.",
    )
    candidate_share: Float = Field(0.1, ge=0, le=1)
    analysis: ExperimentAnalysis = Field(default_factory=ExperimentAnalysis)


class ObservationRequest(BaseModel):
    """``POST /v1/dtesn/models/{id}/observations``: ground truth for predictions."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"inputs": [0.8, 0.9], "targets": [0.9, 1.0]}],
            # Something to score: the inputs, or the prediction the targets answer.
            "anyOf": [
                {"required": ["inputs"], "properties": {"inputs": {"not": {"type": "null"}}}},
                {
                    "required": ["request_id"],
                    "properties": {"request_id": {"not": {"type": "null"}}},
                },
            ],
        },
    )

    inputs: Annotated[Any, WithJsonSchema(SERIES_SCHEMA)] | None = Field(
        None, description="The inputs the targets belong to (scored on every arm)."
    )
    targets: Annotated[Any, WithJsonSchema(SERIES_SCHEMA)] = Field(
        description="The true outputs, one row per predicted row."
    )
    request_id: str | None = Field(
        None, max_length=128, description="The x-request-id of the prediction they answer."
    )

    _targets = field_validator("targets")(lambda cls, v: _as_matrix(v))
    _inputs = field_validator("inputs")(lambda cls, v: v if v is None else _as_matrix(v))

    @model_validator(mode="after")
    def _something_to_score(self) -> ObservationRequest:
        if self.inputs is None and self.request_id is None:
            raise ValueError("give inputs, or the request_id of the prediction they answer")
        if self.inputs is not None and len(self.inputs) != len(self.targets):
            raise ValueError("inputs and targets differ in length")
        return self


class LearningSettings(BaseModel):
    """``PUT /v1/dtesn/models/{id}/learning``: continuous learning from observations."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"enabled": True, "batch_rows": 200}]}
    )

    enabled: Bool = True
    batch_rows: Int = Field(200, ge=10, le=10**6, description="New rows that start a round.")
    holdout_rows: Int = Field(
        50, ge=5, le=10**6, description="The most recent rows a round compares the candidate "
        "and production on, without learning from them (the next round does)."
    )  # fmt: skip
    warmup: Int = Field(20, ge=0, le=10**5, description="Rows that settle the state first.")
    margin: Float = Field(
        0.0, ge=0, lt=1, description="Promote when the candidate's NRMSE on the held-out rows "
        "is below production's × (1 − margin)."
    )  # fmt: skip
    block_on_drift: Bool = Field(
        False, description="Never promote while the observed inputs have drifted."
    )


class FeedbackRequest(BaseModel):
    """``POST /v1/feedback``: a client's score of one response."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"request_id": "4f1c…", "score": 1.0, "label": "good"}]},
    )

    request_id: str = Field(
        min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$",
        description="The x-request-id of the response it rates.",
    )  # fmt: skip
    score: Float = Field(ge=-1e6, le=1e6, description="Higher is better (e.g. 1 good, 0 bad).")
    label: str | None = Field(None, max_length=100)
    comment: str | None = Field(None, max_length=2000)


class MoveAliasRequest(BaseModel):
    """``PUT /v1/dtesn/models/{id}/aliases/{alias}``: point the alias at a version."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"version": 2}]})

    version: Int = Field(ge=1, le=2**31 - 1, description="An available version of the model.")


class DtesnChatRequest(ChatCompletionRequest):
    """``POST /v1/dtesn/chat/completions``: an OpenAI chat request plus seed 001's fields."""

    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                *ChatCompletionRequest.model_config["json_schema_extra"]["allOf"],  # type: ignore[index]
                *size_rules("dtesn_membrane_depth", "dtesn_esn_size"),
            ]
        }
    )

    enable_dtesn: Bool = Field(True, description="Also process the conversation's text.")
    dtesn_membrane_depth: Int = Field(4, ge=1, le=8, description="As membrane_depth.")
    dtesn_esn_size: Int = Field(512, ge=32, le=4096, description="As esn_size.")

    def chat_request(self) -> ChatCompletionRequest:
        """The plain OpenAI request, without the DTESN fields."""
        data = self.model_dump(exclude_unset=True, exclude=set(DTESN_CHAT_FIELDS))
        return ChatCompletionRequest.model_validate(data)


DTESN_CHAT_FIELDS = ("enable_dtesn", "dtesn_membrane_depth", "dtesn_esn_size")


class ProcessForm(BaseModel):
    """The page form of ``POST /dtesn`` (``application/x-www-form-urlencoded``): every value
    arrives as text, so numbers are parsed from it (unlike the JSON routes' strict types)."""

    model_config = ConfigDict(
        extra="allow",  # a browser may send other controls; they are ignored
        json_schema_extra={"allOf": size_rules("membrane_depth", "esn_size")},
    )

    input: str = Field(min_length=1, description="Text to process.")
    membrane_depth: int = Field(4, ge=1, le=8)
    esn_size: int = Field(512, ge=32, le=4096)
    integrator: str = _INTEGRATOR
    seed: int = Field(0, ge=0, le=2**32 - 1)

    def process_request(self) -> ProcessRequest:
        """The equivalent ``POST /v1/dtesn/process`` body."""
        return ProcessRequest.model_validate(self.model_dump(include=set(type(self).model_fields)))
