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
    field_validator,
)

from dtecho.dtesn import bseries
from dtecho.protocol.openai import CacheOptions, ChatCompletionRequest

__all__ = [
    "BatchRequest",
    "DtesnChatRequest",
    "ModelConfig",
    "PredictRequest",
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

    model_config = ConfigDict(extra="forbid")

    membrane_depth: int = Field(4, ge=1, le=8)
    esn_size: int = Field(512, ge=32, le=4096)
    integrator: str = "euler"
    seed: int = Field(0, ge=0, le=2**32 - 1)
    include_states: bool = False
    include_trajectory: bool | int = Field(False, description="True (100 points) or a count")

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
    """``POST /v1/dtesn/process`` and ``/v1/dtesn/stream``."""

    input: Any

    @field_validator("input")
    @classmethod
    def _check_input(cls, value: Any) -> str | list[list[float]]:
        return validate_input(value)


class BatchRequest(ProcessOptions):
    """``POST /v1/dtesn/batch``: items are validated one by one, so one bad item fails alone."""

    inputs: list[Any] = Field(min_length=1, max_length=1000)


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

    model_config = ConfigDict(extra="forbid")

    units: int = Field(400, ge=8, le=8192)
    depth: int = Field(1, ge=1, le=8)
    tree: str | None = Field(None, max_length=4096)
    # The library's defaults (chosen by benchmarks/defaults_study.py; docs/dtesn.md)
    spectral_radius: float = Field(0.9, ge=0, le=10)
    leak_rate: float = Field(1.0, gt=0, le=1)
    input_scaling: float = Field(0.05, gt=0, le=100)
    bias_scaling: float = Field(0.1, ge=0, le=100)
    connectivity: float = Field(0.1, gt=0, le=1)
    ridge: Annotated[float, Field(ge=0, le=1e6)] | Literal["auto"] = Field(
        "auto",
        description='L2 penalty of the readout, or "auto": chosen on held-out training rows',
    )
    integrator: str = "euler"
    seed: int = Field(0, ge=0, le=2**32 - 1)
    forgetting: float = Field(1.0, gt=0, le=1)
    tau_scaling: float = Field(1.0, gt=0, le=100)
    input_to: Literal["skin", "all"] = "skin"

    _known_integrator = field_validator("integrator")(ProcessOptions._known_integrator.__func__)


class TuneOptions(BaseModel):
    """``"tune"`` with ``"config": "auto"``: the hyperparameter search's budget (trials, each
    about the cost of one fit), its seed, the validation folds and the reservoir size."""

    model_config = ConfigDict(extra="forbid")

    trials: int = Field(30, ge=1, le=MAX_TUNE_TRIALS)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    folds: int = Field(3, ge=1, le=10)
    units: int = Field(400, ge=8, le=8192)
    trees: bool = False  # search the membrane tree too (dtecho.dtesn.search.TREE_SPACE)


class TrainRequest(BaseModel):
    """``POST /v1/dtesn/models`` (JSON form): teacher-forced training data and configuration."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=128)
    inputs: Any
    targets: Any
    warmup: int = Field(100, ge=0)
    config: ModelConfig | Literal["auto"] = Field(default_factory=ModelConfig)
    tune: TuneOptions | None = None
    background: bool | None = None

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
    """``POST /v1/dtesn/models/{id}/predict``."""

    model_config = ConfigDict(extra="forbid")

    inputs: Any
    horizon: int = Field(0, ge=0, le=100_000)
    stream: bool = False

    _series = field_validator("inputs")(lambda cls, v: _as_matrix(v))


class UpdateRequest(BaseModel):
    """``POST /v1/dtesn/models/{id}/update``: an online (RLS) update with new data."""

    model_config = ConfigDict(extra="forbid")

    inputs: Any
    targets: Any
    warmup: int = Field(0, ge=0)

    _series = field_validator("inputs", "targets")(lambda cls, v: _as_matrix(v))


class DtesnChatRequest(ChatCompletionRequest):
    """``POST /v1/dtesn/chat/completions``: an OpenAI chat request plus seed 001's fields."""

    enable_dtesn: bool = True
    dtesn_membrane_depth: int = Field(4, ge=1, le=8)
    dtesn_esn_size: int = Field(512, ge=32, le=4096)

    def chat_request(self) -> ChatCompletionRequest:
        """The plain OpenAI request, without the DTESN fields."""
        data = self.model_dump(exclude_unset=True, exclude=set(DTESN_CHAT_FIELDS))
        return ChatCompletionRequest.model_validate(data)


DTESN_CHAT_FIELDS = ("enable_dtesn", "dtesn_membrane_depth", "dtesn_esn_size")
