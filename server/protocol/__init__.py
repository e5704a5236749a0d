"""Request bodies of the OpenAI routes, as pydantic models on one shared base, a module per resource (as vLLM's
entrypoints split theirs): the base and shared checks (base), tools and formats (formats), the generation and
sampling fields (fields), then chat, completions (and embeddings), responses and batches."""

from server.protocol.base import (
    INT32_MAX,
    OpenAIBaseModel,
    StreamOptions,
    check_metadata,
)
from server.protocol.batches import (
    BATCH_ENDPOINTS,
    BatchFileExpiration,
    CreateBatchRequest,
)
from server.protocol.chat import MAX_MESSAGES, ChatCompletionRequest, ChatCompletionUpdateRequest, ChatMessage
from server.protocol.completions import (
    MAX_EMBEDDING_INPUTS,
    CompletionRequest,
    EmbeddingRequest,
    PromptField,
    as_prompt_list,
)
from server.protocol.fields import GenerationFields, SamplingFields
from server.protocol.formats import (
    MAX_TOOLS_BYTES,
    TOOL_NAME,
    ChatTool,
    JsonSchemaSpec,
    ResponseFormat,
    TextFormat,
    ToolCall,
    tool_plan,
)
from server.protocol.responses import ResponseRequest
from server.protocol.vector_stores import *  # noqa: F403 - the bodies of /v1/vector_stores

__all__ = [
    "BATCH_ENDPOINTS", "INT32_MAX", "MAX_EMBEDDING_INPUTS", "MAX_MESSAGES", "MAX_TOOLS_BYTES", "TOOL_NAME",
    "BatchFileExpiration", "ChatCompletionRequest", "ChatCompletionUpdateRequest", "ChatMessage", "ChatTool", "CompletionRequest",
    "CreateBatchRequest", "EmbeddingRequest", "GenerationFields", "JsonSchemaSpec", "OpenAIBaseModel",
    "PromptField", "ResponseFormat", "ResponseRequest", "SamplingFields", "StreamOptions", "TextFormat", "ToolCall",
    "as_prompt_list", "check_metadata", "tool_plan",
]
