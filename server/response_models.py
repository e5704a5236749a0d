"""Response bodies of the OpenAI routes, as pydantic models beside the request models (server/protocol/).

The services build these and send `model_dump()`; the tests validate what goes out against OpenAI's
schemas. Stream chunks are built with `model_construct` (no validation: the services fill them from
values they made themselves), since a chunk goes out per token."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   total_tokens=prompt_tokens + completion_tokens)


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[dict[str, Any]] | None = None  # left out of the body when there are none


class Choice(BaseModel):
    """What every choice has: its index, why it ended (None while it runs) and its logprobs when asked."""

    index: int
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


class ChatChoice(Choice):
    message: AssistantMessage


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage

    def dump(self) -> dict[str, Any]:
        """The body; a message without tool calls has no tool_calls key (as OpenAI's)."""
        body = self.model_dump()
        for choice in body["choices"]:
            if choice["message"]["tool_calls"] is None:
                del choice["message"]["tool_calls"]
        return body


class ChunkChoice(Choice):
    delta: dict[str, Any]  # {"role", "content"} first, then {"content"} or {"tool_calls"}, {} with the finish reason


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None  # sent (null until the last chunk) only with stream_options.include_usage

    def dump(self, include_usage: bool) -> dict:
        return self.model_dump(exclude=None if include_usage else {"usage"})


class CompletionChoice(Choice):
    text: str


class Completion(BaseModel):
    """A legacy completion, whole or as a stream chunk (a chunk carries `usage` only on the last one)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None

    def dump(self) -> dict:
        return self.model_dump(exclude=None if self.usage is not None else {"usage"})


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # floats, or base64 of little-endian float32


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "ozwell"
    ozwell: dict[str, Any] | None = None  # where and how it runs; on a retrieved model only

    def dump(self) -> dict:
        return self.model_dump(exclude=None if self.ozwell is not None else {"ozwell"})


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]

    def dump(self) -> dict:
        return {"object": self.object, "data": [card.dump() for card in self.data]}


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: dict[str, int] = {"cached_tokens": 0, "cache_write_tokens": 0}
    output_tokens: int
    output_tokens_details: dict[str, int] = {"reasoning_tokens": 0}
    total_tokens: int


class ResponseObject(BaseModel):
    """A Response of the Responses API (text models), with Ozwell's `ozwell` extension."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["completed", "incomplete", "in_progress", "failed", "queued", "cancelled"]
    completed_at: int | None = None
    error: dict[str, Any] | None = None
    incomplete_details: dict[str, str] | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[dict[str, Any]]
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    store: bool
    temperature: float
    top_p: float
    tool_choice: str | dict[str, Any] = "auto"
    tools: list[Any] = []
    truncation: Literal["auto", "disabled"]
    metadata: dict[str, str]
    text: dict[str, Any] = {"format": {"type": "text"}}
    ozwell: dict[str, Any]
    # Present only where they apply: usage once the response is no longer in progress, user and
    # safety_identifier when the request gave them.
    usage: ResponseUsage | None = None
    user: str | None = None
    safety_identifier: str | None = None
    background: bool = False

    def dump(self) -> dict:
        return self.model_dump(exclude={name for name in ("usage", "user", "safety_identifier")
                                        if getattr(self, name) is None})
