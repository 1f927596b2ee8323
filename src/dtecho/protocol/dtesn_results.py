"""Success bodies of the DTESN routes, as the OpenAPI document (and generated clients) see them.

The services write these bodies themselves (``ProcessResult.to_json`` is hand-encoded for
speed), so the models here describe them rather than build them; the conformance run
(Schemathesis, ``tests/e2e/test_api_contract.py``) checks every answer against them. They
allow extra fields: a new field in an answer is not a breaking change for a client.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dtecho.protocol.dtesn import ModelConfig

__all__ = [
    "BSeriesReference",
    "BSeriesTree",
    "BatchItem",
    "BatchResult",
    "CacheControlResult",
    "CacheMetrics",
    "DeletedModel",
    "DtesnModel",
    "DtesnModelList",
    "Experiment",
    "ExperimentList",
    "Feedback",
    "Membrane",
    "ModelAlias",
    "ModelAliasList",
    "ModelVersion",
    "ModelVersionList",
    "Observation",
    "Prediction",
    "ProcessResult",
]

_OPEN = ConfigDict(extra="allow")
Rows = list[list[float]]


class Membrane(BaseModel):
    """One membrane of the tree: its place, size, time constant and activity."""

    model_config = _OPEN

    id: int
    path: list[int] = Field(description="Child indices from the root membrane.")
    level: int = Field(ge=1)
    parent: int | None
    units: int = Field(ge=1)
    start: int = Field(ge=0, description="Offset of its units in the state vector.")
    tau: float
    final_state_norm: float
    mean_abs_activation: float


class IntegratorReport(BaseModel):
    model_config = _OPEN

    integrator: str
    order: int = Field(description="Order verified from the tableau's B-series conditions.")
    order_conditions_checked: int


class ProcessResult(BaseModel):
    """``POST /v1/dtesn/process``: what running the input through the network did."""

    model_config = _OPEN

    steps: int = Field(description="Time steps: bytes of a string input, rows of vectors.")
    membrane_depth: int
    esn_size: int
    seed: int
    membranes: list[Membrane]
    features: list[float] = Field(description="The readout features of the final state.")
    bseries: IntegratorReport
    spectral_radius: float
    processing_time_ms: float
    esn_state: list[float] | None = Field(None, description="With include_states only.")
    trajectory: Rows | None = Field(
        None, description="Per-membrane state norms at evenly spaced steps (include_trajectory)."
    )


class BatchItem(BaseModel):
    """One input's outcome: its ``result``, or its own ``error`` (the others still run)."""

    model_config = _OPEN

    index: int
    result: ProcessResult | None = None
    error: dict[str, Any] | None = Field(None, description="An OpenAI error object.")


class BatchResult(BaseModel):
    model_config = _OPEN

    object: Literal["list"]
    data: list[BatchItem]


class TrainingSummary(BaseModel):
    model_config = _OPEN

    nrmse: float | None = None
    rows: int | None = None
    seconds: float | None = None


class DtesnModel(BaseModel):
    """A trained (or training) model's record."""

    model_config = _OPEN

    id: str
    object: Literal["dtesn.model"]
    name: str | None
    created: int
    updated: int | None = None
    status: Literal["training", "ready", "failed"]
    version: int
    config: ModelConfig | dict[str, Any] | None = Field(
        None, description='The settings; while "config": "auto" searches, null.'
    )
    input_dim: int | None = None
    output_dim: int | None = None
    warmup: int | None = None
    versions: list[dict[str, Any]] = Field(default_factory=list)
    training: TrainingSummary | dict[str, Any] | None = None


class DtesnModelList(BaseModel):
    model_config = _OPEN

    object: Literal["list"]
    data: list[DtesnModel]


class DeletedModel(BaseModel):
    model_config = _OPEN

    id: str
    object: Literal["dtesn.model.deleted"]
    deleted: bool


class Prediction(BaseModel):
    """Teacher-forced ``predictions`` (one row per input row) and the closed-loop
    ``forecast`` (``horizon`` rows)."""

    model_config = _OPEN

    object: Literal["dtesn.prediction"]
    model: str
    version: int
    predictions: Rows
    forecast: Rows | None = Field(None, description="With horizon > 0 only.")


class BSeriesTree(BaseModel):
    model_config = _OPEN

    tree: str
    butcher: str
    order: int
    symmetry: int
    density: int
    condition: str


class BSeriesReference(BaseModel):
    """Rooted trees with σ, γ and their order conditions; each integrator's verified order."""

    model_config = _OPEN

    order: int
    tree_counts: list[int] = Field(description="Rooted trees per order: OEIS A000081.")
    conditions: int
    trees: list[BSeriesTree]
    integrators: dict[str, int]


class CacheMetrics(BaseModel):
    """The response cache's counters and sizes per tier."""

    model_config = _OPEN

    object: Literal["dtesn.cache.metrics"]
    enabled: bool
    total_requests: int
    hits: dict[str, int]
    misses: int
    hit_ratio: float
    entries: dict[str, int | None]


class CacheControlResult(BaseModel):
    model_config = _OPEN

    object: Literal["dtesn.cache.control"]
    action: str
    targets: list[str]
    invalidated: int


class ModelVersion(BaseModel):
    """One immutable version of a trained model, with the aliases naming it."""

    model_config = _OPEN

    object: Literal["dtesn.model.version"]
    model: str
    version: int
    parent: int | None = Field(description="The version it was updated from; null for a fit.")
    kind: Literal["fit", "tune", "rls_update", "learner"]
    created: int
    creator: str | None = Field(description="The principal that made it.")
    config: dict[str, Any]
    data_fingerprint: str = Field(description="SHA-256 of the rows it was trained on.")
    metrics: dict[str, Any]
    status: Literal["available", "archived"]
    aliases: list[str]


class ModelVersionList(BaseModel):
    model_config = _OPEN

    object: Literal["list"]
    data: list[ModelVersion]


class ModelAlias(BaseModel):
    """A name for a version; ``previous`` is what a rollback returns to."""

    model_config = _OPEN

    object: Literal["dtesn.model.alias"]
    model: str
    alias: str
    version: int
    previous: int | None
    updated: int
    updated_by: str | None


class ModelAliasList(BaseModel):
    model_config = _OPEN

    object: Literal["list"]
    data: list[ModelAlias]


class Experiment(BaseModel):
    """An experiment: its definition (arms pinned to versions), status and analyses."""

    model_config = _OPEN

    object: Literal["dtesn.experiment"]
    id: str
    model: str
    name: str | None
    status: Literal["running", "stopped", "rolled_back"]
    spec: dict[str, Any]
    created: int
    created_by: str | None
    ended: int | None
    reason: str | None
    analysis: dict[str, Any] = Field(description="The last check, by the replica that ran it.")


class ExperimentList(BaseModel):
    model_config = _OPEN

    object: Literal["list"]
    data: list[Experiment]


class Observation(BaseModel):
    """What an observation was scored against: the experiment and each arm's mean squared
    error on it (null where only a request's answer was scored)."""

    model_config = _OPEN

    object: Literal["dtesn.observation"]
    model: str
    experiment: str | None
    scored: dict[str, float | None]
    accepted: int | None = Field(description="Rows scored (null: only a request's answer).")
    quarantined: list[dict[str, Any]] = Field(description="Rows left out, with the reasons.")
    monitoring: dict[str, Any] = Field(description="The model's quality and drift state.")


class Feedback(BaseModel):
    """A stored score, and the experiment arm it counted for (if any)."""

    model_config = _OPEN

    object: Literal["feedback"]
    id: int
    request_id: str
    score: float
    experiment: str | None
    arm: Literal["control", "candidate"] | None
