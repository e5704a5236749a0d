"""The native chat engine: the thread bridge and the supervision of its step loop.

The async front (generate / abort) hands requests to one worker thread, which takes new requests and
aborts, then steps: `scheduler.schedule()` picks this step's chunks (decodes and prefill chunks, under
a token budget), `runner.run(chunks)` runs them as one packed forward pass and samples the sequences
whose chunk completed, `scheduler.postprocess(...)` appends the tokens, queues waiting choices and lets
finished sequences go (their KV blocks back to the pool); then the events stream back. A fault in a
step fails the requests in flight; repeated faults mark the engine down (`health()`).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import torch

from engines.config import ModelConfig
from engines.hf_generation import HFGenerationEngine
from engines.memory import kv_cache_bytes, module_bytes
from engines.native.block_manager import KVBlockManager
from engines.native.core import DONE, EngineCore, Job
from engines.native.cpu_quant import quantize_model
from engines.native.grammar import GrammarCache
from engines.native.kv_cache import resolve_kv_dtype
from engines.native.loader import MemoryBudget, kv_block_size, kv_bytes_per_token, kv_cache_blocks, load_model
from engines.native.model_runner import PagedModelRunner, profile_activations
from engines.native.scheduler import Scheduler, SchedulerConfig
from engines.native.static_decode import Capturer, cuda_graph_capturer
from engines.protocol import (
    EngineError,
    EngineOverloaded,
    EngineUnavailable,
    GenerationEvent,
    GenerationRequest,
    SamplingParams,
)

log = logging.getLogger("ozwell.engines")

_SHUTDOWN = object()


class NativeEngine(HFGenerationEngine):
    # A fault fails the requests in flight and the loop goes on with a clean batch; this many faults
    # in a row, with no good step between them, and the engine gives up and reports itself dead.
    MAX_CONSECUTIVE_FAULTS = 3
    # A step that runs longer than this makes health() report a stalled loop.
    STALL_AFTER_S = 120.0

    def __init__(self, config: ModelConfig, data_dir: Path, capturer: Capturer | None = None):
        """`capturer` replaces CUDA graph capture (the tests run the static decode path on a CPU with it)."""
        super().__init__(config)
        self._capturer = capturer
        self._dead: str | None = None
        self._faults = 0  # consecutive
        self._step_started: float | None = None
        self._data_dir = Path(data_dir)
        self._jobs: dict[str, Job] = {}
        self._queue: queue.Queue = queue.Queue()
        self._worker: threading.Thread | None = None
        self._pending = 0  # sequences queued for the step loop and not yet taken in
        self._core: EngineCore | None = None  # the worker thread's
        self.model = None
        self.tokenizer = None
        self.vision = None

    # ---- loading -------------------------------------------------------------------------
    def load(self) -> None:
        loaded = load_model(self.config, self._data_dir)
        self.model, self.tokenizer, self.device = loaded.model, loaded.tokenizer, loaded.device
        self.vision = loaded.vision  # a vision-language model's image side (vision.py), or None
        self.hf_dir, self.torch_dtype, self.revision = loaded.hf_dir, loaded.dtype, loaded.revision
        self._max_model_len = loaded.max_model_len
        self._stop_token_ids = self.stop_token_ids_with(loaded.eos_token_id)
        self.max_token_chars()  # reads the whole vocabulary once: here, not on a first request's event loop
        cuda = self.device.type == "cuda"
        size = self.block_size = kv_block_size(self.config, on_gpu=cuda)
        if self.config.quantization != "none":
            self._quantize()
        dtype = next(self.model.parameters()).dtype
        budget = None
        if cuda:
            activations = profile_activations(self.model, self.config.max_num_batched_tokens, size)
            budget = MemoryBudget(torch.cuda.get_device_properties(self.device).total_memory,
                                  torch.cuda.memory_allocated(self.device), activations,
                                  self.config.gpu_memory_utilization)
        self.kv_dtype = resolve_kv_dtype(self.config.kv_cache_dtype, dtype, self.device)  # kv_cache.py
        self._num_blocks = kv_cache_blocks(self.config, self._max_model_len,
                                           kv_bytes_per_token(self.model, self.kv_dtype), budget)
        if self._num_blocks * size < self._max_model_len:  # a KV share smaller than one context (loader.py)
            log.warning("%s: its KV cache (%d tokens) holds less than its context of %d tokens; longer requests are "
                        "refused", self.config.id, self._num_blocks * size, self._max_model_len)
            self._max_model_len = self._num_blocks * size
        graphs = self.config.cuda_graphs if self.config.cuda_graphs is not None else (cuda or bool(self._capturer))
        capturer = self._capturer or (cuda_graph_capturer() if cuda else None)
        if graphs and capturer is None:
            log.warning("%s: cuda_graphs needs a CUDA device; serving eager steps on %s", self.config.id, self.device)
        static = graphs and capturer is not None
        self.runner = PagedModelRunner(self.model, self._num_blocks, size, max_num_seqs=self.config.max_num_seqs,
                                       max_model_len=self._max_model_len, static_decode=static,
                                       kernel=cuda and importlib.util.find_spec("triton") is not None,
                                       kv_dtype=self.kv_dtype)
        self.runner.vision = self.vision
        if static:
            before = torch.cuda.memory_allocated(self.device) if cuda else 0
            self.runner.capture_graphs(capturer)
            if cuda:
                log.info("%s: decode graphs hold %.0f MiB", self.config.id,
                         (torch.cuda.memory_allocated(self.device) - before) / 2**20)
        self._scheduler = Scheduler(
            SchedulerConfig(max_num_seqs=self.config.max_num_seqs,
                            max_num_batched_tokens=self.config.max_num_batched_tokens,
                            max_waiting=self.config.max_waiting + self.config.max_num_seqs,
                            batch_token_share=self.config.batch_token_share),
            KVBlockManager(self._num_blocks, size))
        self.grammars = GrammarCache(self.tokenizer, self.vocab_size(), sorted(self._stop_token_ids))
        self._core = EngineCore(self.config.id, self._scheduler, self.runner, self.tokenizer, self._stop_token_ids,
                                self.device, size)
        log.info("%s: loaded on %s as %s, context %d, KV cache %d tokens in blocks of %d, in %s%s", self.config.id,
                 self.device, dtype, self._max_model_len, self._num_blocks * size, size, self.kv_dtype,
                 f" (gpu_memory_utilization {budget.utilization})" if budget else "")

    def _quantize(self) -> None:
        mode = self.config.quantization
        if self.device.type != "cpu":  # device: auto found a GPU (an explicit GPU device is refused at config)
            log.warning("%s: quantization: %s is for CPUs; on %s the model stays %s", self.config.id, mode,
                        self.device, self.torch_dtype)
            return
        cache = self._data_dir / "quantized" / self.config.id / f"{self.revision}-{mode}.pt"
        if not quantize_model(self.model, cache, mode):
            log.warning("%s: quantization: %s found no float32 or bfloat16 linears to quantise; serving as loaded",
                        self.config.id, mode)

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    @property
    def kv_cache_tokens(self) -> int:
        """The tokens its paged KV cache holds (its share of the KV budget on a CPU)."""
        return self._num_blocks * self.block_size

    def vocab_size(self) -> int:
        return int(self.model.config.get_text_config().vocab_size)

    @property
    def accepts_images(self) -> bool:
        return self.vision is not None

    def encode_chat_images(self, messages, images, tools=None):
        if not self.accepts_images:
            return super().encode_chat_images(messages, images, tools)
        text = self.render_chat(messages, tools)
        return self.vision.encode(text, images)

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

    async def prepare(self, params: SamplingParams) -> None:
        if params.structured is not None:
            await self.grammars.matcher(params.structured)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        grammar = None
        if request.params.structured is not None:  # compiled by prepare(): from the cache
            grammar = await self.grammars.matcher(request.params.structured)
        if self._dead:
            raise EngineUnavailable(f"the engine for {self.config.id!r} is down: {self._dead}")
        if self._worker is None:
            raise EngineError(f"engine for {self.config.id!r} is not running")
        if request.request_id in self._jobs:
            raise EngineError(f"request id {request.request_id!r} is already running")
        job = Job(request, asyncio.get_running_loop(), asyncio.Queue(), grammar=grammar)
        self._jobs[request.request_id] = job
        self._pending += request.params.n
        self._queue.put(job)
        if self._dead:  # the loop gave up while this job was being queued: it will never be taken in
            self._jobs.pop(request.request_id, None)
            raise EngineUnavailable(f"the engine for {self.config.id!r} is down: {self._dead}")
        try:
            while True:
                item = await job.events.get()
                if item is DONE:
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
                "generation_tokens_total": self._core.generated.total,
                "generation_tokens_per_s": self._core.generated.per_second(),
                **self._memory_stats()}

    def _memory_stats(self) -> dict:
        """The weights' and the KV cache's bytes (engines/memory.py): counted at the first scrape after load, then
        kept (neither changes while the engine serves)."""
        memory = getattr(self, "_memory", None)
        if memory is None:
            memory = self._memory = {"weights_bytes": module_bytes(self.vision.vlm if self.vision else self.model),
                                     "kv_cache_bytes": kv_cache_bytes(self.runner)}
        return memory

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
                if self._intake(block=not self._core.has_work) is _SHUTDOWN:
                    self._core.abort_everything()
                    return
                self._core.reap_aborted()
                if self._core.has_work:
                    self._step_started = time.monotonic()
                    with torch.inference_mode():
                        self._core.step()
                    self._step_started = None
                    self._faults = 0
            except Exception as exc:  # broad on purpose: a fault fails every in-flight request cleanly
                self._step_started = None
                self._faults += 1
                log.exception("%s: engine step failed (%d in a row); failing %d request(s)", self.config.id,
                              self._faults, len(self._core.jobs_live))
                self._core.fail_everything(exc)
                if self._faults >= self.MAX_CONSECUTIVE_FAULTS:
                    self._give_up(f"{self._faults} engine steps failed in a row, the last with {exc!r}")
                    return

    def _give_up(self, reason: str) -> None:
        """Mark the engine dead, and fail everything it holds or has queued."""
        if self._dead is None:
            self._dead = reason
            log.error("%s: engine is down: %s", self.config.id, reason)
        failure = EngineUnavailable(f"the engine for {self.config.id!r} is down: {reason}")
        if self._core is not None:
            self._core.fail_everything(failure)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, Job):
                self._pending -= item.request.params.n
                item.emit(failure)
                item.emit(DONE)

    def _intake(self, block: bool):
        try:
            item = self._queue.get(timeout=None) if block else self._queue.get_nowait()
        except queue.Empty:
            return None
        while True:
            if item is _SHUTDOWN or item is None:
                return _SHUTDOWN
            self._pending -= item.request.params.n
            self._core.admit(item)
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return None

