"""Running batches in the server process, behind interactive traffic, durably and fairly.

The runner of a replica claims batches (server/services/batch_claim.py: a lease in the row, renewed while it
runs, so a replica that dies loses it after `lease_s`), at most one per owner and `max_batches` in all, and
runs each in its own task. Their lines share `concurrency` slots, handed to the owners in turn
(server/services/batch_run.py), so a second owner's batch starts beside a long one, not after it.

- validating: every line of the input file is checked (server/services/batch_lines.py). Any bad line fails the
  batch, with `errors` naming the lines. The move to in_progress (or failed) is made only if the batch is
  still validating: a cancel that came meanwhile wins, and the batch ends cancelled.
- in_progress: the lines not yet done run through the same services as the HTTP routes, with priority BATCH
  (the engines schedule interactive requests first), under the key's plan (its requests and tokens per
  minute: a line waits for room), their results counted in the owner's storage quota as they are made.
- finalizing: the output and error files are streamed from those results (server/services/batch_finish.py),
  then the batch completes.
- A cancel (or the key's revocation, the input file's deletion, results past the quota) stops the lines in
  flight and writes what finished; a batch past its window expires the same way, and its unfinished lines go
  to the error file as `batch_expired`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from engines.registry import EngineRegistry
from server.auth.keys import KeyService
from server.db.database import Database
from server.db.models import StoredBatch
from server.errors import OpenAIError
from server.services.batch_budget import FairSlots, Plan, stopped_within
from server.services.batch_claim import BatchLeases
from server.services.batch_finish import BatchFinisher
from server.services.batch_lines import LineCheck, iter_lines
from server.services.batch_run import Endpoint, LineRunner, Run

__all__ = ["BatchRunner", "Endpoint", "Plan"]

log = logging.getLogger("ozwell.batches")

MAX_BATCHES = 16  # batches a replica runs at once (each of another owner)
# Why a run stopped that cancels its batch, as the `errors` entry the batch then carries.
_STOPS = {"revoked": ("key_revoked", "The API key that created this batch was revoked."),
          "deleted": ("input_file_deleted", "The batch's input file was deleted before every line had run."),
          "quota": ("quota_exceeded", ("The batch's results would pass the owner's storage quota of {quota} "
                                       "bytes, so it stopped: the lines that finished are in its output and error "
                                       "files. Delete files to make room, then run the remaining lines in a new "
                                       "batch."))}


class BatchRunner:
    def __init__(self, database: Database, files, registry: EngineRegistry, keys: KeyService | None,
                 endpoints: dict[str, Endpoint], instance: str, concurrency: int = 16, lease_s: float = 30.0,
                 draining: Callable[[], bool] = lambda: False, plan: Plan | None = None,
                 max_batches: int = MAX_BATCHES):
        self.files = files
        self.registry = registry
        self.keys = keys
        self.endpoints = endpoints
        self.max_batches = max_batches
        self.draining = draining  # the server is shutting down: take no new line (a restart resumes them)
        self.leases = BatchLeases(database, instance, lease_s)
        self.lines = LineRunner(database, files, endpoints, plan or Plan(), FairSlots(concurrency), concurrency,
                                draining)
        self.finisher = BatchFinisher(database, files)
        self._wake = asyncio.Event()
        self._runs: dict[str, Run] = {}  # batch id -> its run, for the batches this replica runs now
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def lease_s(self) -> float:
        return self.leases.lease_s

    @lease_s.setter
    def lease_s(self, value: float) -> None:
        self.leases.lease_s = value

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
            run = self._runs.get(batch_id)
            if run is not None:
                run.reason = "cancelled"
                run.stop.set()
            self._wake.set()

        self._on_loop(stop)

    # ---- the loop ----------------------------------------------------------------------------------
    async def run_forever(self) -> None:
        self._loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task] = set()
        try:
            while True:
                self._wake.clear()  # before claiming: a wake that comes during the claim is not lost
                run = await self._claim_one() if len(self._runs) < self.max_batches else None
                if run is None:
                    await stopped_within(self._wake, self.lease_s / 3)
                    continue
                task = asyncio.create_task(self._serve(run), name=f"batch-{run.batch_id}")
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.leases.release_all)

    async def _claim_one(self) -> Run | None:
        busy = {run.owner for run in self._runs.values()}
        try:
            batch_id = await asyncio.to_thread(self.leases.claim, busy)
            batch = await asyncio.to_thread(self.leases.load, batch_id) if batch_id else None
        except Exception:  # noqa: BLE001 - the database may be down for a while
            log.exception("claiming a batch failed")
            return None
        if batch is None:
            return None
        run = self._runs[batch.id] = Run(batch.id, batch.owner)
        return run

    async def _serve(self, run: Run) -> None:
        try:
            await self._process(run)
        except Exception:  # noqa: BLE001 - the batch stays claimed by us and is retried
            log.exception("batch %s: a step failed; retrying shortly", run.batch_id)
            await asyncio.sleep(1)
        finally:
            self._runs.pop(run.batch_id, None)
            self._wake.set()  # a place for another batch

    async def _process(self, run: Run) -> None:
        batch_id = run.batch_id
        keeper = asyncio.create_task(self._keep_lease(run))
        try:
            batch = await asyncio.to_thread(self.leases.load, batch_id)
            if batch.status == "validating":
                batch = await asyncio.to_thread(self._validate, batch)
            if batch.status == "in_progress":
                await self._execute(batch, run)
                if run.reason == "lost":
                    return
                if run.reason == "expired":
                    await asyncio.to_thread(self.finisher.finish, batch, "expired")
                    return
                if run.reason in _STOPS:
                    code, message = _STOPS[run.reason]
                    error = {"code": code, "line": None, "param": None,
                             "message": message.format(quota=self.files.owner_quota_bytes)}
                    await asyncio.to_thread(self.leases.move, batch_id, "in_progress", status="cancelling",
                                            cancelling_at=int(time.time()), errors=[error])
                elif self.draining():
                    return  # the lines not done run after the restart
                else:
                    await asyncio.to_thread(self.leases.move, batch_id, "in_progress", status="finalizing",
                                            finalizing_at=int(time.time()))
                batch = await asyncio.to_thread(self.leases.load, batch_id)
            if batch.status == "finalizing":
                await asyncio.to_thread(self.finisher.finish, batch, "completed")
            elif batch.status == "cancelling":
                await asyncio.to_thread(self.finisher.finish, batch, "cancelled")
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)

    async def _keep_lease(self, run: Run) -> None:
        """Renew the lease; stop the run when the batch is cancelled (by any replica or the CLI), its
        window passes, its key is revoked, or the lease was lost to another replica."""
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                reason = await asyncio.to_thread(self.leases.renew, run.batch_id, self.keys)
            except Exception:  # noqa: BLE001 - keep trying; the lease lasts lease_s
                log.exception("batch %s: renewing its lease failed", run.batch_id)
                continue
            if reason is not None and not run.stop.is_set():
                run.reason = reason
                run.stop.set()

    # ---- validating -------------------------------------------------------------------------------
    def _validate(self, batch: StoredBatch) -> StoredBatch:
        """Check every line; fail the batch naming the bad ones, or move it to in_progress with its total, if
        it is still validating (a cancel meanwhile wins: the batch is then cancelling, and ends cancelled)."""
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
            self.leases.move(batch.id, "validating", status="failed", failed_at=now, errors=check.errors, total=0,
                             runner=None, lease_until=None)
        else:
            self.leases.move(batch.id, "validating", status="in_progress", in_progress_at=now, total=check.total,
                             model=check.model)
        return self.leases.load(batch.id)

    def _caller(self, batch: StoredBatch):
        if batch.key_id is None or self.keys is None:
            return None
        key = self.keys.get(batch.key_id)
        return self.keys.caller(key) if key is not None else None

    # ---- in_progress -------------------------------------------------------------------------------
    async def _execute(self, batch: StoredBatch, run: Run) -> None:
        caller = await asyncio.to_thread(self._caller, batch)
        if batch.key_id is not None and caller is None:
            run.reason = "revoked"
            return
        try:
            record = await asyncio.to_thread(self.files.get, batch.owner, batch.input_file_id)
            # Open once: the lines stay readable if the file is deleted while the batch runs.
            handle = await asyncio.to_thread(open, self.files.path(record), "rb")
        except (OpenAIError, FileNotFoundError):
            run.reason = "deleted"
            return
        try:
            await self.lines.execute(batch, run, caller, handle)
        finally:
            handle.close()
