"""The Responses API's file_search tool (server/services/file_search.py): the official SDK end to end on a real
vector store (the real MiniLM embedding model, the tiny random chat model), and the citation mapping and prompt
fitting as units."""

import json
import time

import pytest

from engines.protocol import ContextLengthExceeded
from server.protocol import ResponseRequest
from server.services.file_search import (
    FileSearch,
    citations,
    search_query,
    sources_text,
)
from tests.conftest import write_config
from tests.openapi_schemas import assert_valid
from tests.server.test_auth import as_key
from tests.tiny_models import build_tiny_llama, minilm_config

MODEL = "tiny-llama-256"  # the sources need room: the tiny tokenizer spends about a token per two characters
BASE = {"model": MODEL, "max_output_tokens": 16, "temperature": 0}
QUESTION = "What is the password of the vault?"
DOCS = {"vault.txt": "The password of the vault is PELICAN.",
        "garden.txt": "Tomatoes grow best in warm sunny gardens."}
SOURCES = [{"file_id": "file-a", "filename": "a.txt", "text": "alpha"},
           {"file_id": "file-b", "filename": "b.md", "text": "beta"},
           {"file_id": "file-a", "filename": "a.txt", "text": "alpha 2"}]


# ---- units -----------------------------------------------------------------------------------------------------
def test_citation_markers_become_annotations_of_their_sources_files():
    text = "Alpha holds [1]. Both agree [2, 3]. Nothing [9]."
    found, how = citations(text, SOURCES)
    assert how == "model"
    assert [(a["file_id"], a["filename"], a["index"]) for a in found] == [
        ("file-a", "a.txt", text.index("[1]")), ("file-b", "b.md", text.index("[2, 3]")),
        ("file-a", "a.txt", text.index("[2, 3]"))]
    assert all(a["type"] == "file_citation" for a in found)


def test_an_answer_that_cites_nothing_cites_each_given_file_once_at_its_end():
    text = "No markers here, or only one out of range [4]."
    found, how = citations(text, SOURCES)
    assert how == "sources"
    assert [(a["file_id"], a["index"]) for a in found] == [("file-a", len(text)), ("file-b", len(text))]
    assert citations("", SOURCES) == ([], None) and citations(text, []) == ([], None)


def test_the_query_is_the_last_user_messages_text():
    assert search_query("  where?  ") == "where?"
    items = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"},
             {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "second"},
                                                              {"type": "input_file", "file_id": "file-x"}]},
             {"type": "function_call_output", "call_id": "c", "output": "x"}]
    assert search_query(items) == "second"
    assert search_query([{"type": "function_call_output", "call_id": "c", "output": "x"}]) is None


def test_fitting_keeps_the_best_results_that_fit_the_context():
    search = FileSearch.plan(ResponseRequest(model="m", input="q", tools=[
        {"type": "file_search", "vector_store_ids": ["vs_1"]}]))
    search.results = [{"file_id": f"file-{i}", "filename": f"{i}.txt", "text": f"text {i} " * 20}
                      for i in range(10)]
    limit = len(sources_text(search.results[:4]))
    rendered = []

    def render(sources: str) -> list[int]:
        rendered.append(sources)
        if len(sources) > limit:
            raise ContextLengthExceeded("too long", param="input")
        return [len(sources)]

    assert search.fit(render) == [limit] and search.in_prompt == 4
    assert len(rendered) <= 5  # all ten, then a bisection
    assert search.annotations("Yes [4] and [5].")[0]["file_id"] == "file-3"
    assert len(search.annotations("Yes [4] and [5].")) == 1  # [5] was not given to the model


def test_when_no_source_fits_the_prompt_is_the_one_without_the_search():
    search = FileSearch.plan(ResponseRequest(model="m", input="q", tools=[
        {"type": "file_search", "vector_store_ids": ["vs_1"]}]))
    search.results = [{"file_id": "file-1", "filename": "1.txt", "text": "long " * 100}]

    def render(sources: str | None) -> list[int]:
        if sources is not None:
            raise ContextLengthExceeded("too long", param="input")
        return [0]

    assert search.fit(render) == [0] and search.in_prompt == 0 and search.annotations("An answer.") == []


def test_without_max_output_tokens_the_sources_leave_room_for_an_answer(client, store):
    body = client.post("/v1/responses", json={"model": MODEL, "input": QUESTION, "tools": [_tool(store)]}).json()
    assert body["output"][0]["type"] == "file_search_call" and body["status"] in ("completed", "incomplete")
    assert body["usage"]["input_tokens"] <= 256 - 256 // 4  # (here no source fits with that room)


def test_no_search_without_a_user_message_or_with_tool_choice_none():
    tool = {"type": "file_search", "vector_store_ids": ["vs_1"]}
    assert FileSearch.plan(ResponseRequest(model="m", input="q", tools=[tool], tool_choice="none")) is None
    assert FileSearch.plan(ResponseRequest(model="m", input=[
        {"type": "function_call_output", "call_id": "c", "output": "x"}], tools=[tool])) is None


# ---- end to end ------------------------------------------------------------------------------------------------
def _store(sdk) -> dict:
    """A vector store of the two small files, ingested (the real MiniLM model), as the OpenAI docs make one."""
    ids = {name: sdk.files.create(file=(name, text.encode()), purpose="assistants").id for name, text in DOCS.items()}
    created = sdk.vector_stores.create(name="file-search-tests", file_ids=list(ids.values()))
    deadline = time.monotonic() + 120
    while (current := sdk.vector_stores.retrieve(created.id)).file_counts.in_progress:
        assert time.monotonic() < deadline, current
        time.sleep(0.2)
    assert current.file_counts.completed == len(DOCS), current
    return {"id": created.id, "files": ids}


@pytest.fixture(scope="module")
def store(openai_client):
    return _store(openai_client)


def _tool(store: dict, **fields) -> dict:
    return {"type": "file_search", "vector_store_ids": [store["id"]], **fields}


def test_output_is_the_search_call_then_a_cited_message(openai_client, client, store):
    reply = openai_client.responses.create(input=QUESTION, tools=[_tool(store)], **BASE)
    body = client.get(f"/v1/responses/{reply.id}").json()
    assert_valid(body, "Response")
    call, message = body["output"]
    assert (call["type"], call["status"], call["queries"], call["results"]) == (
        "file_search_call", "completed", [QUESTION], None)
    assert call["id"].startswith("fs_") and message["type"] == "message"
    assert reply.output[0].type == "file_search_call" and reply.output_text == message["content"][0]["text"]
    annotations = message["content"][0]["annotations"]
    extension = body["ozwell"]["file_search"]
    assert extension["embedding_tokens"] > 0 and 1 <= extension["results_in_prompt"] <= extension["results"] == 2
    # the vault's file ranks first, so the model was given it; a random model rarely writes [n] markers
    assert annotations and {a["file_id"] for a in annotations} <= set(store["files"].values())
    if extension["citations"] == "sources":
        assert (annotations[0]["file_id"], annotations[0]["filename"]) == (store["files"]["vault.txt"], "vault.txt")
        assert {a["index"] for a in annotations} == {len(reply.output_text)}
    else:
        assert extension["citations"] == "model"
    assert body["tools"] == [{"type": "file_search", "vector_store_ids": [store["id"]], "max_num_results": 20,
                              "filters": None, "ranking_options": {"ranker": "auto", "score_threshold": 0.0}}]


def test_results_only_with_include_and_their_text_reaches_the_prompt(client, store, registry):
    reply = client.post("/v1/responses", json={**BASE, "input": QUESTION, "tools": [_tool(store)],
                                               "include": ["file_search_call.results"]}).json()
    assert_valid(reply, "Response")
    results = reply["output"][0]["results"]
    assert [r["filename"] for r in results] == ["vault.txt", "garden.txt"]  # the relevant file first
    assert results[0]["text"] == DOCS["vault.txt"] and results[0]["file_id"] == store["files"]["vault.txt"]
    assert 0 <= results[1]["score"] <= results[0]["score"] <= 1 and results[0]["attributes"] == {}
    # the prompt is exactly the sources that fit (the retrieved text, numbered) and the question
    given = reply["ozwell"]["file_search"]["results_in_prompt"]
    expected = registry.resolve(MODEL).encode_chat([
        {"role": "system", "content": sources_text(results[:given])}, {"role": "user", "content": QUESTION}])
    assert given >= 1 and reply["usage"]["input_tokens"] == len(expected)


def test_max_num_results_and_filters_reach_the_search(openai_client, store):
    one = openai_client.responses.create(input=QUESTION, tools=[_tool(store, max_num_results=1)],
                                         include=["file_search_call.results"], **BASE)
    assert [r.filename for r in one.output[0].results] == ["vault.txt"]
    none = openai_client.responses.create(
        input=QUESTION, include=["file_search_call.results"], **BASE,
        tools=[_tool(store, filters={"type": "eq", "key": "team", "value": "nobody"})])
    assert none.output[0].results == [] and none.model_extra["ozwell"]["file_search"]["results_in_prompt"] == 0
    assert none.output[1].content[0].annotations == []  # no sources, nothing to cite


EVENT_SCHEMAS = {
    "response.created": "ResponseCreatedEvent", "response.in_progress": "ResponseInProgressEvent",
    "response.output_item.added": "ResponseOutputItemAddedEvent",
    "response.file_search_call.in_progress": "ResponseFileSearchCallInProgressEvent",
    "response.file_search_call.searching": "ResponseFileSearchCallSearchingEvent",
    "response.file_search_call.completed": "ResponseFileSearchCallCompletedEvent",
    "response.content_part.added": "ResponseContentPartAddedEvent",
    "response.output_text.delta": "ResponseTextDeltaEvent",
    "response.output_text.annotation.added": "ResponseOutputTextAnnotationAddedEvent",
    "response.output_text.done": "ResponseTextDoneEvent", "response.content_part.done": "ResponseContentPartDoneEvent",
    "response.output_item.done": "ResponseOutputItemDoneEvent", "response.completed": "ResponseCompletedEvent",
    "response.incomplete": "ResponseIncompleteEvent"}


def _stream(client, body: dict) -> list[dict]:
    events = []
    with client.stream("POST", "/v1/responses", json={**body, "stream": True}) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: "):]))
    return events


def test_stream_sends_the_search_events_in_openais_order(client, store):
    events = _stream(client, {**BASE, "input": QUESTION, "tools": [_tool(store)]})
    kinds = [e["type"] for e in events]
    deltas, notes = kinds.count("response.output_text.delta"), kinds.count("response.output_text.annotation.added")
    assert deltas >= 1 and notes >= 1
    assert kinds[:-1] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.file_search_call.in_progress", "response.file_search_call.searching",
        "response.file_search_call.completed", "response.output_item.done", "response.output_item.added",
        "response.content_part.added", *["response.output_text.delta"] * deltas,
        *["response.output_text.annotation.added"] * notes, "response.output_text.done",
        "response.content_part.done", "response.output_item.done"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    for event in events:
        assert_valid(event, EVENT_SCHEMAS[event["type"]])
    final = events[-1]["response"]
    call_id, message_id = final["output"][0]["id"], final["output"][1]["id"]
    assert [e["output_index"] for e in events[2:7]] == [0] * 5 and {e["item_id"] for e in events[3:6]} == {call_id}
    assert events[2]["item"]["status"] == "in_progress" and events[6]["item"] == final["output"][0]
    assert all(e["output_index"] == 1 for e in events[7:-1]) and events[7]["item"]["id"] == message_id
    streamed = [e["annotation"] for e in events if e["type"] == "response.output_text.annotation.added"]
    assert streamed == final["output"][1]["content"][0]["annotations"]
    assert [e["annotation_index"] for e in events if "annotation_index" in e] == list(range(notes))
    assert client.get(f"/v1/responses/{final['id']}").json()["output"] == final["output"]


def test_the_sdks_stream_helper_assembles_the_search_and_the_cited_message(openai_client, store):
    with openai_client.responses.stream(input=QUESTION, tools=[_tool(store)], **BASE) as stream:
        events = list(stream)
    final = events[-1].response
    assert [item.type for item in final.output] == ["file_search_call", "message"]
    assert final.output[1].content[0].annotations[0].type == "file_citation"
    assert final.output_text == "".join(e.delta for e in events if e.type == "response.output_text.delta")


@pytest.fixture(scope="module")
def wide_sdk(tiny_dir, tiny_tokenizer_dir, tmp_path_factory):
    """The SDK on an app of its own: a tiny Llama with a 1,024-token context (the built-in function-tool prompt
    and the sources do not fit the shared models' 256) and the MiniLM embedding model."""
    from fastapi.testclient import TestClient
    from openai import OpenAI

    from engines.registry import EngineRegistry
    from server.app import create_app
    from server.db.database import open_database
    from server.settings import Settings

    root = tmp_path_factory.mktemp("file-search")
    source = build_tiny_llama(root / "llama-2048", tiny_tokenizer_dir, max_position_embeddings=2048)
    write_config(root / "configs", "tiny-wide", f"id: tiny-wide\ntask: chat\nengine: transformers\n"
                                                f"source: {source}\ndtype: float32\ndevice: cpu\nmax_model_len: 1024\n")
    write_config(root / "configs", "all-minilm-l6-v2", minilm_config("all-minilm-l6-v2"))
    registry = EngineRegistry.from_config_dir(root / "configs", root / "data")
    app = create_app(Settings(config_dir=root / "configs", data_dir=root / "data"), registry,
                     database=open_database(None, root / "data"))
    with TestClient(app, raise_server_exceptions=False) as client:
        _, key = app.state.services.keys.create(name="t", plan="enterprise", rpm=10**6, tpm=10**10)
        client.headers["Authorization"] = f"Bearer {key}"
        yield OpenAI(base_url=str(client.base_url) + "/v1", api_key=key, http_client=client, max_retries=0)


def test_file_search_with_function_tools(wide_sdk):
    store = _store(wide_sdk)
    weather = {"type": "function", "name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
    http = wide_sdk._client
    body = {"model": "tiny-wide", "max_output_tokens": 60, "temperature": 1.0, "input": QUESTION,
            "tools": [weather, _tool(store)]}
    for choice in ("required", "auto"):
        reply = http.post("/v1/responses", json={**body, "tool_choice": choice})
        assert reply.status_code == 200, reply.text
        assert_valid(reply.json(), "Response")
        output = reply.json()["output"]
        assert output[0]["type"] == "file_search_call" and len(output) >= 2
        assert {item["type"] for item in output[1:]} <= {"message", "function_call"}
        if choice == "required":
            assert output[1]["type"] == "function_call" and output[1]["name"] == "get_weather"
    events = _stream(http, {**body, "tool_choice": "required"})
    final = events[-1]["response"]
    added = [e["output_index"] for e in events if e["type"] == "response.output_item.added"]
    assert added == list(range(len(final["output"]))) and final["output"][0]["type"] == "file_search_call"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    for event in events:
        if event["type"] in EVENT_SCHEMAS:  # (the call's argument events are test_tools.py's)
            assert_valid(event, EVENT_SCHEMAS[event["type"]])


def test_another_owners_store_is_404(app, client, store):
    other = app.state.services.keys.create(name="file-search-stranger", owner="another-owner")[1]
    with as_key(client, other):
        response = client.post("/v1/responses", json={**BASE, "input": QUESTION, "tools": [_tool(store)]})
    assert response.status_code == 404
    assert response.json()["error"]["param"] == "tools[0].vector_store_ids"


@pytest.mark.parametrize("tools, extra, param", [
    ([{"type": "file_search", "vector_store_ids": ["vs_a", "vs_b", "vs_c"]}], {}, "tools[0].vector_store_ids"),
    ([{"type": "file_search", "vector_store_ids": []}], {}, "tools[0].vector_store_ids"),
    ([{"type": "file_search", "vector_store_ids": ["vs_a"], "max_num_results": 51}], {}, "tools[0].max_num_results"),
    ([{"type": "file_search"}], {}, "tools[0].vector_store_ids"),
    ([{"type": "web_search"}], {}, "tools[0].type"),
    ([{"type": "file_search", "vector_store_ids": ["vs_a"]}] * 2, {}, "tools[1]"),
    ([{"type": "file_search", "vector_store_ids": ["vs_missing"]}], {}, "tools[0].vector_store_ids"),
    ([], {"include": ["message.output_text.logprobs"]}, "include"),
])
def test_bad_file_search_requests_are_refused_naming_the_field(client, tools, extra, param):
    response = client.post("/v1/responses", json={**BASE, "input": QUESTION, "tools": tools, **extra})
    assert response.status_code in (400, 404), response.text
    assert response.json()["error"]["param"] == param


def test_bad_filters_and_ranking_options_name_the_tools_field(client, store):
    for fields, param in (({"filters": {"type": "near", "key": "a", "value": 1}}, "tools[0].filters"),
                          ({"ranking_options": {"score_threshold": 2}}, "tools[0].ranking_options")):
        response = client.post("/v1/responses", json={**BASE, "input": QUESTION, "tools": [_tool(store, **fields)]})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"].startswith(param)


def test_a_sent_back_search_call_is_accepted_as_input(openai_client, store):
    first = openai_client.responses.create(input=QUESTION, tools=[_tool(store)], **BASE)
    items = [{"role": "user", "content": QUESTION}, *[item.model_dump(exclude_none=True) for item in first.output],
             {"role": "user", "content": "And again?"}]
    again = openai_client.responses.create(input=items, tools=[_tool(store)], **BASE)
    assert again.output[0].queries == ["And again?"]


def test_chat_completions_refuse_file_search_naming_the_tool_type(client, store):
    response = client.post("/v1/chat/completions", json={
        "model": MODEL, "messages": [{"role": "user", "content": QUESTION}], "tools": [_tool(store)]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "tools[0].type" and "file_search" in error["message"] and "/v1/responses" in error[
        "message"]


def test_the_keys_usage_counts_the_prompt_with_its_sources_and_the_query_embedding(app, client, store):
    key, plaintext = app.state.services.keys.create(name="file-search-usage", owner="tests", rpm=10**6, tpm=10**9)
    with as_key(client, plaintext):
        reply = client.post("/v1/responses", json={**BASE, "input": QUESTION, "tools": [_tool(store)]}).json()
    deadline = time.monotonic() + 5  # the record is written just after the response is sent
    while not (records := app.state.services.usage.query(key_id=key.id)) and time.monotonic() < deadline:
        time.sleep(0.05)
    record = records[0]
    spent = reply["ozwell"]["file_search"]["embedding_tokens"]
    assert spent > 0 and record["prompt_tokens"] == reply["usage"]["input_tokens"] + spent
    assert record["completion_tokens"] == reply["usage"]["output_tokens"]


def test_tool_choice_file_search_runs_it_and_none_skips_it(client, store):
    body = {**BASE, "input": QUESTION, "tools": [_tool(store)]}
    forced = client.post("/v1/responses", json={**body, "tool_choice": {"type": "file_search"}})
    assert forced.status_code == 200, forced.text
    assert [item["type"] for item in forced.json()["output"]] == ["file_search_call", "message"]
    assert forced.json()["tool_choice"] == {"type": "file_search"}
    assert_valid(forced.json(), "Response")
    skipped = client.post("/v1/responses", json={**body, "tool_choice": "none"}).json()
    assert [item["type"] for item in skipped["output"]] == ["message"] and "file_search" not in skipped["ozwell"]
    unnamed = client.post("/v1/responses", json={**BASE, "input": QUESTION, "tool_choice": {"type": "file_search"}})
    assert unnamed.status_code == 400 and unnamed.json()["error"]["param"] == "tool_choice"
