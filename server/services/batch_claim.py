"""A batch's row as the runners share it: which replica holds it (a lease in the row, renewed while it runs),
and its moves from one status to the next.

A lease is free when no replica holds it, when it ran out (its replica died; another takes the batch after
`lease_s`), or when it is this replica's own (a restarted replica with the same instance name takes its batches
back at once). A move names the status it leaves, and is made only if the row still has it: one conditional
UPDATE, atomic on PostgreSQL (the row is locked while the WHERE is checked) and on SQLite (writes are
serialized), so a cancel that lands while a batch validates or finishes its lines is never overwritten.
"""

from __future__ import annotations

import time
from collections.abc import Collection

from sqlalchemy import or_, select, update

from server.auth.keys import KeyService
from server.db.database import Database
from server.db.models import StoredBatch
from server.services.batches import ACTIVE

_CANDIDATES = 16


class BatchLeases:
    def __init__(self, database: Database, instance: str, lease_s: float = 30.0):
        self.database = database
        self.instance = instance
        self.lease_s = lease_s

    def _free(self, now: float):
        return or_(StoredBatch.runner.is_(None), StoredBatch.runner == self.instance, StoredBatch.lease_until < now)

    def claim(self, busy_owners: Collection[str] = ()) -> str | None:
        """The oldest active batch whose lease is free, of an owner with no batch running here; its lease taken.

        Skipping the owners already served is what makes the runner fair: each owner has at most one batch
        running per replica, so a second owner's batch starts beside the first's instead of after it."""
        now = time.time()
        statement = select(StoredBatch.id).where(StoredBatch.status.in_(ACTIVE), self._free(now))
        if busy_owners:
            statement = statement.where(StoredBatch.owner.not_in(list(busy_owners)))
        with self.database.session() as session, session.begin():
            candidates = list(session.scalars(statement.order_by(StoredBatch.created_at, StoredBatch.id)
                                              .limit(_CANDIDATES)))
            for batch_id in candidates:
                taken = session.execute(update(StoredBatch).where(StoredBatch.id == batch_id,
                                                                  StoredBatch.status.in_(ACTIVE), self._free(now))
                                        .values(runner=self.instance, lease_until=now + self.lease_s))
                if taken.rowcount == 1:
                    return batch_id
        return None

    def renew(self, batch_id: str, keys: KeyService | None) -> str | None:
        """Extend the lease; say why the run must stop: "lost" (another replica holds it), "cancelled",
        "expired" (its window passed) or "revoked" (its key was); None to go on."""
        now = time.time()
        with self.database.session() as session, session.begin():
            renewed = session.execute(update(StoredBatch).where(StoredBatch.id == batch_id,
                                                                StoredBatch.runner == self.instance)
                                      .values(lease_until=now + self.lease_s))
            batch = session.get(StoredBatch, batch_id)
        if renewed.rowcount != 1:
            return "lost"
        if batch.status == "cancelling":
            return "cancelled"
        if batch.status == "in_progress" and now >= batch.expires_at:
            return "expired"
        if batch.key_id is not None and keys is not None:
            key = keys.get(batch.key_id)
            if key is None or key.revoked_at is not None:
                return "revoked"
        return None

    def release_all(self) -> None:
        with self.database.session() as session, session.begin():
            session.execute(update(StoredBatch).where(StoredBatch.runner == self.instance)
                            .values(runner=None, lease_until=None))

    def load(self, batch_id: str) -> StoredBatch:
        with self.database.session() as session:
            return session.get(StoredBatch, batch_id)

    def move(self, batch_id: str, leaving: str, **values) -> bool:
        """Set `values` if the batch's status is still `leaving`; False (and nothing written) otherwise."""
        with self.database.session() as session, session.begin():
            moved = session.execute(update(StoredBatch).where(StoredBatch.id == batch_id,
                                                              StoredBatch.status == leaving).values(**values))
        return moved.rowcount == 1
