"""POST /v1/chat/completions: messages -> prompt -> engine events -> OpenAI body or SSE chunks."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from engines.protocol import GenerationEngine
from server.context import RequestContext
from server.errors import InvalidRequestError, NotFoundError, UnsupportedParameterError
from server.protocol import ChatCompletionRequest, ChatMessage
from server.response_models import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChunkChoice,
    Usage,
)
from server.services.formats import (
    SSE_DONE,
    chat_logprobs,
    new_id,
    openai_finish_reason,
    sse,
    sse_error,
)
from server.services.pipeline import (
    TEMPLATE_ROLES,
    FileText,
    GenerationPipeline,
    Prepared,
    off_loop,
    prompt_floor,
)
from server.services.streaming import merged_events


def _file_part_text(part: dict, param: str, file_text: FileText | None) -> str:
    file = part.get("file")
    if not isinstance(file, dict) or not isinstance(file.get("file_id"), str):
        raise InvalidRequestError("A file content part needs {\"file\": {\"file_id\": \"file-...\"}} (upload it "
                                  "with /v1/files first); inline file_data is not supported.", param=f"{param}.file")
    if file_text is None:
        raise UnsupportedParameterError(f"{param}.file", "needs the files API, which this server runs without")
    try:
        return file_text(file["file_id"])
    except NotFoundError:
        raise InvalidRequestError(f"No such file: {file['file_id']}.", param=f"{param}.file.file_id",
                                  code="file_not_found") from None


def _message_text(message: ChatMessage, i: int, file_text: FileText | None = None) -> str:
    if message.content is None:
        if message.role == "assistant":
            return ""
        raise InvalidRequestError(f"messages[{i}].content is required for role '{message.role}'.",
                                  param=f"messages[{i}].content")
    if isinstance(message.content, str):
        return message.content
    if not message.content:
        raise InvalidRequestError(f"messages[{i}].content must not be an empty array.",
                                  param=f"messages[{i}].content", code="invalid_value")
    texts = []
    for j, part in enumerate(message.content):
        kind = part.get("type")
        if kind is None:
            raise InvalidRequestError(f"Missing required parameter: 'messages[{i}].content[{j}].type'.",
                                      param=f"messages[{i}].content[{j}].type", code="missing_required_parameter")
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "file" and message.role == "user":
            texts.append(_file_part_text(part, f"messages[{i}].content[{j}]", file_text))
        else:
            raise InvalidRequestError(
                f"Content part type {kind!r} is not supported in messages[{i}].content[{j}]; this server supports "
                "text parts, and in user messages file parts with the file_id of an uploaded UTF-8 text file.",
                param=f"messages[{i}].content[{j}].type", code="unsupported_value",
            )
    return "".join(texts)


def _plain_text(message: ChatMessage) -> str:
    """The message's inline text (file parts are not read here), for the cheap bound on its tokens."""
    if isinstance(message.content, str):
        return message.content
    return "".join(p.get("text", "") for p in message.content or [] if isinstance(p.get("text"), str))


def template_messages(messages: list[ChatMessage], file_text: FileText | None = None) -> list[dict]:
    rendered = []
    for i, message in enumerate(messages):
        if message.role not in TEMPLATE_ROLES:
            raise UnsupportedParameterError(f"messages[{i}].role", f"'{message.role}' needs tool calling, which "
                                            "is not supported by this server yet")
        for name in ("tool_calls", "function_call", "audio"):
            if getattr(message, name):
                raise UnsupportedParameterError(f"messages[{i}].{name}")
        rendered.append({"role": TEMPLATE_ROLES[message.role], "content": _message_text(message, i, file_text)})
    return rendered


class ChatService(GenerationPipeline):
    route = "/v1/chat/completions"
    prompt_param = "messages"

    def admission(self, req: ChatCompletionRequest, engine: GenerationEngine) -> tuple[int, int]:
        n = req.n or 1
        floor = min(prompt_floor(engine, [_plain_text(m) for m in req.messages]), engine.max_model_len)
        return n, floor + (req.requested_max_tokens or 1) * n

    async def prepare(self, req: ChatCompletionRequest, engine: GenerationEngine,
                      context: RequestContext) -> Prepared:
        # Off the loop: file parts read the database and the disk.
        messages = await off_loop(template_messages, req.messages, self.file_reader(context.owner))
        return Prepared([await off_loop(engine.encode_chat, messages)])

    async def respond(self, req: ChatCompletionRequest, context: RequestContext, engine: GenerationEngine,
                      prepared: Prepared) -> dict | AsyncIterator[str]:
        completion_id = new_id("chatcmpl")
        created = int(time.time())
        if req.stream:
            return self._stream(req, context, engine, completion_id, created, prepared)
        params = prepared.params[0]
        collected = await self.collect(engine, completion_id, prepared, context)
        return ChatCompletion(
            id=completion_id, created=created, model=engine.config.id,
            choices=[ChatChoice(index=index, message=AssistantMessage(content=choice.text),
                                finish_reason=choice.finish_reason,
                                logprobs=(chat_logprobs(engine, choice.token_ids, choice.logprobs)
                                          if params.logprobs is not None else None))
                     for index, choice in collected.sorted()],
            usage=Usage.of(collected.prompt_tokens, collected.completion_tokens)).model_dump()

    async def _stream(self, req, context, engine, completion_id, created, prepared: Prepared) -> AsyncIterator[str]:
        include_usage = req.include_usage
        prompt_ids, params = prepared.prompts[0], prepared.params[0]

        def chunk(choices: list[dict], usage: Usage | None = None) -> str:
            return sse(ChatCompletionChunk.model_construct(
                id=completion_id, object="chat.completion.chunk", created=created, model=engine.config.id,
                choices=[ChunkChoice.model_construct(**choice) for choice in choices], usage=usage,
            ).dump(include_usage))

        completion_tokens: dict[int, int] = {}
        try:
            for index in range(params.n):
                yield chunk([{"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None,
                              "logprobs": None}])
            async for index, event in merged_events(engine, completion_id, prepared.prompts, prepared.params,
                                                    self.observers):
                completion_tokens[index] = event.completion_tokens
                logprobs = None
                if params.logprobs is not None and event.logprobs:
                    logprobs = chat_logprobs(engine, event.token_ids, event.logprobs)
                if event.text or (logprobs and not event.finish_reason):
                    # (a token whose text is still held back sends its logprobs with empty content)
                    yield chunk([{"index": index, "delta": {"content": event.text}, "finish_reason": None,
                                  "logprobs": logprobs}])
                    logprobs = None
                if event.finish_reason:
                    yield chunk([{"index": index, "delta": {},
                                  "finish_reason": openai_finish_reason(event.finish_reason), "logprobs": logprobs}])
            if include_usage:
                yield chunk([], usage=Usage.of(len(prompt_ids), sum(completion_tokens.values())))
        except Exception as exc:  # noqa: BLE001 - the stream has started; report in-band
            yield sse_error(exc)
        finally:
            await context.settle(len(prompt_ids), sum(completion_tokens.values()))
        yield SSE_DONE
