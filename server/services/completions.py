"""POST /v1/completions, the legacy prompt API: each prompt x n choices, streamed or whole."""

from __future__ import annotations

from collections.abc import AsyncIterator

from engines.registry import EngineRegistry
from server.context import RequestContext
from server.protocol import CompletionRequest
from server.response_models import Completion, CompletionChoice, Usage
from server.services.formats import legacy_logprobs, new_id, openai_finish_reason, sse, sse_stream
from server.services.pipeline import GenerationPipeline, off_loop
from server.services.prompts import TextPrompt, TokenPrompt
from server.services.streaming import Generation, Observers


class CompletionService:
    def __init__(self, registry: EngineRegistry, observers: Observers | None = None):
        self.pipeline = GenerationPipeline(registry, "/v1/completions", "prompt", observers)

    async def create(self, req: CompletionRequest, context: RequestContext) -> dict | AsyncIterator[str]:
        prompts = await off_loop(_prompts, req)  # (100,000 prompts, or as many token ids, take tens of ms)
        generation = await self.pipeline.start(req, prompts, context, new_id("cmpl"))
        if req.stream:
            return sse_stream(self._chunks(generation, req))
        collected = await generation.collect()
        return Completion(
            id=generation.request_id, created=generation.created, model=generation.model,
            choices=[CompletionChoice(index=index, text=c.text, finish_reason=c.finish_reason,
                                      logprobs=(legacy_logprobs(generation.engine, c.token_ids, c.logprobs)
                                                if req.logprobs is not None else None))
                     for index, c in collected.sorted()],
            usage=Usage.of(collected.prompt_tokens, collected.completion_tokens)).dump()

    async def _chunks(self, generation: Generation, req: CompletionRequest) -> AsyncIterator[str]:
        def chunk(choices: list[dict], usage: Usage | None = None) -> str:
            # Unlike chat chunks, the legacy schema has no null usage: only the last chunk carries it.
            return sse(Completion.model_construct(
                id=generation.request_id, object="text_completion", created=generation.created,
                model=generation.model, choices=[CompletionChoice.model_construct(**choice) for choice in choices],
                usage=usage).dump())

        offsets: dict[int, int] = {}
        async with generation.running() as events:
            async for index, event in events:
                reason = openai_finish_reason(event.finish_reason) if event.finish_reason else None
                logprobs = None
                if req.logprobs is not None and event.logprobs:
                    logprobs = legacy_logprobs(generation.engine, event.token_ids, event.logprobs,
                                               offsets.get(index, 0))
                    offsets[index] = offsets.get(index, 0) + sum(len(t) for t in logprobs["tokens"])
                if event.text or reason or logprobs:
                    yield chunk([{"index": index, "text": event.text, "finish_reason": reason,
                                  "logprobs": logprobs}])
        if req.include_usage:
            yield chunk([], usage=Usage.of(generation.prompt_tokens, generation.used_tokens))


def _prompts(req: CompletionRequest) -> list[TextPrompt | TokenPrompt]:
    return [TextPrompt(p) if isinstance(p, str) else TokenPrompt(p, f"prompt[{i}]")
            for i, p in enumerate(req.prompts())]
