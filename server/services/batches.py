"""The Batch API's front: create, retrieve, list and cancel batches (server/services/batch_runner.py runs them).

A batch is a row in `batches` (server/db/models.py). It moves validating -> in_progress -> finalizing ->
completed, or to failed (its input file is refused, with `errors` naming the lines), expired (its window
passed; what it finished is kept), or cancelling -> cancelled. The routes are thin; the runner does the work.
"""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING

from sqlalchemy import and_, or_, select, update

from server.context import RequestContext
from server.db.database import Database
from server.db.models import StoredBatch
from server.errors import ConflictError, InvalidRequestError, NotFoundError, PermissionDeniedError
from server.protocol import BATCH_ENDPOINTS, CreateBatchRequest

if TYPE_CHECKING:
    from server.services.batch_runner import BatchRunner
    from server.services.files import FileService

WINDOWS_S = {"24h": 24 * 3600}
MAX_LINES = 50_000
MAX_INPUT_BYTES = 200 * 1024 * 1024
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
_TIMES = ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")


def batch_object(row: StoredBatch) -> dict:
    """The Batch object as OpenAI returns it; fields that do not apply yet are left out."""
    body: dict = {
        "id": row.id, "object": "batch", "endpoint": row.endpoint, "input_file_id": row.input_file_id,
        "completion_window": row.completion_window, "status": row.status, "created_at": row.created_at,
        "expires_at": row.expires_at,
        "request_counts": {"total": row.total, "completed": row.completed, "failed": row.failed},
        "metadata": row.batch_metadata,
        "usage": {"input_tokens": row.input_tokens, "input_tokens_details": {"cached_tokens": 0},
                  "output_tokens": row.output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                  "total_tokens": row.input_tokens + row.output_tokens},
    }
    for name in _TIMES:
        value = getattr(row, f"{name}_at")
        if value is not None:
            body[f"{name}_at"] = value
    for name in ("model", "output_file_id", "error_file_id"):
        if getattr(row, name) is not None:
            body[name] = getattr(row, name)
    if row.errors:
        body["errors"] = {"object": "list", "data": row.errors}
    return body


class BatchService:
    def __init__(self, database: Database, files: FileService | None, runner: BatchRunner | None = None):
        self.database = database
        self.files = files
        self.runner = runner  # woken when there is new work

    # ---- create ---------------------------------------------------------------------------------
    def create(self, req: CreateBatchRequest, context: RequestContext) -> dict:
        """Blocking (run it off the event loop). The input file's lines are checked by the runner, which
        fails the batch naming them; what can be refused at once (the file, the key) is refused here."""
        caller = context.caller
        scope = BATCH_ENDPOINTS[req.endpoint]
        if caller is not None and scope not in caller.scopes:
            raise PermissionDeniedError(f"This API key lacks the '{scope}' scope, which {req.endpoint} needs.",
                                        param="endpoint", code="insufficient_scope")
        try:
            record = self.files.get(context.owner, req.input_file_id)
        except NotFoundError:
            raise NotFoundError(f"No such File object: {req.input_file_id}", param="input_file_id",
                                code="file_not_found") from None
        if record.purpose != "batch":
            raise InvalidRequestError(f"File {req.input_file_id} has purpose {record.purpose!r}; a batch's input file "
                                      "must be uploaded with purpose 'batch'.", param="input_file_id",
                                      code="invalid_file_purpose")
        if record.bytes > MAX_INPUT_BYTES:
            raise InvalidRequestError(f"File {req.input_file_id} is {record.bytes} bytes; a batch's input file may be "
                                      f"at most {MAX_INPUT_BYTES} bytes.", param="input_file_id",
                                      code="file_too_large")
        now = int(time.time())
        row = StoredBatch(
            id="batch_" + secrets.token_hex(16), owner=context.owner,
            key_id=caller.key_id if caller is not None else None, endpoint=req.endpoint,
            input_file_id=req.input_file_id, completion_window=req.completion_window, status="validating",
            created_at=now, expires_at=now + WINDOWS_S[req.completion_window], total=0, completed=0, failed=0,
            input_tokens=0, output_tokens=0, batch_metadata=req.metadata,
            output_expires_after=req.output_expires_after.seconds if req.output_expires_after else None)
        with self.database.session() as session, session.begin():
            session.add(row)
        if self.runner is not None:
            self.runner.wake()
        return batch_object(row)

    # ---- read ------------------------------------------------------------------------------------
    def _row(self, owner: str | None, batch_id: str) -> StoredBatch:
        with self.database.session() as session:
            row = session.get(StoredBatch, batch_id)
        if row is None or (owner is not None and row.owner != owner):
            raise NotFoundError(f"No batch found with id '{batch_id}'.", param="batch_id", code="batch_not_found")
        return row

    def retrieve(self, owner: str | None, batch_id: str) -> dict:
        return batch_object(self._row(owner, batch_id))

    def list(self, owner: str | None, limit: int, after: str | None = None) -> dict:
        """Newest first; `after` is the id of the last batch of the previous page. owner None: everyone's."""
        rows = self.rows(owner, limit + 1, after)
        page = rows[:limit]
        return {"object": "list", "data": [batch_object(r) for r in page], "first_id": page[0].id if page else "",
                "last_id": page[-1].id if page else "", "has_more": len(rows) > limit}

    def rows(self, owner: str | None, limit: int, after: str | None = None) -> list[StoredBatch]:
        """The batches' rows, newest first (the CLI shows their owners too)."""
        statement = select(StoredBatch)
        if owner is not None:
            statement = statement.where(StoredBatch.owner == owner)
        if after:
            cursor = self._row(owner, after)
            statement = statement.where(or_(StoredBatch.created_at < cursor.created_at,
                                            and_(StoredBatch.created_at == cursor.created_at,
                                                 StoredBatch.id < cursor.id)))
        statement = statement.order_by(StoredBatch.created_at.desc(), StoredBatch.id.desc()).limit(limit)
        with self.database.session() as session:
            return list(session.scalars(statement))

    # ---- cancel ---------------------------------------------------------------------------------
    def cancel(self, owner: str | None, batch_id: str) -> dict:
        """A validating or running batch goes to cancelling; the runner stops its lines, writes what they
        produced and marks it cancelled. A cancelling or cancelled batch is returned as it is."""
        row = self._row(owner, batch_id)
        if row.status in ("validating", "in_progress"):
            with self.database.session() as session, session.begin():
                session.execute(update(StoredBatch).where(StoredBatch.id == batch_id,
                                                          StoredBatch.status.in_(("validating", "in_progress")))
                                .values(status="cancelling", cancelling_at=int(time.time())))
            if self.runner is not None:
                self.runner.cancelled(batch_id)
            row = self._row(owner, batch_id)
        if row.status not in ("cancelling", "cancelled"):
            raise ConflictError(f"Batch {batch_id} cannot be cancelled: its status is {row.status!r}.",
                                param="batch_id")
        return batch_object(row)
