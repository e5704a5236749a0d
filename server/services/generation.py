"""What chat and legacy completions share: engine lookup, limits, sampling params, SSE framing."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from engines.protocol import (
    ContextLengthExceeded,
    EngineError,
    EngineOverloaded,
    EngineUnavailable,
    GenerationEngine,
    GenerationEvent,
    GenerationRequest,
    InvalidGenerationRequest,
    SamplingParams,
)
from engines.registry import EngineRegistry, UnknownModel
from server.errors import (
    ContextLengthExceededError,
    EngineBusyError,
    InternalServerError,
    InvalidRequestError,
    ModelNotFoundError,
    OpenAIError,
    ServiceUnavailableError,
)
from server.executors import run_cpu
from server.lifecycle import Lifecycle
from server.metrics import Metrics
from server.protocol import SamplingFields

log = logging.getLogger("ozwell.server")

# Internal finish reasons mapped to OpenAI's. "abort" reaches a client only when the server
# itself stops a request; the engine has already freed its work then.
_FINISH_REASONS = {"stop": "stop", "length": "length", "abort": "stop"}


def openai_finish_reason(reason: str) -> str:
    return _FINISH_REASONS.get(reason, "stop")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def resolve_engine(registry: EngineRegistry, model: str, kind: type, refusal: str):
    """The engine behind a model name or alias: 404 if none, 400 if it is not of the kind the route needs."""
    try:
        engine = registry.resolve(model)
    except UnknownModel:
        raise ModelNotFoundError(model) from None
    if not isinstance(engine, kind):
        task = engine.config.task.value
        article = "an" if task[0] in "aeiou" else "a"
        raise InvalidRequestError(f"The model `{model}` is {article} {task} model and {refusal}",
                                  param="model", code="model_not_supported")
    return engine


def resolve_generation_engine(registry: EngineRegistry, model: str, route: str) -> GenerationEngine:
    return resolve_engine(registry, model, GenerationEngine, f"cannot serve {route}; use /v1/embeddings for it.")


def admit(engine: GenerationEngine, num_sequences: int) -> None:
    """Refuse with 429 and Retry-After when the engine's waiting queue is full, instead of queueing on."""
    try:
        engine.check_capacity(num_sequences)
    except EngineOverloaded as exc:
        raise EngineBusyError(f"The model `{engine.config.id}` is busy ({exc}). Please retry shortly.") from None


def prompt_floor(engine: GenerationEngine, prompts: list[str | list[int]], cap: int | None = None) -> int:
    """A lower bound on the prompt tokens, read without templating or tokenizing: what a request reserves
    of its key's tokens per minute before that work (see RequestContext.reserve_tokens). Each prompt counts
    at most `cap` (default: the context), since a longer one is refused or truncated."""
    cap = engine.max_model_len if cap is None else cap
    return sum(min(len(p) if isinstance(p, list) else engine.min_prompt_tokens(p), cap) for p in prompts)


def request_error(exc: InvalidGenerationRequest) -> InvalidRequestError:
    """An engine's refusal of a request, as the OpenAI error a client gets."""
    if isinstance(exc, ContextLengthExceeded) or exc.code == "context_length_exceeded":
        return ContextLengthExceededError(str(exc), param=exc.param)
    return InvalidRequestError(str(exc), param=exc.param, code=exc.code)


async def off_loop(func: Callable, *args):
    """Tokenizer and template work runs on the bounded CPU pool (server/executors.py), so the event loop
    keeps answering and key lookups never wait behind it."""
    from jinja2 import TemplateError

    try:
        return await run_cpu(func, *args)
    except TemplateError as exc:  # the chat template refused these messages (e.g. role order)
        raise InvalidRequestError(f"The model's chat template rejected the messages: {exc}", param="messages") from None
    except InvalidGenerationRequest as exc:
        raise request_error(exc) from None
    except (ValueError, TypeError) as exc:
        raise InvalidRequestError(str(exc)) from None


def build_sampling_params(
    req: SamplingFields, engine: GenerationEngine, prompt_len: int, requested_max: int | None, prompt_param: str
) -> SamplingParams:
    """Chat and completions: the request's sampling fields, checked against the engine."""
    return checked_sampling_params(engine, prompt_len, requested_max, prompt_param, temperature=req.temperature,
                                   top_p=req.top_p, n=req.n or 1, seed=req.seed, stop=req.stop_list,
                                   **req.sampling_options())


def checked_sampling_params(
    engine: GenerationEngine, prompt_len: int, requested_max: int | None, prompt_param: str, *,
    temperature: float | None, top_p: float | None, n: int = 1, seed: int | None = None, stop: tuple[str, ...] = (),
    **options,
) -> SamplingParams:
    """Apply the context limit before any work is queued; no max means 'up to the context'."""
    if requested_max is None:
        requested_max = engine.max_model_len - prompt_len
        if requested_max < 1:
            requested_max = 1  # so that check_request reports the prompt as too long
    try:
        params = SamplingParams(
            max_tokens=requested_max,
            temperature=1.0 if temperature is None else temperature,
            top_p=1.0 if top_p is None else top_p,
            n=n,
            seed=seed,
            stop=stop,
            **options,
        )
        engine.check_request(prompt_len, params, prompt_param)
        return params
    except InvalidGenerationRequest as exc:
        raise request_error(exc) from None


@dataclass
class Observers:
    """What watches generations besides the client: metrics, and the life cycle's drain."""

    metrics: Metrics | None = None
    lifecycle: Lifecycle | None = None


def shutting_down_error() -> ServiceUnavailableError:
    return ServiceUnavailableError("The server is shutting down and stopped this request before it finished. "
                                   "Please retry.", code="server_shutting_down")


async def stream_events(
    engine: GenerationEngine, request_id: str, prompt_ids: list[int], params: SamplingParams,
    observers: Observers | None = None,
) -> AsyncIterator[GenerationEvent]:
    """The engine's events. An engine fault becomes a 500-shaped error, a dead engine a 503, and a
    request cut by the shutdown drain a 503 `server_shutting_down`; leaving early aborts."""
    observers = observers or Observers()
    lifecycle = observers.lifecycle
    trace = observers.metrics.trace(engine.config.id, len(prompt_ids)) if observers.metrics else None
    registration = lifecycle.register(engine, request_id) if lifecycle else None
    fault = False
    try:
        async for event in engine.generate(GenerationRequest(request_id, prompt_ids, params)):
            if trace is not None:
                trace.event(event.index, len(event.token_ids), event.completion_tokens, event.finish_reason)
            if event.finish_reason == "abort" and lifecycle is not None and lifecycle.was_cut(request_id):
                raise shutting_down_error()
            yield event
    except EngineUnavailable as exc:
        fault = True
        log.error("engine down on %s: %s", request_id, exc)
        raise ServiceUnavailableError(f"The model `{engine.config.id}` is unavailable: its engine is down.",
                                      code="engine_unavailable", retry_after_s=30) from exc
    except EngineError as exc:
        fault = True
        log.error("engine error on %s: %s", request_id, exc.__cause__ or exc)
        raise InternalServerError("The model failed while generating a response.") from exc
    finally:
        if registration is not None:
            lifecycle.unregister(registration)
        if trace is not None:
            trace.finished(fault)
        await engine.abort(request_id)


@dataclass
class ChoiceText:
    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    token_ids: list[int] = field(default_factory=list)
    logprobs: list = field(default_factory=list)


@dataclass
class Collected:
    choices: dict[int, ChoiceText] = field(default_factory=dict)
    prompt_tokens: int = 0

    def add(self, event: GenerationEvent, index: int) -> None:
        choice = self.choices.setdefault(index, ChoiceText())
        choice.text += event.text
        choice.completion_tokens = event.completion_tokens
        if event.logprobs is not None:
            choice.token_ids += event.token_ids
            choice.logprobs += event.logprobs
        if event.finish_reason:
            choice.finish_reason = openai_finish_reason(event.finish_reason)

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.choices.values())


def _token_entry(engine: GenerationEngine, token_id: int, logprob: float) -> dict:
    text = engine.token_text(token_id)
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def chat_logprobs(engine: GenerationEngine, token_ids: list[int], entries: list) -> dict:
    """OpenAI's chat shape: {"content": [{token, logprob, bytes, top_logprobs: [...]}], "refusal": null}."""
    return {"content": [{**_token_entry(engine, token_id, entry.logprob),
                         "top_logprobs": [_token_entry(engine, i, lp) for i, lp in entry.top]}
                        for token_id, entry in zip(token_ids, entries)], "refusal": None}


def legacy_logprobs(engine: GenerationEngine, token_ids: list[int], entries: list, offset: int = 0) -> dict:
    """The legacy completions shape: tokens, token_logprobs, top_logprobs (token -> logprob), text_offset."""
    tokens = [engine.token_text(t) for t in token_ids]
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token)
    return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{engine.token_text(i): lp for i, lp in e.top} for e in entries],
            "text_offset": offsets}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def sse(payload: dict) -> str:
    # ASCII only: a raw U+2028 or U+0085 in a line would split it for clients that split on str lines.
    return f"data: {json.dumps(payload, separators=(',', ':'), ensure_ascii=True)}\n\n"


SSE_DONE = "data: [DONE]\n\n"


def sse_error(exc: Exception) -> str:
    if not isinstance(exc, OpenAIError):
        log.exception("unexpected error while streaming", exc_info=exc)
        exc = InternalServerError("The server had an error while processing your request.")
    return sse(exc.body())
