"""Running batches in the server process, behind interactive traffic, durably.

One runner per replica takes one batch at a time: it claims the batch with a lease in its row (renewed while
it runs, so a replica that dies loses it after `lease_s` and another takes over; a restarted replica with the
same instance name takes its own back at once).

- validating: every line of the input file is checked (JSON, a unique custom_id, POST, the batch's url, a
  body naming a model the server serves and the key may use; at most MAX_LINES lines). Any bad line fails the
  batch, with `errors` naming the lines.
- in_progress: the lines not yet done run `concurrency` at a time through the same services as the HTTP
  routes, with the request context's priority set to BATCH, so the engines schedule interactive requests
  first (engines/native/scheduler.py). Batch lines take no rate-limit reservation (neither requests nor
  tokens per minute); their tokens are recorded as usage (endpoint `batch:<url>`). Each finished line is one
  row in `batch_results`, written with the batch's counts in one transaction, keyed by (batch, line), so a
  restart resumes with the lines not done and never writes one twice. A line refused because the engine is
  busy or down, or cut by the shutdown, is not done: it runs again later.
- finalizing: the output and error files are written from those rows (file ids derived from the batch id,
  so a crash mid-way writes nothing twice), then the batch completes and its rows go.
- A cancel (or the key's revocation) stops the lines in flight and writes what finished; a batch past its
  window expires the same way, and its unfinished lines go to the error file as `batch_expired`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import IntegrityError

from engines.protocol import BATCH
from engines.registry import EngineRegistry
from server.auth.keys import KeyService
from server.context import RequestContext
from server.db.database import Database
from server.db.models import BatchResult, StoredBatch, UsageRecord
from server.errors import (
    EngineBusyError,
    InvalidRequestError,
    OpenAIError,
    ServiceUnavailableError,
    validation_error,
)
from server.services.batch_lines import LineCheck, iter_lines, parse_line
from server.services.batches import ACTIVE
from server.services.files import FileService

log = logging.getLogger("ozwell.batches")

# Why a run stopped that cancels its batch, as the `errors` entry the batch then carries.
_STOPS = {"revoked": ("key_revoked", "The API key that created this batch was revoked."),
          "deleted": ("input_file_deleted", "The batch's input file was deleted before every line had run.")}
_CHUNK_LINES = 256


@dataclass
class Endpoint:
    """How a batch line of one url runs: its request model and the service call the route makes."""

    request: type[BaseModel]
    create: Callable[[BaseModel, RequestContext], Awaitable[object]]
    engine_kind: type  # the engine class its model must be served by


@dataclass
class _Line:
    number: int  # 1-based line of the input file
    custom_id: str
    body: dict


@dataclass
class _Run:
    batch_id: str
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str | None = None  # "cancelled", "expired", "revoked", "lost"
    recording: set[asyncio.Future] = field(default_factory=set)  # results being written (never cut halfway)


def _file_id(batch_id: str, kind: str) -> str:
    return "file-" + hashlib.sha256(f"{batch_id}:{kind}".encode()).hexdigest()[:32]


class BatchRunner:
    def __init__(self, database: Database, files: FileService, registry: EngineRegistry, keys: KeyService | None,
                 endpoints: dict[str, Endpoint], instance: str, concurrency: int = 16, lease_s: float = 30.0,
                 draining: Callable[[], bool] = lambda: False):
        self.database = database
        self.files = files
        self.registry = registry
        self.keys = keys
        self.endpoints = endpoints
        self.instance = instance
        self.concurrency = concurrency
        self.lease_s = lease_s
        self.draining = draining  # the server is shutting down: take no new line (a restart resumes them)
        self._wake = asyncio.Event()
        self._run: _Run | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- signals from the API (from any thread: the services run off the event loop) ------------------
    def _on_loop(self, callback) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(callback)
        except RuntimeError:  # the loop closed meanwhile
            pass

    def wake(self) -> None:
        self._on_loop(self._wake.set)

    def cancelled(self, batch_id: str) -> None:
        def stop() -> None:
            run = self._run
            if run is not None and run.batch_id == batch_id:
                run.reason = "cancelled"
                run.stop.set()
            self._wake.set()

        self._on_loop(stop)

    # ---- the loop ----------------------------------------------------------------------------------
    async def run_forever(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    batch_id = await asyncio.to_thread(self._claim)
                except Exception:  # noqa: BLE001 - the database may be down for a while
                    log.exception("claiming a batch failed")
                    batch_id = None
                if batch_id is None:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.lease_s / 3)
                    continue
                try:
                    await self._process(batch_id)
                except Exception:  # noqa: BLE001 - the batch stays claimed by us and is retried
                    log.exception("batch %s: a step failed; retrying shortly", batch_id)
                    await asyncio.sleep(1)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._release_all)

    def _claim(self) -> str | None:
        """The oldest active batch whose lease is free, expired, or already ours; its lease taken."""
        now = time.time()
        free = or_(StoredBatch.runner.is_(None), StoredBatch.runner == self.instance, StoredBatch.lease_until < now)
        with self.database.session() as session, session.begin():
            candidates = list(session.scalars(select(StoredBatch.id).where(StoredBatch.status.in_(ACTIVE), free)
                                              .order_by(StoredBatch.created_at, StoredBatch.id).limit(8)))
            for batch_id in candidates:
                taken = session.execute(update(StoredBatch).where(StoredBatch.id == batch_id,
                                                                  StoredBatch.status.in_(ACTIVE), free)
                                        .values(runner=self.instance, lease_until=now + self.lease_s))
                if taken.rowcount == 1:
                    return batch_id
        return None

    def _release_all(self) -> None:
        with self.database.session() as session, session.begin():
            session.execute(update(StoredBatch).where(StoredBatch.runner == self.instance)
                            .values(runner=None, lease_until=None))

    def _load(self, batch_id: str) -> StoredBatch:
        with self.database.session() as session:
            return session.get(StoredBatch, batch_id)

    def _set(self, batch_id: str, **values) -> None:
        with self.database.session() as session, session.begin():
            session.execute(update(StoredBatch).where(StoredBatch.id == batch_id).values(**values))

    async def _process(self, batch_id: str) -> None:
        run = _Run(batch_id)
        self._run = run
        keeper = asyncio.create_task(self._keep_lease(run))
        try:
            batch = await asyncio.to_thread(self._load, batch_id)
            if batch.status == "validating":
                batch = await asyncio.to_thread(self._validate, batch)
            if batch.status == "in_progress":
                await self._execute(batch, run)
                batch = await asyncio.to_thread(self._load, batch_id)
                if run.reason == "lost":
                    return
                if run.reason == "expired":
                    await asyncio.to_thread(self._finish, batch, "expired")
                    return
                if run.reason in _STOPS:
                    code, message = _STOPS[run.reason]
                    await asyncio.to_thread(self._set, batch_id, status="cancelling", cancelling_at=int(time.time()),
                                            errors=[{"code": code, "line": None, "param": None, "message": message}])
                    batch = await asyncio.to_thread(self._load, batch_id)
                elif self.draining():
                    return  # the lines not done run after the restart
                elif batch.status == "in_progress":
                    await asyncio.to_thread(self._set, batch_id, status="finalizing", finalizing_at=int(time.time()))
                    batch = await asyncio.to_thread(self._load, batch_id)
            if batch.status == "finalizing":
                await asyncio.to_thread(self._finish, batch, "completed")
            elif batch.status == "cancelling":
                await asyncio.to_thread(self._finish, batch, "cancelled")
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
            self._run = None

    async def _keep_lease(self, run: _Run) -> None:
        """Renew the lease; stop the run when the batch is cancelled (by any replica or the CLI), its
        window passes, its key is revoked, or the lease was lost to another replica."""
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                reason = await asyncio.to_thread(self._renew, run.batch_id)
            except Exception:  # noqa: BLE001 - keep trying; the lease lasts lease_s
                log.exception("batch %s: renewing its lease failed", run.batch_id)
                continue
            if reason is not None and not run.stop.is_set():
                run.reason = reason
                run.stop.set()

    def _renew(self, batch_id: str) -> str | None:
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
        if batch.key_id is not None and self.keys is not None:
            key = self.keys.get(batch.key_id)
            if key is None or key.revoked_at is not None:
                return "revoked"
        return None

    # ---- validating -------------------------------------------------------------------------------
    def _validate(self, batch: StoredBatch) -> StoredBatch:
        """Check every line; fail the batch naming the bad ones, or move it to in_progress with its total."""
        check = LineCheck(batch.endpoint, self.endpoints[batch.endpoint].engine_kind, self.registry,
                          self._caller(batch))
        try:
            path = self.files.path(self.files.get(batch.owner, batch.input_file_id))
            if not path.exists():
                raise FileNotFoundError(path)
        except (OpenAIError, FileNotFoundError):
            check.error("file_not_found", f"The input file {batch.input_file_id} no longer exists.",
                        param="input_file_id")
        else:
            check.all(iter_lines(path))
        now = int(time.time())
        if check.errors:
            self._set(batch.id, status="failed", failed_at=now, errors=check.errors, total=0, runner=None,
                      lease_until=None)
        else:
            self._set(batch.id, status="in_progress", in_progress_at=now, total=check.total, model=check.model)
        return self._load(batch.id)

    def _caller(self, batch: StoredBatch):
        if batch.key_id is None or self.keys is None:
            return None
        key = self.keys.get(batch.key_id)
        return self.keys.caller(key) if key is not None else None

    # ---- in_progress -------------------------------------------------------------------------------
    async def _execute(self, batch: StoredBatch, run: _Run) -> None:
        try:
            record = await asyncio.to_thread(self.files.get, batch.owner, batch.input_file_id)
            # Open once: the lines stay readable if the file is deleted while the batch runs.
            handle = await asyncio.to_thread(open, self.files.path(record), "rb")
        except (OpenAIError, FileNotFoundError):
            run.reason = "deleted"
            return
        try:
            await self._execute_lines(batch, run, handle)
        finally:
            handle.close()

    async def _execute_lines(self, batch: StoredBatch, run: _Run, handle) -> None:
        caller = await asyncio.to_thread(self._caller, batch)
        if batch.key_id is not None and caller is None:
            run.reason = "revoked"
            return
        done = await asyncio.to_thread(self._done_lines, batch.id)
        queue: asyncio.Queue[_Line | None] = asyncio.Queue(maxsize=self.concurrency * 2)

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
            while (line := await queue.get()) is not None and not self.draining():
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

    def _done_lines(self, batch_id: str) -> set[int]:
        with self.database.session() as session:
            return set(session.scalars(select(BatchResult.line).where(BatchResult.batch_id == batch_id)))

    async def _run_line(self, batch: StoredBatch, caller, line: _Line, run: _Run) -> None:
        """Run one line until it has an answer to record; engine refusals that pass (busy, down, the server
        draining) are retried with backoff, and a stopped run leaves the line undone."""
        delay = 0.5
        while not run.stop.is_set():
            context = RequestContext(caller=caller, priority=BATCH)
            started = time.perf_counter()
            status, body = await self._call(batch.endpoint, line.body, context)
            if status in (EngineBusyError.status_code, ServiceUnavailableError.status_code):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            latency_ms = int((time.perf_counter() - started) * 1000)
            request_id = body.get("id") if status == 200 and isinstance(body.get("id"), str) else None
            output = {"id": "batch_req_" + secrets.token_hex(16), "custom_id": line.custom_id,
                      "response": {"status_code": status, "request_id": request_id or "req_" + secrets.token_hex(16),
                                   "body": body},
                      "error": None}
            # A stop must not cut a result between its write and the files written from the results: the
            # write is shielded, and the run waits for the writes in flight before it finishes.
            writing = asyncio.ensure_future(asyncio.to_thread(self._record, batch, line.number, status == 200,
                                                              json.dumps(output), context, status, latency_ms))
            run.recording.add(writing)
            writing.add_done_callback(run.recording.discard)
            await asyncio.shield(writing)
            return

    async def _call(self, url: str, body: dict, context: RequestContext) -> tuple[int, dict]:
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
            return 200, result
        except OpenAIError as exc:
            return exc.status_code, exc.body()
        except Exception:  # noqa: BLE001 - one line's fault is that line's 500, as over HTTP
            log.exception("batch line on %s failed", url)
            return 500, {"error": {"message": "The server had an error while processing your request.",
                                   "type": "server_error", "param": None, "code": "internal_error"}}

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

    # ---- finishing ----------------------------------------------------------------------------------
    def _finish(self, batch: StoredBatch, status: str) -> None:
        """Write the output and error files from the finished lines, then the final status."""
        with self.database.session() as session:
            rows = list(session.execute(select(BatchResult.line, BatchResult.ok, BatchResult.record)
                                        .where(BatchResult.batch_id == batch.id).order_by(BatchResult.line)))
        outputs = [record for _, ok, record in rows if ok]
        errors = [record for _, ok, record in rows if not ok]
        expired = 0
        if status == "expired":  # the lines never run go to the error file
            done = {line for line, _, _ in rows}
            try:
                unfinished = list(iter_lines(self.files.path(self.files.get(batch.owner, batch.input_file_id)),
                                             done))
            except (OpenAIError, FileNotFoundError):
                unfinished = []  # the input file was deleted: its unfinished lines cannot be named
            for _, raw in unfinished:
                value = parse_line(raw) or {}
                errors.append(json.dumps({"id": "batch_req_" + secrets.token_hex(16),
                                          "custom_id": str(value.get("custom_id")), "response": None,
                                          "error": {"code": "batch_expired", "message": "This request could not be "
                                                    "executed before the completion window expired."}}))
                expired += 1
        expires = batch.output_expires_after
        output_id = error_id = None
        if outputs:
            output_id = self.files.store_generated(batch.owner, _file_id(batch.id, "output"),
                                                   f"{batch.id}_output.jsonl", "batch_output", outputs, expires).id
        if errors:
            error_id = self.files.store_generated(batch.owner, _file_id(batch.id, "error"),
                                                  f"{batch.id}_error.jsonl", "batch_output", errors, expires).id
        now = int(time.time())
        with self.database.session() as session, session.begin():
            session.execute(update(StoredBatch).where(StoredBatch.id == batch.id).values(
                status=status, output_file_id=output_id, error_file_id=error_id, runner=None, lease_until=None,
                failed=StoredBatch.failed + expired, **{f"{status}_at": now}))
            session.execute(delete(BatchResult).where(BatchResult.batch_id == batch.id))
        log.info("batch %s %s: %d ok, %d failed", batch.id, status, len(outputs), len(errors))

