"""Driving an engine for a request: a `Generation` runs its prompts' events (one prompt or several,
merged), with the engine's failures mapped to OpenAI errors, the metrics and the shutdown drain told,
and the tokens it used settled however it ends; or collects the choices of a whole (non-streamed) answer."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from engines.protocol import (
    INTERACTIVE,
    EngineError,
    EngineUnavailable,
    GenerationEngine,
    GenerationEvent,
    GenerationRequest,
    SamplingParams,
    TokenLogprobs,
)
from server.errors import InternalServerError, ServiceUnavailableError
from server.services.formats import openai_finish_reason

log = logging.getLogger("ozwell.server")


class GenerationMetrics(Protocol):
    """What the metrics (server/metrics.py) offer a generation: a trace of its events."""

    def trace(self, model: str, prompt_tokens: int) -> Any: ...


class DrainWatch(Protocol):
    """What the life cycle (server/lifecycle.py) needs of a generation: to know it runs, and whether the
    shutdown drain cut it."""

    def register(self, engine: GenerationEngine, request_id: str) -> Any: ...

    def unregister(self, registration: Any) -> None: ...

    def was_cut(self, request_id: str) -> bool: ...


@dataclass
class Observers:
    """What watches generations besides the client: metrics, and the life cycle's drain."""

    metrics: GenerationMetrics | None = None
    lifecycle: DrainWatch | None = None


def shutting_down_error() -> ServiceUnavailableError:
    return ServiceUnavailableError("The server is shutting down and stopped this request before it finished. "
                                   "Please retry.", code="server_shutting_down")


async def stream_events(
    engine: GenerationEngine, request_id: str, prompt_ids: list[int], params: SamplingParams,
    observers: Observers | None = None, priority: int = INTERACTIVE, images: object = None,
) -> AsyncIterator[GenerationEvent]:
    """The engine's events. An engine fault becomes a 500-shaped error, a dead engine a 503, and a
    request cut by the shutdown drain a 503 `server_shutting_down`; leaving early aborts."""
    observers = observers or Observers()
    lifecycle = observers.lifecycle
    trace = observers.metrics.trace(engine.config.id, len(prompt_ids)) if observers.metrics else None
    registration = lifecycle.register(engine, request_id) if lifecycle else None
    fault = False
    try:
        async for event in engine.generate(GenerationRequest(request_id, prompt_ids, params, priority, images)):
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


async def merged_events(engine: GenerationEngine, request_id: str, prompts: list[list[int]],
                        params: list[SamplingParams], observers: Observers | None = None,
                        priority: int = INTERACTIVE, images: list | None = None
                        ) -> AsyncIterator[tuple[int, GenerationEvent]]:
    """Events of every prompt as they come, with the choice index OpenAI gives them (prompt i, choice j ->
    i * n + j). One prompt runs under `request_id` itself; several under `request_id-i`. `images`: each
    prompt's prepared images (engines/protocol.py), when any has some."""
    images = images or [None] * len(prompts)
    if len(prompts) == 1:
        async for event in stream_events(engine, request_id, prompts[0], params[0], observers, priority, images[0]):
            yield event.index, event
        return
    queue: asyncio.Queue = asyncio.Queue()
    finished = object()

    async def pump(i: int) -> None:
        try:
            async for event in stream_events(engine, f"{request_id}-{i}", prompts[i], params[i], observers,
                                             priority, images[i]):
                await queue.put((i * params[i].n + event.index, event))
            await queue.put(finished)
        except BaseException as exc:
            await queue.put(exc)
            raise

    tasks = [asyncio.create_task(pump(i)) for i in range(len(prompts))]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is finished:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass
class ChoiceText:
    """One choice of a whole answer, as its events add up."""

    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprobs | None] | None = None  # when asked (legacy completions' echo)


@dataclass
class ChoiceCollector:
    """The choices of a non-streamed answer, gathered from the engine's events."""

    choices: dict[int, ChoiceText] = field(default_factory=dict)
    prompt_tokens: int = 0

    def add(self, event: GenerationEvent, index: int) -> None:
        choice = self.choices.setdefault(index, ChoiceText())
        choice.text += event.text
        choice.completion_tokens = event.completion_tokens
        if event.logprobs is not None:
            choice.token_ids += event.token_ids
            choice.logprobs += event.logprobs
        if event.prompt_logprobs is not None:
            choice.prompt_logprobs = event.prompt_logprobs
        if event.finish_reason:
            choice.finish_reason = openai_finish_reason(event.finish_reason)

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.choices.values())

    def sorted(self) -> list[tuple[int, ChoiceText]]:
        return sorted(self.choices.items())


@dataclass
class Generation:
    """A request admitted and reserved by the pipeline: its prompts' token ids and sampling parameters.
    `running()` gives its events; leaving it (done, failed, or the client gone) aborts what still runs
    and settles the tokens used."""

    engine: GenerationEngine
    request_id: str
    prompts: list[list[int]]
    params: list[SamplingParams]
    settle: Callable[[int, int], Awaitable[None]]
    observers: Observers | None = None
    priority: int = INTERACTIVE  # BATCH for the Batch API's requests (engines/protocol.py)
    created: int = field(default_factory=lambda: int(time.time()))
    completion_tokens: dict[int, int] = field(default_factory=dict)  # choice index -> tokens so far
    # Legacy completions' echo with max_tokens 0: the one token each choice runs is neither returned nor charged.
    completion_dropped: bool = False
    images: list | None = None  # each prompt's prepared images (a VLM's chat request), or None

    @property
    def model(self) -> str:
        return self.engine.config.id

    @property
    def prompt_tokens(self) -> int:
        return sum(len(ids) for ids in self.prompts)

    @property
    def used_tokens(self) -> int:
        return sum(self.completion_tokens.values())

    async def _events(self) -> AsyncIterator[tuple[int, GenerationEvent]]:
        async for index, event in merged_events(self.engine, self.request_id, self.prompts, self.params,
                                                self.observers, self.priority, self.images):
            self.completion_tokens[index] = 0 if self.completion_dropped else event.completion_tokens
            yield index, event

    @asynccontextmanager
    async def running(self):
        events = self._events()
        try:
            yield events
        finally:
            await events.aclose()
            await self.settle(self.prompt_tokens, self.used_tokens)

    async def collect(self) -> ChoiceCollector:
        """A whole (non-streamed) answer: every choice of every prompt."""
        collected = ChoiceCollector(prompt_tokens=self.prompt_tokens)
        async with self.running() as events:
            async for index, event in events:
                collected.add(event, index)
        return collected
