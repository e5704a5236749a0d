"""The one request pipeline of the generation services (chat, completions, responses).

`GenerationPipeline.start` runs the sequence they share, once, and hands back a `Generation` ready to run:

1. check the request (fields we cannot honour yet, and its sampling parameters, at the edge), off the
   event loop: a schema or a tool list makes this grow with the body;
2. resolve the model to its engine, and check that the key may use it;
3. admit it before any work: the engine's waiting queue, then a lower bound of its tokens against the
   key's tokens per minute (each prompt's `floor`, computed without templating or tokenizing);
4. tokenize its prompts off the event loop (templates, files, truncation: server/services/prompts.py), and
   prepare their images (a vision model's processor);
5. its sampling parameters for each prompt, checked against the engine (context length, vocabulary, a
   grammar it cannot enforce), off the event loop: checking a schema compiles it (issue #35);
6. reserve its exact tokens (the same reservation, resized);
7. let the engine prepare what the request needs before it queues (its grammar, compiled off the loop).

Every CPU job here runs on the bounded CPU pool within its owner's share (server/executors.py).
A service supplies its request and its prompts, calls `start`, and formats what the `Generation` yields
(server/services/streaming.py), which settles the tokens used however it ends. The pipeline never calls
back into a service: a request's path goes route -> service -> pipeline -> prompts, then service ->
generation -> engine."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from engines.protocol import (
    ContextLengthExceeded,
    EngineOverloaded,
    GenerationEngine,
    InvalidGenerationRequest,
    SamplingParams,
)
from engines.registry import (
    EngineRegistry,
    ModelCapacityError,
    ModelLoadFailed,
    UnknownModel,
    engine_kind,
)
from server.context import RequestContext
from server.errors import (
    ContextLengthExceededError,
    EngineBusyError,
    InvalidRequestError,
    ModelNotFoundError,
    ServiceUnavailableError,
)
from server.executors import run_cpu
from server.services.prompts import Prompt
from server.services.streaming import Generation, Observers
from server.tool_calls import ToolPlan, check_tool_schemas


async def resolve_engine(registry: EngineRegistry, model: str, kind: type, refusal: str, context: RequestContext):
    """The engine behind a model name or alias, loaded if it was not (the request waits for the load) and leased
    to the request until its response is done: 404 if none, 400 if it is not of the kind the route needs, 403 if
    the key may not use it (all before any load), 503 with Retry-After when the memory budget has no room for it
    now or it failed to load."""
    try:
        config = registry.config_of(model)
    except UnknownModel:
        raise ModelNotFoundError(model) from None
    if not issubclass(engine_kind(config), kind):
        task = config.task.value
        article = "an" if task[0] in "aeiou" else "a"
        raise InvalidRequestError(f"The model `{model}` is {article} {task} model and {refusal}",
                                  param="model", code="model_not_supported")
    context.check_model(model, config.names)
    try:
        return await registry.acquire(model)
    except ModelCapacityError as exc:
        raise ServiceUnavailableError(f"The model `{config.id}` is not loaded and there is no room to load it now "
                                      f"({exc}). Please retry shortly.", code="model_capacity",
                                      retry_after_s=exc.retry_after_s) from None
    except ModelLoadFailed as exc:
        raise ServiceUnavailableError(f"The model `{config.id}` failed to load ({exc}).", code="model_load_failed",
                                      retry_after_s=30) from None


def check_queue(engine: GenerationEngine, num_sequences: int) -> None:
    """Refuse with 429 and Retry-After when the engine's waiting queue is full, instead of queueing on."""
    try:
        engine.check_capacity(num_sequences)
    except EngineOverloaded as exc:
        raise EngineBusyError(f"The model `{engine.config.id}` is busy ({exc}). Please retry shortly.") from None


def request_error(exc: InvalidGenerationRequest, prompt_param: str | None = None) -> InvalidRequestError:
    """An engine's refusal of a request, as the OpenAI error a client gets; a prompt too long for the
    context is blamed on the route's prompt field."""
    if isinstance(exc, ContextLengthExceeded) or exc.code == "context_length_exceeded":
        return ContextLengthExceededError(str(exc), param=exc.param or prompt_param)
    return InvalidRequestError(str(exc), param=exc.param, code=exc.code or "invalid_value")


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


async def callable_tools(req) -> ToolPlan | None:
    """The request's tools when they may be called (checked: 400 naming what is wrong), each tool's schema
    compiled alone first so that a refusal names the tool; None when there are none to call. Off the loop:
    all of it grows with the tools' schemas."""
    return await off_loop(_callable_tools, req)


def _callable_tools(req) -> ToolPlan | None:
    plan = req.tool_plan()
    if plan is None or not plan.active:
        return None
    check_tool_schemas(plan.tools)
    if plan.answer is not None:
        plan.answer.check()  # alone too, so that a refusal names the response format, not the tools
    return plan


def _edge(req) -> SamplingParams:
    """Fields we cannot honour, and every sampling bound (blocking: a schema is serialized here)."""
    req.reject_unsupported()
    return sampling(req, req.requested_max_tokens or 1)


def sampling(req, max_tokens: int) -> SamplingParams:
    """The request's sampling parameters (`to_sampling_params` on the request models), bounds checked."""
    try:
        return req.to_sampling_params(max_tokens)
    except InvalidGenerationRequest as exc:
        raise request_error(exc) from None


class GenerationPipeline:
    def __init__(self, registry: EngineRegistry, route: str, prompt_param: str, observers: Observers | None = None):
        self.registry = registry
        self.route = route  # for the refusal of a model of another kind
        self.prompt_param = prompt_param  # the request field a prompt over the context is blamed on
        self.observers = observers

    async def start(self, req, prompts: list[Prompt], context: RequestContext, request_id: str) -> Generation:
        edge = await off_loop(_edge, req)  # every sampling bound, before any work
        requested, choices = req.requested_max_tokens, edge.n
        engine = await resolve_engine(self.registry, req.model, GenerationEngine,
                                      f"cannot serve {self.route}; use /v1/embeddings for it.", context)
        default = engine.config.default_max_tokens if requested is None else None
        sequences = len(prompts) * choices
        check_queue(engine, sequences)
        try:  # a prompt whose floor is already over the context (its file parts) is refused here
            floor = sum(p.floor(engine) for p in prompts)
        except InvalidGenerationRequest as exc:
            raise request_error(exc, self.prompt_param) from None
        await context.reserve_tokens(floor + sequences * (requested or 1))
        ids = [await off_loop(prompt.token_ids, engine) for prompt in prompts]
        # a chat prompt's images, prepared by the engine as token_ids ran (its processor: pixels, placeholders)
        images = [prompt.images() for prompt in prompts]
        params = await off_loop(self._params, edge, requested, engine, ids, default)
        generation = Generation(engine, request_id, ids, params, context.settle, self.observers, context.priority,
                                images=images if any(i is not None for i in images) else None)
        # Without max_tokens a choice may run to the end of the context, but it reserves only the server's
        # completion reserve (--completion-reserve) and is charged its real use when it ends.
        cap = context.completion_reserve if requested is None else None
        await context.reserve_tokens(generation.prompt_tokens + sum(
            p.n * (min(p.max_tokens, cap) if cap else p.max_tokens) for p in generation.params))
        try:
            await engine.prepare(generation.params[0])  # e.g. its grammar, compiled off the loop
        except InvalidGenerationRequest as exc:
            raise request_error(exc) from None
        return generation

    def _params(self, edge: SamplingParams, requested: int | None, engine: GenerationEngine,
                ids: list[list[int]], default: int | None = None) -> list[SamplingParams]:
        """The request's sampling parameters for each prompt, checked by the engine (blocking: the first check
        of a schema compiles it); no max_tokens means the model's `default_max_tokens`, within the context
        the prompt leaves, or without one, 'up to the context'."""
        every = []
        for prompt_ids in ids:
            room = max(engine.max_model_len - len(prompt_ids), 1)
            params = dataclasses.replace(
                edge, max_tokens=requested if requested is not None else min(default or room, room))
            try:
                engine.check_request(len(prompt_ids), params)
            except InvalidGenerationRequest as exc:
                raise request_error(exc, self.prompt_param) from None
            every.append(params)
        return every
