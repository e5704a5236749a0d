"""POST /v1/chat/completions: the request body."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import (
    Field,
    field_validator,
)

from engines.structured import StructuredOutput
from server.errors import InvalidRequestError
from server.protocol.base import INT32_MAX, OpenAIBaseModel, check_metadata
from server.protocol.fields import SamplingFields
from server.protocol.formats import ChatTool, NamedToolChoice, ToolCall, tool_plan
from server.tool_calls import ToolPlan

MAX_MESSAGES = 2048  # as OpenAI caps a conversation


class ChatMessage(OpenAIBaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    function_call: Any = None
    audio: Any = None


class ChatCompletionRequest(SamplingFields):
    """`logprobs` is a switch and `top_logprobs` (0-20) the alternatives per token."""

    @property
    def logprobs_k(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def reject_unsupported(self) -> None:
        super().reject_unsupported()
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequestError("'logprobs' must be true when 'top_logprobs' is set.", param="top_logprobs",
                                      code="invalid_value")
        self.tool_plan()  # its own checks

    def _build_tool_plan(self) -> ToolPlan | None:
        choice = self.tool_choice.function.name if isinstance(self.tool_choice, NamedToolChoice) else self.tool_choice
        return tool_plan([t.function.tool(f"tools[{i}].function.parameters") for i, t in enumerate(self.tools or [])],
                         choice, self.parallel_tool_calls,
                         self.response_format.structured() if self.response_format else None)

    def structured_output(self) -> StructuredOutput | None:
        plan = self.tool_plan()
        if plan is not None and plan.active:
            return plan.structured()
        return super().structured_output()

    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    safety_identifier: str | None = Field(default=None, max_length=64)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[ChatTool] | None = Field(default=None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    store: bool | None = None  # true: kept for GET /v1/chat/completions (server/services/chat_store.py)
    metadata: dict[str, str] | None = None  # kept with a stored completion, for its list's filter

    _check_metadata = field_validator("metadata")(classmethod(lambda cls, value: check_metadata(value)))

    NEUTRAL: ClassVar[dict[str, tuple]] = {
        "functions": (None, []),
        "function_call": (None, "none"),
        "service_tier": (None, "auto", "default"),
        "modalities": (None, ["text"]),
        "audio": (None,),
        "prediction": (None,),
        "reasoning_effort": (None,),
        "verbosity": (None,),
        "web_search_options": (None,),
        "prompt_cache_key": (None,),
        "prompt_cache_retention": (None,),
        "prompt_cache_options": (None,),
        "moderation": (None,),
    }


class ChatCompletionUpdateRequest(OpenAIBaseModel):
    """POST /v1/chat/completions/{id}: a stored completion's metadata, replaced whole (null clears it)."""

    metadata: dict[str, str] | None

    _check_metadata = field_validator("metadata")(classmethod(lambda cls, value: check_metadata(value)))
