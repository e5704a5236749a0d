"""Usage metering: one record per authenticated request, read back by the CLI and admin API."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from server.db.database import Database
from server.db.models import UsageRecord


class UsageService:
    def __init__(self, database: Database):
        self.database = database

    def record(self, *, key_id: str | None, owner: str | None, model: str | None, endpoint: str,
               prompt_tokens: int, completion_tokens: int, status: int, latency_ms: int) -> None:
        with self.database.session() as session, session.begin():
            session.add(UsageRecord(key_id=key_id, owner=owner, model=model, endpoint=endpoint,
                                    prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                    status=status, latency_ms=latency_ms, created_at=datetime.now(UTC)))

    def query(self, key_id: str | None = None, since: datetime | None = None, limit: int = 1000,
              owner: str | None = None) -> list[dict]:
        statement = select(UsageRecord).order_by(UsageRecord.id.desc()).limit(limit)
        if owner is not None:
            statement = statement.where(UsageRecord.owner == owner)
        if key_id:
            statement = statement.where(UsageRecord.key_id == key_id)
        if since:
            statement = statement.where(UsageRecord.created_at >= since)
        with self.database.session() as session:
            return [as_dict(r) for r in session.scalars(statement)]

    def summary(self, owner: str | None, since: datetime, bucket_s: int, buckets: int) -> dict:
        """Requests and tokens since `since` (an owner's, or everyone's with None), per key, per model and per
        time bucket (see `summarize`). Only the four columns it needs are read."""
        statement = select(UsageRecord.key_id, UsageRecord.model,
                           UsageRecord.prompt_tokens + UsageRecord.completion_tokens, UsageRecord.created_at
                           ).where(UsageRecord.created_at >= since)
        if owner is not None:
            statement = statement.where(UsageRecord.owner == owner)
        with self.database.session() as session:
            return summarize(session.execute(statement), since, bucket_s, buckets)


def summarize(rows, since: datetime, bucket_s: int, buckets: int) -> dict:
    """Requests and tokens per key, per model and per time bucket, from (key_id, model, tokens, created_at)
    rows; bucket i covers [since + i*bucket_s, since + (i+1)*bucket_s)."""
    start = since.timestamp()
    timeline = [{"start": int(start + i * bucket_s), "requests": 0, "tokens": 0} for i in range(buckets)]
    by_key: dict[str, dict] = {}
    by_model: dict[str, dict] = {}
    for key_id, model, tokens, created in rows:
        created = created if created.tzinfo else created.replace(tzinfo=UTC)
        index = min(max(int((created.timestamp() - start) // bucket_s), 0), buckets - 1)
        tokens = tokens or 0
        for table, name in ((timeline, index), (by_key, key_id or "-"), (by_model, model or "-")):
            entry = table[name] if isinstance(table, list) else table.setdefault(name, {"requests": 0, "tokens": 0})
            entry["requests"] += 1
            entry["tokens"] += tokens
    return {"timeline": timeline, "by_key": by_key, "by_model": by_model,
            "requests": sum(b["requests"] for b in timeline), "tokens": sum(b["tokens"] for b in timeline)}


def as_dict(record: UsageRecord) -> dict:
    created = record.created_at if record.created_at.tzinfo else record.created_at.replace(tzinfo=UTC)
    return {"id": record.id, "key_id": record.key_id, "owner": record.owner, "model": record.model,
            "endpoint": record.endpoint, "prompt_tokens": record.prompt_tokens,
            "completion_tokens": record.completion_tokens, "status": record.status,
            "latency_ms": record.latency_ms, "created_at": int(created.timestamp())}
