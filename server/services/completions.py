"""POST /v1/completions, the legacy prompt API: each prompt x n choices, streamed or whole."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from engines.protocol import GenerationEngine
from server.context import RequestContext
from server.errors import InvalidRequestError
from server.protocol import CompletionRequest
from server.response_models import Completion, CompletionChoice, Usage
from server.services.formats import (
    SSE_DONE,
    legacy_logprobs,
    new_id,
    openai_finish_reason,
    sse,
    sse_error,
)
from server.services.pipeline import (
    GenerationPipeline,
    Prepared,
    off_loop,
    prompt_floor,
)
from server.services.streaming import merged_events


class CompletionService(GenerationPipeline):
    route = "/v1/completions"
    prompt_param = "prompt"

    def admission(self, req: CompletionRequest, engine: GenerationEngine) -> tuple[int, int]:
        prompts, n = req.prompts(), req.n or 1
        return len(prompts) * n, prompt_floor(engine, prompts) + len(prompts) * (req.requested_max_tokens or 1) * n

    async def prepare(self, req: CompletionRequest, engine: GenerationEngine, context: RequestContext) -> Prepared:
        return Prepared([await self._prompt_ids(engine, p, i) for i, p in enumerate(req.prompts())])

    async def _prompt_ids(self, engine: GenerationEngine, prompt: str | list[int], i: int) -> list[int]:
        if isinstance(prompt, str):
            return await off_loop(engine.encode_text, prompt)
        vocab = engine.vocab_size()
        if any(t < 0 or t >= vocab for t in prompt):
            raise InvalidRequestError(f"Token ids in prompt[{i}] must be between 0 and {vocab - 1}.",
                                      param="prompt", code="invalid_value")
        return list(prompt)

    async def respond(self, req: CompletionRequest, context: RequestContext, engine: GenerationEngine,
                      prepared: Prepared) -> dict | AsyncIterator[str]:
        completion_id = new_id("cmpl")
        created = int(time.time())
        if req.stream:
            return self._stream(req, context, engine, completion_id, created, prepared)
        collected = await self.collect(engine, completion_id, prepared, context)
        return Completion(
            id=completion_id, created=created, model=engine.config.id,
            choices=[CompletionChoice(index=index, text=c.text, finish_reason=c.finish_reason,
                                      logprobs=(legacy_logprobs(engine, c.token_ids, c.logprobs)
                                                if req.logprobs is not None else None))
                     for index, c in collected.sorted()],
            usage=Usage.of(collected.prompt_tokens, collected.completion_tokens)).dump()

    async def _stream(self, req, context, engine, completion_id, created, prepared: Prepared) -> AsyncIterator[str]:
        include_usage = req.include_usage
        completion_tokens: dict[int, int] = {}

        def chunk(choices: list[dict], usage: Usage | None = None) -> str:
            # Unlike chat chunks, the legacy schema has no null usage: only the last chunk carries it.
            return sse(Completion.model_construct(
                id=completion_id, object="text_completion", created=created, model=engine.config.id,
                choices=[CompletionChoice.model_construct(**choice) for choice in choices], usage=usage).dump())

        offsets: dict[int, int] = {}
        try:
            async for index, event in merged_events(engine, completion_id, prepared.prompts, prepared.params,
                                                    self.observers):
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
                yield chunk([], usage=Usage.of(prepared.prompt_tokens, sum(completion_tokens.values())))
        except Exception as exc:  # noqa: BLE001 - the stream has started; report in-band
            yield sse_error(exc)
        finally:
            await context.settle(prepared.prompt_tokens, sum(completion_tokens.values()))
        yield SSE_DONE
