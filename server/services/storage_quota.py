"""One storage quota per owner (--owner-quota-mb): uploaded files, stored responses, stored chat completions and
vector stores' indexed chunks count against it together, so none can fill the database or the disk past what
the owner was given."""

from __future__ import annotations

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
