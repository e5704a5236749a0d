"""Stored responses: owner-scoped rows, chain replay for previous_response_id, paginated input
items, and a retention sweep that keeps the store bounded."""

from __future__ import annotations

import time

from sqlalchemy import delete, select

from server.db.database import Database
from server.db.models import StoredInputItem, StoredResponse
from server.errors import InvalidRequestError, NotFoundError

# A chain longer than this is refused rather than replayed without end.
MAX_CHAIN = 1000


def not_found(response_id: str, param: str | None = None) -> NotFoundError:
    return NotFoundError(f"Response with id '{response_id}' not found. It may not exist, belong to another key's "
                         "owner, have been deleted, or have been created with store=false.",
                         param=param, code="response_not_found")


class ResponseStore:
    def __init__(self, database: Database, retention_s: float):
        self.database = database
        self.retention_s = retention_s

    def save(self, owner: str, body: dict, conversation: list[dict], input_items: list[dict]) -> None:
        with self.database.session() as session, session.begin():
            session.add(StoredResponse(id=body["id"], owner=owner, previous_response_id=body.get("previous_response_id"),
                                       created_at=int(body["created_at"]), body=body, conversation=conversation))
            for position, item in enumerate(input_items):
                session.add(StoredInputItem(id=item["id"], response_id=body["id"], position=position, item=item))

    def get(self, owner: str, response_id: str) -> dict:
        with self.database.session() as session:
            row = session.get(StoredResponse, response_id)
        if row is None or row.owner != owner:
            raise not_found(response_id)
        return row.body

    def list(self, owner: str, limit: int = 100) -> list[dict]:
        """An owner's newest stored responses (their Response objects), newest first."""
        with self.database.session() as session:
            rows = session.scalars(select(StoredResponse).where(StoredResponse.owner == owner)
                                   .order_by(StoredResponse.created_at.desc(), StoredResponse.id.desc()).limit(limit))
            return [row.body for row in rows]

    def delete(self, owner: str, response_id: str) -> dict:
        self.get(owner, response_id)
        with self.database.session() as session, session.begin():
            session.execute(delete(StoredInputItem).where(StoredInputItem.response_id == response_id))
            session.execute(delete(StoredResponse).where(StoredResponse.id == response_id))
        return {"id": response_id, "object": "response.deleted", "deleted": True}

    def chain(self, owner: str, response_id: str) -> list[dict]:
        """The messages of every stored turn up to and including `response_id`, oldest first."""
        turns: list[list[dict]] = []
        with self.database.session() as session:
            current: str | None = response_id
            while current is not None:
                row = session.get(StoredResponse, current)
                if row is None or row.owner != owner:
                    raise not_found(current, "previous_response_id")
                turns.append(row.conversation)
                current = row.previous_response_id
                if len(turns) > MAX_CHAIN:
                    raise InvalidRequestError(f"The chain of previous responses is longer than {MAX_CHAIN}.",
                                              param="previous_response_id")
        return [message for turn in reversed(turns) for message in turn]

    def input_items(self, owner: str, response_id: str, limit: int, order: str, after: str | None) -> dict:
        self.get(owner, response_id)
        with self.database.session() as session:
            rows = list(session.scalars(select(StoredInputItem).where(StoredInputItem.response_id == response_id)
                                        .order_by(StoredInputItem.position)))
        if order == "desc":
            rows.reverse()
        if after is not None:
            ids = [r.id for r in rows]
            if after not in ids:
                raise NotFoundError(f"No input item '{after}' in response '{response_id}'.", param="after",
                                    code="item_not_found")
            rows = rows[ids.index(after) + 1:]
        page = rows[:limit]
        return {"object": "list", "data": [r.item for r in page], "first_id": page[0].id if page else "",
                "last_id": page[-1].id if page else "", "has_more": len(rows) > limit}

    def sweep(self, now: float | None = None) -> int:
        cutoff = int((time.time() if now is None else now) - self.retention_s)
        with self.database.session() as session, session.begin():
            old = list(session.scalars(select(StoredResponse.id).where(StoredResponse.created_at < cutoff)))
            if old:
                session.execute(delete(StoredInputItem).where(StoredInputItem.response_id.in_(old)))
                session.execute(delete(StoredResponse).where(StoredResponse.id.in_(old)))
        return len(old)
