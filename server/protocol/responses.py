"""POST /v1/responses: the request body."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import (
    Field,
    field_validator,
)

from engines.protocol import SamplingParams
from server.errors import InvalidRequestError, UnsupportedParameterError
from server.protocol.base import INT32_MAX, check_metadata
from server.protocol.fields import GenerationFields
from server.protocol.formats import (
    FileSearchTool,
    ResponseFunctionTool,
    ResponseHostedChoice,
    ResponseNamedChoice,
    ResponseText,
    ResponseTool,
    tool_plan,
)
from server.tool_calls import ToolPlan


class ResponseRequest(GenerationFields):
    """POST /v1/responses, for text models."""

    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=16, le=INT32_MAX)
    metadata: dict[str, str] | None = None
    store: bool | None = True
    previous_response_id: str | None = None
    safety_identifier: str | None = Field(default=None, max_length=64)
    truncation: Literal["auto", "disabled"] | None = None
    text: ResponseText | None = None
    tools: list[ResponseTool] | None = Field(default=None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | ResponseNamedChoice | ResponseHostedChoice | None = None
    parallel_tool_calls: bool | None = None
    include: list[str] | None = None
    background: bool | None = None  # needs store; runs detached from the connection (server/services/background.py)

    INCLUDABLE: ClassVar[tuple[str, ...]] = ("file_search_call.results",)
    NEUTRAL: ClassVar[dict[str, tuple]] = {
        "reasoning": (None,),
        "conversation": (None,), "context_management": (None,),
        "max_tool_calls": (None,), "prompt": (None,), "service_tier": (None, "auto", "default"),
        "top_logprobs": (None, 0), "prompt_cache_key": (None,), "prompt_cache_retention": (None,),
        "prompt_cache_options": (None,), "moderation": (None,),
    }

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_output_tokens

    def file_search_tools(self) -> list[tuple[int, FileSearchTool]]:
        """The file_search tools, with their places in `tools` (for a 400's param)."""
        return [(i, t) for i, t in enumerate(self.tools or []) if isinstance(t, FileSearchTool)]

    def _build_tool_plan(self) -> ToolPlan | None:
        choice = self.tool_choice.name if isinstance(self.tool_choice, ResponseNamedChoice) else self.tool_choice
        text_format = self.text.format if self.text else None
        functions = [(i, t) for i, t in enumerate(self.tools or []) if isinstance(t, ResponseFunctionTool)]
        if isinstance(choice, ResponseHostedChoice):
            if not self.file_search_tools():
                raise InvalidRequestError("tool_choice names file_search, which is not in 'tools'.",
                                          param="tool_choice", code="invalid_value")
            choice = "none" if functions else None
        elif not functions and self.file_search_tools() and choice in ("auto", "required"):
            choice = None  # the file search answers these: there is no function to call
        return tool_plan([t.tool(f"tools[{i}].parameters") for i, t in functions], choice,
                         self.parallel_tool_calls, text_format.structured() if text_format else None)

    def to_sampling_params(self, max_tokens: int) -> SamplingParams:
        plan = self.tool_plan()
        text_format = self.text.format if self.text else None
        structured = plan.structured() if plan is not None and plan.active else (
            text_format.structured() if text_format else None)
        return SamplingParams(max_tokens=max_tokens, temperature=1.0 if self.temperature is None else self.temperature,
                              top_p=1.0 if self.top_p is None else self.top_p, structured=structured)

    def reject_unsupported(self) -> None:
        super().reject_unsupported()
        if any(value not in self.INCLUDABLE for value in self.include or []):
            raise UnsupportedParameterError("include", "supports only 'file_search_call.results' on this server")
        if self.text is not None:
            try:
                self.text.reject_unsupported()
            except UnsupportedParameterError as exc:
                raise UnsupportedParameterError(f"text.{exc.param}") from None

    _check_metadata = field_validator("metadata")(classmethod(lambda cls, value: check_metadata(value)))

    @field_validator("input")
    @classmethod
    def _check_input(cls, value):
        if isinstance(value, list) and not value:
            raise ValueError("must not be an empty array")
        return value
