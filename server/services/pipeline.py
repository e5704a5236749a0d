"""The one request pipeline of the generation services (chat, completions, responses).

`GenerationPipeline.create` runs the sequence they share, once:

1. check the request (fields we cannot honour yet, and its sampling parameters, at the edge);
2. resolve the model to its engine, and check that the key may use it;
3. admit it before any work: the engine's waiting queue, then a lower bound of its tokens against the
   key's tokens per minute (computed without templating or tokenizing);
4. build its prompt(s) off the event loop (`prepare`: templates, files, truncation, tokenizing);
5. its sampling parameters for each prompt, checked against the engine (context length, vocabulary);
6. reserve its exact tokens (the same reservation, resized);
7. answer (`respond`): a stream, or a whole body once the engine is done, settling the tokens it used.

A service supplies only what differs: steps 3's bound, 4 and 7."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from engines.protocol import (
    ContextLengthExceeded,
    EngineOverloaded,
    GenerationEngine,
    InvalidGenerationRequest,
    SamplingParams,
)
from engines.registry import EngineRegistry, UnknownModel
from server.context import RequestContext
from server.errors import (
    ContextLengthExceededError,
    EngineBusyError,
    InvalidRequestError,
    ModelNotFoundError,
)
from server.executors import run_cpu
from server.services.files import FileService
from server.services.streaming import ChoiceCollector, Observers, merged_events

# The chat templates we load know system, user and assistant; a developer message is the newer name for
# a system message. Chat and Responses both map their roles through this.
TEMPLATE_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# A text file larger than this cannot fit any context we serve; refuse it before reading it.
MAX_PROMPT_FILE_BYTES = 4 * 1024 * 1024
FileText = Callable[[str], str]  # file id -> its UTF-8 text (raises OpenAIError)


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


def check_queue(engine: GenerationEngine, num_sequences: int) -> None:
    """Refuse with 429 and Retry-After when the engine's waiting queue is full, instead of queueing on."""
    try:
        engine.check_capacity(num_sequences)
    except EngineOverloaded as exc:
        raise EngineBusyError(f"The model `{engine.config.id}` is busy ({exc}). Please retry shortly.") from None


def prompt_floor(engine: GenerationEngine, prompts: list[str | list[int]]) -> int:
    """A lower bound on the prompt tokens, read without templating or tokenizing: what a request reserves
    of its key's tokens per minute before that work (see RequestContext.reserve_tokens). Each prompt counts
    at most the context, since a longer one is refused or truncated."""
    cap = engine.max_model_len
    return sum(min(len(p) if isinstance(p, list) else engine.min_prompt_tokens(p), cap) for p in prompts)


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


@dataclass
class Prepared:
    """A request made ready for the engine: its prompts' token ids, their sampling parameters (filled by
    the pipeline), and whatever else the service keeps for its answer."""

    prompts: list[list[int]]
    params: list[SamplingParams] = field(default_factory=list)
    state: Any = None

    @property
    def prompt_tokens(self) -> int:
        return sum(len(ids) for ids in self.prompts)

    @property
    def reserved_tokens(self) -> int:
        return self.prompt_tokens + sum(p.max_tokens * p.n for p in self.params)


class GenerationPipeline(abc.ABC):
    route: str  # for the refusal of a model of another kind
    prompt_param: str  # the request field a prompt over the context is blamed on

    def __init__(self, registry: EngineRegistry, observers: Observers | None = None,
                 files: FileService | None = None):
        self.registry = registry
        self.observers = observers
        self.files = files

    def file_reader(self, owner: str) -> FileText | None:
        """What a prompt's file parts are read with: the owner's uploaded text files (None without a store)."""
        if self.files is None:
            return None
        return lambda file_id: self.files.read_text(owner, file_id, MAX_PROMPT_FILE_BYTES)

    async def create(self, req, context: RequestContext) -> dict | AsyncIterator[str]:
        req.reject_unsupported()
        self._sampling(req, req.requested_max_tokens or 1)  # every sampling bound, before any work
        engine = resolve_engine(self.registry, req.model, GenerationEngine,
                                f"cannot serve {self.route}; use /v1/embeddings for it.")
        context.check_model(req.model, engine.config.names)
        sequences, floor = self.admission(req, engine)
        check_queue(engine, sequences)
        await context.reserve_tokens(floor)
        prepared = await self.prepare(req, engine, context)
        prepared.params = [self.sampling_params(req, engine, ids) for ids in prepared.prompts]
        await context.reserve_tokens(prepared.reserved_tokens)
        return await self.respond(req, context, engine, prepared)

    def _sampling(self, req, max_tokens: int) -> SamplingParams:
        try:
            return req.to_sampling_params(max_tokens)
        except InvalidGenerationRequest as exc:
            raise request_error(exc) from None

    def sampling_params(self, req, engine: GenerationEngine, prompt_ids: list[int]) -> SamplingParams:
        """The request's sampling parameters for one prompt; no max_tokens means 'up to the context'."""
        requested = req.requested_max_tokens
        params = self._sampling(req, requested if requested is not None else
                                max(engine.max_model_len - len(prompt_ids), 1))
        try:
            engine.check_request(len(prompt_ids), params)
        except InvalidGenerationRequest as exc:
            raise request_error(exc, self.prompt_param) from None
        return params

    async def collect(self, engine: GenerationEngine, request_id: str, prepared: Prepared,
                      context: RequestContext) -> ChoiceCollector:
        """A whole (non-streamed) answer: every choice of every prompt, then the tokens it used settled."""
        collected = ChoiceCollector(prompt_tokens=prepared.prompt_tokens)
        try:
            async for index, event in merged_events(engine, request_id, prepared.prompts, prepared.params,
                                                    self.observers):
                collected.add(event, index)
        finally:
            await context.settle(prepared.prompt_tokens, collected.completion_tokens)
        return collected

    @abc.abstractmethod
    def admission(self, req, engine: GenerationEngine) -> tuple[int, int]:
        """(sequences it will queue, a lower bound of its tokens), computed without templating or tokenizing."""

    @abc.abstractmethod
    async def prepare(self, req, engine: GenerationEngine, context: RequestContext) -> Prepared:
        """Its prompts' token ids (off the event loop) and what the answer needs besides."""

    @abc.abstractmethod
    async def respond(self, req, context: RequestContext, engine: GenerationEngine,
                      prepared: Prepared) -> dict | AsyncIterator[str]:
        """A stream of SSE lines, or the whole body; either settles the tokens it used."""
