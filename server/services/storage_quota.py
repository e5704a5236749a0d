"""One storage quota per owner (--owner-quota-mb): uploaded files and stored responses count against it
together, so neither can fill the database or the disk past what the owner was given."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.db.models import StoredFile, StoredResponse


def used_bytes(session: Session, owner: str) -> int:
    """The bytes an owner holds: its files and its stored responses."""
    files = session.scalar(select(func.coalesce(func.sum(StoredFile.bytes), 0)).where(StoredFile.owner == owner))
    responses = session.scalar(select(func.coalesce(func.sum(StoredResponse.bytes), 0))
                               .where(StoredResponse.owner == owner))
    return int(files) + int(responses)
