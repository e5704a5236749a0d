"""Running a batch's lines, each under its key's plan and in its owner's turn (server/services/batch_budget.py).

A line refused by its key's tokens per minute waits for room (Retry-After), holding no slot, and is never
recorded as refused; a line that needs more tokens than the whole limit can never run, and its 429 is its
result. Each finished line is one row in `batch_results`, written with the batch's counts in one transaction,
keyed by (batch, line), so a restart resumes with the lines not done and never writes one twice. A result
counts in the owner's storage quota as it is made (what the owner's files hold plus this batch's results so
far): a line whose result would pass the quota is not recorded, and the batch stops.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from engines.registry import EngineRegistry
from server.context import RequestContext
from server.db.database import Database
from server.db.models import BatchResult, StoredBatch, UsageRecord
from server.errors import (
    EngineBusyError,
    InvalidRequestError,
    OpenAIError,
    RateLimitError,
    ServiceUnavailableError,
    validation_error,
)
from server.services.batch_budget import FairSlots, Plan, stopped_within
from server.services.batch_lines import parse_line
from server.services.files import FileService

log = logging.getLogger("ozwell.batches")

_CHUNK_LINES = 64


@dataclass
class Endpoint:
    """How a batch line of one url runs: its request model and the service call the route makes."""

    request: type[BaseModel]
    create: Callable[[BaseModel, RequestContext], Awaitable[object]]
    engine_kind: type  # the engine class its model must be served by


@dataclass
class Run:
    batch_id: str
    owner: str
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str | None = None  # "cancelled", "expired", "revoked", "deleted", "quota", "lost"
    recording: set[asyncio.Future] = field(default_factory=set)  # results being written (never cut halfway)
    result_bytes: int = 0  # what this batch's recorded results will take in its output and error files


@dataclass
class _Line:
    number: int  # 1-based line of the input file
    custom_id: str
    body: dict


class LineRunner:
    def __init__(self, database: Database, files: FileService, endpoints: dict[str, Endpoint], plan: Plan,
                 slots: FairSlots, concurrency: int, draining: Callable[[], bool]):
        self.database, self.files, self.endpoints, self.plan = database, files, endpoints, plan
        self.slots, self.concurrency, self.draining = slots, concurrency, draining

    async def execute(self, batch: StoredBatch, run: Run, caller, handle) -> None:
        """Run the lines of the open input file not done yet, until all are or the run stops."""
        done, run.result_bytes = await asyncio.to_thread(self._done_lines, batch.id)
        queue: asyncio.Queue[_Line | None] = asyncio.Queue(maxsize=self.concurrency)
        numbered = enumerate(handle, start=1)

        def next_chunk() -> list[_Line]:
            chunk = []
            for number, raw in numbered:
                if number in done or not raw.strip():
                    continue
                value = parse_line(raw) or {}
                chunk.append(_Line(number, str(value.get("custom_id")), value.get("body") or {}))
                if len(chunk) >= _CHUNK_LINES:
                    break
            return chunk

        async def produce() -> None:
            while chunk := await asyncio.to_thread(next_chunk):
                for line in chunk:
                    await queue.put(line)
            for _ in range(self.concurrency):
                await queue.put(None)

        async def consume() -> None:
            while not run.stop.is_set() and (line := await queue.get()) is not None and not self.draining():
                await self._run_line(batch, caller, line, run)

        producer = asyncio.create_task(produce())
        consumers = [asyncio.create_task(consume()) for _ in range(self.concurrency)]
        stopper = asyncio.create_task(run.stop.wait())
        work = asyncio.gather(producer, *consumers, return_exceptions=True)
        try:
            await asyncio.wait([work, stopper], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (producer, *consumers, stopper):
                task.cancel()
            await asyncio.gather(producer, *consumers, stopper, *run.recording, return_exceptions=True)
        # A line's own fault is recorded as its 500; what fails here is the runner's (the database, the file).
        for result in work.result() if work.done() and not work.cancelled() else []:
            if isinstance(result, Exception):
                raise result

    def _done_lines(self, batch_id: str) -> tuple[set[int], int]:
        """The lines already recorded (a resumed batch), and the bytes their results take."""
        with self.database.session() as session:
            done = set(session.scalars(select(BatchResult.line).where(BatchResult.batch_id == batch_id)))
            size = session.scalar(select(func.coalesce(func.sum(func.length(BatchResult.record) + 1), 0))
                                  .where(BatchResult.batch_id == batch_id)) if done else 0
        return done, int(size)

    async def _run_line(self, batch: StoredBatch, caller, line: _Line, run: Run) -> None:
        """Run one line until it has an answer to record. A rate-limit refusal is waited out; engine refusals
        that pass (busy, down, the server draining) are retried with backoff; a stopped run leaves it undone."""
        requests_state = await self.plan.request_room(caller, run.stop)
        if requests_state is None:
            return
        delay = 0.5
        while not run.stop.is_set():
            context = self.plan.context(caller, requests_state)
            started = time.perf_counter()
            async with self.slots.slot(run.owner), EngineRegistry.leases():  # the model stays loaded for the call
                status, body, wait_s = await self._call(batch.endpoint, line.body, context)
            if wait_s is not None:  # the key's tokens per minute: wait for room, holding no slot
                await stopped_within(run.stop, wait_s)
                continue
            if status in (EngineBusyError.status_code, ServiceUnavailableError.status_code):
                await stopped_within(run.stop, delay)
                delay = min(delay * 2, 10.0)
                continue
            latency_ms = int((time.perf_counter() - started) * 1000)
            request_id = body.get("id") if status == 200 and isinstance(body.get("id"), str) else None
            record = json.dumps({"id": "batch_req_" + secrets.token_hex(16), "custom_id": line.custom_id,
                                 "response": {"status_code": status,
                                              "request_id": request_id or "req_" + secrets.token_hex(16),
                                              "body": body},
                                 "error": None})
            if not await self._room_for(batch, run, len(record) + 1):
                run.reason = run.reason or "quota"
                run.stop.set()
                return
            # A stop must not cut a result between its write and the files written from the results: the
            # write is shielded, and the run waits for the writes in flight before it finishes.
            writing = asyncio.ensure_future(asyncio.to_thread(self._record, batch, line.number, status == 200,
                                                              record, context, status, latency_ms))
            run.recording.add(writing)
            writing.add_done_callback(run.recording.discard)
            await asyncio.shield(writing)
            return

    async def _room_for(self, batch: StoredBatch, run: Run, size: int) -> bool:
        """Whether a result of `size` bytes fits the owner's quota beside its files and the batch's results so
        far; if so it is counted (the check and the count run on the loop with no await between them)."""
        stored = await asyncio.to_thread(self.files.used_bytes, batch.owner)
        if stored + run.result_bytes + size > self.files.owner_quota_bytes:
            return False
        run.result_bytes += size
        return True

    async def _call(self, url: str, body: dict, context: RequestContext) -> tuple[int, dict, float | None]:
        """The line's status and body; or, when the key's token window has no room yet, the seconds to wait."""
        endpoint = self.endpoints[url]
        try:
            try:
                request = endpoint.request.model_validate(body)
            except ValidationError as exc:
                raise validation_error(RequestValidationError(exc.errors())) from None
            if getattr(request, "stream", None):
                raise InvalidRequestError("Streaming is not supported in a batch; leave stream unset.",
                                          param="stream", code="invalid_value")
            result = await endpoint.create(request, context)
            if not isinstance(result, dict):  # a stream: cannot happen with stream unset
                raise TypeError(f"{url} answered a batch line with {type(result).__name__}")
            return 200, result, None
        except RateLimitError as exc:
            if exc.never:
                return exc.status_code, exc.body(), None
            return exc.status_code, exc.body(), max(float(exc.headers.get("Retry-After", 1)), 0.5)
        except OpenAIError as exc:
            return exc.status_code, exc.body(), None
        except Exception:
            log.exception("batch line on %s failed", url)
            return 500, {"error": {"message": "The server had an error while processing your request.",
                                   "type": "server_error", "param": None, "code": "internal_error"}}, None

    def _record(self, batch: StoredBatch, number: int, ok: bool, record: str, context: RequestContext, status: int,
                latency_ms: int) -> None:
        prompt, completion = context.prompt_tokens, context.completion_tokens
        try:
            with self.database.session() as session, session.begin():
                session.add(BatchResult(batch_id=batch.id, line=number, ok=ok, record=record))
                session.flush()  # the (batch, line) key: a second write of the line fails here, before the counts
                session.execute(update(StoredBatch).where(StoredBatch.id == batch.id).values(
                    completed=StoredBatch.completed + int(ok), failed=StoredBatch.failed + int(not ok),
                    input_tokens=StoredBatch.input_tokens + prompt,
                    output_tokens=StoredBatch.output_tokens + completion))
                session.add(UsageRecord(key_id=batch.key_id, owner=batch.owner, model=context.model,
                                        endpoint=f"batch:{batch.endpoint}", prompt_tokens=prompt,
                                        completion_tokens=completion, status=status, latency_ms=latency_ms,
                                        created_at=datetime.now(UTC)))
        except IntegrityError:
            log.warning("batch %s: line %d was already recorded; kept the first", batch.id, number)
