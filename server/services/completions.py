"""POST /v1/completions, the legacy prompt API: each prompt x n choices, streamed or whole."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from engines.protocol import GenerationEngine, GenerationEvent, SamplingParams
from engines.registry import EngineRegistry
from server.context import RequestContext
from server.errors import InvalidRequestError
from server.protocol import CompletionRequest
from server.services.generation import (
    SSE_DONE,
    Collected,
    Observers,
    admit,
    build_sampling_params,
    legacy_logprobs,
    new_id,
    off_loop,
    openai_finish_reason,
    prompt_floor,
    resolve_generation_engine,
    sse,
    sse_error,
    stream_events,
    usage,
)


class CompletionService:
    def __init__(self, registry: EngineRegistry, observers: Observers | None = None):
        self.registry = registry
        self.observers = observers

    async def _prompt_ids(self, engine: GenerationEngine, prompt: str | list[int], i: int) -> list[int]:
        if isinstance(prompt, str):
            return await off_loop(engine.encode_text, prompt)
        vocab = engine.vocab_size()
        if any(t < 0 or t >= vocab for t in prompt):
            raise InvalidRequestError(f"Token ids in prompt[{i}] must be between 0 and {vocab - 1}.",
                                      param="prompt", code="invalid_value")
        return list(prompt)

    async def create(self, req: CompletionRequest, context: RequestContext) -> dict | AsyncIterator[str]:
        req.reject_unsupported()
        engine = resolve_generation_engine(self.registry, req.model, "/v1/completions")
        context.check_model(req.model, engine.config.names)
        raw = req.prompts()
        n = req.n or 1
        # Admission before work: the engine's queue and a lower bound of the tokens, before tokenizing.
        admit(engine, len(raw) * n)
        await context.reserve_tokens(prompt_floor(engine, raw) + len(raw) * (req.max_tokens or 1) * n)
        prompts = [await self._prompt_ids(engine, p, i) for i, p in enumerate(raw)]
        params = [build_sampling_params(req, engine, len(ids), req.max_tokens, "prompt") for ids in prompts]
        prompt_tokens = sum(len(ids) for ids in prompts)
        await context.reserve_tokens(prompt_tokens + sum(p.max_tokens * p.n for p in params))
        completion_id = new_id("cmpl")
        created = int(time.time())
        if req.stream:
            return self._stream(req, context, engine, completion_id, created, prompts, params)
        collected = Collected(prompt_tokens=prompt_tokens)
        try:
            async for index, event in self._merged_events(engine, completion_id, prompts, params):
                collected.add(event, index)
        finally:
            await context.settle(prompt_tokens, collected.completion_tokens)
        return {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": engine.config.id,
            "choices": [
                {"index": index, "text": c.text, "finish_reason": c.finish_reason,
                 "logprobs": legacy_logprobs(engine, c.token_ids, c.logprobs) if req.logprobs is not None else None}
                for index, c in sorted(collected.choices.items())
            ],
            "usage": usage(collected.prompt_tokens, collected.completion_tokens),
        }

    async def _merged_events(
        self, engine: GenerationEngine, completion_id: str, prompts: list[list[int]], params: list[SamplingParams]
    ) -> AsyncIterator[tuple[int, GenerationEvent]]:
        """Events of every prompt as they come, with the choice index OpenAI gives them
        (prompt i, choice j -> i * n + j)."""
        queue: asyncio.Queue = asyncio.Queue()
        finished = object()

        async def pump(i: int) -> None:
            try:
                async for event in stream_events(engine, f"{completion_id}-{i}", prompts[i], params[i],
                                               self.observers):
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

    async def _stream(self, req, context, engine, completion_id, created, prompts, params) -> AsyncIterator[str]:
        include_usage = req.include_usage
        completion_tokens: dict[int, int] = {}

        def chunk(choices: list[dict], **extra) -> str:
            # Unlike chat chunks, the legacy schema has no null usage: only the last chunk carries it.
            return sse({"id": completion_id, "object": "text_completion", "created": created,
                        "model": engine.config.id, "choices": choices, **extra})

        offsets: dict[int, int] = {}
        try:
            async for index, event in self._merged_events(engine, completion_id, prompts, params):
                completion_tokens[index] = event.completion_tokens
                reason = openai_finish_reason(event.finish_reason) if event.finish_reason else None
                logprobs = None
                if req.logprobs is not None and event.logprobs:
                    logprobs = legacy_logprobs(engine, event.token_ids, event.logprobs, offsets.get(index, 0))
                    offsets[index] = offsets.get(index, 0) + sum(len(t) for t in logprobs["tokens"])
                if event.text or reason or logprobs:
                    yield chunk([{"index": index, "text": event.text, "finish_reason": reason,
                                  "logprobs": logprobs}])
            if include_usage:
                yield chunk([], usage=usage(sum(len(p) for p in prompts), sum(completion_tokens.values())))
        except Exception as exc:  # noqa: BLE001 - the stream has started; report in-band
            yield sse_error(exc)
        finally:
            await context.settle(sum(len(p) for p in prompts), sum(completion_tokens.values()))
        yield SSE_DONE
