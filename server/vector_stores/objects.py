"""The API objects of stores, their files and file batches, built from their rows, and the cursor pages that
list them (limit, order, after, before over created_at then id, as OpenAI's list endpoints)."""

from __future__ import annotations

import time

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from server.db.models import VectorStore, VectorStoreFile, VectorStoreFileBatch
from server.errors import NotFoundError
from server.vector_stores.chunking import ChunkingStrategy

DAY_S = 86_400
STATUSES = ("in_progress", "completed", "failed", "cancelled")


def expires_at(store: VectorStore) -> int | None:
    return store.last_active_at + store.expires_after_days * DAY_S if store.expires_after_days else None


def is_expired(store: VectorStore, now: int | None = None) -> bool:
    at = expires_at(store)
    return at is not None and at <= (int(time.time()) if now is None else now)


def owned_store(session: Session, owner: str, store_id: str) -> VectorStore:
    """The owner's store; 404 for one it lacks (another owner's included)."""
    store = session.get(VectorStore, store_id)
    if store is None or store.owner != owner:
        raise NotFoundError(f"No vector store found with id '{store_id}'.", param="vector_store_id",
                            code="vector_store_not_found")
    return store


def _counts(rows) -> dict[str, int]:
    counts = dict.fromkeys(STATUSES, 0)
    for status, count in rows:
        counts[status] = counts.get(status, 0) + int(count)
    return {**counts, "total": sum(counts.values())}


def store_stats(session: Session, store_ids: list[str]) -> dict[str, tuple[dict, int]]:
    """Each store's file_counts and usage_bytes, in one query."""
    rows = session.execute(select(VectorStoreFile.vector_store_id, VectorStoreFile.status, func.count(),
                                  func.coalesce(func.sum(VectorStoreFile.usage_bytes), 0))
                           .where(VectorStoreFile.vector_store_id.in_(store_ids))
                           .group_by(VectorStoreFile.vector_store_id, VectorStoreFile.status)).all()
    stats = {}
    for store_id in store_ids:
        mine = [r for r in rows if r[0] == store_id]
        stats[store_id] = (_counts((r[1], r[2]) for r in mine), sum(int(r[3]) for r in mine))
    return stats


def store_object(store: VectorStore, counts: dict, usage_bytes: int) -> dict:
    status = "expired" if is_expired(store) else "in_progress" if counts["in_progress"] else "completed"
    body = {"id": store.id, "object": "vector_store", "created_at": store.created_at, "name": store.name,
            "usage_bytes": usage_bytes, "file_counts": counts, "status": status,
            "last_active_at": store.last_active_at, "expires_at": expires_at(store),
            "metadata": store.store_metadata or {}}
    if store.expires_after_days:
        body["expires_after"] = {"anchor": "last_active_at", "days": store.expires_after_days}
    if store.description is not None:
        body["description"] = store.description
    return body


def file_object(row: VectorStoreFile) -> dict:
    strategy = ChunkingStrategy(row.max_chunk_size_tokens, row.chunk_overlap_tokens)
    return {"id": row.file_id, "object": "vector_store.file", "usage_bytes": row.usage_bytes,
            "created_at": row.created_at, "vector_store_id": row.vector_store_id, "status": row.status,
            "last_error": row.last_error, "chunking_strategy": strategy.to_object(),
            "attributes": row.attributes or {}}


def batch_object(session: Session, batch: VectorStoreFileBatch) -> dict:
    counts = _counts(session.execute(select(VectorStoreFile.status, func.count())
                                     .where(VectorStoreFile.batch_id == batch.id,
                                            VectorStoreFile.vector_store_id == batch.vector_store_id)
                                     .group_by(VectorStoreFile.status)).all())
    if batch.cancelled_at is not None:
        status = "cancelled"
    elif counts["in_progress"]:
        status = "in_progress"
    else:
        status = "failed" if counts["total"] and counts["failed"] == counts["total"] else "completed"
    return {"id": batch.id, "object": "vector_store.files_batch", "created_at": batch.created_at,
            "vector_store_id": batch.vector_store_id, "status": status, "file_counts": counts}


def cursor_page(session: Session, statement, created, key, limit: int, order: str,
                after: tuple | None, before: tuple | None) -> tuple[list, bool]:
    """A page of `statement`'s rows in (created, key) order; `after` and `before` are a cursor row's (created, key)
    values. With only `before`, the page is the `limit` rows just before it, still in the asked order."""
    ascending = order == "asc"

    def past(cursor: tuple, forward: bool):
        if forward == ascending:
            return or_(created > cursor[0], and_(created == cursor[0], key > cursor[1]))
        return or_(created < cursor[0], and_(created == cursor[0], key < cursor[1]))

    if after is not None:
        statement = statement.where(past(after, True))
    if before is not None:
        statement = statement.where(past(before, False))
    backwards = before is not None and after is None
    up = ascending != backwards
    statement = statement.order_by(*((created, key) if up else (created.desc(), key.desc()))).limit(limit + 1)
    rows = list(session.scalars(statement))
    page = rows[:limit]
    return (page[::-1] if backwards else page), len(rows) > limit


def list_body(data: list[dict], has_more: bool) -> dict:
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else "",
            "last_id": data[-1]["id"] if data else "", "has_more": has_more}
