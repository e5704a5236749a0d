"""Background responses (`background: true`) and their cancel, through the official openai SDK and raw HTTP."""

import asyncio
import contextlib
import json
import time

import openai
import pytest

from server.services.background import BackgroundResponses
from server.services.response_store import ResponseStore
from tests.openapi_schemas import assert_valid
from tests.server.test_auth import as_key

BASE = {"model": "tiny-llama", "max_output_tokens": 16, "temperature": 0}
LONG = {"model": "tiny-llama", "max_output_tokens": 64, "temperature": 0}
FINAL = ("completed", "incomplete", "failed", "cancelled")
EVENT_SCHEMAS = {
    "response.created": "ResponseCreatedEvent", "response.in_progress": "ResponseInProgressEvent",
    "response.output_item.added": "ResponseOutputItemAddedEvent",
    "response.content_part.added": "ResponseContentPartAddedEvent",
    "response.output_text.delta": "ResponseTextDeltaEvent", "response.output_text.done": "ResponseTextDoneEvent",
    "response.content_part.done": "ResponseContentPartDoneEvent",
    "response.output_item.done": "ResponseOutputItemDoneEvent", "response.completed": "ResponseCompletedEvent",
    "response.incomplete": "ResponseIncompleteEvent"}


def _poll(client, response_id: str, until=FINAL, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        body = client.get(f"/v1/responses/{response_id}").json()
        assert_valid(body, "Response")
        if body["status"] in until or time.monotonic() > deadline:
            return body
        time.sleep(0.01)


@contextlib.contextmanager
def slow_engine(app, model: str = "tiny-llama", step_s: float = 0.05):
    """Each engine step takes `step_s` longer, so that a generation is still running when the test acts."""
    engine = app.state.services.registry.resolve(model)
    real = engine.runner.forward

    def slow(*args, **kwargs):
        time.sleep(step_s)
        return real(*args, **kwargs)

    engine.runner.forward = slow
    try:
        yield engine
    finally:
        engine.runner.forward = real


def _wait(condition, timeout_s: float = 10) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_background_response_is_queued_then_polled_to_completion(app, openai_client, client):
    created = openai_client.responses.create(input="Tell me a story", background=True, **BASE)
    assert created.status == "queued" and created.background is True and created.output == []
    body = _poll(client, created.id)
    assert body["status"] in ("completed", "incomplete") and body["background"] is True
    foreground = openai_client.responses.create(input="Tell me a story", **BASE)
    assert openai_client.responses.retrieve(created.id).output_text == foreground.output_text != ""
    assert body["usage"]["output_tokens"] == foreground.usage.output_tokens
    # its tokens are recorded once it ends, under the key, as a background request
    usage = app.state.services.usage

    def recorded():
        return [r for r in usage.query(limit=50) if r["endpoint"] == "background:/v1/responses"
                and r["prompt_tokens"] == body["usage"]["input_tokens"]
                and r["completion_tokens"] == body["usage"]["output_tokens"]]
    assert _wait(recorded)


def test_cancel_mid_generation_frees_kv_blocks_at_once(app, openai_client, client):
    engine = app.state.services.registry.resolve("tiny-llama")
    idle = engine.stats()["kv_blocks_used"]
    with slow_engine(app):
        created = openai_client.responses.create(input="Count to one hundred", background=True, **LONG)
        assert _wait(lambda: engine.stats()["running"] == 1 and engine.stats()["kv_blocks_used"] > idle)
        assert _poll(client, created.id, until=("in_progress",))["status"] == "in_progress"
        cancelled = client.post(f"/v1/responses/{created.id}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        # the engine drops the sequences at its next step (0.05 s here), not when the generation would end (3 s)
        assert _wait(lambda: engine.stats()["running"] == 0 and engine.stats()["kv_blocks_used"] == idle,
                     timeout_s=1)
    body = cancelled.json()
    assert_valid(body, "Response")
    assert body["status"] == "cancelled" and body["id"] == created.id
    assert body["usage"]["output_tokens"] < LONG["max_output_tokens"]
    assert openai_client.responses.retrieve(created.id).status == "cancelled"
    again = openai_client.responses.cancel(created.id)  # a finished one comes back as it is
    assert again.status == "cancelled" and again.usage.output_tokens == body["usage"]["output_tokens"]


def test_cancelling_a_finished_response_returns_it_unchanged(openai_client, client):
    created = openai_client.responses.create(input="Hi", background=True, **BASE)
    body = _poll(client, created.id)
    assert openai_client.responses.cancel(created.id).model_dump(exclude_unset=True)["status"] == body["status"]
    assert client.get(f"/v1/responses/{created.id}").json() == body


def _raw_events(client, path: str, method: str = "GET", body: dict | None = None) -> list[dict]:
    events = []
    with client.stream(method, path, json=body) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line[len("data: "):])
                assert_valid(event, EVENT_SCHEMAS[event["type"]])
                events.append(event)
    return events


def test_background_stream_resumes_after_a_sequence_number(openai_client, client):
    events = _raw_events(client, "/v1/responses", "POST", {**BASE, "input": "Tell me a story", "background": True,
                                                              "stream": True})
    assert events[0]["type"] == "response.created" and events[0]["response"]["status"] == "queued"
    assert events[1]["response"]["status"] == "in_progress"
    assert events[-1]["type"] in ("response.completed", "response.incomplete")
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    response_id = events[0]["response"]["id"]
    resumed = _raw_events(client, f"/v1/responses/{response_id}?stream=true&starting_after=3")
    assert resumed == events[4:]
    # the SDK's own call
    with openai_client.responses.retrieve(response_id, stream=True, starting_after=1) as stream:
        sdk = [event.sequence_number for event in stream]
    assert sdk == list(range(2, len(events)))


def test_a_client_gone_from_a_background_stream_does_not_stop_it(app, openai_client, client):
    with slow_engine(app, step_s=0.02):
        stream = openai_client.responses.create(input="Tell me a story", background=True, stream=True, **LONG)
        first = [next(iter(stream)) for _ in range(2)]
        stream.close()
        response_id = first[0].response.id
        # resumed while it still runs: the kept events, then the live ones, to its end
        with openai_client.responses.retrieve(response_id, stream=True, starting_after=1) as resumed:
            rest = list(resumed)
    assert [e.sequence_number for e in rest] == list(range(2, 2 + len(rest)))
    assert rest[-1].type in ("response.completed", "response.incomplete")
    body = _poll(client, response_id)
    text = "".join(e.delta for e in rest if e.type == "response.output_text.delta")
    assert body["status"] in ("completed", "incomplete") and body["output"][0]["content"][0]["text"] == text


def test_background_needs_store(openai_client, client):
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client.responses.create(input="x", background=True, store=False, **BASE)
    assert refused.value.body["param"] == "background"


def test_only_background_responses_are_cancelled_or_streamed_again(openai_client, client):
    created = openai_client.responses.create(input="Hi", **BASE)
    refused = client.post(f"/v1/responses/{created.id}/cancel")
    assert refused.status_code == 400 and refused.json()["error"]["type"] == "invalid_request_error"
    assert client.get(f"/v1/responses/{created.id}?stream=true").status_code == 400
    assert client.post("/v1/responses/resp_unknown/cancel").status_code == 404


def test_another_owner_gets_404(app, openai_client, client):
    created = openai_client.responses.create(input="mine", background=True, stream=True, **BASE)
    response_id = next(iter(created)).response.id
    created.close()
    other = app.state.services.keys.create(name="background-stranger", owner="another-background-owner")[1]
    with as_key(client, other):
        for method, path in (("GET", f"/v1/responses/{response_id}"),
                             ("GET", f"/v1/responses/{response_id}?stream=true"),
                             ("POST", f"/v1/responses/{response_id}/cancel")):
            response = client.request(method, path)
            assert response.status_code == 404 and response.json()["error"]["code"] == "response_not_found"
    assert _poll(client, response_id)["status"] in ("completed", "incomplete")


def test_a_restart_fails_background_responses_left_unfinished(openai_client, client, database, registry):
    done = _poll(client, openai_client.responses.create(input="Hi", background=True, **BASE).id)
    store = ResponseStore(database, retention_s=3600)
    left = {}
    for status, instance in (("queued", None), ("in_progress", None), ("in_progress", "another-replica")):
        body = {**done, "id": f"resp_restart_{status}_{instance}", "status": status, "output": [],
                "completed_at": None, "ozwell": {**done["ozwell"], **({"instance": instance} if instance else {})}}
        body.pop("usage")
        assert store.save("tests", body, [], [])
        left[(status, instance)] = body["id"]
    try:
        assert asyncio.run(BackgroundResponses(store, registry).recover()) == 2  # a new server over the same database
        for (status, instance), response_id in left.items():
            body = client.get(f"/v1/responses/{response_id}").json()
            assert_valid(body, "Response")
            if instance is None:
                assert body["status"] == "failed" and body["error"]["code"] == "server_error"
                assert "restarted" in body["error"]["message"]
            else:  # another replica's: it runs there
                assert body["status"] == status
        assert client.get(f"/v1/responses/{done['id']}").json() == done
    finally:
        for response_id in left.values():
            client.delete(f"/v1/responses/{response_id}")


def test_background_work_runs_under_the_keys_token_limit(app, client):
    record, key = app.state.services.keys.create(name="background-tpm", plan="free", rpm=100_000, tpm=300)
    limiter = app.state.services.limiter
    with as_key(client, key):
        refused = client.post("/v1/responses", json={**LONG, "max_output_tokens": 400, "input": "x",
                                                     "background": True})
        assert refused.status_code == 429 and refused.json()["error"]["type"] == "tokens"  # refused, not queued
        with slow_engine(app, step_s=0.02):
            created = client.post("/v1/responses", json={**LONG, "input": "Hi", "background": True})
            assert created.status_code == 200, created.text
            created = created.json()
            held = client.portal.call(limiter.tokens_state, record.id, 300).remaining
            body = _poll(client, created["id"])
    # while it ran it held its prompt and max_output_tokens; once done, the key is charged what it used
    assert held <= 300 - LONG["max_output_tokens"]
    assert _wait(lambda: client.portal.call(limiter.tokens_state, record.id, 300).remaining ==
                 300 - body["usage"]["total_tokens"])


def test_a_chain_waits_for_an_unfinished_background_response(app, openai_client, client):
    with slow_engine(app):
        created = openai_client.responses.create(input="Count", background=True, **LONG)
        chained = client.post("/v1/responses", json={**BASE, "input": "and then?", "previous_response_id": created.id})
        assert chained.status_code == 400 and chained.json()["error"]["param"] == "previous_response_id"
        assert openai_client.responses.cancel(created.id).status == "cancelled"
    # a cancelled one is a turn like any other: its partial answer is replayed
    assert client.post("/v1/responses", json={**BASE, "input": "and then?",
                                              "previous_response_id": created.id}).status_code == 200


def test_a_shutdown_fails_the_background_responses_still_running(app, openai_client, client):
    engine = app.state.services.registry.resolve("tiny-llama")
    with slow_engine(app):
        created = openai_client.responses.create(input="Count", background=True, **LONG)
        assert _wait(lambda: engine.stats()["running"] == 1)
        client.portal.call(app.state.services.responses.background.stop)  # what the app's shutdown calls
        assert _wait(lambda: engine.stats()["running"] == 0, timeout_s=0.5)
    body = client.get(f"/v1/responses/{created.id}").json()
    assert_valid(body, "Response")
    assert body["status"] == "failed" and body["error"]["code"] == "server_error"
    assert "shut down" in body["error"]["message"]


def test_stored_text_with_a_nul_character_does_not_break_the_status_queries(database):
    """A random model may write U+0000. On PostgreSQL a json body holding it cannot be read with ->>, so the
    restart check and the chain's check read the status column, never the body (the storage tests run on
    PostgreSQL too: tests/scaleout)."""
    store = ResponseStore(database, retention_s=3600)
    body = {"id": "resp_nul_text", "object": "response", "created_at": int(time.time()), "status": "completed",
            "output": [{"type": "message", "content": [{"type": "output_text", "text": "a\u0000b"}]}]}
    assert store.save("nul-owner", body, [{"role": "assistant", "content": "a\u0000b"}], [])
    assert all(found["id"] != "resp_nul_text" for _, found in store.unfinished())
    assert store.chain("nul-owner", "resp_nul_text", 10_000, drop_oldest=False)[0]["content"] == "a\u0000b"
    assert store.get("nul-owner", "resp_nul_text")["output"][0]["content"][0]["text"] == "a\u0000b"
