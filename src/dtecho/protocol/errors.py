"""The error body every failed request gets: OpenAI's ``{"error": {...}}`` envelope."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ErrorDetail", "ErrorResponse"]


class ErrorDetail(BaseModel):
    """What went wrong, in OpenAI's words: a sentence for people, ``type`` and ``code`` for
    programs, and ``param`` naming the request field at fault (``messages[0].content``)."""

    model_config = ConfigDict(extra="allow")

    message: str = Field(description="A human-readable explanation.")
    type: str = Field(
        description="The error class: invalid_request_error, authentication_error, "
        "permission_error, rate_limit_error, server_error or upstream_error."
    )
    param: str | None = Field(description="The request field at fault, if one is.")
    code: str | None = Field(
        description="A stable machine-readable code (invalid_value, model_not_found, …)."
    )


class ErrorResponse(BaseModel):
    """The body of every 4xx and 5xx answer."""

    model_config = ConfigDict(
        extra="allow",  # readiness answers add "status" and "checks" beside "error"
        json_schema_extra={
            "examples": [
                {
                    "error": {
                        "message": "Invalid value for 'esn_size': Input should be less than "
                        "or equal to 4096.",
                        "type": "invalid_request_error",
                        "param": "esn_size",
                        "code": "invalid_value",
                    }
                }
            ]
        },
    )

    error: ErrorDetail
