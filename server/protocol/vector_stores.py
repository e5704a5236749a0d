"""The request bodies of /v1/vector_stores (server/vector_stores/service.py). `chunking_strategy` and `filters`
stay plain objects here: server/vector_stores/chunking.py and filters.py check them, naming the field."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from server.protocol.base import OpenAIBaseModel, check_metadata

__all__ = ["MAX_BATCH_FILES", "MAX_CREATE_FILE_IDS", "CreateVectorStoreFileBatchRequest",
           "CreateVectorStoreFileRequest", "CreateVectorStoreRequest", "UpdateVectorStoreFileAttributesRequest",
           "UpdateVectorStoreRequest", "VectorStoreSearchRequest"]

# What OpenAI's spec allows in one request (CreateVectorStoreRequest.file_ids, CreateVectorStoreFileBatchRequest).
MAX_CREATE_FILE_IDS = 500
MAX_BATCH_FILES = 2000
AttributeValue = str | bool | int | float


def check_attributes(value: dict | None) -> dict | None:
    """OpenAI's VectorStoreFileAttributes: at most 16 keys of up to 64 characters; strings up to 512."""
    if value is None:
        return value
    if len(value) > 16:
        raise ValueError("at most 16 attributes are allowed")
    for key, item in value.items():
        if len(key) > 64:
            raise ValueError(f"key {key[:20]!r}... is longer than 64 characters")
        if isinstance(item, str) and len(item) > 512:
            raise ValueError(f"the value of {key!r} is longer than 512 characters")
    return value


class ExpiresAfter(OpenAIBaseModel):
    anchor: Literal["last_active_at"]
    days: int = Field(ge=1, le=365)


class CreateVectorStoreRequest(OpenAIBaseModel):
    name: str | None = Field(default=None, max_length=256)
    description: str | None = Field(default=None, max_length=512)
    file_ids: list[str] | None = Field(default=None, max_length=MAX_CREATE_FILE_IDS)
    expires_after: ExpiresAfter | None = None
    chunking_strategy: dict | None = None
    metadata: dict[str, str] | None = None

    _check_metadata = field_validator("metadata")(classmethod(lambda cls, value: check_metadata(value)))


class UpdateVectorStoreRequest(OpenAIBaseModel):
    """A field left out is kept; `expires_after: null` removes the expiry."""

    name: str | None = Field(default=None, max_length=256)
    expires_after: ExpiresAfter | None = None
    metadata: dict[str, str] | None = None

    _check_metadata = field_validator("metadata")(classmethod(lambda cls, value: check_metadata(value)))


class CreateVectorStoreFileRequest(OpenAIBaseModel):
    file_id: str = Field(min_length=1, max_length=64)
    chunking_strategy: dict | None = None
    attributes: dict[str, AttributeValue] | None = None

    _check_attributes = field_validator("attributes")(classmethod(lambda cls, value: check_attributes(value)))


class UpdateVectorStoreFileAttributesRequest(OpenAIBaseModel):
    attributes: dict[str, AttributeValue] | None

    _check_attributes = field_validator("attributes")(classmethod(lambda cls, value: check_attributes(value)))


class CreateVectorStoreFileBatchRequest(OpenAIBaseModel):
    """`file_ids` (sharing `chunking_strategy` and `attributes`) or `files` (each with its own), not both."""

    file_ids: list[str] | None = None
    files: list[CreateVectorStoreFileRequest] | None = None
    chunking_strategy: dict | None = None
    attributes: dict[str, AttributeValue] | None = None

    _check_attributes = field_validator("attributes")(classmethod(lambda cls, value: check_attributes(value)))

    @field_validator("file_ids", "files", mode="before")
    @classmethod
    def _bounded(cls, items):
        # Checked before the items are validated: 10,000 entries are refused without reading them.
        if isinstance(items, list) and not 1 <= len(items) <= MAX_BATCH_FILES:
            raise ValueError(f"a batch holds 1 to {MAX_BATCH_FILES} files (this one held {len(items)}); split "
                             "larger sets into several batches")
        return items

    @model_validator(mode="after")
    def _one_list(self):
        if (self.file_ids is None) == (self.files is None):
            raise ValueError("give exactly one of 'file_ids' and 'files'")
        if self.files is not None and (self.chunking_strategy is not None or self.attributes is not None):
            raise ValueError("with 'files', give chunking_strategy and attributes in each file")
        return self

    def entries(self) -> list[CreateVectorStoreFileRequest]:
        if self.files is not None:
            return self.files
        return [CreateVectorStoreFileRequest(file_id=file_id, chunking_strategy=self.chunking_strategy,
                                             attributes=self.attributes) for file_id in self.file_ids]


class RankingOptions(OpenAIBaseModel):
    ranker: Literal["none", "auto", "default-2024-11-15"] = "auto"
    score_threshold: float = Field(default=0.0, ge=0.0, le=1.0)


class VectorStoreSearchRequest(OpenAIBaseModel):
    query: str | list[str]
    max_num_results: int = Field(default=10, ge=1, le=50)
    filters: dict | None = None
    ranking_options: RankingOptions | None = None

    NEUTRAL: ClassVar[dict[str, tuple]] = {"rewrite_query": (None, False)}

    @field_validator("query")
    @classmethod
    def _queries(cls, value: str | list[str]) -> str | list[str]:
        queries = [value] if isinstance(value, str) else value
        if not queries or len(queries) > 16:
            raise ValueError("give 1 to 16 queries")
        if any(not q.strip() for q in queries):
            raise ValueError("a query must not be empty")
        if sum(len(q) for q in queries) > 32_768:
            raise ValueError("the queries may hold at most 32768 characters in all")
        return value

    @property
    def queries(self) -> list[str]:
        return [self.query] if isinstance(self.query, str) else list(self.query)
