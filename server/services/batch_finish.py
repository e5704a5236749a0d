"""Finishing a batch: its output and error files written from its finished lines, then its final status.

The files are streamed: the rows are read from `batch_results` a page at a time (by line number, each page its
own short read) and appended to the file as they come, so finishing a batch of any size holds one page of
results in memory. The file ids derive from the batch id, so a replica that crashed mid-way and runs it again
writes nothing twice; the rows go in the same transaction as the final status.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import secrets
import time
from collections.abc import Iterator

from sqlalchemy import delete, select, update

from server.db.database import Database
from server.db.models import BatchResult, StoredBatch
from server.errors import OpenAIError
from server.services.batch_lines import iter_lines, parse_line
from server.services.files import FileService

log = logging.getLogger("ozwell.batches")

_PAGE_ROWS = 32  # a result is one response's JSON; a page holds at most this many


def _file_id(batch_id: str, kind: str) -> str:
    return "file-" + hashlib.sha256(f"{batch_id}:{kind}".encode()).hexdigest()[:32]


class BatchFinisher:
    def __init__(self, database: Database, files: FileService):
        self.database = database
        self.files = files

    def finish(self, batch: StoredBatch, status: str) -> None:
        """Write the output and error files from the finished lines (and, for an expired batch, its lines
        never run, as `batch_expired` errors), then set the final status and drop the rows."""
        counts = {"ok": 0, "failed": 0, "expired": 0}
        errors = self._records(batch.id, False, counts, "failed")
        if status == "expired":
            errors = itertools.chain(errors, self._expired(batch, counts))
        expires = batch.output_expires_after
        output = self.files.store_generated(batch.owner, _file_id(batch.id, "output"), f"{batch.id}_output.jsonl",
                                            "batch_output", self._records(batch.id, True, counts, "ok"), expires)
        error = self.files.store_generated(batch.owner, _file_id(batch.id, "error"), f"{batch.id}_error.jsonl",
                                           "batch_output", errors, expires)
        now = int(time.time())
        with self.database.session() as session, session.begin():
            session.execute(update(StoredBatch).where(StoredBatch.id == batch.id).values(
                status=status, output_file_id=output.id if output else None,
                error_file_id=error.id if error else None, runner=None, lease_until=None,
                failed=StoredBatch.failed + counts["expired"], **{f"{status}_at": now}))
            session.execute(delete(BatchResult).where(BatchResult.batch_id == batch.id))
        log.info("batch %s %s: %d ok, %d failed", batch.id, status, counts["ok"], counts["failed"] + counts["expired"])

    def _records(self, batch_id: str, ok: bool, counts: dict, name: str) -> Iterator[str]:
        """The results of one kind in line order, read a page at a time."""
        after = 0
        while True:
            with self.database.session() as session:
                page = list(session.execute(select(BatchResult.line, BatchResult.record)
                                            .where(BatchResult.batch_id == batch_id, BatchResult.ok.is_(ok),
                                                   BatchResult.line > after)
                                            .order_by(BatchResult.line).limit(_PAGE_ROWS)))
            if not page:
                return
            for _, record in page:
                counts[name] += 1
                yield record
            after = page[-1][0]

    def _expired(self, batch: StoredBatch, counts: dict) -> Iterator[str]:
        """The lines never run of an expired batch (none can be named if its input file was deleted)."""
        with self.database.session() as session:
            done = set(session.scalars(select(BatchResult.line).where(BatchResult.batch_id == batch.id)))
        try:
            path = self.files.path(self.files.get(batch.owner, batch.input_file_id))
            for _, raw in iter_lines(path, done):
                value = parse_line(raw) or {}
                counts["expired"] += 1
                yield json.dumps({"id": "batch_req_" + secrets.token_hex(16),
                                  "custom_id": str(value.get("custom_id")), "response": None,
                                  "error": {"code": "batch_expired", "message": "This request could not be "
                                            "executed before the completion window expired."}})
        except (OpenAIError, FileNotFoundError):
            return
