"""One storage quota per owner (--owner-quota-mb): uploaded files, stored responses, stored chat completions and
vector stores' indexed chunks count against it together, so none can fill the database or the disk past what
the owner was given."""

from __future__ import annotations

import threading

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.db.models import StoredChatCompletion, StoredFile, StoredResponse, VectorStoreFile


def used_bytes(session: Session, owner: str) -> int:
    """The bytes an owner holds: its files, stored responses and chat completions, and its vector stores' chunks
    (text and vectors)."""
    files = session.scalar(select(func.coalesce(func.sum(StoredFile.bytes), 0)).where(StoredFile.owner == owner))
    responses = session.scalar(select(func.coalesce(func.sum(StoredResponse.bytes), 0))
                               .where(StoredResponse.owner == owner))
    indexed = session.scalar(select(func.coalesce(func.sum(VectorStoreFile.usage_bytes), 0))
                             .where(VectorStoreFile.owner == owner))
    completions = session.scalar(select(func.coalesce(func.sum(StoredChatCompletion.bytes), 0))
                                 .where(StoredChatCompletion.owner == owner))
    return int(files) + int(responses) + int(indexed) + int(completions)


class OwnerQuotaStore:
    """The base of the stores whose rows count in their owner's quota (stored responses, stored chat completions):
    a per-owner lock held while a save checks the room and inserts, and the check a request makes before it runs."""

    FULL_MESSAGE = "so this could not be stored"  # how a subclass's refusal ends

    def __init__(self, database, retention_s: float, quota_bytes: int | None = None):
        self.database = database
        self.retention_s = retention_s
        self.quota_bytes = quota_bytes  # None: no quota
        self._locks: dict[str, threading.Lock] = {}  # owner -> held while its check and insert run
        self._locks_guard = threading.Lock()

    def _lock(self, owner: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(owner, threading.Lock())

    def check_room(self, owner: str) -> None:
        """Before a request with store=true runs: refused (413 quota_exceeded) when the owner's storage is full."""
        if self.quota_bytes is None:
            return
        with self.database.session() as session:
            used = used_bytes(session, owner)
        if used >= self.quota_bytes:
            from server.errors import RequestTooLargeError

            raise RequestTooLargeError(f"Your storage quota of {self.quota_bytes} bytes is full (files, stored "
                                       f"responses and stored chat completions count against it), {self.FULL_MESSAGE}",
                                       param="store", code="quota_exceeded")
