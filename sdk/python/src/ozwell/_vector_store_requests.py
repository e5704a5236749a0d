"""What each vector store call sends, and the poll helpers' bookkeeping, shared by the synchronous and
asynchronous resources (ozwell/vector_stores.py).

Polling follows the official openai SDK: the server's `openai-poll-after-ms` header sets the wait between polls
unless `poll_interval_ms` is given (1 s when neither is), and `max_wait_seconds` bounds the wait with a
`TimeoutError` (the server goes on indexing)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any, Literal

import httpx

from ozwell._client import FinalRequest
from ozwell._specs import body, query, segment
from ozwell.types import RequestOptions
from ozwell.vector_store_types import (
    AttributeValue,
    ChunkingStrategyParam,
    FileBatchFileParam,
    FileStatus,
    VectorStoreFile,
    VectorStoreFileBatch,
)

DEFAULT_POLL_INTERVAL_MS = 1000
Order = Literal["asc", "desc"]


def store_path(store_id: str, suffix: str = "") -> str:
    return f"/vector_stores/{segment(store_id)}{suffix}"


def file_path(store_id: str, file_id: str, suffix: str = "") -> str:
    return store_path(store_id, f"/files/{segment(file_id)}{suffix}")


def batch_path(store_id: str, batch_id: str, suffix: str = "") -> str:
    return store_path(store_id, f"/file_batches/{segment(batch_id)}{suffix}")


def page_query(after: str | None, before: str | None, limit: int | None, order: Order | None,
               filter: FileStatus | None = None) -> Any:
    return query(after=after, before=before, limit=limit, order=order, filter=filter)


def attach(store_id: str, file_id: str, attributes: dict[str, AttributeValue] | None,
           chunking_strategy: ChunkingStrategyParam | None, options: RequestOptions) -> FinalRequest:
    return FinalRequest("POST", store_path(store_id, "/files"), options=options,
                        json=body(file_id=file_id, attributes=attributes, chunking_strategy=chunking_strategy))


def create_batch(store_id: str, file_ids: Iterable[str] | None, files: Iterable[FileBatchFileParam] | None,
                 attributes: dict[str, AttributeValue] | None, chunking_strategy: ChunkingStrategyParam | None,
                 options: RequestOptions) -> FinalRequest:
    return FinalRequest("POST", store_path(store_id, "/file_batches"), options=options,
                        json=body(file_ids=None if file_ids is None else list(file_ids),
                                  files=None if files is None else list(files), attributes=attributes,
                                  chunking_strategy=chunking_strategy))


def search(store_id: str, fields: dict[str, Any], options: RequestOptions) -> FinalRequest:
    if not isinstance(fields.get("query"), (str, type(None))):
        fields["query"] = list(fields["query"])
    return FinalRequest("POST", store_path(store_id, "/search"), json=body(**fields), options=options)


class Poll:
    """One poll loop's state: how long to wait after each answer, and when to give up."""

    def __init__(self, what: str, poll_interval_ms: int | None, max_wait_seconds: float | None) -> None:
        if max_wait_seconds is not None and (not math.isfinite(max_wait_seconds) or max_wait_seconds < 0):
            raise ValueError("max_wait_seconds must be a finite number, 0 or more")
        self.what = what
        self.interval_ms = poll_interval_ms
        self.deadline = None if max_wait_seconds is None else time.monotonic() + max_wait_seconds

    def check(self) -> None:
        """Raise TimeoutError once the deadline has passed (before each request)."""
        if self.deadline is not None and self.deadline <= time.monotonic():
            raise TimeoutError(f"Timed out waiting for {self.what} to finish processing")

    def wait_s(self, response: httpx.Response) -> float:
        """How long to sleep before the next poll: the caller's interval, else the server's hint."""
        interval_ms = self.interval_ms
        if interval_ms is None:
            hint = response.headers.get("openai-poll-after-ms")
            interval_ms = int(hint) if hint and hint.isdigit() else DEFAULT_POLL_INTERVAL_MS
        wait = interval_ms / 1000
        if self.deadline is not None:
            wait = min(wait, max(self.deadline - time.monotonic(), 0.0))
        return wait


def file_settled(response: httpx.Response) -> VectorStoreFile | None:
    """The file once it is no longer in_progress (completed, failed or cancelled: check status and last_error)."""
    file = VectorStoreFile.model_validate(response.json())
    return None if file.status == "in_progress" else file


def batch_settled(response: httpx.Response) -> VectorStoreFileBatch | None:
    """The batch once none of its files is in_progress (some may have failed: check file_counts)."""
    batch = VectorStoreFileBatch.model_validate(response.json())
    return None if batch.file_counts.in_progress > 0 else batch
