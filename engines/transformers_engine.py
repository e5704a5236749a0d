"""The first native chat engine: transformers model definitions, run in-process.

One worker thread owns the model and runs one request at a time; the n choices of a request are
decoded together as one batch over a shared prefill. The async front (generate / abort) is the
interface the continuous-batching engine keeps, so the server will not change when the step
loop behind it does.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import queue
import random
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engines.config import ModelConfig
from engines.detokenizer import IncrementalDetokenizer, StopStringMatcher
from engines.devices import resolve_device, resolve_dtype
from engines.protocol import EngineError, GenerationEngine, GenerationEvent, GenerationRequest, SamplingParams
from engines.sampler import SamplingBatch, TokenLogprobs, sample
from engines.sources import resolve_hf_dir

log = logging.getLogger("ozwell.engines")

_DONE = object()


@dataclass
class _Job:
    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    aborted: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)
    queue_time_s: float | None = None

    def emit(self, item) -> None:
        if isinstance(item, GenerationEvent) and self.queue_time_s is not None:
            item.queue_time_s, self.queue_time_s = self.queue_time_s, None  # on the first event only
        self.loop.call_soon_threadsafe(self.events.put_nowait, item)


@dataclass
class _Choice:
    index: int
    detokenizer: IncrementalDetokenizer
    stops: StopStringMatcher
    completion_tokens: int = 0
    finish_reason: str | None = None


def _logprobs_per_row(chosen, top_values, top_ids, k: int | None) -> list[TokenLogprobs] | None:
    if chosen is None:
        return None
    chosen = chosen.tolist()
    if not k:
        return [TokenLogprobs(lp, []) for lp in chosen]
    values, ids = top_values[:, :k].tolist(), top_ids[:, :k].tolist()
    return [TokenLogprobs(lp, list(zip(i, v))) for lp, i, v in zip(chosen, ids, values)]


def _weights_revision(hf_dir: Path) -> str:
    """A short hash of the model's config and weight files (name, size, mtime)."""
    digest = hashlib.sha256((hf_dir / "config.json").read_bytes())
    for path in sorted(hf_dir.glob("*.safetensors")) + sorted(hf_dir.glob("*.bin")):
        stat = path.stat()
        digest.update(f"{path.name}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:12]


class TransformersEngine(GenerationEngine):
    def __init__(self, config: ModelConfig, data_dir: Path):
        super().__init__(config)
        self._data_dir = Path(data_dir)
        self._jobs: dict[str, _Job] = {}
        self._queue: queue.Queue = queue.Queue()
        self._worker: threading.Thread | None = None
        self.model = None
        self.tokenizer = None

    # ---- loading -------------------------------------------------------------------------
    def load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = resolve_device(self.config.device)
        dtype = resolve_dtype(self.config.dtype, self.device)
        hf_dir = resolve_hf_dir(self.config, self._data_dir, self.config.dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(hf_dir)
        template = self.config.resolved_chat_template()
        if template is not None:
            self.tokenizer.chat_template = template
        self.model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype).to(self.device).eval()
        hf_config = self.model.config.get_text_config()
        self._max_model_len = self.config.max_model_len or int(hf_config.max_position_embeddings)
        self._stop_token_ids = self._collect_stop_token_ids()
        self.revision = _weights_revision(hf_dir)
        log.info("%s: loaded on %s as %s, context %d", self.config.id, self.device, dtype, self._max_model_len)

    def _collect_stop_token_ids(self) -> frozenset[int]:
        ids = set(self.config.stop_token_ids)
        eos = self.model.generation_config.eos_token_id
        ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return frozenset(ids)

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    def vocab_size(self) -> int:
        return int(self.model.config.get_text_config().vocab_size)

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def encode_chat(self, messages: Sequence[dict]) -> list[int]:
        if not self.tokenizer.chat_template:
            raise ValueError(f"model {self.config.id!r} has no chat template; use /v1/completions")
        text = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
        # The template writes BOS itself where the model wants it.
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode_text(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=True)["input_ids"]

    # ---- async front -----------------------------------------------------------------------
    async def start(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._run_worker, name=f"engine-{self.config.id}", daemon=True)
            self._worker.start()

    async def stop(self) -> None:
        for job in list(self._jobs.values()):
            job.aborted.set()
        if self._worker is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._worker.join, 30)
            self._worker = None

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        if self._worker is None:
            raise EngineError(f"engine for {self.config.id!r} is not running")
        if request.request_id in self._jobs:
            raise EngineError(f"request id {request.request_id!r} is already running")
        job = _Job(request, asyncio.get_running_loop(), asyncio.Queue())
        self._jobs[request.request_id] = job
        self._queue.put(job)
        try:
            while True:
                item = await job.events.get()
                if item is _DONE:
                    return
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

    # ---- worker thread -----------------------------------------------------------------------
    def _run_worker(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if job.aborted.is_set():
                job.emit(_DONE)
                continue
            try:
                with torch.inference_mode():
                    self._run_job(job)
            except Exception as exc:  # noqa: BLE001 - the fault is reported to the request
                log.exception("%s: generation failed", self.config.id)
                job.emit(exc)
            job.emit(_DONE)

    def _run_job(self, job: _Job) -> None:
        from transformers import DynamicCache

        job.queue_time_s = time.perf_counter() - job.submitted
        params: SamplingParams = job.request.params
        prompt = job.request.prompt_token_ids
        n = params.n
        generator = None
        if not params.greedy:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(params.seed if params.seed is not None else random.getrandbits(63))
        batch = SamplingBatch([params] * n, [prompt] * n, self.model.config.get_text_config().vocab_size,
                              self.device)
        choices = [
            _Choice(i, IncrementalDetokenizer(self.tokenizer, prompt), StopStringMatcher(params.stop)) for i in range(n)
        ]
        input_ids = torch.tensor([prompt] * n, dtype=torch.long, device=self.device)
        cache = DynamicCache(config=self.model.config)
        logits = self.model(input_ids=input_ids, cache=cache, use_cache=True).logits[:, -1, :]
        for _ in range(params.max_tokens):
            if job.aborted.is_set():
                self._finish_all(job, choices, "abort", len(prompt))
                return
            next_ids, chosen_lp, top_lp, top_ids = sample(logits, batch, [generator] * n)
            batch.record(next_ids)
            logprobs = _logprobs_per_row(chosen_lp, top_lp, top_ids, params.logprobs)  # the one host sync
            for choice, token_id in zip(choices, next_ids.tolist()):
                if choice.finish_reason is None:
                    entry = logprobs[choice.index] if logprobs is not None else None
                    self._advance(job, choice, token_id, params, len(prompt), entry)
            if all(c.finish_reason is not None for c in choices):
                return
            logits = self.model(input_ids=next_ids[:, None], cache=cache, use_cache=True).logits[:, -1, :]
        self._finish_all(job, choices, "length", len(prompt))

    def _advance(self, job: _Job, choice: _Choice, token_id: int, params: SamplingParams, prompt_len: int,
                 logprobs: TokenLogprobs | None) -> None:
        choice.completion_tokens += 1
        entries = [logprobs] if logprobs is not None else None
        is_stop_token = token_id in params.stop_token_ids or (
            not params.ignore_eos and token_id in self._stop_token_ids
        )
        if is_stop_token:
            self._finish(job, choice, "stop", prompt_len, [token_id], choice.stops.flush(), entries)
            return
        text, hit_stop = choice.stops.push(choice.detokenizer.push(token_id))
        if hit_stop:
            self._finish(job, choice, "stop", prompt_len, [token_id], text, entries)
        elif choice.completion_tokens >= params.max_tokens:
            tail, _ = choice.stops.push(choice.detokenizer.flush())
            self._finish(job, choice, "length", prompt_len, [token_id], text + tail + choice.stops.flush(), entries)
        else:
            job.emit(GenerationEvent(choice.index, [token_id], text, None, prompt_len, choice.completion_tokens,
                                     logprobs=entries))

    def _finish(self, job, choice: _Choice, reason: str, prompt_len: int, token_ids: list[int], text: str,
                logprobs: list | None = None) -> None:
        choice.finish_reason = reason
        job.emit(GenerationEvent(choice.index, token_ids, text, reason, prompt_len, choice.completion_tokens,
                                 logprobs=logprobs))

    def _finish_all(self, job: _Job, choices: list[_Choice], reason: str, prompt_len: int) -> None:
        for choice in choices:
            if choice.finish_reason is None:
                self._finish(job, choice, reason, prompt_len, [], choice.stops.flush() if reason != "abort" else "")
