"""Vector store types, after OpenAI's spec (VectorStoreObject, VectorStoreFileObject, VectorStoreFileBatchObject,
the search page, the filters): request parameters as TypedDicts, responses as pydantic models that keep fields
they do not name, as in ozwell.types."""

from __future__ import annotations

from typing import Literal, Union

from typing_extensions import Required, TypedDict

from ozwell.types import OzwellModel

AttributeValue = Union[str, float, bool]
FileStatus = Literal["in_progress", "completed", "cancelled", "failed"]

# ---- request parameters -------------------------------------------------------------------------


class ExpiresAfterParam(TypedDict):
    anchor: Literal["last_active_at"]
    days: int


class StaticChunkingParam(TypedDict):
    max_chunk_size_tokens: int
    chunk_overlap_tokens: int


class AutoChunkingStrategyParam(TypedDict):
    type: Literal["auto"]


class StaticChunkingStrategyParam(TypedDict):
    type: Literal["static"]
    static: StaticChunkingParam


ChunkingStrategyParam = Union[AutoChunkingStrategyParam, StaticChunkingStrategyParam]


class ComparisonFilterParam(TypedDict):
    type: Literal["eq", "ne", "gt", "gte", "lt", "lte", "in", "nin"]
    key: str
    value: Union[str, float, bool, list[Union[str, float]]]


class CompoundFilterParam(TypedDict):
    type: Literal["and", "or"]
    filters: list[Union[ComparisonFilterParam, CompoundFilterParam]]


FilterParam = Union[ComparisonFilterParam, CompoundFilterParam]


class RankingOptionsParam(TypedDict, total=False):
    ranker: Literal["none", "auto", "default-2024-11-15"]
    score_threshold: float


class FileBatchFileParam(TypedDict, total=False):
    """One file of a batch created with `files` (each with its own attributes and chunking)."""

    file_id: Required[str]
    attributes: dict[str, AttributeValue] | None
    chunking_strategy: ChunkingStrategyParam


# ---- response models ----------------------------------------------------------------------------


class FileCounts(OzwellModel):
    in_progress: int
    completed: int
    failed: int
    cancelled: int
    total: int


class ExpiresAfter(OzwellModel):
    anchor: Literal["last_active_at"] = "last_active_at"
    days: int


class VectorStore(OzwellModel):
    id: str
    object: Literal["vector_store"] = "vector_store"
    created_at: int
    name: str | None = None
    usage_bytes: int
    file_counts: FileCounts
    status: Literal["expired", "in_progress", "completed"]
    expires_after: ExpiresAfter | None = None
    expires_at: int | None = None
    last_active_at: int | None = None
    metadata: dict[str, str] | None = None


class VectorStoreDeleted(OzwellModel):
    id: str
    object: Literal["vector_store.deleted"] = "vector_store.deleted"
    deleted: bool


class VectorStoreList(OzwellModel):
    object: Literal["list"] = "list"
    data: list[VectorStore]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class LastError(OzwellModel):
    code: Literal["server_error", "unsupported_file", "invalid_file"]
    message: str


class StaticChunking(OzwellModel):
    max_chunk_size_tokens: int
    chunk_overlap_tokens: int


class ChunkingStrategy(OzwellModel):
    type: Literal["static", "other"]
    static: StaticChunking | None = None


class VectorStoreFile(OzwellModel):
    id: str
    object: Literal["vector_store.file"] = "vector_store.file"
    usage_bytes: int
    created_at: int
    vector_store_id: str
    status: FileStatus
    last_error: LastError | None = None
    chunking_strategy: ChunkingStrategy | None = None
    attributes: dict[str, AttributeValue] | None = None


class VectorStoreFileDeleted(OzwellModel):
    id: str
    object: Literal["vector_store.file.deleted"] = "vector_store.file.deleted"
    deleted: bool


class VectorStoreFileList(OzwellModel):
    object: Literal["list"] = "list"
    data: list[VectorStoreFile]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class FileContent(OzwellModel):
    type: str
    text: str


class VectorStoreFileContent(OzwellModel):
    """A file's parsed text as it was indexed: its chunks, in order."""

    object: Literal["vector_store.file_content.page"] = "vector_store.file_content.page"
    data: list[FileContent]
    has_more: bool = False
    next_page: str | None = None


class VectorStoreFileBatch(OzwellModel):
    id: str
    object: Literal["vector_store.files_batch"] = "vector_store.files_batch"
    created_at: int
    vector_store_id: str
    status: FileStatus
    file_counts: FileCounts


class SearchResultContent(OzwellModel):
    type: Literal["text"] = "text"
    text: str


class VectorStoreSearchResult(OzwellModel):
    file_id: str
    filename: str
    score: float
    attributes: dict[str, AttributeValue] | None = None
    content: list[SearchResultContent]


class VectorStoreSearchResultsPage(OzwellModel):
    object: Literal["vector_store.search_results.page"] = "vector_store.search_results.page"
    search_query: list[str]
    data: list[VectorStoreSearchResult]
    has_more: bool = False
    next_page: str | None = None
