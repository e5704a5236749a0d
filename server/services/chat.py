"""POST /v1/chat/completions: messages -> the pipeline -> engine events -> OpenAI body or SSE chunks."""

from __future__ import annotations

import asyncio
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
from server.services.pipeline import GenerationPipeline, callable_tools
from server.services.prompt_files import FileStore, PromptFiles, chat_file_parts
from server.services.prompts import ChatPrompt
from server.services.streaming import Generation, Observers
from server.tool_calls import StreamParser
from server.tool_calls import parse as parse_tool_calls


class ChatService:
    def __init__(self, registry: EngineRegistry, observers: Observers | None = None, files: FileStore | None = None):
        self.pipeline = GenerationPipeline(registry, "/v1/chat/completions", "messages", observers)
        self.files = files

    async def create(self, req: ChatCompletionRequest, context: RequestContext) -> dict | AsyncIterator[str]:
        tools = await callable_tools(req)
        files = PromptFiles(self.files, context.owner, lambda: chat_file_parts(req.messages))
        await asyncio.to_thread(files.measure)  # their records' sizes, so that admission counts them
        prompt = ChatPrompt(req.messages, files, tools)
        generation = await self.pipeline.start(req, [prompt], context, new_id("chatcmpl"))
        if req.stream:
            forced = tools is not None and tools.choice != "auto"  # the reply is calls from the first token
            return sse_stream(self._chunks(generation, req.include_usage, tools is not None, forced))
        params = generation.params[0]
        collected = await generation.collect()
        choices = []
        for index, choice in collected.sorted():
            content, calls = parse_tool_calls(choice.text) if tools is not None else (choice.text, [])
            reason = "tool_calls" if calls and choice.finish_reason == "stop" else choice.finish_reason
            choices.append(ChatChoice(index=index, message=AssistantMessage(content=content, tool_calls=calls or None),
                                      finish_reason=reason,
                                      logprobs=_logprobs(generation, params, choice.token_ids, choice.logprobs)))
        return ChatCompletion(id=generation.request_id, created=generation.created, model=generation.model,
                              choices=choices,
                              usage=Usage.of(collected.prompt_tokens, collected.completion_tokens)).dump()

    async def _chunks(self, generation: Generation, include_usage: bool, tools: bool,
                      forced: bool = False) -> AsyncIterator[str]:
        params = generation.params[0]
        parsers = {index: StreamParser() for index in range(params.n)} if tools else {}

        def chunk(choices: list[dict], usage: Usage | None = None) -> str:
            return sse(ChatCompletionChunk.model_construct(
                id=generation.request_id, object="chat.completion.chunk", created=generation.created,
                model=generation.model, choices=[ChunkChoice.model_construct(**choice) for choice in choices],
                usage=usage).dump(include_usage))

        for index in range(params.n):
            # OpenAI opens a reply that can only be calls with content null (an empty string would be a text part)
            yield chunk([{"index": index, "delta": {"role": "assistant", "content": None if forced else ""},
                          "finish_reason": None, "logprobs": None}])
        async with generation.running() as events:
            async for index, event in events:
                logprobs = _logprobs(generation, params, event.token_ids, event.logprobs) if event.logprobs else None
                parser = parsers.get(index)
                if parser is not None:  # text and tool-call deltas, read out of the text as it comes
                    deltas = parser.feed(event.text, final=bool(event.finish_reason))
                else:
                    deltas = [{"content": event.text}] if event.text else []
                if not deltas and logprobs and not event.finish_reason:
                    deltas = [{"content": ""}]  # (a token whose text is still held back sends its logprobs)
                for delta in deltas:
                    yield chunk([{"index": index, "delta": delta, "finish_reason": None, "logprobs": logprobs}])
                    logprobs = None
                if event.finish_reason:
                    reason = openai_finish_reason(event.finish_reason)
                    if parser is not None and parser.called and reason == "stop":
                        reason = "tool_calls"
                    yield chunk([{"index": index, "delta": {}, "finish_reason": reason, "logprobs": logprobs}])
        if include_usage:
            yield chunk([], usage=Usage.of(generation.prompt_tokens, generation.used_tokens))


def _logprobs(generation: Generation, params: SamplingParams, token_ids, entries) -> dict | None:
    return chat_logprobs(generation.engine, token_ids, entries) if params.logprobs is not None else None
