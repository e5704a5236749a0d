"""The resources of `Ozwell` and `AsyncOzwell`: the same calls, synchronous and asynchronous."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, overload

from pydantic import TypeAdapter
from typing_extensions import Unpack

from ozwell._client import FinalRequest
from ozwell._specs import FileInput, as_list, body, epoch, query, segment, upload
from ozwell._streaming import AsyncStream, Stream
from ozwell.stored_chat import AsyncStoredChatCompletions, StoredChatCompletions
from ozwell.types import (
    RESPONSE_FINAL_EVENTS,
    ApiKeyCreated,
    ApiKeyList,
    ApiKeyRevoked,
    Batch,
    BatchList,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessageParam,
    ChatCompletionToolParam,
    Completion,
    CreateEmbeddingResponse,
    FileDeleted,
    FileList,
    FileObject,
    Model,
    ModelList,
    RequestOptions,
    Response,
    ResponseDeleted,
    ResponseFormatParam,
    ResponseFunctionToolParam,
    ResponseInputItemList,
    ResponseInputItemParam,
    ResponseStreamEvent,
    ResponseTextConfigParam,
    StreamOptionsParam,
    ToolChoiceParam,
    UsageList,
)

if TYPE_CHECKING:
    from ozwell._client import AsyncOzwell, Ozwell

_EVENT = TypeAdapter[ResponseStreamEvent](ResponseStreamEvent)


def _chunk(payload: dict[str, Any]) -> ChatCompletionChunk:
    return ChatCompletionChunk.model_validate(payload)


def _completion_chunk(payload: dict[str, Any]) -> Completion:
    return Completion.model_validate(payload)


def _event(payload: dict[str, Any]) -> ResponseStreamEvent:
    return _EVENT.validate_python(payload)


# ---- what each call sends -----------------------------------------------------------------------


def _chat(fields: dict[str, Any], options: RequestOptions) -> FinalRequest:
    fields["messages"] = list(fields["messages"])
    fields["tools"] = as_list(fields.get("tools"))
    return FinalRequest("POST", "/chat/completions", json=body(**fields), stream=bool(fields.get("stream")),
                        options=options)


def _completion(fields: dict[str, Any], options: RequestOptions) -> FinalRequest:
    return FinalRequest("POST", "/completions", json=body(**fields), stream=bool(fields.get("stream")),
                        options=options)


def _response(fields: dict[str, Any], options: RequestOptions) -> FinalRequest:
    if not isinstance(fields.get("input"), (str, type(None))):
        fields["input"] = list(fields["input"])
    fields["tools"] = as_list(fields.get("tools"))
    return FinalRequest("POST", "/responses", json=body(**fields), stream=bool(fields.get("stream")),
                        options=options)


def _batch(fields: dict[str, Any], options: RequestOptions) -> FinalRequest:
    return FinalRequest("POST", "/batches", json=body(**fields), options=options)


def _batch_path(batch_id: str, suffix: str = "") -> str:
    return f"/batches/{segment(batch_id)}{suffix}"


def _fields(values: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in values.items() if name not in ("self", "options")}


class _Resource:
    def __init__(self, client: Ozwell) -> None:
        self._client = client


class _AsyncResource:
    def __init__(self, client: AsyncOzwell) -> None:
        self._client = client


# ---- synchronous --------------------------------------------------------------------------------


class ChatCompletions(StoredChatCompletions):
    """POST /chat/completions, and (from StoredChatCompletions) the stored ones' list, retrieve, update, delete
    and messages."""

    @overload
    def create(self, *, model: str, messages: Iterable[ChatCompletionMessageParam], stream: Literal[False] = False,
               max_tokens: int | None = None, max_completion_tokens: int | None = None,
               temperature: float | None = None, top_p: float | None = None, n: int | None = None,
               stop: str | list[str] | None = None, seed: int | None = None,
               presence_penalty: float | None = None, frequency_penalty: float | None = None,
               logit_bias: dict[str, int] | None = None, logprobs: bool | None = None,
               top_logprobs: int | None = None, tools: Iterable[ChatCompletionToolParam] | None = None,
               tool_choice: ToolChoiceParam | None = None, parallel_tool_calls: bool | None = None,
               response_format: ResponseFormatParam | None = None, stream_options: StreamOptionsParam | None = None,
               store: bool | None = None, metadata: dict[str, str] | None = None, user: str | None = None,
               **options: Unpack[RequestOptions]) -> ChatCompletion: ...

    @overload
    def create(self, *, model: str, messages: Iterable[ChatCompletionMessageParam], stream: Literal[True],
               max_tokens: int | None = None, max_completion_tokens: int | None = None,
               temperature: float | None = None, top_p: float | None = None, n: int | None = None,
               stop: str | list[str] | None = None, seed: int | None = None,
               presence_penalty: float | None = None, frequency_penalty: float | None = None,
               logit_bias: dict[str, int] | None = None, logprobs: bool | None = None,
               top_logprobs: int | None = None, tools: Iterable[ChatCompletionToolParam] | None = None,
               tool_choice: ToolChoiceParam | None = None, parallel_tool_calls: bool | None = None,
               response_format: ResponseFormatParam | None = None, stream_options: StreamOptionsParam | None = None,
               store: bool | None = None, metadata: dict[str, str] | None = None, user: str | None = None,
               **options: Unpack[RequestOptions]) -> Stream[ChatCompletionChunk]: ...

    def create(self, *, model: str, messages: Iterable[ChatCompletionMessageParam], stream: bool = False,
               max_tokens: int | None = None, max_completion_tokens: int | None = None,
               temperature: float | None = None, top_p: float | None = None, n: int | None = None,
               stop: str | list[str] | None = None, seed: int | None = None,
               presence_penalty: float | None = None, frequency_penalty: float | None = None,
               logit_bias: dict[str, int] | None = None, logprobs: bool | None = None,
               top_logprobs: int | None = None, tools: Iterable[ChatCompletionToolParam] | None = None,
               tool_choice: ToolChoiceParam | None = None, parallel_tool_calls: bool | None = None,
               response_format: ResponseFormatParam | None = None, stream_options: StreamOptionsParam | None = None,
               store: bool | None = None, metadata: dict[str, str] | None = None, user: str | None = None,
               **options: Unpack[RequestOptions]) -> ChatCompletion | Stream[ChatCompletionChunk]:
        """POST /chat/completions; with stream=True, a Stream of chunks (iterate it)."""
        request = _chat(_fields(locals()), options)
        response = self._client.request(request)
        if request.stream:
            return Stream(response, _chunk)
        return ChatCompletion.model_validate(response.json())


class Chat(_Resource):
    def __init__(self, client: Ozwell) -> None:
        super().__init__(client)
        self.completions = ChatCompletions(client)


class Completions(_Resource):
    @overload
    def create(self, *, model: str, prompt: str | list[str] | list[int] | list[list[int]],
               stream: Literal[False] = False, max_tokens: int | None = None, temperature: float | None = None,
               top_p: float | None = None, n: int | None = None, stop: str | list[str] | None = None,
               seed: int | None = None, echo: bool | None = None, logprobs: int | None = None,
               presence_penalty: float | None = None, frequency_penalty: float | None = None,
               stream_options: StreamOptionsParam | None = None, suffix: str | None = None, user: str | None = None,
               **options: Unpack[RequestOptions]) -> Completion: ...

    @overload
    def create(self, *, model: str, prompt: str | list[str] | list[int] | list[list[int]], stream: Literal[True],
               max_tokens: int | None = None, temperature: float | None = None,
               top_p: float | None = None, n: int | None = None, stop: str | list[str] | None = None,
               seed: int | None = None, echo: bool | None = None, logprobs: int | None = None,
               presence_penalty: float | None = None, frequency_penalty: float | None = None,
               stream_options: StreamOptionsParam | None = None, suffix: str | None = None, user: str | None = None,
               **options: Unpack[RequestOptions]) -> Stream[Completion]: ...

    def create(self, *, model: str, prompt: str | list[str] | list[int] | list[list[int]], stream: bool = False,
               max_tokens: int | None = None, temperature: float | None = None,
               top_p: float | None = None, n: int | None = None, stop: str | list[str] | None = None,
               seed: int | None = None, echo: bool | None = None, logprobs: int | None = None,
               presence_penalty: float | None = None, frequency_penalty: float | None = None,
               stream_options: StreamOptionsParam | None = None, suffix: str | None = None, user: str | None = None,
               **options: Unpack[RequestOptions]) -> Completion | Stream[Completion]:
        """POST /completions (legacy text completions); with stream=True, a Stream of Completion chunks."""
        request = _completion(_fields(locals()), options)
        response = self._client.request(request)
        if request.stream:
            return Stream(response, _completion_chunk)
        return Completion.model_validate(response.json())


class Embeddings(_Resource):
    def create(self, *, model: str, input: str | list[str] | list[int] | list[list[int]],
               dimensions: int | None = None, encoding_format: Literal["float", "base64"] | None = None,
               user: str | None = None, **options: Unpack[RequestOptions]) -> CreateEmbeddingResponse:
        """POST /embeddings."""
        request = FinalRequest("POST", "/embeddings", json=body(**_fields(locals())), options=options)
        return CreateEmbeddingResponse.model_validate(self._client.request(request).json())


class Models(_Resource):
    def list(self, **options: Unpack[RequestOptions]) -> ModelList:
        """GET /models: the models this key may use."""
        return ModelList.model_validate(self._client.request(FinalRequest("GET", "/models", options=options)).json())

    def retrieve(self, model: str, **options: Unpack[RequestOptions]) -> Model:
        """GET /models/{model}: with `ozwell` (engine, device, task, revision, max_model_len)."""
        request = FinalRequest("GET", f"/models/{segment(model)}", options=options)
        return Model.model_validate(self._client.request(request).json())


class Files(_Resource):
    def create(self, *, file: FileInput, purpose: str, filename: str | None = None,
               **options: Unpack[RequestOptions]) -> FileObject:
        """POST /files: upload from a path, bytes, or a binary file object or stream (streamed, not read whole)."""
        return FileObject.model_validate(self._client.request(upload(file, purpose, filename, options)).json())

    def list(self, *, purpose: str | None = None, limit: int | None = None, order: Literal["asc", "desc"] | None = None,
             after: str | None = None, **options: Unpack[RequestOptions]) -> FileList:
        request = FinalRequest("GET", "/files", params=query(purpose=purpose, limit=limit, order=order, after=after),
                               options=options)
        return FileList.model_validate(self._client.request(request).json())

    def retrieve(self, file_id: str, **options: Unpack[RequestOptions]) -> FileObject:
        request = FinalRequest("GET", f"/files/{segment(file_id)}", options=options)
        return FileObject.model_validate(self._client.request(request).json())

    def content(self, file_id: str, **options: Unpack[RequestOptions]) -> bytes:
        """GET /files/{id}/content: the file's bytes."""
        request = FinalRequest("GET", f"/files/{segment(file_id)}/content", options=options)
        return self._client.request(request).content

    def delete(self, file_id: str, **options: Unpack[RequestOptions]) -> FileDeleted:
        request = FinalRequest("DELETE", f"/files/{segment(file_id)}", options=options)
        return FileDeleted.model_validate(self._client.request(request).json())


class Batches(_Resource):
    def create(self, *, input_file_id: str, endpoint: str, completion_window: Literal["24h"] = "24h",
               metadata: dict[str, str] | None = None, output_expires_after: dict[str, Any] | None = None,
               **options: Unpack[RequestOptions]) -> Batch:
        """POST /batches: run an uploaded `purpose="batch"` JSONL file behind interactive traffic."""
        return Batch.model_validate(self._client.request(_batch(_fields(locals()), options)).json())

    def retrieve(self, batch_id: str, **options: Unpack[RequestOptions]) -> Batch:
        return Batch.model_validate(self._client.request(FinalRequest("GET", _batch_path(batch_id),
                                                                      options=options)).json())

    def list(self, *, limit: int | None = None, after: str | None = None,
             **options: Unpack[RequestOptions]) -> BatchList:
        request = FinalRequest("GET", "/batches", params=query(limit=limit, after=after), options=options)
        return BatchList.model_validate(self._client.request(request).json())

    def cancel(self, batch_id: str, **options: Unpack[RequestOptions]) -> Batch:
        request = FinalRequest("POST", _batch_path(batch_id, "/cancel"), options=options)
        return Batch.model_validate(self._client.request(request).json())


class Responses(_Resource):
    @overload
    def create(self, *, model: str, input: str | Iterable[ResponseInputItemParam],
               stream: Literal[False] = False, instructions: str | None = None,
               previous_response_id: str | None = None, store: bool | None = None,
               max_output_tokens: int | None = None, temperature: float | None = None, top_p: float | None = None,
               tools: Iterable[ResponseFunctionToolParam] | None = None, tool_choice: Any = None,
               parallel_tool_calls: bool | None = None, text: ResponseTextConfigParam | None = None,
               truncation: Literal["auto", "disabled"] | None = None, metadata: dict[str, str] | None = None,
               user: str | None = None, background: bool | None = None, include: list[str] | None = None, **options: Unpack[RequestOptions]) -> Response: ...

    @overload
    def create(self, *, model: str, input: str | Iterable[ResponseInputItemParam], stream: Literal[True],
               instructions: str | None = None,
               previous_response_id: str | None = None, store: bool | None = None,
               max_output_tokens: int | None = None, temperature: float | None = None, top_p: float | None = None,
               tools: Iterable[ResponseFunctionToolParam] | None = None, tool_choice: Any = None,
               parallel_tool_calls: bool | None = None, text: ResponseTextConfigParam | None = None,
               truncation: Literal["auto", "disabled"] | None = None, metadata: dict[str, str] | None = None,
               user: str | None = None, background: bool | None = None, include: list[str] | None = None, **options: Unpack[RequestOptions]) -> Stream[ResponseStreamEvent]: ...

    def create(self, *, model: str, input: str | Iterable[ResponseInputItemParam], stream: bool = False,
               instructions: str | None = None,
               previous_response_id: str | None = None, store: bool | None = None,
               max_output_tokens: int | None = None, temperature: float | None = None, top_p: float | None = None,
               tools: Iterable[ResponseFunctionToolParam] | None = None, tool_choice: Any = None,
               parallel_tool_calls: bool | None = None, text: ResponseTextConfigParam | None = None,
               truncation: Literal["auto", "disabled"] | None = None, metadata: dict[str, str] | None = None,
               user: str | None = None, background: bool | None = None, include: list[str] | None = None,
               **options: Unpack[RequestOptions]) -> Response | Stream[ResponseStreamEvent]:
        """POST /responses; with stream=True, a Stream of typed semantic events ending with
        response.completed, response.incomplete or response.failed."""
        request = _response(_fields(locals()), options)
        response = self._client.request(request)
        if request.stream:
            return Stream(response, _event, RESPONSE_FINAL_EVENTS)
        return Response.model_validate(response.json())

    @overload
    def retrieve(self, response_id: str, *, stream: Literal[False] = False,
                 **options: Unpack[RequestOptions]) -> Response: ...

    @overload
    def retrieve(self, response_id: str, *, stream: Literal[True], starting_after: int | None = None,
                 **options: Unpack[RequestOptions]) -> Stream[ResponseStreamEvent]: ...

    def retrieve(self, response_id: str, *, stream: bool = False, starting_after: int | None = None,
                 **options: Unpack[RequestOptions]) -> Response | Stream[ResponseStreamEvent]:
        """GET /responses/{id}; with stream=True, a background response's events again, after `starting_after`."""
        params = query(stream="true", starting_after=starting_after) if stream else None
        request = FinalRequest("GET", f"/responses/{segment(response_id)}", params=params, stream=stream,
                               options=options)
        response = self._client.request(request)
        if stream:
            return Stream(response, _event, RESPONSE_FINAL_EVENTS)
        return Response.model_validate(response.json())

    def delete(self, response_id: str, **options: Unpack[RequestOptions]) -> ResponseDeleted:
        request = FinalRequest("DELETE", f"/responses/{segment(response_id)}", options=options)
        return ResponseDeleted.model_validate(self._client.request(request).json())

    def cancel(self, response_id: str, **options: Unpack[RequestOptions]) -> Response:
        """POST /responses/{id}/cancel: stop a background response; it ends `cancelled`."""
        request = FinalRequest("POST", f"/responses/{segment(response_id)}/cancel", options=options)
        return Response.model_validate(self._client.request(request).json())

    def input_items(self, response_id: str, *, limit: int | None = None, order: Literal["asc", "desc"] | None = None,
                    after: str | None = None, **options: Unpack[RequestOptions]) -> ResponseInputItemList:
        request = FinalRequest("GET", f"/responses/{segment(response_id)}/input_items",
                               params=query(limit=limit, order=order, after=after), options=options)
        return ResponseInputItemList.model_validate(self._client.request(request).json())


class Keys(_Resource):
    def create(self, *, name: str, plan: str | None = None, owner: str | None = None, rpm: int | None = None,
               tpm: int | None = None, scopes: list[str] | None = None, models: list[str] | None = None,
               admin: bool | None = None, operator: bool | None = None,
               **options: Unpack[RequestOptions]) -> ApiKeyCreated:
        """POST /admin/keys (an admin key; for its own owner). The answer's `key` is the only time the
        secret is shown."""
        request = FinalRequest("POST", "/admin/keys", json=body(**_fields(locals())), options=options)
        return ApiKeyCreated.model_validate(self._client.request(request).json())

    def list(self, **options: Unpack[RequestOptions]) -> ApiKeyList:
        """GET /admin/keys: this owner's keys, revoked ones included (no secrets)."""
        return ApiKeyList.model_validate(self._client.request(FinalRequest("GET", "/admin/keys",
                                                                           options=options)).json())

    def revoke(self, key_id: str, **options: Unpack[RequestOptions]) -> ApiKeyRevoked:
        """DELETE /admin/keys/{id}: the key stops working at once."""
        request = FinalRequest("DELETE", f"/admin/keys/{segment(key_id)}", options=options)
        return ApiKeyRevoked.model_validate(self._client.request(request).json())


class Admin(_Resource):
    def __init__(self, client: Ozwell) -> None:
        super().__init__(client)
        self.keys = Keys(client)

    def usage(self, *, key_id: str | None = None, since: int | datetime | None = None, limit: int | None = None,
              **options: Unpack[RequestOptions]) -> UsageList:
        """GET /admin/usage: this owner's usage records, newest first (`since`: epoch seconds or a datetime)."""
        request = FinalRequest("GET", "/admin/usage", params=query(key_id=key_id, since=epoch(since), limit=limit),
                               options=options)
        return UsageList.model_validate(self._client.request(request).json())


# ---- asynchronous -------------------------------------------------------------------------------


class AsyncChatCompletions(AsyncStoredChatCompletions):
    """POST /chat/completions, and (from AsyncStoredChatCompletions) the stored ones' list, retrieve, update,
    delete and messages."""

    @overload
    async def create(self, *, model: str, messages: Iterable[ChatCompletionMessageParam],
                     stream: Literal[False] = False,
               max_tokens: int | None = None, max_completion_tokens: int | None = None,
               temperature: float | None = None, top_p: float | None = None, n: int | None = None,
               stop: str | list[str] | None = None, seed: int | None = None,
               presence_penalty: float | None = None, frequency_penalty: float | None = None,
               logit_bias: dict[str, int] | None = None, logprobs: bool | None = None,
               top_logprobs: int | None = None, tools: Iterable[ChatCompletionToolParam] | None = None,
               tool_choice: ToolChoiceParam | None = None, parallel_tool_calls: bool | None = None,
               response_format: ResponseFormatParam | None = None, stream_options: StreamOptionsParam | None = None,
               store: bool | None = None, metadata: dict[str, str] | None = None, user: str | None = None,
               **options: Unpack[RequestOptions]) -> ChatCompletion: ...

    @overload
    async def create(self, *, model: str, messages: Iterable[ChatCompletionMessageParam], stream: Literal[True],
               max_tokens: int | None = None, max_completion_tokens: int | None = None,
               temperature: float | None = None, top_p: float | None = None, n: int | None = None,
               stop: str | list[str] | None = None, seed: int | None = None,
               presence_penalty: float | None = None, frequency_penalty: float | None = None,
               logit_bias: dict[str, int] | None = None, logprobs: bool | None = None,
               top_logprobs: int | None = None, tools: Iterable[ChatCompletionToolParam] | None = None,
               tool_choice: ToolChoiceParam | None = None, parallel_tool_calls: bool | None = None,
               response_format: ResponseFormatParam | None = None, stream_options: StreamOptionsParam | None = None,
               store: bool | None = None, metadata: dict[str, str] | None = None, user: str | None = None,
               **options: Unpack[RequestOptions]) -> AsyncStream[ChatCompletionChunk]: ...

    async def create(self, *, model: str, messages: Iterable[ChatCompletionMessageParam], stream: bool = False,
               max_tokens: int | None = None, max_completion_tokens: int | None = None,
               temperature: float | None = None, top_p: float | None = None, n: int | None = None,
               stop: str | list[str] | None = None, seed: int | None = None,
               presence_penalty: float | None = None, frequency_penalty: float | None = None,
               logit_bias: dict[str, int] | None = None, logprobs: bool | None = None,
               top_logprobs: int | None = None, tools: Iterable[ChatCompletionToolParam] | None = None,
               tool_choice: ToolChoiceParam | None = None, parallel_tool_calls: bool | None = None,
               response_format: ResponseFormatParam | None = None, stream_options: StreamOptionsParam | None = None,
               store: bool | None = None, metadata: dict[str, str] | None = None, user: str | None = None,
               **options: Unpack[RequestOptions]) -> ChatCompletion | AsyncStream[ChatCompletionChunk]:
        """POST /chat/completions; with stream=True, a Stream of chunks (iterate it)."""
        request = _chat(_fields(locals()), options)
        response = await self._client.request(request)
        if request.stream:
            return AsyncStream(response, _chunk)
        return ChatCompletion.model_validate(response.json())


class AsyncChat(_AsyncResource):
    def __init__(self, client: AsyncOzwell) -> None:
        super().__init__(client)
        self.completions = AsyncChatCompletions(client)


class AsyncCompletions(_AsyncResource):
    @overload
    async def create(self, *, model: str, prompt: str | list[str] | list[int] | list[list[int]],
               stream: Literal[False] = False, max_tokens: int | None = None, temperature: float | None = None,
               top_p: float | None = None, n: int | None = None, stop: str | list[str] | None = None,
               seed: int | None = None, echo: bool | None = None, logprobs: int | None = None,
               presence_penalty: float | None = None, frequency_penalty: float | None = None,
               stream_options: StreamOptionsParam | None = None, suffix: str | None = None, user: str | None = None,
               **options: Unpack[RequestOptions]) -> Completion: ...

    @overload
    async def create(self, *, model: str, prompt: str | list[str] | list[int] | list[list[int]], stream: Literal[True],
               max_tokens: int | None = None, temperature: float | None = None,
               top_p: float | None = None, n: int | None = None, stop: str | list[str] | None = None,
               seed: int | None = None, echo: bool | None = None, logprobs: int | None = None,
               presence_penalty: float | None = None, frequency_penalty: float | None = None,
               stream_options: StreamOptionsParam | None = None, suffix: str | None = None, user: str | None = None,
               **options: Unpack[RequestOptions]) -> AsyncStream[Completion]: ...

    async def create(self, *, model: str, prompt: str | list[str] | list[int] | list[list[int]], stream: bool = False,
               max_tokens: int | None = None, temperature: float | None = None,
               top_p: float | None = None, n: int | None = None, stop: str | list[str] | None = None,
               seed: int | None = None, echo: bool | None = None, logprobs: int | None = None,
               presence_penalty: float | None = None, frequency_penalty: float | None = None,
               stream_options: StreamOptionsParam | None = None, suffix: str | None = None, user: str | None = None,
               **options: Unpack[RequestOptions]) -> Completion | AsyncStream[Completion]:
        """POST /completions (legacy text completions); with stream=True, a Stream of Completion chunks."""
        request = _completion(_fields(locals()), options)
        response = await self._client.request(request)
        if request.stream:
            return AsyncStream(response, _completion_chunk)
        return Completion.model_validate(response.json())


class AsyncEmbeddings(_AsyncResource):
    async def create(self, *, model: str, input: str | list[str] | list[int] | list[list[int]],
               dimensions: int | None = None, encoding_format: Literal["float", "base64"] | None = None,
               user: str | None = None, **options: Unpack[RequestOptions]) -> CreateEmbeddingResponse:
        """POST /embeddings."""
        request = FinalRequest("POST", "/embeddings", json=body(**_fields(locals())), options=options)
        return CreateEmbeddingResponse.model_validate((await self._client.request(request)).json())


class AsyncModels(_AsyncResource):
    async def list(self, **options: Unpack[RequestOptions]) -> ModelList:
        """GET /models: the models this key may use."""
        response = await self._client.request(FinalRequest("GET", "/models", options=options))
        return ModelList.model_validate(response.json())

    async def retrieve(self, model: str, **options: Unpack[RequestOptions]) -> Model:
        """GET /models/{model}: with `ozwell` (engine, device, task, revision, max_model_len)."""
        request = FinalRequest("GET", f"/models/{segment(model)}", options=options)
        return Model.model_validate((await self._client.request(request)).json())


class AsyncFiles(_AsyncResource):
    async def create(self, *, file: FileInput, purpose: str, filename: str | None = None,
               **options: Unpack[RequestOptions]) -> FileObject:
        """POST /files: upload from a path, bytes, or a binary file object or stream (streamed, not read whole)."""
        return FileObject.model_validate((await self._client.request(upload(file, purpose, filename, options))).json())

    async def list(self, *, purpose: str | None = None, limit: int | None = None,
                   order: Literal["asc", "desc"] | None = None,
             after: str | None = None, **options: Unpack[RequestOptions]) -> FileList:
        request = FinalRequest("GET", "/files", params=query(purpose=purpose, limit=limit, order=order, after=after),
                               options=options)
        return FileList.model_validate((await self._client.request(request)).json())

    async def retrieve(self, file_id: str, **options: Unpack[RequestOptions]) -> FileObject:
        request = FinalRequest("GET", f"/files/{segment(file_id)}", options=options)
        return FileObject.model_validate((await self._client.request(request)).json())

    async def content(self, file_id: str, **options: Unpack[RequestOptions]) -> bytes:
        """GET /files/{id}/content: the file's bytes."""
        request = FinalRequest("GET", f"/files/{segment(file_id)}/content", options=options)
        return (await self._client.request(request)).content

    async def delete(self, file_id: str, **options: Unpack[RequestOptions]) -> FileDeleted:
        request = FinalRequest("DELETE", f"/files/{segment(file_id)}", options=options)
        return FileDeleted.model_validate((await self._client.request(request)).json())


class AsyncBatches(_AsyncResource):
    async def create(self, *, input_file_id: str, endpoint: str, completion_window: Literal["24h"] = "24h",
                     metadata: dict[str, str] | None = None, output_expires_after: dict[str, Any] | None = None,
                     **options: Unpack[RequestOptions]) -> Batch:
        """POST /batches: run an uploaded `purpose="batch"` JSONL file behind interactive traffic."""
        return Batch.model_validate((await self._client.request(_batch(_fields(locals()), options))).json())

    async def retrieve(self, batch_id: str, **options: Unpack[RequestOptions]) -> Batch:
        request = FinalRequest("GET", _batch_path(batch_id), options=options)
        return Batch.model_validate((await self._client.request(request)).json())

    async def list(self, *, limit: int | None = None, after: str | None = None,
                   **options: Unpack[RequestOptions]) -> BatchList:
        request = FinalRequest("GET", "/batches", params=query(limit=limit, after=after), options=options)
        return BatchList.model_validate((await self._client.request(request)).json())

    async def cancel(self, batch_id: str, **options: Unpack[RequestOptions]) -> Batch:
        request = FinalRequest("POST", _batch_path(batch_id, "/cancel"), options=options)
        return Batch.model_validate((await self._client.request(request)).json())


class AsyncResponses(_AsyncResource):
    @overload
    async def create(self, *, model: str, input: str | Iterable[ResponseInputItemParam],
               stream: Literal[False] = False, instructions: str | None = None,
               previous_response_id: str | None = None, store: bool | None = None,
               max_output_tokens: int | None = None, temperature: float | None = None, top_p: float | None = None,
               tools: Iterable[ResponseFunctionToolParam] | None = None, tool_choice: Any = None,
               parallel_tool_calls: bool | None = None, text: ResponseTextConfigParam | None = None,
               truncation: Literal["auto", "disabled"] | None = None, metadata: dict[str, str] | None = None,
               user: str | None = None, background: bool | None = None, include: list[str] | None = None, **options: Unpack[RequestOptions]) -> Response: ...

    @overload
    async def create(self, *, model: str, input: str | Iterable[ResponseInputItemParam], stream: Literal[True],
               instructions: str | None = None,
               previous_response_id: str | None = None, store: bool | None = None,
               max_output_tokens: int | None = None, temperature: float | None = None, top_p: float | None = None,
               tools: Iterable[ResponseFunctionToolParam] | None = None, tool_choice: Any = None,
               parallel_tool_calls: bool | None = None, text: ResponseTextConfigParam | None = None,
               truncation: Literal["auto", "disabled"] | None = None, metadata: dict[str, str] | None = None,
               user: str | None = None, background: bool | None = None, include: list[str] | None = None, **options: Unpack[RequestOptions]) -> AsyncStream[ResponseStreamEvent]: ...

    async def create(self, *, model: str, input: str | Iterable[ResponseInputItemParam], stream: bool = False,
               instructions: str | None = None,
               previous_response_id: str | None = None, store: bool | None = None,
               max_output_tokens: int | None = None, temperature: float | None = None, top_p: float | None = None,
               tools: Iterable[ResponseFunctionToolParam] | None = None, tool_choice: Any = None,
               parallel_tool_calls: bool | None = None, text: ResponseTextConfigParam | None = None,
               truncation: Literal["auto", "disabled"] | None = None, metadata: dict[str, str] | None = None,
               user: str | None = None, background: bool | None = None, include: list[str] | None = None,
               **options: Unpack[RequestOptions]) -> Response | AsyncStream[ResponseStreamEvent]:
        """POST /responses; with stream=True, a Stream of typed semantic events ending with
        response.completed, response.incomplete or response.failed."""
        request = _response(_fields(locals()), options)
        response = await self._client.request(request)
        if request.stream:
            return AsyncStream(response, _event, RESPONSE_FINAL_EVENTS)
        return Response.model_validate(response.json())

    @overload
    async def retrieve(self, response_id: str, *, stream: Literal[False] = False,
                       **options: Unpack[RequestOptions]) -> Response: ...

    @overload
    async def retrieve(self, response_id: str, *, stream: Literal[True], starting_after: int | None = None,
                       **options: Unpack[RequestOptions]) -> AsyncStream[ResponseStreamEvent]: ...

    async def retrieve(self, response_id: str, *, stream: bool = False, starting_after: int | None = None,
                       **options: Unpack[RequestOptions]) -> Response | AsyncStream[ResponseStreamEvent]:
        """GET /responses/{id}; with stream=True, a background response's events again, after `starting_after`."""
        params = query(stream="true", starting_after=starting_after) if stream else None
        request = FinalRequest("GET", f"/responses/{segment(response_id)}", params=params, stream=stream,
                               options=options)
        response = await self._client.request(request)
        if stream:
            return AsyncStream(response, _event, RESPONSE_FINAL_EVENTS)
        return Response.model_validate(response.json())

    async def delete(self, response_id: str, **options: Unpack[RequestOptions]) -> ResponseDeleted:
        request = FinalRequest("DELETE", f"/responses/{segment(response_id)}", options=options)
        return ResponseDeleted.model_validate((await self._client.request(request)).json())

    async def cancel(self, response_id: str, **options: Unpack[RequestOptions]) -> Response:
        """POST /responses/{id}/cancel: stop a background response; it ends `cancelled`."""
        request = FinalRequest("POST", f"/responses/{segment(response_id)}/cancel", options=options)
        return Response.model_validate((await self._client.request(request)).json())

    async def input_items(self, response_id: str, *, limit: int | None = None,
                          order: Literal["asc", "desc"] | None = None,
                    after: str | None = None, **options: Unpack[RequestOptions]) -> ResponseInputItemList:
        request = FinalRequest("GET", f"/responses/{segment(response_id)}/input_items",
                               params=query(limit=limit, order=order, after=after), options=options)
        return ResponseInputItemList.model_validate((await self._client.request(request)).json())


class AsyncKeys(_AsyncResource):
    async def create(self, *, name: str, plan: str | None = None, owner: str | None = None, rpm: int | None = None,
               tpm: int | None = None, scopes: list[str] | None = None, models: list[str] | None = None,
               admin: bool | None = None, operator: bool | None = None,
               **options: Unpack[RequestOptions]) -> ApiKeyCreated:
        """POST /admin/keys (an admin key; for its own owner). The answer's `key` is the only time the
        secret is shown."""
        request = FinalRequest("POST", "/admin/keys", json=body(**_fields(locals())), options=options)
        return ApiKeyCreated.model_validate((await self._client.request(request)).json())

    async def list(self, **options: Unpack[RequestOptions]) -> ApiKeyList:
        """GET /admin/keys: this owner's keys, revoked ones included (no secrets)."""
        return ApiKeyList.model_validate((await self._client.request(FinalRequest("GET", "/admin/keys",
                                                                           options=options))).json())

    async def revoke(self, key_id: str, **options: Unpack[RequestOptions]) -> ApiKeyRevoked:
        """DELETE /admin/keys/{id}: the key stops working at once."""
        request = FinalRequest("DELETE", f"/admin/keys/{segment(key_id)}", options=options)
        return ApiKeyRevoked.model_validate((await self._client.request(request)).json())


class AsyncAdmin(_AsyncResource):
    def __init__(self, client: AsyncOzwell) -> None:
        super().__init__(client)
        self.keys = AsyncKeys(client)

    async def usage(self, *, key_id: str | None = None, since: int | datetime | None = None, limit: int | None = None,
              **options: Unpack[RequestOptions]) -> UsageList:
        """GET /admin/usage: this owner's usage records, newest first (`since`: epoch seconds or a datetime)."""
        request = FinalRequest("GET", "/admin/usage", params=query(key_id=key_id, since=epoch(since), limit=limit),
                               options=options)
        return UsageList.model_validate((await self._client.request(request)).json())
