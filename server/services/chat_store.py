"""Stored chat completions (store=true on POST /v1/chat/completions): one owner-scoped row each, holding the
body as returned, the request's messages (each given the id `{completion_id}-{index}`, as OpenAI's) and the
metadata, which alone can change. Another owner's completion is "not found", as a stored response is.

Lists are ordered by the time each was stored, in milliseconds (`created` is whole seconds), then id, with
OpenAI's `after` cursor. The model filter runs in SQL; the metadata filter is checked in Python on the (id,
metadata) columns, read in order until a page is full, because SQLite's JSON paths cannot quote every key a
client may use. Rows older than --response-retention-days are
swept, and each row's bytes count in its owner's storage quota (server/services/storage_quota.py)."""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import and_, delete, or_, select

from server.db.models import StoredChatCompletion
from server.errors import NotFoundError
from server.services.storage_quota import OwnerQuotaStore, used_bytes


def not_found(completion_id: str, param: str | None = None) -> NotFoundError:
    return NotFoundError(f"Chat completion with id '{completion_id}' not found. It may not exist, belong to another "
                         "key's owner, have been deleted, or have been created without store=true.",
                         param=param, code="chat_completion_not_found")


def stored_messages(completion_id: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The request's messages as the messages endpoint lists them: an id each, `content` as text (a parts
    array's text parts joined) and `content_parts` holding the parts as sent (a file part keeps its reference)."""
    stored = []
    for index, message in enumerate(messages):
        content, parts = message.get("content"), None
        if isinstance(content, list):
            parts = content
            content = "".join(part.get("text", "") for part in parts if part.get("type") == "text")
        entry = {"id": f"{completion_id}-{index}", "role": message["role"], "content": content,
                 "refusal": message.get("refusal"), "name": message.get("name"), "content_parts": parts}
        entry.update({key: message[key] for key in ("tool_calls", "tool_call_id") if message.get(key) is not None})
        stored.append(entry)
    return stored


def _page(rows: list, limit: int) -> dict:
    page = rows[:limit]
    return {"object": "list", "data": page, "first_id": page[0]["id"] if page else "",
            "last_id": page[-1]["id"] if page else "", "has_more": len(rows) > limit}


def _size(*values) -> int:
    return sum(len(json.dumps(value)) for value in values)


class ChatCompletionStore(OwnerQuotaStore):
    FULL_MESSAGE = "so this completion could not be stored. Delete some, or leave out store=true."

    def save(self, owner: str, body: dict, messages: list[dict], metadata: dict[str, str] | None) -> bool:
        """Store one completion. False, and nothing stored, when it would take its owner past the quota (the
        check and insert run under the owner's lock, as stored responses' do)."""
        metadata = metadata or {}
        size = _size(body, messages, metadata)
        with self._lock(owner), self.database.session() as session, session.begin():
            if self.quota_bytes is not None and used_bytes(session, owner) + size > self.quota_bytes:
                return False
            session.add(StoredChatCompletion(id=body["id"], owner=owner, model=body["model"],
                                             created_at=int(body["created"]), stored_ms=int(time.time() * 1000),
                                             completion_metadata=metadata,
                                             body=body, messages=messages, bytes=size))
        return True

    def _row(self, session, owner: str, completion_id: str, param: str | None = None) -> StoredChatCompletion:
        row = session.get(StoredChatCompletion, completion_id)
        if row is None or row.owner != owner:
            raise not_found(completion_id, param)
        return row

    @staticmethod
    def _body(row: StoredChatCompletion) -> dict:
        return {**row.body, "metadata": row.completion_metadata}

    def get(self, owner: str, completion_id: str) -> dict:
        with self.database.session() as session:
            return self._body(self._row(session, owner, completion_id))

    def list(self, owner: str, model: str | None = None, metadata: dict[str, str] | None = None,
             after: str | None = None, limit: int = 20, order: str = "asc") -> dict:
        """A page of the owner's stored completions, oldest first unless `order` is desc."""
        table = StoredChatCompletion
        descending = order == "desc"
        query = select(table.id, table.completion_metadata).where(table.owner == owner)
        if model is not None:
            query = query.where(table.model == model)
        with self.database.session() as session:
            if after is not None:
                anchor = self._row(session, owner, after, "after")
                later = table.stored_ms < anchor.stored_ms if descending else table.stored_ms > anchor.stored_ms
                tie = table.id < anchor.id if descending else table.id > anchor.id
                query = query.where(or_(later, and_(table.stored_ms == anchor.stored_ms, tie)))
            keys = (table.stored_ms.desc(), table.id.desc()) if descending else (table.stored_ms, table.id)
            ids = []
            rows = session.execute(query.order_by(*keys).execution_options(yield_per=500))
            try:
                for row in rows:
                    if metadata and any(row.completion_metadata.get(k) != v for k, v in metadata.items()):
                        continue
                    ids.append(row.id)
                    if len(ids) > limit:
                        break
            finally:
                rows.close()
            bodies = {row.id: self._body(row) for row in session.scalars(select(table).where(table.id.in_(ids)))}
        return _page([bodies[i] for i in ids], limit)

    def update(self, owner: str, completion_id: str, metadata: dict[str, str] | None) -> dict:
        """Replace a completion's metadata (the only change OpenAI allows)."""
        metadata = metadata or {}
        with self.database.session() as session, session.begin():
            row = self._row(session, owner, completion_id)
            row.bytes += _size(metadata) - _size(row.completion_metadata)
            row.completion_metadata = metadata
            return self._body(row)

    def delete(self, owner: str, completion_id: str) -> dict:
        with self.database.session() as session, session.begin():
            self._row(session, owner, completion_id)
            session.execute(delete(StoredChatCompletion).where(StoredChatCompletion.id == completion_id))
        return {"object": "chat.completion.deleted", "id": completion_id, "deleted": True}

    def messages(self, owner: str, completion_id: str, after: str | None = None, limit: int = 20,
                 order: str = "asc") -> dict:
        with self.database.session() as session:
            messages = list(self._row(session, owner, completion_id).messages)
        if order == "desc":
            messages.reverse()
        if after is not None:
            ids = [message["id"] for message in messages]
            if after not in ids:
                raise NotFoundError(f"No message '{after}' in chat completion '{completion_id}'.", param="after",
                                    code="message_not_found")
            messages = messages[ids.index(after) + 1:]
        return _page(messages, limit)

    def sweep(self, now: float | None = None) -> int:
        """Completions past the retention leave the store; how many went."""
        cutoff = int((time.time() if now is None else now) - self.retention_s)
        with self.database.session() as session, session.begin():
            return session.execute(delete(StoredChatCompletion)
                                   .where(StoredChatCompletion.created_at < cutoff)).rowcount or 0
