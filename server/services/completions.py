"""POST /v1/completions, the legacy prompt API: each prompt x n choices, streamed or whole.

`echo` puts each prompt before each of its choices' text (streamed: in the choice's first chunk), the
prompt's text as sent, or a token-id prompt decoded. With `logprobs`, the prompt's tokens come first in the
logprobs too, as the engine scored them during prefill (the first with null logprob and top_logprobs), and
text_offset runs on across prompt and completion, as vLLM counts it (each token's text, from 0). With
`max_tokens: 0` a choice is its prompt alone, finish_reason "length" and no completion tokens charged."""

from __future__ import annotations

from collections.abc import AsyncIterator

from engines.protocol import GenerationEngine, TokenLogprobs
from engines.registry import EngineRegistry
from server.context import RequestContext
from server.protocol import CompletionRequest
from server.response_models import Completion, CompletionChoice, Usage
from server.services.formats import (
    join_legacy_logprobs,
    legacy_logprobs,
    new_id,
    openai_finish_reason,
    sse,
    sse_stream,
)
from server.services.pipeline import GenerationPipeline, off_loop
from server.services.prompts import TextPrompt, TokenPrompt
from server.services.streaming import ChoiceText, Generation, Observers


class Echo:
    """What a choice shows before its completion: its prompt's text, and its prompt's logprobs when asked."""

    def __init__(self, engine: GenerationEngine, texts: list[str], prompts: list[list[int]], req: CompletionRequest):
        self.engine, self.texts, self.prompts, self.req = engine, texts, prompts, req
        self._offsets: dict[int, int] = {}

    def text(self, prompt: int, completion: str) -> str:
        return self.texts[prompt] + ("" if self.req.prompt_only else completion)

    def logprobs(self, prompt: int, scored: list[TokenLogprobs | None] | None, tail: dict | None) -> dict:
        """The prompt's logprobs, then the completion's (`tail`) unless it is dropped (blocking: a token's text
        is decoded per prompt token and alternative)."""
        ids = self.prompts[prompt]
        head = legacy_logprobs(self.engine, ids, scored or [None] * len(ids))  # (none: the choice was cut first)
        if tail is None or self.req.prompt_only:
            return head
        return join_legacy_logprobs(head, tail)

    def offset(self, prompt: int) -> int:
        """Where the completion's text_offset starts: after the prompt's tokens (blocking, once per prompt)."""
        if prompt not in self._offsets:
            self._offsets[prompt] = sum(len(self.engine.token_text(t)) for t in self.prompts[prompt])
        return self._offsets[prompt]


class CompletionService:
    def __init__(self, registry: EngineRegistry, observers: Observers | None = None):
        self.pipeline = GenerationPipeline(registry, "/v1/completions", "prompt", observers)

    async def create(self, req: CompletionRequest, context: RequestContext) -> dict | AsyncIterator[str]:
        prompts = await off_loop(_prompts, req)  # (100,000 prompts, or as many token ids, take tens of ms)
        generation = await self.pipeline.start(req, prompts, context, new_id("cmpl"))
        generation.completion_dropped = req.prompt_only
        echo = None
        if req.echo:
            texts = await off_loop(_prompt_texts, generation.engine, prompts)
            echo = Echo(generation.engine, texts, generation.prompts, req)
        if req.stream:
            return sse_stream(self._chunks(generation, req, echo))
        collected = await generation.collect()
        choices = (await off_loop(_choices, generation, req, echo, collected.sorted()) if echo is not None  # (long)
                   else _choices(generation, req, echo, collected.sorted()))
        completion_tokens = 0 if req.prompt_only else collected.completion_tokens
        return Completion(id=generation.request_id, created=generation.created, model=generation.model,
                          choices=choices, usage=Usage.of(collected.prompt_tokens, completion_tokens)).dump()

    async def _chunks(self, generation: Generation, req: CompletionRequest, echo: Echo | None) -> AsyncIterator[str]:
        def chunk(choices: list[dict], usage: Usage | None = None) -> str:
            # Unlike chat chunks, the legacy schema has no null usage: only the last chunk carries it.
            return sse(Completion.model_construct(
                id=generation.request_id, object="text_completion", created=generation.created,
                model=generation.model, choices=[CompletionChoice.model_construct(**choice) for choice in choices],
                usage=usage).dump())

        offsets: dict[int, int] = {}
        n = generation.params[0].n
        async with generation.running() as events:
            async for index, event in events:
                first = index not in offsets
                if first:
                    offsets[index] = (await off_loop(echo.offset, index // n)
                                      if echo is not None and req.logprobs is not None else 0)
                reason = openai_finish_reason(event.finish_reason) if event.finish_reason else None
                text, logprobs = event.text, None
                if req.logprobs is not None and event.logprobs:
                    logprobs = legacy_logprobs(generation.engine, event.token_ids, event.logprobs, offsets[index])
                    offsets[index] += sum(len(t) for t in logprobs["tokens"])
                if echo is not None:
                    if req.prompt_only:
                        text, logprobs, reason = "", None, "length" if reason else None
                    if first:
                        text = echo.text(index // n, text)
                        if req.logprobs is not None:
                            logprobs = await off_loop(echo.logprobs, index // n, event.prompt_logprobs, logprobs)
                if text or reason or logprobs:
                    yield chunk([{"index": index, "text": text, "finish_reason": reason, "logprobs": logprobs}])
        if req.include_usage:
            yield chunk([], usage=Usage.of(generation.prompt_tokens, generation.used_tokens))


def _choices(generation: Generation, req: CompletionRequest, echo: Echo | None,
             collected: list[tuple[int, ChoiceText]]) -> list[CompletionChoice]:
    """The choices of a whole answer (blocking: logprobs decode each token's text)."""
    choices = []
    for index, c in collected:
        prompt = index // generation.params[0].n
        offset = echo.offset(prompt) if echo is not None and req.logprobs is not None else 0
        logprobs = (legacy_logprobs(generation.engine, c.token_ids, c.logprobs, offset)
                    if req.logprobs is not None else None)
        if echo is None:
            choices.append(CompletionChoice(index=index, text=c.text, finish_reason=c.finish_reason,
                                            logprobs=logprobs))
            continue
        choices.append(CompletionChoice(
            index=index, text=echo.text(prompt, c.text), finish_reason="length" if req.prompt_only else c.finish_reason,
            logprobs=echo.logprobs(prompt, c.prompt_logprobs, logprobs) if req.logprobs is not None else None))
    return choices


def _prompts(req: CompletionRequest) -> list[TextPrompt | TokenPrompt]:
    return [TextPrompt(p) if isinstance(p, str) else TokenPrompt(p, f"prompt[{i}]")
            for i, p in enumerate(req.prompts())]


def _prompt_texts(engine: GenerationEngine, prompts: list[TextPrompt | TokenPrompt]) -> list[str]:
    """Each prompt as echoed: a text as sent, token ids decoded (blocking)."""
    return [p.text if isinstance(p, TextPrompt) else engine.decode(p.ids) for p in prompts]
