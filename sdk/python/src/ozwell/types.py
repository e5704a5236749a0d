"""Request parameter types (TypedDicts) and response models (pydantic v2), after OpenAI's spec plus
Ozwell's extensions (`ozwell` on models and responses, the admin API). Response models keep fields
they do not name (`model_extra`), so a newer server's additions are never lost."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import Required, TypedDict

# ---- request parameters -------------------------------------------------------------------------


class TextContentPartParam(TypedDict):
    type: Literal["text"]
    text: str


class ImageURLParam(TypedDict, total=False):
    url: Required[str]
    detail: Literal["auto", "low", "high"]


class ImageContentPartParam(TypedDict):
    type: Literal["image_url"]
    image_url: ImageURLParam


ContentPartParam = Union[TextContentPartParam, ImageContentPartParam]


class SystemMessageParam(TypedDict, total=False):
    role: Required[Literal["system"]]
    content: Required[str | list[TextContentPartParam]]
    name: str


class DeveloperMessageParam(TypedDict, total=False):
    role: Required[Literal["developer"]]
    content: Required[str | list[TextContentPartParam]]
    name: str


class UserMessageParam(TypedDict, total=False):
    role: Required[Literal["user"]]
    content: Required[str | list[ContentPartParam]]
    name: str


class FunctionCallParam(TypedDict):
    name: str
    arguments: str


class ToolCallParam(TypedDict):
    id: str
    type: Literal["function"]
    function: FunctionCallParam


class AssistantMessageParam(TypedDict, total=False):
    role: Required[Literal["assistant"]]
    content: str | list[TextContentPartParam] | None
    name: str
    tool_calls: list[ToolCallParam]


class ToolMessageParam(TypedDict):
    role: Literal["tool"]
    content: str | list[TextContentPartParam]
    tool_call_id: str


ChatCompletionMessageParam = Union[SystemMessageParam, DeveloperMessageParam, UserMessageParam,
                                   AssistantMessageParam, ToolMessageParam]


class FunctionDefinitionParam(TypedDict, total=False):
    name: Required[str]
    description: str
    parameters: dict[str, Any]
    strict: bool | None


class ChatCompletionToolParam(TypedDict):
    type: Literal["function"]
    function: FunctionDefinitionParam


class NamedToolChoiceFunctionParam(TypedDict):
    name: str


class NamedToolChoiceParam(TypedDict):
    type: Literal["function"]
    function: NamedToolChoiceFunctionParam


ToolChoiceParam = Union[Literal["none", "auto", "required"], NamedToolChoiceParam]


class JSONSchemaParam(TypedDict, total=False):
    name: Required[str]
    description: str
    schema: dict[str, Any]
    strict: bool | None


class ResponseFormatText(TypedDict):
    type: Literal["text"]


class ResponseFormatJSONObject(TypedDict):
    type: Literal["json_object"]


class ResponseFormatJSONSchema(TypedDict):
    type: Literal["json_schema"]
    json_schema: JSONSchemaParam


ResponseFormatParam = Union[ResponseFormatText, ResponseFormatJSONObject, ResponseFormatJSONSchema]


class StreamOptionsParam(TypedDict, total=False):
    include_usage: bool


class ResponseInputTextParam(TypedDict):
    type: Literal["input_text"]
    text: str


class ResponseInputFileParam(TypedDict, total=False):
    type: Required[Literal["input_file"]]
    file_id: str
    file_data: str
    filename: str


class ResponseInputImageParam(TypedDict, total=False):
    """An image in a Responses input: `image_url` (a base64 data: URL; an http(s) URL only where the server
    allows it) or `file_id` (a file uploaded with purpose "vision" or "user_data")."""

    type: Required[Literal["input_image"]]
    image_url: str
    file_id: str
    detail: Literal["auto", "low", "high"]


ResponseInputContentParam = Union[ResponseInputTextParam, ResponseInputImageParam, ResponseInputFileParam]


class ResponseInputMessageParam(TypedDict, total=False):
    type: Literal["message"]
    role: Required[Literal["user", "assistant", "system", "developer"]]
    content: Required[str | list[ResponseInputContentParam | dict[str, Any]]]


class FunctionCallOutputParam(TypedDict):
    type: Literal["function_call_output"]
    call_id: str
    output: str


ResponseInputItemParam = Union[ResponseInputMessageParam, FunctionCallOutputParam, dict[str, Any]]


class ResponseFunctionToolParam(TypedDict, total=False):
    type: Required[Literal["function"]]
    name: Required[str]
    description: str | None
    parameters: dict[str, Any] | None
    strict: bool | None


class ResponseTextFormatParam(TypedDict, total=False):
    type: Required[Literal["text", "json_object", "json_schema"]]
    name: str
    schema: dict[str, Any]
    strict: bool | None


class ResponseTextConfigParam(TypedDict, total=False):
    format: ResponseTextFormatParam


class RequestOptions(TypedDict, total=False):
    """Per-call options: extra headers, query parameters and body fields, and this call's timeout and retries."""

    extra_headers: dict[str, str]
    extra_query: dict[str, Any]
    extra_body: dict[str, Any]
    timeout: float
    max_retries: int


# ---- response models ----------------------------------------------------------------------------


class OzwellModel(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class CompletionUsage(OzwellModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class FunctionCall(OzwellModel):
    name: str
    arguments: str


class ChatCompletionMessageToolCall(OzwellModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatCompletionMessage(OzwellModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ChatCompletionMessageToolCall] | None = None


class ChatCompletionChoice(OzwellModel):
    index: int
    message: ChatCompletionMessage
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


class ChatCompletion(OzwellModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: CompletionUsage | None = None
    metadata: dict[str, str] | None = None  # a stored completion's (store=True)


class ChoiceDeltaToolCallFunction(OzwellModel):
    name: str | None = None
    arguments: str | None = None


class ChoiceDeltaToolCall(OzwellModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: ChoiceDeltaToolCallFunction | None = None


class ChoiceDelta(OzwellModel):
    role: str | None = None
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ChoiceDeltaToolCall] | None = None


class ChatCompletionChunkChoice(OzwellModel):
    index: int
    delta: ChoiceDelta
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


class ChatCompletionChunk(OzwellModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatCompletionChunkChoice]
    usage: CompletionUsage | None = None


class CompletionChoice(OzwellModel):
    index: int
    text: str
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


class Completion(OzwellModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | None = None


class EmbeddingUsage(OzwellModel):
    prompt_tokens: int
    total_tokens: int


class Embedding(OzwellModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # floats, or base64 of little-endian float32 (encoding_format="base64")


class CreateEmbeddingResponse(OzwellModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class ModelDetails(OzwellModel):
    """Ozwell's extension of a model: where and how it runs, and whether it is loaded."""

    model: str
    task: str
    engine: str
    device: str
    requested_device: str | None = None
    revision: str | None = None
    max_model_len: int | None = None
    state: Literal["loaded", "loading", "unloaded", "draining"] | None = None
    load: Literal["startup", "on_demand"] | None = None
    kv_cache_tokens: int | None = None
    kv_cache_gib: float | None = None
    keep_alive_s: float | None = None
    load_error: str | None = None


class Model(OzwellModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    ozwell: ModelDetails | None = None


class ModelList(OzwellModel):
    object: Literal["list"] = "list"
    data: list[Model]


class FileObject(OzwellModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    expires_at: int | None = None
    filename: str
    purpose: str
    status: str | None = None
    status_details: str | None = None


class FileList(OzwellModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class BatchRequestCounts(OzwellModel):
    total: int
    completed: int
    failed: int


class BatchError(OzwellModel):
    code: str | None = None
    message: str | None = None
    param: str | None = None
    line: int | None = None


class BatchErrors(OzwellModel):
    object: str | None = None
    data: list[BatchError] = []


class BatchUsage(OzwellModel):
    input_tokens: int
    output_tokens: int
    total_tokens: int


class Batch(OzwellModel):
    """A batch (POST /batches): its status, counts and, when done, its output and error files."""

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    input_file_id: str
    completion_window: str
    status: Literal["validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling",
                    "cancelled"]
    created_at: int
    expires_at: int | None = None
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    model: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: BatchErrors | None = None
    request_counts: BatchRequestCounts | None = None
    usage: BatchUsage | None = None
    metadata: dict[str, str] | None = None


class BatchList(OzwellModel):
    object: Literal["list"] = "list"
    data: list[Batch]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class FileDeleted(OzwellModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


class ResponseOutputText(OzwellModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = []
    logprobs: list[Any] | None = None


class ResponseOutputMessage(OzwellModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: str
    content: list[ResponseOutputText]


class ResponseFunctionToolCall(OzwellModel):
    type: Literal["function_call"] = "function_call"
    id: str | None = None
    call_id: str
    name: str
    arguments: str
    status: str | None = None


ResponseOutputItem = Annotated[Union[ResponseOutputMessage, ResponseFunctionToolCall], Field(discriminator="type")]


class ResponseUsage(OzwellModel):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: dict[str, int] | None = None
    output_tokens_details: dict[str, int] | None = None


class ResponseOzwell(OzwellModel):
    """Ozwell's extension of a response: the engine that ran it and its timings."""

    engine: str | None = None
    model_revision: str | None = None
    queue_time_ms: float | None = None
    time_to_first_token_ms: float | None = None
    generation_tokens_per_s: float | None = None


class Response(OzwellModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["completed", "incomplete", "in_progress", "failed", "queued", "cancelled"]
    completed_at: int | None = None
    error: dict[str, Any] | None = None
    incomplete_details: dict[str, Any] | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[ResponseOutputItem]
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    store: bool | None = None
    temperature: float | None = None
    top_p: float | None = None
    tool_choice: str | dict[str, Any] | None = None
    tools: list[Any] = []
    truncation: str | None = None
    metadata: dict[str, str] | None = None
    text: dict[str, Any] | None = None
    usage: ResponseUsage | None = None
    user: str | None = None
    ozwell: ResponseOzwell | None = None

    @property
    def output_text(self) -> str:
        """The text of every output_text part, joined (as the openai SDKs' `output_text`)."""
        return "".join(part.text for item in self.output if isinstance(item, ResponseOutputMessage)
                       for part in item.content)


class ResponseDeleted(OzwellModel):
    id: str
    object: str = "response.deleted"
    deleted: bool


class ResponseInputItemList(OzwellModel):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


# ---- Responses stream events --------------------------------------------------------------------


class _Event(OzwellModel):
    sequence_number: int


class ResponseCreatedEvent(_Event):
    type: Literal["response.created"]
    response: Response


class ResponseInProgressEvent(_Event):
    type: Literal["response.in_progress"]
    response: Response


class ResponseCompletedEvent(_Event):
    type: Literal["response.completed"]
    response: Response


class ResponseIncompleteEvent(_Event):
    type: Literal["response.incomplete"]
    response: Response


class ResponseFailedEvent(_Event):
    type: Literal["response.failed"]
    response: Response


class ResponseOutputItemAddedEvent(_Event):
    type: Literal["response.output_item.added"]
    output_index: int
    item: ResponseOutputItem


class ResponseOutputItemDoneEvent(_Event):
    type: Literal["response.output_item.done"]
    output_index: int
    item: ResponseOutputItem


class ResponseContentPartAddedEvent(_Event):
    type: Literal["response.content_part.added"]
    item_id: str
    output_index: int
    content_index: int
    part: ResponseOutputText


class ResponseContentPartDoneEvent(_Event):
    type: Literal["response.content_part.done"]
    item_id: str
    output_index: int
    content_index: int
    part: ResponseOutputText


class ResponseTextDeltaEvent(_Event):
    type: Literal["response.output_text.delta"]
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[Any] = []


class ResponseTextDoneEvent(_Event):
    type: Literal["response.output_text.done"]
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[Any] = []


class ResponseFunctionCallArgumentsDeltaEvent(_Event):
    type: Literal["response.function_call_arguments.delta"]
    item_id: str
    output_index: int
    delta: str


class ResponseFunctionCallArgumentsDoneEvent(_Event):
    type: Literal["response.function_call_arguments.done"]
    item_id: str
    output_index: int
    arguments: str
    name: str | None = None


class ResponseErrorEvent(OzwellModel):
    type: Literal["error"]
    message: str | None = None
    code: str | None = None
    param: str | None = None
    sequence_number: int | None = None


ResponseStreamEvent = Annotated[Union[
    ResponseCreatedEvent, ResponseInProgressEvent, ResponseCompletedEvent, ResponseIncompleteEvent,
    ResponseFailedEvent, ResponseOutputItemAddedEvent, ResponseOutputItemDoneEvent, ResponseContentPartAddedEvent,
    ResponseContentPartDoneEvent, ResponseTextDeltaEvent, ResponseTextDoneEvent,
    ResponseFunctionCallArgumentsDeltaEvent, ResponseFunctionCallArgumentsDoneEvent, ResponseErrorEvent,
], Field(discriminator="type")]

RESPONSE_FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})

# ---- the admin API ------------------------------------------------------------------------------


class ApiKey(OzwellModel):
    id: str
    object: Literal["api_key"] = "api_key"
    name: str
    owner: str
    plan: str
    prefix: str
    scopes: list[str]
    models: list[str] | None = None
    rpm: int | None = None
    tpm: int | None = None
    created_at: int | None = None
    last_used_at: int | None = None
    revoked_at: int | None = None


class ApiKeyCreated(ApiKey):
    key: str  # the secret: shown only in this answer


class ApiKeyRevoked(ApiKey):
    revoked: bool


class ApiKeyList(OzwellModel):
    object: Literal["list"] = "list"
    data: list[ApiKey]


class UsageRecord(OzwellModel):
    id: int
    key_id: str | None = None
    owner: str | None = None
    model: str | None = None
    endpoint: str
    prompt_tokens: int
    completion_tokens: int
    status: int
    latency_ms: float | None = None
    created_at: int


class UsageList(OzwellModel):
    object: Literal["list"] = "list"
    data: list[UsageRecord]
