"""Stored responses: owner-scoped rows, chain replay for previous_response_id, paginated input
items, and a retention sweep that keeps the store bounded.

A stored response counts its bytes in its owner's storage quota, with the owner's files
(server/services/storage_quota.py). Its conversation keeps file parts as references (the file id and
its length), not their text: a chain re-reads them, within the request's own file bounds."""

from __future__ import annotations

import json
import time

from sqlalchemy import delete, select

from server.db.models import StoredInputItem, StoredResponse
from server.errors import (
    ContextLengthExceededError,
    InvalidRequestError,
    NotFoundError,
    RequestTooLargeError,
)
from server.services.storage_quota import OwnerQuotaStore, used_bytes

# A chain longer than this is refused rather than replayed without end.
MAX_CHAIN = 1000
# The most stored bytes one chain loads: beyond, its oldest turns are dropped (truncation=auto) or it is refused.
MAX_CHAIN_BYTES = 32 * 1024 * 1024
# The statuses of a background response that has not ended yet.
UNFINISHED = ("queued", "in_progress")


def not_found(response_id: str, param: str | None = None) -> NotFoundError:
    return NotFoundError(f"Response with id '{response_id}' not found. It may not exist, belong to another key's "
                         "owner, have been deleted, or have been created with store=false.",
                         param=param, code="response_not_found")


def quota_exceeded(message: str) -> RequestTooLargeError:
    return RequestTooLargeError(message, param="store", code="quota_exceeded")


def content_chars(content: str | list[dict]) -> int:
    """The characters a stored message's content stands for: its text, or its segments' (a file's length)."""
    if isinstance(content, str):
        return len(content)
    return sum(segment["chars"] if segment.get("type") == "file" else len(segment.get("text", ""))
               for segment in content)


class ResponseStore(OwnerQuotaStore):
    FULL_MESSAGE = "so this response could not be stored. Delete files or stored responses, or send store=false."

    def save(self, owner: str, body: dict, conversation: list[dict], input_items: list[dict]) -> bool:
        """Store one response. False, and nothing stored, when it would take its owner past the quota.

        The check and the insert run under the owner's lock, so this process's saves cannot both pass on the
        same room; replicas sharing a database may each pass it by one response."""
        size = sum(len(json.dumps(value)) for value in (body, conversation, *input_items))
        replay = sum(content_chars(message.get("content") or "") for message in conversation)
        with self._lock(owner), self.database.session() as session, session.begin():
            if self.quota_bytes is not None and used_bytes(session, owner) + size > self.quota_bytes:
                return False
            session.add(StoredResponse(id=body["id"], owner=owner, created_at=int(body["created_at"]),
                                       previous_response_id=body.get("previous_response_id"), body=body,
                                       status=body.get("status"),
                                       conversation=conversation, bytes=size, replay_chars=replay))
            for position, item in enumerate(input_items):
                session.add(StoredInputItem(id=item["id"], response_id=body["id"], position=position, item=item))
        return True

    def update(self, response_id: str, body: dict, conversation: list[dict] | None = None) -> bool:
        """A background response's new body (and, once it is done, its conversation), written only while the
        stored one is still queued or in progress: a cancel or a restart's failure already written stands.
        Its bytes are counted again; a response stored at once is not refused later for its answer's size."""
        with self.database.session() as session, session.begin():
            row = session.get(StoredResponse, response_id, with_for_update=True)
            if row is None or row.body.get("status") not in UNFINISHED:
                return False
            row.body, row.status = body, body.get("status")
            if conversation is not None:
                row.conversation = conversation
                row.replay_chars = sum(content_chars(message.get("content") or "") for message in conversation)
            row.bytes = sum(len(json.dumps(value)) for value in (body, row.conversation)) + sum(
                len(json.dumps(item)) for item in session.scalars(
                    select(StoredInputItem.item).where(StoredInputItem.response_id == response_id)))
        return True

    def unfinished(self) -> list[tuple[str, dict]]:
        """(owner, body) of every stored response still queued or in progress, on any replica (by the indexed
        status column: it reads only those rows' bodies)."""
        with self.database.session() as session:
            rows = session.execute(select(StoredResponse.owner, StoredResponse.body)
                                   .where(StoredResponse.status.in_(UNFINISHED)))
            return [(row.owner, row.body) for row in rows]

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

    def chain(self, owner: str, response_id: str, max_chars: int, drop_oldest: bool) -> list[dict]:
        """The messages of the stored turns up to and including `response_id`, oldest first.

        The chain is walked on its small columns first. Once the newer turns stand for more than `max_chars`
        characters (a context's worth: older turns surely cannot fit), or hold MAX_CHAIN_BYTES, the older
        turns are left unread: dropped when `drop_oldest` (truncation=auto would drop them), else refused."""
        kept: list[str] = []
        chars = loaded = 0
        with self.database.session() as session:
            status = session.scalar(select(StoredResponse.status).where(
                StoredResponse.id == response_id, StoredResponse.owner == owner))
            if status in UNFINISHED:  # a background response's answer is not written yet
                raise InvalidRequestError(f"Previous response '{response_id}' is still {status.replace('_', ' ')}: "
                                          "wait until it ends, or cancel it.", param="previous_response_id",
                                          code="previous_response_unfinished")
            current: str | None = response_id
            while current is not None:
                row = session.execute(select(StoredResponse.owner, StoredResponse.previous_response_id,
                                             StoredResponse.replay_chars, StoredResponse.bytes)
                                      .where(StoredResponse.id == current)).one_or_none()
                if row is None or row.owner != owner:
                    raise not_found(current, "previous_response_id")
                if kept and (chars > max_chars or loaded + row.bytes > MAX_CHAIN_BYTES):
                    if drop_oldest:
                        break
                    raise _chain_too_long(chars > max_chars)
                kept.append(current)
                chars, loaded = chars + row.replay_chars, loaded + row.bytes
                current = row.previous_response_id
                if len(kept) > MAX_CHAIN:
                    raise InvalidRequestError(f"The chain of previous responses is longer than {MAX_CHAIN}.",
                                              param="previous_response_id")
            turns = {row.id: row.conversation for row in session.execute(
                select(StoredResponse.id, StoredResponse.conversation).where(StoredResponse.id.in_(kept)))}
        return [message for turn in reversed(kept) for message in turns[turn]]

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


def _chain_too_long(over_context: bool) -> InvalidRequestError:
    if over_context:
        return ContextLengthExceededError("The previous responses' conversation is longer than this model's context; "
                                          "set truncation='auto' to drop its oldest turns.",
                                          param="previous_response_id")
    return InvalidRequestError(f"The chain of previous responses holds more than {MAX_CHAIN_BYTES} bytes; set "
                               "truncation='auto' to drop its oldest turns, or start a new chain.",
                               param="previous_response_id", code="chain_too_large")
