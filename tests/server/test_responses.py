"""The Responses API through the official SDK and raw HTTP, on the tiny models."""

import json

import openai
import pytest

from server.services.response_store import ResponseStore
from tests.openapi_schemas import assert_valid
from tests.server.test_auth import as_key

BASE = {"model": "tiny-llama", "max_output_tokens": 16, "temperature": 0}
EVENT_ORDER = ["response.created", "response.in_progress", "response.output_item.added",
               "response.content_part.added", "response.output_text.delta", "response.output_text.done",
               "response.content_part.done", "response.output_item.done"]


def _dump(model) -> dict:
    return json.loads(model.model_dump_json(exclude_unset=True))


def _read_events(client, body: dict) -> list[dict]:
    events = []
    with client.stream("POST", "/v1/responses", json=body) as response:
        assert response.status_code == 200, response.read()
        kind = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[len("event: "):]
            elif line.startswith("data: "):
                data = json.loads(line[len("data: "):])
                assert data["type"] == kind
                events.append(data)
    return events


def test_create_then_retrieve(openai_client, client):
    created = openai_client.responses.create(input="Hello there", **BASE)
    body = client.get(f"/v1/responses/{created.id}").json()
    assert_valid(body, "Response")
    assert created.id.startswith("resp_") and body["id"] == created.id
    assert created.output_text == body["output"][0]["content"][0]["text"]
    assert created.status in ("completed", "incomplete")
    if created.status == "incomplete":
        assert created.incomplete_details.reason == "max_output_tokens" and created.usage.output_tokens == 16
    assert created.usage.total_tokens == created.usage.input_tokens + created.usage.output_tokens
    assert openai_client.responses.retrieve(created.id).output_text == created.output_text


def test_extension_metadata_is_present_and_ignored_by_the_sdk(openai_client, client, registry):
    body = client.post("/v1/responses", json={**BASE, "input": "Hi"}).json()
    extension = body["ozwell"]
    assert extension["engine"] == "transformers"
    assert extension["model_revision"] == registry.resolve("tiny-llama").revision != "unknown"
    assert extension["queue_time_ms"] >= 0 and extension["time_to_first_token_ms"] > 0
    assert extension["generation_tokens_per_s"] > 0
    assert openai_client.responses.retrieve(body["id"]).id == body["id"]  # parses with the extra field


def test_stream_events_in_order_and_texts_concatenate(client, openai_client):
    events = _read_events(client, {**BASE, "input": "Tell me a story", "stream": True})
    kinds = [e["type"] for e in events]
    deltas = kinds.count("response.output_text.delta")
    assert deltas >= 1
    assert kinds[:-1] == EVENT_ORDER[:4] + ["response.output_text.delta"] * deltas + EVENT_ORDER[5:]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    schema = {"response.created": "ResponseCreatedEvent", "response.in_progress": "ResponseInProgressEvent",
              "response.output_item.added": "ResponseOutputItemAddedEvent",
              "response.content_part.added": "ResponseContentPartAddedEvent",
              "response.output_text.delta": "ResponseTextDeltaEvent",
              "response.output_text.done": "ResponseTextDoneEvent",
              "response.content_part.done": "ResponseContentPartDoneEvent",
              "response.output_item.done": "ResponseOutputItemDoneEvent",
              "response.completed": "ResponseCompletedEvent", "response.incomplete": "ResponseIncompleteEvent"}
    for event in events:
        assert_valid(event, schema[event["type"]])
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    final = events[-1]["response"]
    assert text == final["output"][0]["content"][0]["text"]
    assert client.get(f"/v1/responses/{final['id']}").json()["output"] == final["output"]
    # and the SDK's stream helper assembles the same thing
    with openai_client.responses.stream(input="Tell me a story", **BASE) as stream:
        sdk_events = list(stream)
    streamed = "".join(e.delta for e in sdk_events if e.type == "response.output_text.delta")
    # (the helper's get_final_response() wants response.completed; a response cut by max_output_tokens
    # ends with response.incomplete, as OpenAI's does)
    assert sdk_events[-1].type == kinds[-1]
    assert sdk_events[-1].response.output_text == streamed == text


def test_three_turn_chain_replays_earlier_turns(openai_client, registry):
    engine = registry.resolve("tiny-llama-256")  # random weights' text re-tokenizes long: room for 3 turns
    base = {**BASE, "model": "tiny-llama-256"}
    first = openai_client.responses.create(input="I am Ada", instructions="Be terse.", **base)
    second = openai_client.responses.create(input="Name?", previous_response_id=first.id, **base)
    third = openai_client.responses.create(input="Again", previous_response_id=second.id, **base)
    expected = engine.encode_chat([
        {"role": "user", "content": "I am Ada"}, {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "Name?"}, {"role": "assistant", "content": second.output_text},
        {"role": "user", "content": "Again"}])
    # instructions are not inherited: the first turn's system message is not in the third prompt
    assert third.usage.input_tokens == len(expected)
    assert first.usage.input_tokens == len(engine.encode_chat([
        {"role": "system", "content": "Be terse."}, {"role": "user", "content": "I am Ada"}]))


def test_input_file_text_enters_the_prompt(openai_client, registry):
    text = "Ozwell keeps files.\n"
    uploaded = openai_client.files.create(file=("note.txt", text.encode()), purpose="user_data")
    reply = openai_client.responses.create(input=[{"role": "user", "content": [
        {"type": "input_text", "text": "Read: "}, {"type": "input_file", "file_id": uploaded.id}]}], **BASE)
    expected = registry.resolve("tiny-llama").encode_chat([{"role": "user", "content": "Read: " + text}])
    assert reply.usage.input_tokens == len(expected)


def test_delete_then_404(openai_client):
    created = openai_client.responses.create(input="bye", **BASE)
    openai_client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        openai_client.responses.retrieve(created.id)


def test_input_items_pagination(openai_client, client):
    messages = [{"role": "user", "content": f"message {i}"} for i in range(5)]
    created = openai_client.responses.create(input=messages, **BASE)
    page = client.get(f"/v1/responses/{created.id}/input_items", params={"limit": 2, "order": "asc"}).json()
    assert_valid(page, "ResponseItemList")
    assert page["has_more"] is True and len(page["data"]) == 2
    assert page["data"][0]["content"][0]["text"] == "message 0"
    second = client.get(f"/v1/responses/{created.id}/input_items",
                        params={"limit": 2, "order": "asc", "after": page["last_id"]}).json()
    assert [i["content"][0]["text"] for i in second["data"]] == ["message 2", "message 3"]
    every = [i.content[0].text for i in openai_client.responses.input_items.list(created.id, limit=2)]
    assert every == [f"message {i}" for i in reversed(range(5))]  # default order is newest first


def test_store_false_keeps_nothing_and_cannot_be_chained(openai_client, client):
    created = openai_client.responses.create(input="ephemeral", store=False, **BASE)
    assert created.store is False
    with pytest.raises(openai.NotFoundError):
        openai_client.responses.retrieve(created.id)
    response = client.post("/v1/responses", json={**BASE, "input": "again", "previous_response_id": created.id})
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["param"] == "previous_response_id" and "store=false" in error["message"]


def test_another_owner_gets_404(app, client):
    created = client.post("/v1/responses", json={**BASE, "input": "mine"}).json()
    other = app.state.services.keys.create(name="stranger", owner="another-owner")[1]
    with as_key(client, other):
        for method, path in (("GET", f"/v1/responses/{created['id']}"),
                             ("GET", f"/v1/responses/{created['id']}/input_items"),
                             ("DELETE", f"/v1/responses/{created['id']}")):
            assert client.request(method, path).status_code == 404
        chained = client.post("/v1/responses", json={**BASE, "input": "x", "previous_response_id": created["id"]})
        assert chained.status_code == 404
    assert client.get(f"/v1/responses/{created['id']}").status_code == 200


def test_a_restart_keeps_stored_responses(client, database):
    created = client.post("/v1/responses", json={**BASE, "input": "durable"}).json()
    restarted = ResponseStore(database, retention_s=3600)
    assert restarted.get("tests", created["id"])["output"] == created["output"]


def test_retention_sweep_removes_old_responses(client, database):
    created = client.post("/v1/responses", json={**BASE, "input": "old"}).json()
    store = ResponseStore(database, retention_s=60)
    store.sweep(now=created["created_at"] + 30)  # (the session's older responses, other tests', may go)
    assert client.get(f"/v1/responses/{created['id']}").status_code == 200  # 30 s old: kept
    assert store.sweep(now=created["created_at"] + 61) >= 1
    assert client.get(f"/v1/responses/{created['id']}").status_code == 404


@pytest.mark.parametrize("change, param", [
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"reasoning": {"effort": "high"}}, "reasoning"), ({"background": True, "store": False}, "background"),
    ({"include": ["message.output_text.logprobs"]}, "include"),
    ({"input": [{"type": "computer_call_output", "call_id": "c", "output": {}}]}, "input[0].type"),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]}, "input[0].call_id"),
])
def test_fields_we_cannot_honour_are_400(client, change, param):
    response = client.post("/v1/responses", json={**BASE, "input": "x", **change})
    assert response.status_code == 400 and response.json()["error"]["param"] == param


@pytest.mark.parametrize("metadata, words", [
    ({f"k{i}": "v" for i in range(17)}, "at most 16"), ({"k" * 65: "v"}, "longer than 64"),
    ({"k": "v" * 513}, "longer than 512"),
])
def test_metadata_is_validated_as_openai_does(client, metadata, words):
    response = client.post("/v1/responses", json={**BASE, "input": "x", "metadata": metadata})
    assert response.status_code == 400 and response.json()["error"]["param"] == "metadata"
    assert words in response.json()["error"]["message"]
    ok = client.post("/v1/responses", json={**BASE, "input": "x", "metadata": {"team": "a"}}).json()
    assert ok["metadata"] == {"team": "a"}


def test_truncation_disabled_refuses_and_auto_drops_oldest_turns(client):
    long_turns = [{"role": "user", "content": f"turn {i} " + "words " * 12} for i in range(6)]
    refused = client.post("/v1/responses", json={**BASE, "input": long_turns})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "context_length_exceeded"
    kept = client.post("/v1/responses", json={**BASE, "input": long_turns, "truncation": "auto"})
    assert kept.status_code == 200
    body = kept.json()
    assert body["truncation"] == "auto" and body["usage"]["input_tokens"] + 16 <= 128


def test_truncation_auto_drops_a_turn_far_over_the_context(client):
    turns = [{"role": "user", "content": "huge " * 100_000}, {"role": "assistant", "content": "ok"},
             {"role": "user", "content": "Hi"}]
    refused = client.post("/v1/responses", json={**BASE, "input": turns})
    error = refused.json()["error"]
    assert refused.status_code == 400 and (error["code"], error["param"]) == ("context_length_exceeded", "input")
    kept = client.post("/v1/responses", json={**BASE, "input": turns, "truncation": "auto"})
    assert kept.status_code == 200
    assert kept.json()["usage"]["input_tokens"] < 40  # only the short turns are left
