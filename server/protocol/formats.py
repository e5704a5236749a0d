"""Tools and formats: response formats (chat's `response_format`, the Responses API's `text.format`), tool
definitions and choices of both APIs, and `tool_plan`, which checks them into a ToolPlan."""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from engines.structured import StructuredOutput
from server.errors import InvalidRequestError
from server.protocol.base import OpenAIBaseModel
from server.tool_calls import Tool, ToolPlan

TOOL_NAME = r"^[a-zA-Z0-9_-]{1,64}$"  # OpenAI's pattern for schema and function names


class JsonSchemaSpec(OpenAIBaseModel):
    """`response_format.json_schema` (chat), and the same fields inline in the Responses API's `text.format`."""

    name: str = Field(pattern=TOOL_NAME)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None

    def structured(self, param: str) -> StructuredOutput:
        """OpenAI's default is strict false: enforced leniently (engines/structured.py)."""
        return StructuredOutput.json_schema(self.schema_ or {}, strict=bool(self.strict), param=param)


def _structured(kind: str, spec: JsonSchemaSpec | None, param: str) -> StructuredOutput | None:
    if kind == "json_object":
        return StructuredOutput("json_object", param=param)
    if kind == "json_schema":
        return spec.structured(f"{param}.schema")
    return None


class ResponseFormat(OpenAIBaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required with type 'json_schema', and only with it")
        return self

    def structured(self) -> StructuredOutput | None:
        return _structured(self.type, self.json_schema, "response_format.json_schema")


class ToolCallFunction(OpenAIBaseModel):
    name: str
    arguments: str  # JSON text, as OpenAI sends it
    # The SDK's parse and stream helpers add the arguments decoded; a message sent back as they returned it
    # carries them. They say nothing that `arguments` does not.
    parsed_arguments: Any = None


class ToolCall(OpenAIBaseModel):
    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: ToolCallFunction
    index: int | None = None  # (a streamed call's position, which the SDK's stream helper keeps)


class FunctionDefinition(OpenAIBaseModel):
    name: str = Field(pattern=TOOL_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def tool(self, param: str) -> Tool:
        return Tool(self.name, self.description, self.parameters, self.strict, param)


class ChatTool(OpenAIBaseModel):
    type: Literal["function"]
    function: FunctionDefinition

    @field_validator("type", mode="before")
    @classmethod
    def _no_hosted_tools(cls, value):
        if value == "file_search":  # a clear word for the one hosted tool this server runs, elsewhere
            raise ValueError("Chat Completions has no 'file_search' tool (OpenAI offers it only in the Responses "
                             "API); use POST /v1/responses with tools=[{\"type\": \"file_search\", "
                             "\"vector_store_ids\": [...]}].")
        return value


class ToolChoiceFunction(OpenAIBaseModel):
    name: str


class NamedToolChoice(OpenAIBaseModel):
    type: Literal["function"]
    function: ToolChoiceFunction


MAX_TOOLS_BYTES = 1 << 20


def tool_plan(tools: list[Tool], choice: str | None, parallel: bool | None,
              answer: StructuredOutput | None) -> ToolPlan | None:
    """Chat's and the Responses API's tools and tool_choice (a keyword, or the named function), checked: 400
    naming what is wrong. `answer`: the request's JSON response format, which holds an answer that is not a
    call (engines/structured.py; server/tool_calls.py)."""
    if not tools:
        if choice not in (None, "none"):
            raise InvalidRequestError("'tool_choice' is only allowed when 'tools' are given.", param="tool_choice",
                                      code="invalid_value")
        return None
    names = [t.name for t in tools]
    if len(set(names)) != len(names):
        raise InvalidRequestError("Tool names must be unique.", param="tools", code="invalid_value")
    if len(json.dumps([t.parameters for t in tools])) > MAX_TOOLS_BYTES:
        raise InvalidRequestError(f"'tools' must be at most {MAX_TOOLS_BYTES} bytes of JSON.", param="tools",
                                  code="invalid_value")
    if choice not in (None, "none", "auto", "required") and choice not in names:
        raise InvalidRequestError(f"tool_choice names the function '{choice}', which is not in 'tools'.",
                                  param="tool_choice", code="invalid_value")
    return ToolPlan(tools, choice or "auto", parallel is not False, answer)


class TextFormat(OpenAIBaseModel):
    """The Responses API's `text.format`: text, json_object, or json_schema with its fields inline."""

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(default=None, pattern=TOOL_NAME)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None

    @model_validator(mode="after")
    def _named_schema(self) -> TextFormat:
        if self.type == "json_schema" and (self.name is None or self.schema_ is None):
            raise ValueError("a json_schema format needs its name and schema")
        return self

    def structured(self) -> StructuredOutput | None:
        spec = None
        if self.type == "json_schema":
            spec = JsonSchemaSpec(name=self.name, description=self.description, schema=self.schema_,
                                  strict=self.strict)
        return _structured(self.type, spec, "text.format")

    def echo(self) -> dict[str, Any]:
        """As a Response object shows it."""
        return self.model_dump(by_alias=True, exclude_none=True)


class ResponseText(OpenAIBaseModel):
    format: TextFormat | None = None
    verbosity: str | None = None

    NEUTRAL: ClassVar[dict[str, tuple]] = {"verbosity": (None, "medium")}


class FunctionType(OpenAIBaseModel):
    type: Literal["function"]


# (the type first: a tool of another type is refused for its type, not for the fields it lacks)
class ResponseFunctionTool(FunctionDefinition, FunctionType):
    """The Responses API's function tool: chat's function definition, flat (no `function` wrapper)."""

    def echo(self) -> dict[str, Any]:
        """As a Response object shows it: `strict` and `parameters` always (null when not given)."""
        return {**self.model_dump(exclude_none=True), "strict": self.strict, "parameters": self.parameters}


class ResponseNamedChoice(ToolChoiceFunction, FunctionType):
    pass


class ResponseHostedChoice(OpenAIBaseModel):
    """tool_choice {"type": "file_search"}: the search runs (it always does here) and no function is called."""

    type: Literal["file_search"]


MAX_FILE_SEARCH_RESULTS = 20  # OpenAI's default max_num_results


class FileSearchTool(OpenAIBaseModel):
    """The Responses API's file_search tool, which this server runs itself (server/services/file_search.py).
    `filters` and `ranking_options` are checked by the vector store search they are passed to."""

    type: Literal["file_search"]
    vector_store_ids: list[str] = Field(min_length=1, max_length=2)  # OpenAI allows two stores per request
    max_num_results: int | None = Field(default=None, ge=1, le=50)
    filters: dict[str, Any] | None = None
    ranking_options: dict[str, Any] | None = None

    def echo(self) -> dict[str, Any]:
        """As a Response object shows it: OpenAI's defaults filled in."""
        return {"type": "file_search", "vector_store_ids": self.vector_store_ids,
                "max_num_results": self.max_num_results or MAX_FILE_SEARCH_RESULTS, "filters": self.filters,
                "ranking_options": {"ranker": "auto", "score_threshold": 0.0, **(self.ranking_options or {})}}


class _OtherTool(OpenAIBaseModel):
    """A tool of a type this server does not run: refused for its type, naming the types it does run."""

    type: str

    @field_validator("type")
    @classmethod
    def _refused(cls, value: str) -> str:
        raise ValueError(f"tool type {value!r} is not supported by this server; it runs 'function' and "
                         "'file_search' tools.")


def _tool_kind(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if kind in ("function", "file_search") else "other"


# The tags start with "tagged-union" because a 400's param leaves such parts out (server/errors.py): a wrong
# field reads tools[0].name, not tools[0].function.name.
ResponseTool = Annotated[
    Annotated[ResponseFunctionTool, Tag("tagged-union:function")]
    | Annotated[FileSearchTool, Tag("tagged-union:file_search")]
    | Annotated[_OtherTool, Tag("tagged-union:other")],
    Discriminator(lambda value: f"tagged-union:{_tool_kind(value)}")]
