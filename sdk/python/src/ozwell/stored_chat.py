"""Stored chat completions (created with `store=True`): `chat.completions.list/retrieve/update/delete` and
`chat.completions.messages.list`, synchronous and asynchronous, with their response models. The create call
stays in resources.py; its classes take these as their base."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from typing_extensions import Unpack

from ozwell._client import FinalRequest
from ozwell._specs import query, segment
from ozwell.types import ChatCompletion, OzwellModel, RequestOptions, ToolCallParam

if TYPE_CHECKING:
    from ozwell._client import AsyncOzwell, Ozwell

Order = Literal["asc", "desc"]


class ChatCompletionList(OzwellModel):
    object: Literal["list"] = "list"
    data: list[ChatCompletion]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class ChatCompletionDeleted(OzwellModel):
    id: str
    object: str = "chat.completion.deleted"
    deleted: bool


class ChatCompletionStoreMessage(OzwellModel):
    """A message of a stored completion's request, with its id (`{completion_id}-{index}`)."""

    id: str
    role: str
    content: str | None = None
    name: str | None = None
    content_parts: list[dict[str, Any]] | None = None
    tool_calls: list[ToolCallParam] | None = None
    tool_call_id: str | None = None


class ChatCompletionMessageList(OzwellModel):
    object: Literal["list"] = "list"
    data: list[ChatCompletionStoreMessage]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


# ---- what each call sends -----------------------------------------------------------------------


def _path(completion_id: str, suffix: str = "") -> str:
    return f"/chat/completions/{segment(completion_id)}{suffix}"


def _list(model: str | None, metadata: dict[str, str] | None, after: str | None, limit: int | None,
          order: Order | None, options: RequestOptions) -> FinalRequest:
    params = {**query(model=model, after=after, limit=limit, order=order),
              **{f"metadata[{key}]": value for key, value in (metadata or {}).items()}}
    return FinalRequest("GET", "/chat/completions", params=params, options=options)


def _messages(completion_id: str, after: str | None, limit: int | None, order: Order | None,
              options: RequestOptions) -> FinalRequest:
    return FinalRequest("GET", _path(completion_id, "/messages"),
                        params=query(after=after, limit=limit, order=order), options=options)


# ---- synchronous --------------------------------------------------------------------------------


class ChatCompletionMessages:
    def __init__(self, client: Ozwell) -> None:
        self._client = client

    def list(self, completion_id: str, *, after: str | None = None, limit: int | None = None,
             order: Order | None = None, **options: Unpack[RequestOptions]) -> ChatCompletionMessageList:
        """GET /chat/completions/{id}/messages: the stored completion's request messages."""
        response = self._client.request(_messages(completion_id, after, limit, order, options))
        return ChatCompletionMessageList.model_validate(response.json())


class StoredChatCompletions:
    """The base of `chat.completions`: the calls on completions created with store=True."""

    def __init__(self, client: Ozwell) -> None:
        self._client = client
        self.messages = ChatCompletionMessages(client)

    def list(self, *, model: str | None = None, metadata: dict[str, str] | None = None, after: str | None = None,
             limit: int | None = None, order: Order | None = None,
             **options: Unpack[RequestOptions]) -> ChatCompletionList:
        """GET /chat/completions: stored completions, oldest first unless order="desc"; `metadata` pairs must
        all match."""
        response = self._client.request(_list(model, metadata, after, limit, order, options))
        return ChatCompletionList.model_validate(response.json())

    def retrieve(self, completion_id: str, **options: Unpack[RequestOptions]) -> ChatCompletion:
        response = self._client.request(FinalRequest("GET", _path(completion_id), options=options))
        return ChatCompletion.model_validate(response.json())

    def update(self, completion_id: str, *, metadata: dict[str, str] | None,
               **options: Unpack[RequestOptions]) -> ChatCompletion:
        """POST /chat/completions/{id}: replace its metadata (the only field that can change)."""
        request = FinalRequest("POST", _path(completion_id), json={"metadata": metadata}, options=options)
        return ChatCompletion.model_validate(self._client.request(request).json())

    def delete(self, completion_id: str, **options: Unpack[RequestOptions]) -> ChatCompletionDeleted:
        response = self._client.request(FinalRequest("DELETE", _path(completion_id), options=options))
        return ChatCompletionDeleted.model_validate(response.json())


# ---- asynchronous -------------------------------------------------------------------------------


class AsyncChatCompletionMessages:
    def __init__(self, client: AsyncOzwell) -> None:
        self._client = client

    async def list(self, completion_id: str, *, after: str | None = None, limit: int | None = None,
                   order: Order | None = None, **options: Unpack[RequestOptions]) -> ChatCompletionMessageList:
        """GET /chat/completions/{id}/messages: the stored completion's request messages."""
        response = await self._client.request(_messages(completion_id, after, limit, order, options))
        return ChatCompletionMessageList.model_validate(response.json())


class AsyncStoredChatCompletions:
    """The base of `chat.completions`: the calls on completions created with store=True."""

    def __init__(self, client: AsyncOzwell) -> None:
        self._client = client
        self.messages = AsyncChatCompletionMessages(client)

    async def list(self, *, model: str | None = None, metadata: dict[str, str] | None = None,
                   after: str | None = None, limit: int | None = None, order: Order | None = None,
                   **options: Unpack[RequestOptions]) -> ChatCompletionList:
        """GET /chat/completions: stored completions, oldest first unless order="desc"; `metadata` pairs must
        all match."""
        response = await self._client.request(_list(model, metadata, after, limit, order, options))
        return ChatCompletionList.model_validate(response.json())

    async def retrieve(self, completion_id: str, **options: Unpack[RequestOptions]) -> ChatCompletion:
        response = await self._client.request(FinalRequest("GET", _path(completion_id), options=options))
        return ChatCompletion.model_validate(response.json())

    async def update(self, completion_id: str, *, metadata: dict[str, str] | None,
                     **options: Unpack[RequestOptions]) -> ChatCompletion:
        """POST /chat/completions/{id}: replace its metadata (the only field that can change)."""
        request = FinalRequest("POST", _path(completion_id), json={"metadata": metadata}, options=options)
        return ChatCompletion.model_validate((await self._client.request(request)).json())

    async def delete(self, completion_id: str, **options: Unpack[RequestOptions]) -> ChatCompletionDeleted:
        response = await self._client.request(FinalRequest("DELETE", _path(completion_id), options=options))
        return ChatCompletionDeleted.model_validate(response.json())
