"""Request bodies of the OpenAI routes, as pydantic models on one shared base.

The base forbids fields it does not know (400 "Unrecognized request argument"). OpenAI fields
that we know but cannot honour yet are listed in a model's NEUTRAL table with the values that mean
"not used"; the base holds them aside, and `reject_unsupported` turns any other value into a 400 naming
the field: nothing is silently ignored.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from engines.protocol import SamplingParams
from engines.structured import StructuredOutput
from server.errors import InvalidRequestError, UnsupportedParameterError
from server.tool_calls import Tool, ToolPlan

# Every integer a client sends is bounded before it reaches a tensor, a database column or a datetime:
# Python ints are unbounded, and one past int64 faulted the sampler (issue #23). The sampling fields'
# bounds are written once, in the engine contract's SamplingParams; `to_sampling_params` builds it, and
# the pipeline (server/services/pipeline.py) does so first, before any work. The rest are bounded here.
INT32_MAX = 2**31 - 1


class OpenAIBaseModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # field name -> the values that mean "not used" (anything else is rejected)
    NEUTRAL: ClassVar[dict[str, tuple]] = {}
    _unhonoured: dict[str, Any] = PrivateAttr(default_factory=dict)  # NEUTRAL fields the model does not declare

    @model_validator(mode="wrap")
    @classmethod
    def _hold_unhonoured(cls, data: Any, handler):
        if isinstance(data, OpenAIBaseModel):  # validated already (server/routing.py): keep what it held
            return handler(data)
        held = {}
        if isinstance(data, dict):
            held = {name: data[name] for name in cls.NEUTRAL if name in data and name not in cls.model_fields}
            data = {key: value for key, value in data.items() if key not in held}
        model = handler(data)
        model._unhonoured = held
        return model

    def reject_unsupported(self) -> None:
        for name, neutral in self.NEUTRAL.items():
            value = getattr(self, name) if name in type(self).model_fields else self._unhonoured.get(name)
            if value not in neutral:
                raise UnsupportedParameterError(name)


class StreamOptions(OpenAIBaseModel):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None

    NEUTRAL: ClassVar[dict[str, tuple]] = {"include_obfuscation": (None, False)}


StopField = str | list[str] | None


def _token_id_key(key: str) -> str:
    if not key.lstrip("-").isdigit() or len(key) > 12:
        raise ValueError(f"keys must be token ids, not {key[:20]!r}")
    return key


TokenIdKey = Annotated[str, AfterValidator(_token_id_key)]  # a logit_bias key


def _check_stop(value: StopField) -> StopField:
    if isinstance(value, list):
        if len(value) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        if any(not s for s in value):
            raise ValueError("stop sequences must not be empty")
    elif value == "":
        raise ValueError("a stop sequence must not be empty")
    return value


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


class GenerationFields(OpenAIBaseModel):
    """Fields every generation request shares (chat, legacy completions, responses)."""

    model: str
    temperature: float | None = None
    top_p: float | None = None
    user: str | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    _tools: tuple = PrivateAttr(default=())  # (the checked tool plan,) once tool_plan() has built it

    def tool_plan(self) -> ToolPlan | None:
        """The request's tools and tool_choice, checked (400 naming what is wrong); None without tools. Built
        once: the checks, the request's admission and the service all ask for it."""
        if not self._tools:
            self._tools = (self._build_tool_plan(),)
        return self._tools[0]

    def _build_tool_plan(self) -> ToolPlan | None:
        return None

    def reject_unsupported(self) -> None:
        super().reject_unsupported()
        if self.stream_options is not None:
            if not self.stream:
                raise UnsupportedParameterError("stream_options", "is only allowed when 'stream' is true")
            try:
                self.stream_options.reject_unsupported()
            except UnsupportedParameterError as exc:
                raise UnsupportedParameterError(f"stream_options.{exc.param}") from None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class SamplingFields(GenerationFields):
    """Fields shared by chat and legacy completions."""

    n: int | None = None
    stop: StopField = None
    seed: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[TokenIdKey, float] | None = Field(default=None, max_length=300)
    # Extensions beyond OpenAI's API (vLLM's names; the openai SDK sends them with extra_body).
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool | None = None
    # Grammar-enforced output: OpenAI's for chat; an extension on the legacy completions route.
    response_format: ResponseFormat | None = None

    @property
    def logprobs_k(self) -> int | None:
        """How many top alternatives per token to return; None: no logprobs at all."""
        return None

    @property
    def requested_max_tokens(self) -> int | None:
        """The completion length asked for; None: up to the context."""
        return None

    def to_sampling_params(self, max_tokens: int) -> SamplingParams:
        """The engine's SamplingParams for this request (raises InvalidGenerationRequest naming a field)."""
        return SamplingParams(
            max_tokens=max_tokens, temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p, n=1 if self.n is None else self.n, seed=self.seed,
            stop=self.stop_list, top_k=self.top_k or 0, min_p=self.min_p or 0.0,
            presence_penalty=self.presence_penalty or 0.0, frequency_penalty=self.frequency_penalty or 0.0,
            repetition_penalty=1.0 if self.repetition_penalty is None else self.repetition_penalty,
            ignore_eos=bool(self.ignore_eos), logprobs=self.logprobs_k,
            logit_bias=tuple((int(k), float(v)) for k, v in (self.logit_bias or {}).items()),
            structured=self.structured_output())

    def structured_output(self) -> StructuredOutput | None:
        """The grammar the answer decodes under (response_format here; chat adds tools)."""
        return self.response_format.structured() if self.response_format else None

    @field_validator("stop")
    @classmethod
    def _validate_stop(cls, value: StopField) -> StopField:
        return _check_stop(value)

    @property
    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


MAX_MESSAGES = 2048  # as OpenAI caps a conversation


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

    NEUTRAL: ClassVar[dict[str, tuple]] = {
        "functions": (None, []),
        "function_call": (None, "none"),
        "store": (None, False),
        "metadata": (None, {}),
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




def _check_prompt(value):
    """A prompt (or embedding input) is a text, texts, token ids, or token-id arrays; none of them empty."""
    if isinstance(value, str):
        if not value:
            raise ValueError("must not be an empty string")
        return value
    if not value:
        raise ValueError("must not be an empty array")
    for i, item in enumerate(value):
        if item == "" or item == []:
            raise ValueError(f"input[{i}] must not be empty")
    return value


# (token ids before texts: pydantic tries each member, and a list of 500,000 ids tried as texts first made
# 500,000 errors, 90 ms with the GIL held, issue #35)
PromptField = Annotated[str | list[int] | list[str] | list[list[int]], AfterValidator(_check_prompt)]


def as_prompt_list(value: PromptField) -> list[str | list[int]]:
    """A text, texts, one token-id list or several, as a list of texts or token-id lists."""
    if isinstance(value, str):
        return [value]
    if all(isinstance(item, int) for item in value):
        return [list(value)]
    return list(value)


class CompletionRequest(SamplingFields):
    prompt: PromptField
    max_tokens: int | None = Field(default=16, ge=1, le=INT32_MAX)
    logprobs: int | None = Field(default=None, ge=0, le=5)

    @property
    def logprobs_k(self) -> int | None:
        return self.logprobs

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    NEUTRAL: ClassVar[dict[str, tuple]] = {
        "echo": (None, False),
        "best_of": (None, 1),
        "suffix": (None, ""),
    }

    def prompts(self) -> list[str | list[int]]:
        """The prompt as a list of text or token-id prompts."""
        return as_prompt_list(self.prompt)


MAX_EMBEDDING_INPUTS = 2048


class EmbeddingRequest(OpenAIBaseModel):
    model: str
    input: PromptField
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1, le=INT32_MAX)
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _check_input(cls, value: PromptField) -> PromptField:
        if isinstance(value, list) and len(value) > MAX_EMBEDDING_INPUTS and not isinstance(value[0], int):
            raise ValueError(f"at most {MAX_EMBEDDING_INPUTS} inputs are allowed per request")
        return value

    def inputs(self) -> list[str | list[int]]:
        """The input as a list of texts or token-id lists."""
        return as_prompt_list(self.input)


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


class ResponseNamedChoice(ToolChoiceFunction, FunctionType):
    pass


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
    tools: list[ResponseFunctionTool] | None = Field(default=None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | ResponseNamedChoice | None = None
    parallel_tool_calls: bool | None = None

    NEUTRAL: ClassVar[dict[str, tuple]] = {
        "reasoning": (None,), "background": (None, False), "include": (None, []),
        "conversation": (None,), "context_management": (None,),
        "max_tool_calls": (None,), "prompt": (None,), "service_tier": (None, "auto", "default"),
        "top_logprobs": (None, 0), "prompt_cache_key": (None,), "prompt_cache_retention": (None,),
        "prompt_cache_options": (None,), "moderation": (None,),
    }

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_output_tokens

    def _build_tool_plan(self) -> ToolPlan | None:
        choice = self.tool_choice.name if isinstance(self.tool_choice, ResponseNamedChoice) else self.tool_choice
        text_format = self.text.format if self.text else None
        return tool_plan([t.tool(f"tools[{i}].parameters") for i, t in enumerate(self.tools or [])], choice,
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



def check_metadata(value: dict[str, str] | None) -> dict[str, str] | None:
    """OpenAI's Metadata: at most 16 pairs, keys up to 64 characters, values up to 512."""
    if value is None:
        return value
    if len(value) > 16:
        raise ValueError("at most 16 key-value pairs are allowed")
    for key, item in value.items():
        if len(key) > 64:
            raise ValueError(f"key {key[:20]!r}... is longer than 64 characters")
        if len(item) > 512:
            raise ValueError(f"the value of {key!r} is longer than 512 characters")
    return value


# The endpoints a batch may run (server/services/batches.py), and each one's key scope.
BATCH_ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/v1/embeddings": "embeddings",
                   "/v1/responses": "responses"}


class BatchFileExpiration(OpenAIBaseModel):
    anchor: Literal["created_at"]
    seconds: int = Field(ge=3600, le=2_592_000)


class CreateBatchRequest(OpenAIBaseModel):
    """POST /v1/batches."""

    input_file_id: str = Field(min_length=1, max_length=64)
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None
    output_expires_after: BatchFileExpiration | None = None

    _check_metadata = field_validator("metadata")(classmethod(lambda cls, value: check_metadata(value)))

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str) -> str:
        if value not in BATCH_ENDPOINTS:
            raise ValueError(f"{value!r} is not an endpoint this server runs in batches; use one of "
                             f"{', '.join(BATCH_ENDPOINTS)}")
        return value

    @field_validator("completion_window")
    @classmethod
    def _check_window(cls, value: str) -> str:
        if value != "24h":
            raise ValueError("only '24h' is supported")
        return value
