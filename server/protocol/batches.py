"""POST /v1/batches: the request body, and the endpoints a batch may run."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    field_validator,
)

from server.protocol.base import OpenAIBaseModel, check_metadata

# The endpoints a batch may run (server/services/batches.py), and each one's key scope.
BATCH_ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/v1/embeddings": "embeddings",
                   "/v1/responses": "responses"}


class BatchFileExpiration(OpenAIBaseModel):
    anchor: Literal["created_at"]
    seconds: int = Field(ge=3600, le=2_592_000)


class CreateBatchRequest(OpenAIBaseModel):
    """POST /v1/batches."""

    input_file_id: str = Field(min_length=1, max_length=64)
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None
    output_expires_after: BatchFileExpiration | None = None

    _check_metadata = field_validator("metadata")(classmethod(lambda cls, value: check_metadata(value)))

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str) -> str:
        if value not in BATCH_ENDPOINTS:
            raise ValueError(f"{value!r} is not an endpoint this server runs in batches; use one of "
                             f"{', '.join(BATCH_ENDPOINTS)}")
        return value

    @field_validator("completion_window")
    @classmethod
    def _check_window(cls, value: str) -> str:
        if value != "24h":
            raise ValueError("only '24h' is supported")
        return value
