"""Stored chat completions (store=true) through the official SDK: stored streamed or not, listed and filtered,
retrieved, their metadata updated, their messages listed, deleted; owner-scoped; swept after retention."""

import itertools

import openai
import pytest

from server.db.models import StoredChatCompletion
from server.services.chat_assembly import StreamedCompletion
from server.services.chat_store import ChatCompletionStore
from server.services.storage_quota import used_bytes
from tests.openapi_schemas import assert_valid

HELLO = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]
_owners = itertools.count()


@pytest.fixture
def owner_client(app, openai_client):
    """The SDK under a key of a fresh owner, so that its lists hold only what the test stored."""
    owner = f"stored-chat-{next(_owners)}"
    return openai_client.with_options(api_key=_key(app, owner))


def _create(sdk, **extra):
    params = {"model": "tiny-llama", "messages": HELLO, "max_tokens": 4, "temperature": 0, **extra}
    return sdk.chat.completions.create(**params)


def test_stored_completion_round_trip(owner_client, client):
    sdk = owner_client
    created = _create(sdk, store=True, metadata={"topic": "greeting", "run": "1"})
    streamed_chunks = list(_create(sdk, store=True, stream=True, model="tiny-gemma", metadata={"topic": "stream"}))
    streamed_id = streamed_chunks[0].id

    raw = client.get(f"/v1/chat/completions/{created.id}", headers=_auth(sdk))
    assert raw.status_code == 200
    assert_valid(raw.json(), "CreateChatCompletionResponse")
    stored = sdk.chat.completions.retrieve(created.id)
    assert stored.choices[0].message.content == created.choices[0].message.content
    assert stored.usage == created.usage and stored.metadata == {"topic": "greeting", "run": "1"}

    # the stream is kept as the body its chunks add up to
    streamed = sdk.chat.completions.retrieve(streamed_id)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed_chunks if chunk.choices)
    assert streamed.choices[0].message.content == text and streamed.model == "tiny-gemma"
    assert streamed.choices[0].finish_reason == streamed_chunks[-1].choices[0].finish_reason
    assert streamed.usage.completion_tokens == 4 or streamed.choices[0].finish_reason == "stop"
    assert_valid(client.get(f"/v1/chat/completions/{streamed_id}", headers=_auth(sdk)).json(),
                 "CreateChatCompletionResponse")

    listed = client.get("/v1/chat/completions", headers=_auth(sdk))
    assert_valid(listed.json(), "ChatCompletionList")
    assert [c.id for c in sdk.chat.completions.list()] == [created.id, streamed_id]  # oldest first
    assert [c.id for c in sdk.chat.completions.list(order="desc")] == [streamed_id, created.id]
    assert [c.id for c in sdk.chat.completions.list(model="tiny-gemma")] == [streamed_id]
    assert [c.id for c in sdk.chat.completions.list(metadata={"topic": "greeting"})] == [created.id]
    assert [c.id for c in sdk.chat.completions.list(metadata={"topic": "greeting", "run": "2"})] == []
    first = sdk.chat.completions.list(limit=1)
    assert [c.id for c in first.data] == [created.id] and first.has_more
    assert [c.id for c in sdk.chat.completions.list(after=created.id)] == [streamed_id]

    updated = sdk.chat.completions.update(created.id, metadata={"topic": "changed"})
    assert updated.metadata == {"topic": "changed"}
    assert [c.id for c in sdk.chat.completions.list(metadata={"topic": "changed"})] == [created.id]
    assert sdk.chat.completions.list(metadata={"topic": "greeting"}).data == []

    raw = client.get(f"/v1/chat/completions/{created.id}/messages", headers=_auth(sdk)).json()
    # The spec types the items as assistant messages, yet its own example lists the request's user message
    # (as OpenAI's API does): every field but the role is checked.
    assert_valid({**raw, "data": [{**m, "role": "assistant"} for m in raw["data"]]}, "ChatCompletionMessageList")
    messages = sdk.chat.completions.messages.list(created.id)
    assert [(m.id, m.role, m.content) for m in messages.data] == [
        (f"{created.id}-0", "developer", "Be brief."), (f"{created.id}-1", "user", "Hello!")]
    page = sdk.chat.completions.messages.list(created.id, order="desc", limit=1)
    assert [m.id for m in page.data] == [f"{created.id}-1"] and page.has_more
    assert [m.id for m in sdk.chat.completions.messages.list(created.id, after=f"{created.id}-0").data] == [
        f"{created.id}-1"]

    deleted = client.delete(f"/v1/chat/completions/{created.id}", headers=_auth(sdk))
    assert deleted.status_code == 200 and deleted.json() == {"object": "chat.completion.deleted",
                                                             "id": created.id, "deleted": True}
    assert_valid(deleted.json(), "ChatCompletionDeleted")
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.retrieve(created.id)
    assert sdk.chat.completions.delete(streamed_id).deleted is True
    assert sdk.chat.completions.list().data == []


def test_a_stored_stream_equals_the_same_completion_stored_whole(owner_client):
    """Greedy, with logprobs: the body a stream adds up to is the non-streamed body, choice for choice."""
    extra = {"store": True, "logprobs": True, "top_logprobs": 2, "max_tokens": 6}
    whole = _create(owner_client, **extra)
    chunks = list(_create(owner_client, stream=True, **extra))
    kept = owner_client.chat.completions.retrieve(chunks[0].id)
    assert [choice.model_dump() for choice in kept.choices] == [choice.model_dump() for choice in whole.choices]
    assert kept.usage == whole.usage and kept.choices[0].logprobs.content


def test_tool_call_deltas_add_up_to_the_calls():
    assembled = StreamedCompletion()
    assembled.add({"index": 0, "delta": {"role": "assistant", "content": None}, "finish_reason": None})
    assembled.add({"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                                                         "function": {"name": "get", "arguments": ""}}]}})
    assembled.add({"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"q": '}}]}})
    assembled.add({"index": 0, "delta": {"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                                                         "function": {"name": "put", "arguments": "{}"}}]}})
    assembled.add({"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '"x"}'}}]}})
    assembled.add({"index": 0, "delta": {}, "finish_reason": "tool_calls"})
    body = assembled.body("chatcmpl-1", 1, "m", {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3})
    assert body["choices"][0]["message"] == {"role": "assistant", "content": None, "refusal": None, "tool_calls": [
        {"id": "call_a", "type": "function", "function": {"name": "get", "arguments": '{"q": "x"}'}},
        {"id": "call_b", "type": "function", "function": {"name": "put", "arguments": "{}"}}]}
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert_valid(body, "CreateChatCompletionResponse")


def test_content_parts_are_kept_with_their_text(owner_client):
    parts = [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]
    created = _create(owner_client, store=True, messages=[{"role": "user", "content": parts}])
    [message] = owner_client.chat.completions.messages.list(created.id).data
    assert message.content == "Hello there" and message.content_parts is not None
    assert [part.text for part in message.content_parts] == ["Hello ", "there"]


def test_unstored_completions_are_not_listed(owner_client):
    absent, refused = _create(owner_client), _create(owner_client, store=False, metadata={"a": "b"})
    assert owner_client.chat.completions.list().data == []
    for created in (absent, refused):
        with pytest.raises(openai.NotFoundError):
            owner_client.chat.completions.retrieve(created.id)


def test_another_owner_gets_404_and_an_empty_list(app, owner_client, client):
    created = _create(owner_client, store=True, metadata={"k": "v"})
    other = owner_client.with_options(api_key=_key(app, "stored-chat-stranger"))
    assert other.chat.completions.list().data == []
    assert other.chat.completions.list(metadata={"k": "v"}).data == []
    for call in (lambda: other.chat.completions.retrieve(created.id),
                 lambda: other.chat.completions.update(created.id, metadata={"k": "mine"}),
                 lambda: other.chat.completions.messages.list(created.id),
                 lambda: other.chat.completions.delete(created.id),
                 lambda: other.chat.completions.list(after=created.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    assert owner_client.chat.completions.retrieve(created.id).metadata == {"k": "v"}


def test_bad_metadata_and_limits_are_400(owner_client, client):
    with pytest.raises(openai.BadRequestError):
        _create(owner_client, store=True, metadata={"k" * 65: "v"})
    headers = _auth(owner_client)
    assert client.get("/v1/chat/completions?limit=0", headers=headers).status_code == 400
    assert client.get("/v1/chat/completions?order=sideways", headers=headers).status_code == 400
    created = _create(owner_client, store=True)
    assert client.post(f"/v1/chat/completions/{created.id}", json={"model": "x"}, headers=headers).status_code == 400


def test_store_without_a_database_is_refused_by_name(registry):
    from server.errors import UnsupportedParameterError
    from server.protocol import ChatCompletionRequest
    from server.services.chat import ChatService

    request = ChatCompletionRequest(model="tiny-llama", messages=HELLO, store=True)
    with pytest.raises(UnsupportedParameterError) as refused:
        ChatService(registry)._keeper(request, "someone")
    assert refused.value.param == "store"


def test_stored_bytes_count_in_the_owner_quota(app, owner_client, database, monkeypatch):
    created = _create(owner_client, store=True)
    with database.session() as session:
        row = session.get(StoredChatCompletion, created.id)
        assert row.bytes > 0 and used_bytes(session, row.owner) == row.bytes  # a fresh owner: this one alone
    monkeypatch.setattr(app.state.services.chat.store, "quota_bytes", row.bytes)
    with pytest.raises(openai.APIStatusError) as refused:  # full: refused before any work
        _create(owner_client, store=True)
    assert refused.value.status_code == 413 and refused.value.code == "quota_exceeded"
    assert _create(owner_client).choices  # store=false still answers
    monkeypatch.setattr(app.state.services.chat.store, "quota_bytes", row.bytes + 10)
    body = _create(owner_client, store=True).model_dump()  # room to start, none to keep it
    assert body["ozwell"]["store_error"]["code"] == "quota_exceeded"
    assert [c.id for c in owner_client.chat.completions.list()] == [created.id]


def test_retention_sweep_removes_old_completions(owner_client, database):
    created = _create(owner_client, store=True)
    store = ChatCompletionStore(database, retention_s=60)
    assert store.sweep(now=created.created + 30) == 0
    assert store.sweep(now=created.created + 61) >= 1
    with pytest.raises(openai.NotFoundError):
        owner_client.chat.completions.retrieve(created.id)
    fresh = _create(owner_client, store=True)  # (and one is left for the PostgreSQL tier's row count)
    assert store.sweep(now=fresh.created + 30) == 0
    assert [c.id for c in owner_client.chat.completions.list()] == [fresh.id]


def _auth(sdk) -> dict:
    return {"Authorization": f"Bearer {sdk.api_key}"}


def _key(app, owner: str) -> str:
    """A key of `owner` with limits the tests never meet (as the admin_key fixture's)."""
    return app.state.services.keys.create(name=owner, owner=owner, plan="enterprise", rpm=1_000_000, tpm=10**10)[1]
