"""Wire schema of the response cache's control route (``/v1/dtesn/cache/control``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from dtecho.protocol.json_types import Bool
from dtecho.protocol.openai import CacheTag

__all__ = ["CacheControlRequest"]


class CacheControlRequest(BaseModel):
    """``POST /v1/dtesn/cache/control``: ``invalidate_tags`` and ``invalidate_model`` need at
    least one target; ``clear`` needs ``force: true``; ``get_metrics`` takes nothing else."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            # The rules between fields, as JSON Schema states them (the route enforces the same).
            "allOf": [
                {
                    "if": {"properties": {"action": {"const": "clear"}}, "required": ["action"]},
                    "then": {"properties": {"force": {"const": True}}, "required": ["force"]},
                },
                {
                    "if": {
                        "properties": {"action": {"enum": ["invalidate_tags", "invalidate_model"]}},
                        "required": ["action"],
                    },
                    "then": {"properties": {"targets": {"minItems": 1}}, "required": ["targets"]},
                },
            ],
            "examples": [
                {"action": "invalidate_tags", "targets": ["experiment-7"]},
                {"action": "clear", "force": True},
            ],
        },
    )

    action: Literal["invalidate_tags", "invalidate_model", "clear", "get_metrics"] = Field(
        description="What to do: drop entries by tag or by model, drop everything in this "
        "namespace, or read the metrics."
    )
    targets: list[CacheTag] = Field(
        default_factory=list,
        max_length=1000,
        description="Tags (invalidate_tags) or model names (invalidate_model); at least one.",
    )
    force: Bool = Field(False, description="Must be true for clear.")
