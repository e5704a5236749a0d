"""POST /v1/chat/completions: messages -> the pipeline -> engine events -> OpenAI body or SSE chunks; with
store=true the finished completion (a stream's assembled body) is kept (server/services/chat_store.py), and
the stored completions' routes read through here."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from engines.protocol import SamplingParams
from engines.registry import EngineRegistry
from server.context import RequestContext
from server.errors import NotFoundError, UnsupportedParameterError
from server.images import ImageLoader, ImagePolicy
from server.protocol import ChatCompletionRequest
from server.response_models import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChunkChoice,
    Usage,
)
from server.services.chat_assembly import StreamedCompletion
from server.services.chat_store import ChatCompletionStore, stored_messages
from server.services.formats import (
    chat_logprobs,
    new_id,
    openai_finish_reason,
    sse,
    sse_stream,
)
from server.services.pipeline import GenerationPipeline, callable_tools, off_loop
from server.services.prompt_files import FileStore, PromptFiles, chat_file_parts
from server.services.prompts import ChatPrompt
from server.services.streaming import Generation, Observers
from server.tool_calls import StreamParser
from server.tool_calls import parse as parse_tool_calls

log = logging.getLogger("ozwell.server")


class ChatService:
    def __init__(self, registry: EngineRegistry, observers: Observers | None = None, files: FileStore | None = None,
                 store: ChatCompletionStore | None = None, images: ImagePolicy | None = None):
        self.pipeline = GenerationPipeline(registry, "/v1/chat/completions", "messages", observers)
        self.files = files
        self.images = images or ImagePolicy()  # the server's image limits (server/images.py)
        self.store = store  # None without a database: store=true is refused

    async def create(self, req: ChatCompletionRequest, context: RequestContext) -> dict | AsyncIterator[str]:
        keep = self._keeper(req, context.owner) if req.store else None
        if keep is not None:
            await off_loop(self.store.check_room, context.owner)  # a full quota refuses before any work
        # image parts' shapes first (cheap): they are read and decoded with the prompt's tokens, once admitted
        loader = ImageLoader(self.images, self.files, context.owner)
        prompt = ChatPrompt(req.messages, None, None, loader)
        tools = await callable_tools(req)
        files = PromptFiles(self.files, context.owner, lambda: chat_file_parts(req.messages))
        await asyncio.to_thread(files.measure)  # their records' sizes, so that admission counts them
        prompt.files, prompt.tools = files, tools
        generation = await self.pipeline.start(req, [prompt], context, new_id("chatcmpl"))
        if req.stream:
            forced = tools is not None and tools.choice != "auto"  # the reply is calls from the first token
            return sse_stream(self._chunks(generation, req.include_usage, tools is not None, forced, keep))
        params = generation.params[0]
        collected = await generation.collect()
        choices = []
        for index, choice in collected.sorted():
            content, calls = parse_tool_calls(choice.text) if tools is not None else (choice.text, [])
            reason = "tool_calls" if calls and choice.finish_reason == "stop" else choice.finish_reason
            choices.append(ChatChoice(index=index, message=AssistantMessage(content=content, tool_calls=calls or None),
                                      finish_reason=reason,
                                      logprobs=_logprobs(generation, params, choice.token_ids, choice.logprobs)))
        body = ChatCompletion(id=generation.request_id, created=generation.created, model=generation.model,
                              choices=choices,
                              usage=Usage.of(collected.prompt_tokens, collected.completion_tokens)).dump()
        if keep is not None and not await keep(body):
            # over the owner's quota: the answer is still the client's, but it is not kept
            body["ozwell"] = {"store_error": {"code": "quota_exceeded", "message": "This completion was not "
                              "stored: it would exceed your storage quota."}}
        return body

    def _keeper(self, req: ChatCompletionRequest, owner: str) -> Callable[[dict], Awaitable[bool]]:
        """What stores this request's finished body (False when over the owner's quota)."""
        if self.store is None:
            raise UnsupportedParameterError("store", "needs a database, and this server runs without one")
        messages = [message.model_dump(exclude_none=True) for message in req.messages]
        metadata = req.metadata

        async def keep(body: dict) -> bool:
            return await off_loop(self.store.save, owner, body, stored_messages(body["id"], messages), metadata)

        return keep

    async def _chunks(self, generation: Generation, include_usage: bool, tools: bool, forced: bool = False,
                      keep: Callable[[dict], Awaitable[bool]] | None = None) -> AsyncIterator[str]:
        params = generation.params[0]
        parsers = {index: StreamParser() for index in range(params.n)} if tools else {}
        assembled = StreamedCompletion() if keep is not None else None

        def chunk(choices: list[dict], usage: Usage | None = None) -> str:
            if assembled is not None:
                for choice in choices:
                    assembled.add(choice)
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
        if assembled is not None:  # the whole stream was sent: keep what it adds up to
            usage = Usage.of(generation.prompt_tokens, generation.used_tokens).model_dump()
            body = assembled.body(generation.request_id, generation.created, generation.model, usage)
            if not await keep(body):
                log.warning("chat completion %s was not stored: over its owner's storage quota", body["id"])
        if include_usage:
            yield chunk([], usage=Usage.of(generation.prompt_tokens, generation.used_tokens))


    # ---- stored ------------------------------------------------------------------------------
    def _store(self) -> ChatCompletionStore:
        if self.store is None:
            raise NotFoundError("This server keeps no chat completions (it runs without a database).")
        return self.store

    async def retrieve(self, owner: str, completion_id: str) -> dict:
        return await off_loop(self._store().get, owner, completion_id)

    async def list_stored(self, owner: str, model: str | None, metadata: dict[str, str], after: str | None,
                          limit: int, order: str) -> dict:
        return await off_loop(self._store().list, owner, model, metadata, after, limit, order)

    async def update(self, owner: str, completion_id: str, metadata: dict[str, str] | None) -> dict:
        return await off_loop(self._store().update, owner, completion_id, metadata)

    async def delete(self, owner: str, completion_id: str) -> dict:
        return await off_loop(self._store().delete, owner, completion_id)

    async def messages(self, owner: str, completion_id: str, after: str | None, limit: int, order: str) -> dict:
        return await off_loop(self._store().messages, owner, completion_id, after, limit, order)


def _logprobs(generation: Generation, params: SamplingParams, token_ids, entries) -> dict | None:
    return chat_logprobs(generation.engine, token_ids, entries) if params.logprobs is not None else None
