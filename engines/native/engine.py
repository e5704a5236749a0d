"""The native chat engine: transformers model definitions, continuous batching, paged KV cache.

The async front (generate / abort) hands requests to one worker thread, which runs the step loop:
take new requests and aborts, let the scheduler pick this step's chunks (decodes and prefill
chunks, under a token budget), run them as one packed forward pass through the paged model runner,
sample the sequences whose chunk completed, and stream their events back. Finished and aborted
sequences leave at once and their KV blocks go back to the pool.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engines.config import ModelConfig
from engines.devices import resolve_device, resolve_dtype
from engines.hf_generation import HFGenerationEngine
from engines.native.block_manager import KVBlockManager
from engines.native.model_runner import PagedModelRunner
from engines.native.scheduler import Scheduler, SchedulerConfig
from engines.native.sequence import Sequence as PagedSequence
from engines.output import ChoiceOutput
from engines.protocol import (
    EngineError,
    EngineOverloaded,
    EngineUnavailable,
    GenerationEvent,
    GenerationRequest,
)
from engines.sources import resolve_hf_dir, weights_revision

log = logging.getLogger("ozwell.engines")

_DONE = object()
_SHUTDOWN = object()


class _TokenRate:
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
class _Job:
    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    aborted: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)
    started: float | None = None  # when its first chunk was scheduled
    queue_time_sent: bool = False
    sequences: list = field(default_factory=list)
    remaining: int = 0

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

    job: _Job
    output: ChoiceOutput


class NativeEngine(HFGenerationEngine):
    # A fault fails the requests in flight and the loop goes on with a clean batch; this many faults
    # in a row, with no good step between them, and the engine gives up and reports itself dead.
    MAX_CONSECUTIVE_FAULTS = 3
    # A step that runs longer than this makes health() report a stalled loop.
    STALL_AFTER_S = 120.0

    def __init__(self, config: ModelConfig, data_dir: Path):
        super().__init__(config)
        self._dead: str | None = None
        self._faults = 0  # consecutive
        self._step_started: float | None = None
        self._generated = _TokenRate()
        self._data_dir = Path(data_dir)
        self._jobs: dict[str, _Job] = {}
        self._queue: queue.Queue = queue.Queue()
        self._worker: threading.Thread | None = None
        self._pending = 0  # sequences queued for the step loop and not yet taken in
        self._jobs_live: set[_Job] = set()  # owned by the worker thread
        self.model = None
        self.tokenizer = None

    # ---- loading -------------------------------------------------------------------------
    def load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = resolve_device(self.config.device)
        dtype = resolve_dtype(self.config.dtype, self.device)
        hf_dir = resolve_hf_dir(self.config, self._data_dir, self.config.dtype)
        self.hf_dir = hf_dir
        self.torch_dtype = dtype
        self.tokenizer = AutoTokenizer.from_pretrained(hf_dir)
        template = self.config.resolved_chat_template()
        if template is not None:
            self.tokenizer.chat_template = template
        self.model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype).to(self.device).eval()
        hf_config = self.model.config.get_text_config()
        self._max_model_len = self.config.max_model_len or int(hf_config.max_position_embeddings)
        self._stop_token_ids = self.stop_token_ids_with(self.model.generation_config.eos_token_id)
        self.revision = weights_revision(hf_dir)
        self._build_kv_cache()
        log.info("%s: loaded on %s as %s, context %d, KV cache %d tokens in blocks of %d", self.config.id,
                 self.device, dtype, self._max_model_len, self._num_blocks * self.config.block_size,
                 self.config.block_size)

    def _build_kv_cache(self) -> None:
        size = self.config.block_size
        tokens = self.config.kv_cache_tokens or min(self.config.max_num_seqs * self._max_model_len, 1 << 17)
        # At least one whole context, so any request that passes the context check can run alone.
        self._num_blocks = max(-(-tokens // size), -(-self._max_model_len // size))
        self.runner = PagedModelRunner(self.model, self._num_blocks, size)
        self._scheduler = Scheduler(
            SchedulerConfig(max_num_seqs=self.config.max_num_seqs,
                            max_num_batched_tokens=self.config.max_num_batched_tokens,
                            max_waiting=self.config.max_waiting + self.config.max_num_seqs),
            KVBlockManager(self._num_blocks, size))

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    def vocab_size(self) -> int:
        return int(self.model.config.get_text_config().vocab_size)

    # ---- async front -----------------------------------------------------------------------
    async def start(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._run_worker, name=f"engine-{self.config.id}", daemon=True)
            self._worker.start()

    async def stop(self) -> None:
        for job in list(self._jobs.values()):
            job.aborted.set()
        if self._worker is not None:
            self._queue.put(_SHUTDOWN)
            await asyncio.to_thread(self._worker.join, 30)
            self._worker = None

    def health(self) -> str | None:
        if self._dead:
            return self._dead
        if self._worker is None or not self._worker.is_alive():
            return "the step loop is not running"
        started = self._step_started
        if started is not None and time.monotonic() - started > self.STALL_AFTER_S:
            return f"the step loop is stalled: one step has run for {time.monotonic() - started:.0f}s"
        return None

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        if self._dead:
            raise EngineUnavailable(f"the engine for {self.config.id!r} is down: {self._dead}")
        if self._worker is None:
            raise EngineError(f"engine for {self.config.id!r} is not running")
        if request.request_id in self._jobs:
            raise EngineError(f"request id {request.request_id!r} is already running")
        job = _Job(request, asyncio.get_running_loop(), asyncio.Queue())
        self._jobs[request.request_id] = job
        self._pending += request.params.n
        self._queue.put(job)
        if self._dead:  # the loop gave up while this job was being queued: it will never be taken in
            self._jobs.pop(request.request_id, None)
            raise EngineUnavailable(f"the engine for {self.config.id!r} is down: {self._dead}")
        try:
            while True:
                item = await job.events.get()
                if item is _DONE:
                    return
                if isinstance(item, EngineUnavailable):
                    raise item
                if isinstance(item, BaseException):
                    raise EngineError(f"generation failed in {self.config.id!r}") from item
                yield item
        finally:
            # A consumer that stops listening (client gone, cancelled) aborts the work.
            job.aborted.set()
            self._jobs.pop(request.request_id, None)

    async def abort(self, request_id: str) -> None:
        job = self._jobs.get(request_id)
        if job is not None:
            job.aborted.set()

    # ---- capacity ------------------------------------------------------------------------------
    def check_capacity(self, num_sequences: int) -> None:
        """Refuse new work when the waiting queue is full (the server answers 429 with Retry-After)."""
        if self._pending + num_sequences > self.config.max_waiting:
            raise EngineOverloaded(f"{self._pending} sequences are already waiting for {self.config.id!r}")

    def stats(self) -> dict:
        scheduler, blocks = self._scheduler, self._scheduler.blocks
        return {"waiting": len(scheduler.waiting) + self._queue.qsize(), "running": len(scheduler.running),
                "kv_blocks_used": blocks.num_used_blocks, "kv_blocks_free": blocks.num_free_blocks,
                "kv_blocks_total": len(blocks.blocks), "prefix_cache_hit_rate": blocks.prefix_hit_rate,
                "preemptions": scheduler.num_preemptions, "loop_alive": bool(self._worker and self._worker.is_alive()),
                "generation_tokens_total": self._generated.total,
                "generation_tokens_per_s": self._generated.per_second()}

    # ---- step loop (worker thread) -----------------------------------------------------------
    def _run_worker(self) -> None:
        try:
            self._loop()
        except BaseException as exc:
            self._give_up(f"the step loop died: {exc!r}")
            raise

    def _loop(self) -> None:
        while True:
            try:
                if self._intake(block=not self._scheduler.has_work) is _SHUTDOWN:
                    self._abort_everything()
                    return
                self._reap_aborted()
                if self._scheduler.has_work:
                    self._step_started = time.monotonic()
                    with torch.inference_mode():
                        self._step()
                    self._step_started = None
                    self._faults = 0
            except Exception as exc:  # broad on purpose: a fault fails every in-flight request cleanly
                self._step_started = None
                self._faults += 1
                log.exception("%s: engine step failed (%d in a row); failing %d request(s)", self.config.id,
                              self._faults, len(self._jobs_live))
                self._fail_everything(exc)
                if self._faults >= self.MAX_CONSECUTIVE_FAULTS:
                    self._give_up(f"{self._faults} engine steps failed in a row, the last with {exc!r}")
                    return

    def _give_up(self, reason: str) -> None:
        """Mark the engine dead, and fail everything it holds or has queued."""
        if self._dead is None:
            self._dead = reason
            log.error("%s: engine is down: %s", self.config.id, reason)
        failure = EngineUnavailable(f"the engine for {self.config.id!r} is down: {reason}")
        self._fail_everything(failure)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Job):
                self._pending -= item.request.params.n
                item.emit(failure)
                item.emit(_DONE)

    def _intake(self, block: bool):
        try:
            item = self._queue.get(timeout=None) if block else self._queue.get_nowait()
        except queue.Empty:
            return None
        while True:
            if item is _SHUTDOWN or item is None:
                return _SHUTDOWN
            self._admit(item)
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return None

    def _admit(self, job: _Job) -> None:
        self._pending -= job.request.params.n
        if job.aborted.is_set():
            job.emit(_DONE)
            return
        self._jobs_live.add(job)
        params, prompt = job.request.params, job.request.prompt_token_ids
        for index in range(params.n):
            generator = None
            if not params.greedy:
                generator = torch.Generator(device=self.device)
                seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(7), "big")
                generator.manual_seed((seed * 1_000_003 + index) % (1 << 63))  # each choice its own stream
            output = ChoiceOutput(index, self.tokenizer, prompt, params, self._stop_token_ids)
            sequence = PagedSequence(f"{job.request.request_id}#{index}", prompt, self.config.block_size,
                                     _SeqState(job, output), params=params, generator=generator)
            job.sequences.append(sequence)
        # The other choices wait until the first has computed the prompt, then share its KV blocks
        # through the prefix cache instead of computing them again.
        job.sequences[0].followers = job.sequences[1:]
        self._scheduler.add(job.sequences[0])
        job.remaining = params.n

    def _reap_aborted(self) -> None:
        for job in [j for j in self._jobs_live if j.aborted.is_set()]:
            for sequence in job.sequences:
                if sequence.payload.output.finish_reason is None:
                    self._scheduler.finish(sequence)
                    job.emit(sequence.payload.output.abort())
            self._close(job)

    def _step(self) -> None:
        """schedule, run, postprocess (as nano-vllm's LLMEngine.step); then the events go out."""
        chunks = self._scheduler.schedule()
        if not chunks:
            return
        for chunk in chunks:
            if chunk.seq.payload.job.started is None:
                chunk.seq.payload.job.started = time.perf_counter()
        out = self.runner.run(chunks)
        for sequence, exc in out.failed:  # a request whose own row faulted the sampler fails alone
            job = sequence.payload.job
            if job in self._jobs_live:
                log.warning("%s: request %s failed in the sampler: %r", self.config.id, job.request.request_id,
                            exc)
                self._fail_job(job, exc)
        # A row of a request that failed just now is dropped.
        rows = [row for row in zip(out.sequences, out.token_ids, out.logprobs) if row[0].payload.job in self._jobs_live]
        sequences, token_ids = [row[0] for row in rows], [row[1] for row in rows]
        events = [seq.payload.output.push(token_id, logprobs) for seq, token_id, logprobs in rows]
        self._scheduler.postprocess(chunks, sequences, token_ids, [e.finish_reason is not None for e in events])
        self._generated.add(len(token_ids))
        for sequence, event in zip(sequences, events):
            job = sequence.payload.job
            job.emit(event)
            if event.finish_reason is not None:
                job.remaining -= 1
                if job.remaining == 0:
                    self._close(job)

    def _close(self, job: _Job) -> None:
        self._jobs_live.discard(job)
        job.emit(_DONE)

    def _fail_job(self, job: _Job, exc: BaseException) -> None:
        """End one request with an error; its sequences leave the scheduler and free their KV blocks."""
        for sequence in job.sequences:
            if sequence.payload.output.finish_reason is None:
                sequence.payload.output.finish_reason = "error"
                self._scheduler.finish(sequence)
            sequence.followers = []
        self._jobs_live.discard(job)
        job.emit(exc)
        job.emit(_DONE)

    def _fail_everything(self, exc: Exception) -> None:
        for job in list(self._jobs_live):
            self._fail_job(job, exc)

    def _abort_everything(self) -> None:
        for job in list(self._jobs_live):
            job.aborted.set()
        self._reap_aborted()
