"""The manifest ``config`` of an evaluation module."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["OWNED_PARAMETERS", "Config"]

# Request fields a run sets itself: the model, its input, one whole answer (no stream, n=1).
OWNED_PARAMETERS = frozenset({"model", "messages", "prompt", "stream", "stream_options", "n"})


class Config(BaseModel):
    """What one evaluation module allows and assumes.

    Every bound is per instance, so a project's manifest decides how much of the server its
    evaluations may take: ``max_items`` × models calls per run, ``concurrency`` of them at
    once, ``max_active_runs`` runs at once.
    """

    model_config = ConfigDict(extra="forbid")

    # The models a run compares when its body names none.
    models: list[str] = Field(default_factory=list, max_length=16)
    # None: any served model (and any trained DTESN model) the caller may use; else only these.
    allowed_models: list[str] | None = None
    max_items: int = Field(200, ge=1, le=100_000)  # items per run
    max_models: int = Field(8, ge=1, le=64)  # models per run
    concurrency: int = Field(4, ge=1, le=64)  # model calls of one run in flight at once
    max_active_runs: int = Field(2, ge=1, le=64)  # runs executing at once in this instance
    max_runs: int = Field(100, ge=1, le=100_000)  # stored runs; the oldest finished go first
    # The sampling parameters of every prompt call unless the run or a model entry says
    # otherwise: greedy decoding, so that a run is repeatable and exact_match means something.
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"temperature": 0.0, "max_tokens": 64}
    )
    # A run whose process stopped without closing it (a crash, a kill) is marked
    # ``interrupted`` once its heartbeat is this old; runs beat every quarter of it.
    stale_after_seconds: float = Field(120.0, ge=1.0, le=86_400.0)

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        if self.max_active_runs > self.max_runs:
            raise ValueError("max_active_runs must not exceed max_runs")
        if len(self.models) > self.max_models:
            raise ValueError(f"models lists {len(self.models)}; max_models is {self.max_models}")
        owned = sorted(set(self.parameters) & OWNED_PARAMETERS)
        if owned:
            raise ValueError(f"parameters may not set {', '.join(owned)} (the run sets them)")
        if self.allowed_models is not None:
            outside = [name for name in self.models if name not in self.allowed_models]
            if outside:
                raise ValueError(f"models not in allowed_models: {', '.join(outside)}")
        return self
