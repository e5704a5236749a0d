"""Background responses (`background: true` on POST /v1/responses), run detached from the connection.

Chosen: the request is checked, admitted and its tokens reserved as a foreground one is (a refusal is still the
request's 4xx), under a copy of its context that outlives the HTTP request; it is then stored at once as
`queued` and driven by an asyncio task this service owns: `in_progress` once driven, then `completed`,
`incomplete`, `failed` or `cancelled`, the stored body updated at each step. A cancel cancels the task, which
leaves the generation the way a client's disconnect does: the engine aborts its sequences and frees their KV
blocks at once, and the tokens used are settled. Its usage is recorded as `background:/v1/responses` when it
ends (the HTTP request's own record, written when it is answered, carries no tokens).

A streamed background response's events are kept in this process's memory, while it runs and KEEP_EVENTS_S
after, so that GET /v1/responses/{id}?stream=true&starting_after=N resumes it from event N+1 (replayed, then live);
a replica serves only the events of the responses it runs. A response left queued or in progress by a
server that stopped is failed, with an error saying so, when that server (the same --instance-id) starts again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from engines.registry import EngineRegistry
from server.context import RequestContext
from server.errors import InvalidRequestError
from server.services.pipeline import off_loop
from server.services.response_run import ResponseRun
from server.services.response_store import UNFINISHED, ResponseStore, quota_exceeded

log = logging.getLogger("ozwell.server")

KEEP_EVENTS_S = 300.0  # how long a finished background stream's events stay resumable
RESTARTED = {"code": "server_error", "message": "The server restarted before this background response finished. "
             "Create it again."}
SHUT_DOWN = {"code": "server_error", "message": "The server shut down before this background response finished. "
             "Create it again."}
FAULT = {"code": "server_error", "message": "The server had an error while processing this response."}


class EventLog:
    """A background stream's events, as SSE lines in order: line i is the event with sequence_number i."""

    def __init__(self):
        self.lines: list[str] = []
        self.closed_at: float | None = None
        self._changed = asyncio.Event()

    def append(self, line: str) -> None:
        self.lines.append(line)
        self._wake()

    def close(self) -> None:
        self.closed_at = time.monotonic()
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def follow(self, after: int = -1) -> AsyncIterator[str]:
        """The events after sequence number `after`: those kept, then each as it comes, until the run ends.
        Leaving early (a client gone) leaves the run as it is."""
        position = max(after + 1, 0)
        while True:
            changed = self._changed  # taken before reading, so a line added while we yield wakes the wait
            while position < len(self.lines):
                yield self.lines[position]
                position += 1
            if self.closed_at is not None:
                return
            await changed.wait()


@dataclass
class BackgroundJob:
    run: ResponseRun
    owner: str
    context: RequestContext  # the request's detached copy: its reservations and usage numbers
    events: EventLog | None  # None unless the request streams
    turn: list[dict] = field(default_factory=list)  # this turn's stored messages, for the conversation at its end
    created: dict = field(default_factory=dict)  # its body as first stored (queued): the create's answer
    task: asyncio.Task | None = None
    shutdown: bool = False  # cancelled by the server's stop, not by its owner
    started: float = field(default_factory=time.perf_counter)


class BackgroundResponses:
    def __init__(self, store: ResponseStore, registry: EngineRegistry, usage=None, instance: str | None = None):
        self.store = store
        self.registry = registry
        self.usage = usage  # UsageService, or None (no records)
        self.instance = instance  # this replica's name: its responses are the ones it fails when it starts again
        self._jobs: dict[str, BackgroundJob] = {}
        self._logs: dict[str, EventLog] = {}  # response id -> its events, kept KEEP_EVENTS_S after it ends

    # ---- running -------------------------------------------------------------------------------
    async def launch(self, run: ResponseRun, lines: AsyncIterator[str], context: RequestContext,
                     conversation: list[dict], items: list[dict]) -> BackgroundJob:
        """Store the response as queued and start driving `lines` (its stream's events, which store its end)."""
        run.queued, run.replica = True, self.instance
        queued = run.body()
        try:
            if not await off_loop(self.store.save, context.owner, queued, conversation, items):
                raise quota_exceeded("Your storage quota is full (files and stored responses count against it), so "
                                     "this background response could not be stored. Delete files or stored "
                                     "responses first.")
        except BaseException:
            await lines.aclose()
            await context.release()
            raise
        self._prune()
        job = BackgroundJob(run, context.owner, context, EventLog() if run.req.stream else None, conversation, queued)
        if job.events is not None:
            self._logs[run.id] = job.events
        self._jobs[run.id] = job
        job.task = asyncio.create_task(self._drive(job, lines), name=f"background-{run.id}")
        return job

    async def _drive(self, job: BackgroundJob, lines: AsyncIterator[str]) -> None:
        run = job.run
        try:
            # the model stays loaded while this runs, as it does for an HTTP request until it is answered
            async with EngineRegistry.leases():
                await self.registry.acquire(run.engine.config.id)
                created = await anext(lines)  # response.created, showing the response queued
                run.queued = False
                self._keep(job, created)
                await off_loop(self.store.update, run.id, run.body())
                async for line in lines:
                    self._keep(job, line)
        except asyncio.CancelledError:
            await self._end(job, SHUT_DOWN if job.shutdown else None)
        except Exception:
            log.exception("background response %s failed", run.id)
            await self._end(job, FAULT)
        finally:
            await lines.aclose()
            await job.context.release()  # a no-op once the generation settled its tokens
            if job.events is not None:
                job.events.close()
            self._jobs.pop(run.id, None)
            await self._record(job)

    def _keep(self, job: BackgroundJob, line: str) -> None:
        if job.events is not None:
            job.events.append(line)

    async def _end(self, job: BackgroundJob, error: dict | None) -> None:
        """A run that did not reach its own end: cancelled by its owner, or failed with `error`."""
        run = job.run
        run.queued = False
        if error is None:
            run.cancelled = True
        else:
            run.error = error
        run.finished_at = time.perf_counter()
        conversation = [*job.turn, {"role": "assistant", "content": run.text}]  # the answer so far, for a chain
        try:
            await asyncio.to_thread(self.store.update, run.id, run.body(), conversation)
        except Exception:
            log.exception("could not store the end of background response %s", run.id)

    async def _record(self, job: BackgroundJob) -> None:
        context = job.context
        if self.usage is None or context.caller is None:
            return
        try:
            await asyncio.to_thread(
                self.usage.record, key_id=context.caller.key_id, owner=context.caller.owner, model=context.model,
                endpoint="background:/v1/responses", prompt_tokens=context.prompt_tokens,
                completion_tokens=context.completion_tokens, status=500 if job.run.status == "failed" else 200,
                latency_ms=int((time.perf_counter() - job.started) * 1000))
        except Exception:
            log.exception("could not write the usage record of background response %s", job.run.id)

    # ---- what a client asks of one -----------------------------------------------------------------
    async def cancel(self, owner: str, response_id: str) -> dict:
        """Cancel a background response (404 if it is not the owner's, 400 if it is not a background one); a
        finished one is returned as it is."""
        body = await off_loop(self.store.get, owner, response_id)
        if not body.get("background"):
            raise InvalidRequestError("Only responses created with background=true can be cancelled.",
                                      param="response_id")
        job = self._jobs.get(response_id)
        if job is not None and job.task is not None:
            job.task.cancel()
            await asyncio.wait({job.task})
        elif body["status"] in UNFINISHED:
            # run by another replica (which keeps generating until it ends, but cannot overwrite this), or lost
            await off_loop(self.store.update, response_id, {**body, "status": "cancelled"})
        return await off_loop(self.store.get, owner, response_id)

    async def resume(self, owner: str, response_id: str, starting_after: int | None) -> AsyncIterator[str]:
        """A background stream's events after `starting_after` (from the first without it)."""
        body = await off_loop(self.store.get, owner, response_id)
        events = self._logs.get(response_id)
        if events is None:
            if not body.get("background"):
                raise InvalidRequestError("Only background responses created with stream=true can be streamed; "
                                          "retrieve this one without stream.", param="stream")
            raise InvalidRequestError(
                "This response's events are not kept: only a background response created with stream=true is "
                f"streamed again, by the replica that runs it, until {int(KEEP_EVENTS_S)} s after it ends. "
                "Retrieve it without stream.", param="stream")
        return events.follow(-1 if starting_after is None else starting_after)

    # ---- the server's life cycle ---------------------------------------------------------------------
    async def recover(self) -> int:
        """At start: this replica's responses left queued or in progress by its last run are failed."""
        failed = 0
        for _, body in await asyncio.to_thread(self.store.unfinished):
            if body.get("ozwell", {}).get("instance") != self.instance:
                continue  # another replica's, running there
            ended = {**body, "status": "failed", "error": RESTARTED, "output": []}
            failed += await asyncio.to_thread(self.store.update, body["id"], ended)
        if failed:
            log.warning("failed %d background response(s) left unfinished by the last run", failed)
        return failed

    async def stop(self) -> None:
        """At shutdown: the runs still going are stopped and stored failed (their engines are still up)."""
        jobs = [job for job in self._jobs.values() if job.task is not None]
        for job in jobs:
            job.shutdown = True
            job.task.cancel()
        await asyncio.gather(*(job.task for job in jobs), return_exceptions=True)

    def _prune(self) -> None:
        cutoff = time.monotonic() - KEEP_EVENTS_S
        for response_id in [k for k, events in self._logs.items() if events.closed_at and events.closed_at < cutoff]:
            del self._logs[response_id]
