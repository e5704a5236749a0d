"""The native engine's core, on its worker thread: the requests in flight and one step over them.

A step is three calls, as in nano-vllm's LLMEngine.step: `scheduler.schedule()`, `runner.run(chunks)`
(the packed forward pass and the sampled tokens) and `scheduler.postprocess(...)` (append, queue waiting
choices, finish); then the events go out to each request's event loop. Supervision (faults, giving up,
stalls) is the engine's (engine.py); this module only does the work and fails what it must."""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
import time
from dataclasses import dataclass, field

import torch

from engines.native.model_runner import PagedModelRunner
from engines.native.scheduler import Scheduler
from engines.native.sequence import Sequence
from engines.output import ChoiceOutput
from engines.protocol import GenerationEvent, GenerationRequest

log = logging.getLogger("ozwell.engines")

DONE = object()  # a request's last item: nothing follows


class TokenRate:
    """Generated tokens per second over about the last `window_s` seconds; written by the step loop,
    read by /metrics on another thread (no iteration, so no lock)."""

    def __init__(self, window_s: float = 10.0):
        self.window_s = window_s
        self.total = 0
        self._marks: collections.deque[tuple[float, int]] = collections.deque()  # (time, total before the step)

    def add(self, count: int) -> None:
        now = time.monotonic()
        self._marks.append((now, self.total))
        self.total += count
        while now - self._marks[0][0] > self.window_s:
            self._marks.popleft()

    def per_second(self) -> float:
        try:
            since, total_then = self._marks[0]
        except IndexError:
            return 0.0
        span = time.monotonic() - since
        return (self.total - total_then) / span if span > 0 else 0.0


@dataclass(eq=False)
class Job:
    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    aborted: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)
    started: float | None = None  # when its first chunk was scheduled
    queue_time_sent: bool = False
    sequences: list = field(default_factory=list)
    remaining: int = 0
    grammar: object = None  # the request's compiled grammar (each choice matches with its own copy)

    def emit(self, item) -> None:
        if isinstance(item, GenerationEvent) and self.started is not None and not self.queue_time_sent:
            item.queue_time_s, self.queue_time_sent = self.started - self.submitted, True  # first event only
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # the caller's event loop is closed: nobody is listening any more
            self.aborted.set()


@dataclass
class _SeqState:
    """The engine's per-sequence state, carried in Sequence.payload."""

    job: Job
    output: ChoiceOutput


def _grammar_done(sequence: Sequence, token_id: int) -> bool:
    """Advance the sequence's grammar by its sampled token: whether the grammar is now complete."""
    grammar = sequence.grammar
    if grammar is None:
        return False
    if not grammar.consume_token(token_id):  # cannot happen for a masked draw; end the choice, not the engine
        # Only the error's kind: its text can hold the whole grammar (480 KB for a large schema, issue #35),
        # and the grammar holds the client's schema.
        kind = grammar.get_error().split(":", 1)[0][:40]
        log.error("grammar rejected token %d of %s (%s); the choice ends here", token_id, sequence.seq_id, kind)
        return True
    return grammar.is_stopped()


class EngineCore:
    """Owned by the worker thread: the live requests, the scheduler and the runner."""

    def __init__(self, model_id: str, scheduler: Scheduler, runner: PagedModelRunner, tokenizer,
                 stop_token_ids: frozenset[int], device: torch.device, block_size: int):
        self.model_id = model_id
        self.scheduler = scheduler
        self.runner = runner
        self.tokenizer = tokenizer
        self.stop_token_ids = stop_token_ids
        self.device = device
        self.block_size = block_size
        self.jobs_live: set[Job] = set()
        self.generated = TokenRate()

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work

    def admit(self, job: Job) -> None:
        """Take a request in: a sequence per choice; the first is scheduled, the others follow it."""
        if job.aborted.is_set():
            job.emit(DONE)
            return
        self.jobs_live.add(job)
        params, prompt = job.request.params, job.request.prompt_token_ids
        for index in range(params.n):
            generator = None
            if not params.greedy:
                generator = torch.Generator(device=self.device)
                seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(7), "big")
                generator.manual_seed((seed * 1_000_003 + index) % (1 << 63))  # each choice its own stream
            output = ChoiceOutput(index, self.tokenizer, prompt, params, self.stop_token_ids)
            sequence = Sequence(f"{job.request.request_id}#{index}", prompt, self.block_size,
                                _SeqState(job, output), params=params, generator=generator,
                                priority=job.request.priority, images=job.request.images)
            if job.grammar is not None:
                sequence.grammar = job.grammar.deep_copy()
            job.sequences.append(sequence)
        # The other choices wait until the first has computed the prompt, then share its KV blocks
        # through the prefix cache instead of computing them again (and its prompt logprobs, when asked).
        job.sequences[0].followers = job.sequences[1:]
        if params.prompt_logprobs is not None:
            job.sequences[0].prompt_logprobs = [None]
        self.scheduler.add(job.sequences[0])
        job.remaining = params.n

    def reap_aborted(self) -> None:
        for job in [j for j in self.jobs_live if j.aborted.is_set()]:
            for sequence in job.sequences:
                if sequence.payload.output.finish_reason is None:
                    self.scheduler.finish(sequence)
                    job.emit(sequence.payload.output.abort())
            self.close(job)

    def step(self) -> None:
        """schedule, run, postprocess (as nano-vllm's LLMEngine.step); then the events go out."""
        chunks = self.scheduler.schedule()
        if not chunks:
            return
        for chunk in chunks:
            if chunk.seq.payload.job.started is None:
                chunk.seq.payload.job.started = time.perf_counter()
        out = self.runner.run(chunks)
        for sequence, exc in out.failed:  # a request whose own row faulted the sampler fails alone
            job = sequence.payload.job
            if job in self.jobs_live:
                log.warning("%s: request %s failed in the sampler: %r", self.model_id, job.request.request_id,
                            exc)
                self.fail_job(job, exc)
        # A row of a request that failed just now is dropped.
        rows = [row for row in zip(out.sequences, out.token_ids, out.logprobs) if row[0].payload.job in self.jobs_live]
        sequences, token_ids = [row[0] for row in rows], [row[1] for row in rows]
        events = [seq.payload.output.push(token_id, logprobs, _grammar_done(seq, token_id))
                  for seq, token_id, logprobs in rows]
        self.scheduler.postprocess(chunks, sequences, token_ids, [e.finish_reason is not None for e in events])
        self.generated.add(len(token_ids))
        for sequence, event in zip(sequences, events):
            job = sequence.payload.job
            if event.completion_tokens == 1 and job.request.params.prompt_logprobs is not None:
                event.prompt_logprobs = job.sequences[0].prompt_logprobs  # each choice's first event
            job.emit(event)
            if event.finish_reason is not None:
                job.remaining -= 1
                if job.remaining == 0:
                    self.close(job)

    def close(self, job: Job) -> None:
        self.jobs_live.discard(job)
        job.emit(DONE)

    def fail_job(self, job: Job, exc: BaseException) -> None:
        """End one request with an error; its sequences leave the scheduler and free their KV blocks."""
        for sequence in job.sequences:
            if sequence.payload.output.finish_reason is None:
                sequence.payload.output.finish_reason = "error"
                self.scheduler.finish(sequence)
            sequence.followers = []
        self.jobs_live.discard(job)
        job.emit(exc)
        job.emit(DONE)

    def fail_everything(self, exc: Exception) -> None:
        for job in list(self.jobs_live):
            self.fail_job(job, exc)

    def abort_everything(self) -> None:
        for job in list(self.jobs_live):
            job.aborted.set()
        self.reap_aborted()
