"""Every resource once against a real `ozwell serve` (see conftest.py): chat (with tools and
response_format), a streamed chat assembled, completions, embeddings, models, a file round trip, a
Responses chain and its typed events, stored chat completions (listed, filtered, updated, deleted), vector
stores (upload, index, poll, search, delete), the admin keys and usage, a 429 from a free-plan key and the
retry that waits its Retry-After, a revoked key, and the docs' quick start run as written."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from ozwell import (
    AsyncOzwell,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    NotFoundError,
    Ozwell,
    RateLimitError,
)
from ozwell.types import (
    ChatCompletionMessageParam,
    ResponseInputItemParam,
    ResponseCompletedEvent,
    ResponseCreatedEvent,
    ResponseIncompleteEvent,
    ResponseOutputMessage,
    ResponseTextDeltaEvent,
)
from ozwell.vector_store_types import VectorStoreFile

HERE = Path(__file__).resolve().parent
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello! How are you today?"}]
CITY = {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}}, "required": ["city"],
        "additionalProperties": False}


def test_docs_quickstart_runs_as_written(server: str) -> None:
    done = subprocess.run([sys.executable, str(HERE.parent / "examples" / "quickstart.py")], capture_output=True,
                          text=True, timeout=120, env=os.environ.copy())
    assert done.returncode == 0, done.stderr
    # It printed the reply's content: a line that is not `None` (the random model's sampled reply may itself be
    # empty, about 1 draw in 400, when end-of-turn comes first).
    assert done.stdout.endswith("\n") and done.stdout.strip() != "None", "the example printed no reply"


def test_chat_completion(client: Ozwell, chat_model: str) -> None:
    # greedy: a sampled reply from the random model can be empty (end-of-turn first)
    completion = client.chat.completions.create(model=chat_model, messages=MESSAGES, max_tokens=8, temperature=0)
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl")
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage is not None and completion.usage.completion_tokens <= 8
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    assert client.last_rate_limit is not None and client.last_rate_limit.limit_requests


def test_response_format_and_tools_pass_through(client: Ozwell, chat_model: str, long_model: str) -> None:
    structured = client.chat.completions.create(
        model=chat_model, messages=MESSAGES, max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": CITY, "strict": True}})
    assert json.loads(structured.choices[0].message.content or "")["city"] in ("Paris", "Rome")
    called = client.chat.completions.create(
        # tools make a long prompt; greedy, so the call is closed well within max_tokens
        model=long_model, messages=MESSAGES, max_tokens=150, temperature=0, tool_choice="required",
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": CITY}}])
    calls = called.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "get_weather", called.choices[0].message
    assert json.loads(calls[0].function.arguments)["city"] in ("Paris", "Rome")
    assert called.choices[0].finish_reason == "tool_calls"


def test_streamed_chat_assembles_to_the_whole_answer(client: Ozwell, chat_model: str) -> None:
    whole = client.chat.completions.create(model=chat_model, messages=MESSAGES, max_tokens=24, temperature=0)
    stream = client.chat.completions.create(model=chat_model, messages=MESSAGES, max_tokens=24, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    text, roles, finish, usage = [], [], None, None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk" and chunk.id.startswith("chatcmpl")
        for choice in chunk.choices:
            roles += [choice.delta.role] if choice.delta.role else []
            text.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
        usage = chunk.usage or usage
    assert roles == ["assistant"]
    assert "".join(text) == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    assert usage is not None and whole.usage is not None and usage.completion_tokens == whole.usage.completion_tokens


def test_completions_whole_and_streamed(client: Ozwell, chat_model: str) -> None:
    whole = client.completions.create(model=chat_model, prompt="Once upon a time", max_tokens=6, temperature=0)
    assert whole.object == "text_completion" and whole.choices[0].text
    pieces = [c.choices[0].text for c in client.completions.create(
        model=chat_model, prompt="Once upon a time", max_tokens=6, temperature=0, stream=True) if c.choices]
    assert "".join(pieces) == whole.choices[0].text


def test_embeddings(client: Ozwell, embedding_model: str) -> None:
    result = client.embeddings.create(model=embedding_model, input=["hello world", "good night"])
    assert [e.index for e in result.data] == [0, 1]
    first = result.data[0].embedding
    assert isinstance(first, list) and len(first) == 384
    assert abs(sum(x * x for x in first) - 1.0) < 1e-3  # MiniLM's vectors are normalised
    assert result.usage.prompt_tokens > 0
    packed = client.embeddings.create(model=embedding_model, input="hello world", encoding_format="base64")
    assert isinstance(packed.data[0].embedding, str)


def test_models_list_and_retrieve(client: Ozwell, chat_model: str) -> None:
    listed = client.models.list()
    assert chat_model in {m.id for m in listed.data}
    card = next(m for m in listed.data if m.id == chat_model)
    assert card.ozwell is not None and card.ozwell.state == "loaded" and card.ozwell.load == "startup"
    model = client.models.retrieve(chat_model)
    assert model.id == chat_model and model.object == "model"
    assert model.ozwell is not None and model.ozwell.task == "chat"
    assert model.ozwell.engine and model.ozwell.device and model.ozwell.max_model_len
    with pytest.raises(NotFoundError) as caught:
        client.models.retrieve("no-such-model")
    assert caught.value.status == 404 and caught.value.param == "model" and caught.value.request_id


def test_file_round_trip(client: Ozwell, tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"line one\nline two\n")
    from_path = client.files.create(file=path, purpose="user_data")
    assert (from_path.filename, from_path.bytes, from_path.purpose) == ("notes.txt", 18, "user_data")
    from_bytes = client.files.create(file=b"\x00\x01binary", filename="blob.bin", purpose="user_data")
    read_end, write_end = os.pipe()  # a stream that cannot be rewound: sent as it is read
    with os.fdopen(write_end, "wb") as writer:
        writer.write(b"streamed " * 1000)
    with os.fdopen(read_end, "rb") as reader:
        from_stream = client.files.create(file=("streamed.txt", reader), purpose="user_data")
    from_file_object = client.files.create(file=io.BytesIO(b"{}"), filename="x.json", purpose="user_data")
    try:
        assert client.files.content(from_path.id) == b"line one\nline two\n"
        assert client.files.content(from_bytes.id) == b"\x00\x01binary"
        assert client.files.content(from_stream.id) == b"streamed " * 1000 and from_stream.bytes == 9000
        assert client.files.content(from_file_object.id) == b"{}"
        assert client.files.retrieve(from_path.id).model_dump() == from_path.model_dump()
        listed = {f.id for f in client.files.list(purpose="user_data").data}
        assert {from_path.id, from_bytes.id, from_stream.id, from_file_object.id} <= listed
    finally:
        for uploaded in (from_path, from_bytes, from_stream, from_file_object):
            assert client.files.delete(uploaded.id).deleted
    with pytest.raises(NotFoundError):
        client.files.retrieve(from_path.id)
    with pytest.raises(BadRequestError) as caught:
        client.files.create(file=b"x", filename="x.txt", purpose="not-a-purpose")
    assert caught.value.param == "purpose"


# a 1x1 PNG, as a base64 data: URL
PIXEL = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSu"
         "QmCC")


def test_image_parts_are_typed_and_a_text_model_refuses_them(client: Ozwell, chat_model: str) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": PIXEL, "detail": "low"}}]}]
    with pytest.raises(BadRequestError) as caught:
        client.chat.completions.create(model=chat_model, messages=messages, max_tokens=4)
    assert (caught.value.code, caught.value.param) == ("model_not_multimodal", "messages")
    items: list[ResponseInputItemParam] = [{"role": "user", "content": [
        {"type": "input_text", "text": "What is this?"}, {"type": "input_image", "image_url": PIXEL, "detail": "auto"}]}]
    with pytest.raises(BadRequestError) as caught:
        client.responses.create(model=chat_model, input=items, max_output_tokens=16)
    assert (caught.value.code, caught.value.param) == ("model_not_multimodal", "input")
    with pytest.raises(BadRequestError) as caught:  # the server fetches nothing: air-gapped by design
        client.chat.completions.create(model=chat_model, max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}])
    assert (caught.value.code, caught.value.param) == ("image_url_not_allowed", "messages[0].content[0].image_url.url")


def test_batch_round_trip(client: Ozwell, chat_model: str) -> None:
    lines = [{"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": chat_model, "messages": [{"role": "user", "content": f"Number {i}?"}],
                       "max_tokens": 4}} for i in range(3)]
    uploaded = client.files.create(file="".join(json.dumps(line) + "\n" for line in lines).encode(),
                                   filename="batch.jsonl", purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  metadata={"run": "sdk"})
    assert batch.status == "validating" and batch.metadata == {"run": "sdk"}
    deadline = time.time() + 120
    while (batch := client.batches.retrieve(batch.id)).status not in ("completed", "failed"):
        assert time.time() < deadline, batch.status
        time.sleep(0.2)
    assert batch.status == "completed" and batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed) == (3, 3) and batch.output_file_id
    outputs = [json.loads(line) for line in client.files.content(batch.output_file_id).splitlines()]
    assert [o["custom_id"] for o in outputs] == ["q0", "q1", "q2"]
    assert batch.id in {b.id for b in client.batches.list(limit=100).data}
    with pytest.raises(ConflictError):
        client.batches.cancel(batch.id)
    with pytest.raises(NotFoundError):
        client.batches.retrieve("batch_missing")


def test_responses_chain_and_stream_events(client: Ozwell, chat_model: str) -> None:
    first = client.responses.create(model=chat_model, input="Tell me about number 7.", max_output_tokens=16,
                                    instructions="Be brief.", metadata={"turn": "1"})
    assert first.object == "response" and first.status in ("completed", "incomplete") and first.output_text
    assert isinstance(first.output[0], ResponseOutputMessage)
    assert first.ozwell is not None and first.ozwell.engine and first.metadata == {"turn": "1"}
    events = list(client.responses.create(model=chat_model, input="And number 8?", previous_response_id=first.id,
                                          max_output_tokens=16, stream=True))
    assert isinstance(events[0], ResponseCreatedEvent)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1]
    assert isinstance(final, (ResponseCompletedEvent, ResponseIncompleteEvent))
    second = final.response
    assert second.previous_response_id == first.id
    assert "".join(e.delta for e in events if isinstance(e, ResponseTextDeltaEvent)) == second.output_text
    assert client.responses.retrieve(second.id).output_text == second.output_text
    items = client.responses.input_items(second.id, order="asc")
    assert any("And number 8?" in json.dumps(item) for item in items.data)
    assert client.responses.delete(second.id).deleted
    with pytest.raises(NotFoundError):
        client.responses.retrieve(second.id)
    assert client.responses.delete(first.id).deleted


def test_stored_chat_completion_round_trip(client: Ozwell, chat_model: str) -> None:
    run = f"sdk-python-{uuid.uuid4().hex[:8]}"  # this run's own: the TypeScript suite stores under the same owner
    created = client.chat.completions.create(model=chat_model, messages=MESSAGES, max_tokens=4, temperature=0,
                                             store=True, metadata={"run": run})
    chunks = list(client.chat.completions.create(model=chat_model, messages=MESSAGES, max_tokens=4, temperature=0,
                                                 store=True, metadata={"run": run, "kind": "stream"}, stream=True))
    streamed_id = chunks[0].id
    assert [c.id for c in client.chat.completions.list(metadata={"run": run}).data] == [created.id, streamed_id]
    assert [c.id for c in client.chat.completions.list(metadata={"run": run, "kind": "stream"}).data] == [streamed_id]
    assert [c.id for c in client.chat.completions.list(model=created.model, metadata={"run": run},
                                                       order="desc", limit=1).data] == [streamed_id]
    kept = client.chat.completions.retrieve(streamed_id)
    assert kept.choices[0].message.content == created.choices[0].message.content  # greedy: the same text
    assert kept.metadata == {"run": run, "kind": "stream"}
    assert client.chat.completions.update(created.id, metadata={"run": run, "kind": "edited"}).metadata == {
        "run": run, "kind": "edited"}
    messages = client.chat.completions.messages.list(created.id)
    assert [(m.id, m.role, m.content) for m in messages.data] == [(f"{created.id}-0", "user", MESSAGES[0]["content"])]

    async def from_async() -> None:
        async with AsyncOzwell() as aclient:
            listed = await aclient.chat.completions.list(metadata={"run": run, "kind": "edited"})
            assert [c.id for c in listed.data] == [created.id]
            page = await aclient.chat.completions.messages.list(created.id, order="desc", limit=1)
            assert [m.role for m in page.data] == ["user"] and not page.has_more
            assert (await aclient.chat.completions.update(streamed_id, metadata=None)).metadata == {}
            assert (await aclient.chat.completions.delete(streamed_id)).deleted
            with pytest.raises(NotFoundError):
                await aclient.chat.completions.retrieve(streamed_id)

    asyncio.run(from_async())
    assert client.chat.completions.delete(created.id).deleted
    assert client.chat.completions.list(metadata={"run": run}).data == []
    with pytest.raises(NotFoundError):
        client.chat.completions.messages.list(created.id)
    with pytest.raises(NotFoundError):  # (a background response's cancel; there is no such response here)
        client.responses.cancel("resp_does_not_exist")


VOLCANO = "Mount Ossory is a dormant volcano. Its last eruption, in 1707, buried the village of Keld under ash."
ORCHARD = "The Brannock orchard grows quince and medlar trees; the medlars are picked after the first frost."


def test_vector_store_upload_poll_search_and_delete(client: Ozwell, tmp_path: Path) -> None:
    path = tmp_path / "volcano.md"
    path.write_text(VOLCANO)
    store = client.vector_stores.create(name="sdk-python", metadata={"suite": "live"})
    assert (store.object, store.name, store.metadata, store.file_counts.total) == ("vector_store", "sdk-python",
                                                                                 {"suite": "live"}, 0)
    try:
        volcano = client.vector_stores.files.upload_and_poll(vector_store_id=store.id, file=path,
                                                             attributes={"topic": "geology"}, max_wait_seconds=120)
        assert (volcano.status, volcano.last_error, volcano.attributes) == ("completed", None, {"topic": "geology"})
        assert volcano.usage_bytes > 0 and volcano.vector_store_id == store.id
        batch = client.vector_stores.file_batches.upload_and_poll(
            store.id, files=[("orchard.txt", ORCHARD.encode()), ("blob.bin", b"\x00\x01\x02")],
            poll_interval_ms=100, max_wait_seconds=120)
        counts = batch.file_counts
        assert (batch.status, counts.total, counts.completed, counts.failed) == ("completed", 2, 1, 1)
        batch_files = client.vector_stores.file_batches.list_files(batch.id, vector_store_id=store.id).data
        failed = next(f for f in batch_files if f.status == "failed")
        assert failed.last_error is not None and failed.last_error.code == "unsupported_file"
        orchard = next(f for f in batch_files if f.status == "completed")

        found = client.vector_stores.search(store.id, query="When did the volcano last erupt?", max_num_results=2)
        assert found.search_query == ["When did the volcano last erupt?"]
        assert [r.file_id for r in found.data][0] == volcano.id and found.data[0].filename == "volcano.md"
        assert "1707" in found.data[0].content[0].text and 0 <= found.data[-1].score <= found.data[0].score <= 1
        fruit = client.vector_stores.search(store.id, query="medlar trees", filters={"type": "eq", "key": "topic",
                                                                                    "value": "geology"})
        assert [r.file_id for r in fruit.data] == [volcano.id]  # the filter leaves out the orchard
        updated = client.vector_stores.files.update(orchard.id, vector_store_id=store.id,
                                                    attributes={"topic": "botany"})
        assert updated.attributes == {"topic": "botany"}
        fruit = client.vector_stores.search(store.id, query="medlar trees", filters={"type": "eq", "key": "topic",
                                                                                    "value": "botany"})
        assert [r.file_id for r in fruit.data] == [orchard.id]

        content = client.vector_stores.files.content(volcano.id, vector_store_id=store.id)
        assert "".join(part.text for part in content.data) == VOLCANO
        listed = client.vector_stores.files.list(store.id, filter="completed", order="asc")
        assert {f.id for f in listed.data} == {volcano.id, orchard.id} and not listed.has_more
        assert client.vector_stores.files.retrieve(volcano.id, vector_store_id=store.id).status == "completed"
        store = client.vector_stores.update(store.id, name="sdk-python-renamed",
                                            expires_after={"anchor": "last_active_at", "days": 7})
        assert store.name == "sdk-python-renamed" and store.expires_after is not None and store.expires_at
        store = client.vector_stores.retrieve(store.id)
        assert (store.status, store.file_counts.completed, store.file_counts.failed) == ("completed", 2, 1)
        assert store.usage_bytes == volcano.usage_bytes + orchard.usage_bytes
        assert store.id in {s.id for s in client.vector_stores.list(limit=100).data}

        deleted = client.vector_stores.files.delete(volcano.id, vector_store_id=store.id)
        assert (deleted.id, deleted.deleted) == (volcano.id, True)
        left = client.vector_stores.search(store.id, query="When did the volcano last erupt?")
        assert volcano.id not in {r.file_id for r in left.data}
        with pytest.raises(NotFoundError):
            client.vector_stores.files.retrieve(volcano.id, vector_store_id=store.id)
        assert client.files.retrieve(volcano.id).purpose == "assistants"  # detaching leaves the upload
    finally:
        assert client.vector_stores.delete(store.id).deleted
    with pytest.raises(NotFoundError):
        client.vector_stores.retrieve(store.id)
    with pytest.raises(BadRequestError):
        client.vector_stores.create(chunking_strategy={"type": "static", "static": {"max_chunk_size_tokens": 50,
                                                                                    "chunk_overlap_tokens": 0}})


def test_vector_store_batch_cancel_and_poll_timeout(client: Ozwell) -> None:
    uploaded = [client.files.create(file=(f"note{i}.txt", f"note {i}".encode()), purpose="assistants")
                for i in range(3)]
    store = client.vector_stores.create(name="sdk-python-cancel")
    try:
        batch = client.vector_stores.file_batches.create(store.id, file_ids=[f.id for f in uploaded])
        assert batch.object == "vector_store.files_batch" and batch.file_counts.total == 3
        cancelled = client.vector_stores.file_batches.cancel(batch.id, vector_store_id=store.id)
        assert cancelled.status in ("cancelled", "completed")  # completed if it was quicker than the cancel
        settled = client.vector_stores.file_batches.poll(batch.id, vector_store_id=store.id, max_wait_seconds=60)
        assert settled.file_counts.in_progress == 0
        with pytest.raises(TimeoutError):
            client.vector_stores.files.poll(uploaded[0].id, vector_store_id=store.id, max_wait_seconds=0)
        with pytest.raises(NotFoundError):
            client.vector_stores.file_batches.retrieve("vsfb_missing", vector_store_id=store.id)
    finally:
        client.vector_stores.delete(store.id)
        for file in uploaded:
            client.files.delete(file.id)


def test_async_client(chat_model: str) -> None:
    async def main() -> None:
        async with AsyncOzwell() as client:
            whole = await client.chat.completions.create(model=chat_model, messages=MESSAGES, max_tokens=12,
                                                         temperature=0)
            stream = await client.chat.completions.create(model=chat_model, messages=MESSAGES, max_tokens=12,
                                                          temperature=0, stream=True)
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            assert text == whole.choices[0].message.content
            events = [e async for e in await client.responses.create(model=chat_model, input="Hi",
                                                                     max_output_tokens=16, stream=True)]
            assert events[-1].type in ("response.completed", "response.incomplete")
            assert chat_model in {m.id for m in (await client.models.list()).data}
            uploaded = await client.files.create(file=b"async", filename="a.txt", purpose="user_data")
            assert await client.files.content(uploaded.id) == b"async"
            assert (await client.files.delete(uploaded.id)).deleted
            assert (await client.batches.list(limit=1)).object == "list"
            keys = await client.admin.keys.list()
            assert keys.data
            store = await client.vector_stores.create(name="sdk-python-async")
            indexed: VectorStoreFile = await client.vector_stores.files.upload_and_poll(
                vector_store_id=store.id, file=("a.txt", b"async quinces"), max_wait_seconds=120)
            assert indexed.status == "completed"
            found = await client.vector_stores.search(store.id, query="quinces")
            assert [r.file_id for r in found.data] == [indexed.id]
            assert (await client.vector_stores.delete(store.id)).deleted

    asyncio.run(main())


def test_admin_keys_usage_and_a_revoked_key(client: Ozwell, chat_model: str) -> None:
    created = client.admin.keys.create(name="sdk-python-revoke", plan="free")
    assert created.key.startswith("ozw_") and created.plan == "free" and created.revoked_at is None
    assert created.id in {k.id for k in client.admin.keys.list().data}
    with Ozwell(api_key=created.key) as user:
        user.chat.completions.create(model=chat_model, messages=MESSAGES, max_tokens=2)
    usage = client.admin.usage(key_id=created.id, since=int(time.time()) - 600)
    for _ in range(50):  # the usage record is written once the response is done, just after the client has it
        if usage.data:
            break
        time.sleep(0.1)
        usage = client.admin.usage(key_id=created.id, since=int(time.time()) - 600)
    assert [(r.endpoint, r.status) for r in usage.data] == [("/v1/chat/completions", 200)]
    assert usage.data[0].prompt_tokens > 0 and usage.data[0].key_id == created.id
    revoked = client.admin.keys.revoke(created.id)
    assert revoked.revoked and revoked.revoked_at is not None
    with Ozwell(api_key=created.key, max_retries=2) as user:
        started = time.monotonic()
        with pytest.raises(AuthenticationError) as caught:
            user.models.list()
        assert time.monotonic() - started < 1  # a 401 is not retried
    assert caught.value.status == 401 and caught.value.type and caught.value.message
    with pytest.raises(NotFoundError):
        client.admin.keys.revoke("key_does_not_exist")


def test_rate_limit_error_and_the_retry_that_waits_retry_after(client: Ozwell, long_model: str) -> None:
    """A free-plan key with 1,600 tokens a minute: a long generation holds 1,500 of them while it runs, so
    a second request is refused with 429 and Retry-After: 2 (the server's hint while only running
    requests' reservations stand in the way). Once the long one is stopped, the retry 2 s later passes."""
    key = client.admin.keys.create(name="sdk-python-free", plan="free", tpm=1600)
    with Ozwell(api_key=key.key) as user:
        # ignore_eos (a vLLM extension Ozwell serves): the random model must not end it early by chance
        long = user.chat.completions.create(model=long_model, messages=MESSAGES, max_tokens=1500, stream=True,
                                            extra_body={"ignore_eos": True})
        next(iter(long))  # it is running and holds its reservation
        try:
            with pytest.raises(RateLimitError) as caught:
                user.chat.completions.create(model=long_model, messages=MESSAGES, max_tokens=200, max_retries=0)
            error = caught.value
            assert error.status == 429 and error.type == "tokens" and error.code == "rate_limit_exceeded"
            assert error.retry_after == 2.0 and error.rate_limit.retry_after == 2.0
            info = error.rate_limit
            assert info.limit_tokens == 1600 and info.remaining_tokens is not None and info.remaining_tokens < 300
            assert info.limit == info.limit_requests == 20  # the free plan's requests a minute
            assert info.remaining is not None and info.remaining < 20
            assert info.reset is not None and abs(info.reset - time.time()) <= 61
            assert info.reset_tokens and error.request_id

            outcome: dict[str, object] = {}

            def retried() -> None:
                started = time.monotonic()
                outcome["completion"] = user.chat.completions.create(model=long_model, messages=MESSAGES,
                                                                     max_tokens=200, max_retries=2)
                outcome["elapsed"] = time.monotonic() - started

            waiter = threading.Thread(target=retried)
            waiter.start()
            time.sleep(0.6)  # its first try has met the 429 by now
        finally:
            long.close()  # the server stops the generation and gives back what it did not use
        waiter.join(30)
    elapsed = outcome["elapsed"]
    assert isinstance(elapsed, float) and 1.9 <= elapsed < 4.5, elapsed  # it waited Retry-After: 2, not 0.5 s
    assert outcome["completion"] is not None


def test_background_response_polled_and_its_stream_resumed(client: Ozwell, chat_model: str) -> None:
    created = client.responses.create(model=chat_model, input="Say hello.", background=True, max_output_tokens=16)
    assert created.status in ("queued", "in_progress", "completed", "incomplete")
    deadline = time.monotonic() + 120
    polled = created
    while polled.status in ("queued", "in_progress"):
        assert time.monotonic() < deadline, polled.status
        time.sleep(0.2)
        polled = client.responses.retrieve(created.id)
    assert polled.status in ("completed", "incomplete") and polled.output
    first = []
    with client.responses.create(model=chat_model, input="Say hello.", background=True, stream=True,
                                 max_output_tokens=16) as stream:
        for event in stream:
            first.append(event)
            if len(first) == 2:
                break
    assert first[0].type == "response.created"
    response_id = first[0].response.id
    resumed = list(client.responses.retrieve(response_id, stream=True, starting_after=first[-1].sequence_number))
    assert resumed[0].sequence_number == first[-1].sequence_number + 1
    assert resumed[-1].type in ("response.completed", "response.incomplete")
