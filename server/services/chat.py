"""POST /v1/chat/completions: messages -> the pipeline -> engine events -> OpenAI body or SSE chunks."""

from __future__ import annotations

from collections.abc import AsyncIterator

from engines.protocol import SamplingParams
from engines.registry import EngineRegistry
from server.context import RequestContext
from server.protocol import ChatCompletionRequest
from server.response_models import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChunkChoice,
    Usage,
)
from server.services.formats import chat_logprobs, new_id, openai_finish_reason, sse, sse_stream
from server.services.pipeline import GenerationPipeline
from server.services.prompts import ChatPrompt, FileStore, file_reader
from server.services.streaming import Generation, Observers


class ChatService:
    def __init__(self, registry: EngineRegistry, observers: Observers | None = None, files: FileStore | None = None):
        self.pipeline = GenerationPipeline(registry, "/v1/chat/completions", "messages", observers)
        self.files = files

    async def create(self, req: ChatCompletionRequest, context: RequestContext) -> dict | AsyncIterator[str]:
        prompt = ChatPrompt(req.messages, file_reader(self.files, context.owner))
        generation = await self.pipeline.start(req, [prompt], context, new_id("chatcmpl"))
        if req.stream:
            return sse_stream(self._chunks(generation, req.include_usage))
        params = generation.params[0]
        collected = await generation.collect()
        return ChatCompletion(
            id=generation.request_id, created=generation.created, model=generation.model,
            choices=[ChatChoice(index=index, message=AssistantMessage(content=choice.text),
                                finish_reason=choice.finish_reason,
                                logprobs=_logprobs(generation, params, choice.token_ids, choice.logprobs))
                     for index, choice in collected.sorted()],
            usage=Usage.of(collected.prompt_tokens, collected.completion_tokens)).model_dump()

    async def _chunks(self, generation: Generation, include_usage: bool) -> AsyncIterator[str]:
        params = generation.params[0]

        def chunk(choices: list[dict], usage: Usage | None = None) -> str:
            return sse(ChatCompletionChunk.model_construct(
                id=generation.request_id, object="chat.completion.chunk", created=generation.created,
                model=generation.model, choices=[ChunkChoice.model_construct(**choice) for choice in choices],
                usage=usage).dump(include_usage))

        for index in range(params.n):
            yield chunk([{"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None,
                          "logprobs": None}])
        async with generation.running() as events:
            async for index, event in events:
                logprobs = _logprobs(generation, params, event.token_ids, event.logprobs) if event.logprobs else None
                if event.text or (logprobs and not event.finish_reason):
                    # (a token whose text is still held back sends its logprobs with empty content)
                    yield chunk([{"index": index, "delta": {"content": event.text}, "finish_reason": None,
                                  "logprobs": logprobs}])
                    logprobs = None
                if event.finish_reason:
                    yield chunk([{"index": index, "delta": {},
                                  "finish_reason": openai_finish_reason(event.finish_reason), "logprobs": logprobs}])
        if include_usage:
            yield chunk([], usage=Usage.of(generation.prompt_tokens, generation.used_tokens))


def _logprobs(generation: Generation, params: SamplingParams, token_ids, entries) -> dict | None:
    return chat_logprobs(generation.engine, token_ids, entries) if params.logprobs is not None else None
