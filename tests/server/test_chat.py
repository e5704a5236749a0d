from tests.openapi_schemas import assert_valid
from tests.reference import greedy_text
from tests.server.sse import read_sse

HELLO = [{"role": "user", "content": "Hello!"}]


def _hf_greedy_text(engine, prompt_ids, max_new_tokens):
    return greedy_text(engine, prompt_ids, max_new_tokens)


def test_chat_completion_body_matches_spec_and_greedy_generate(client, registry):
    for model in ("tiny-llama", "tiny-gemma"):
        response = client.post("/v1/chat/completions", json={
            "model": model, "messages": HELLO, "temperature": 0, "max_tokens": 24})
        assert response.status_code == 200, response.text
        body = response.json()
        assert_valid(body, "CreateChatCompletionResponse")
        engine = registry.resolve(model)
        prompt = engine.encode_chat([{"role": "user", "content": "Hello!"}])
        assert body["choices"][0]["message"]["content"] == _hf_greedy_text(engine, prompt, 24)
        assert body["usage"]["prompt_tokens"] == len(prompt)
        assert body["id"].startswith("chatcmpl-") and body["model"] == model


def test_alias_resolves_to_the_configured_model(client):
    body = client.post("/v1/chat/completions", json={"model": "gpt-4", "messages": HELLO, "max_tokens": 3}).json()
    assert body["model"] == "tiny-llama"


def test_message_roles_and_text_parts_render_through_the_template(client, registry):
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "Again"},
    ]
    body = client.post("/v1/chat/completions", json={"model": "tiny-llama", "messages": messages,
                                                      "max_tokens": 2, "temperature": 0}).json()
    engine = registry.resolve("tiny-llama")
    expected = engine.encode_chat([
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "Again"}])
    assert body["usage"]["prompt_tokens"] == len(expected)


def test_max_tokens_gives_length_and_exact_count(client):
    for field in ("max_tokens", "max_completion_tokens"):
        body = client.post("/v1/chat/completions", json={"model": "tiny-gemma", "messages": HELLO, field: 5,
                                                          "temperature": 0, "ignore_eos": True}).json()
        assert body["choices"][0]["finish_reason"] == "length"
        assert body["usage"]["completion_tokens"] == 5


def test_stop_string_is_honoured(client):
    free = client.post("/v1/chat/completions", json={"model": "tiny-llama", "messages": HELLO, "max_tokens": 30,
                                                      "temperature": 0}).json()["choices"][0]["message"]["content"]
    stop = free[4:7]
    body = client.post("/v1/chat/completions", json={"model": "tiny-llama", "messages": HELLO, "max_tokens": 30,
                                                      "temperature": 0, "stop": [stop]}).json()
    assert body["choices"][0]["message"]["content"] == free[: free.index(stop)]
    assert body["choices"][0]["finish_reason"] == "stop"


def test_n_choices_with_seed_are_reproducible(client):
    request = {"model": "tiny-llama", "messages": HELLO, "max_tokens": 8, "n": 3, "seed": 42, "temperature": 1.0}
    first = client.post("/v1/chat/completions", json=request).json()
    second = client.post("/v1/chat/completions", json=request).json()
    assert_valid(first, "CreateChatCompletionResponse")
    assert [c["index"] for c in first["choices"]] == [0, 1, 2]
    assert [c["message"]["content"] for c in first["choices"]] == [c["message"]["content"] for c in second["choices"]]


def test_stream_chunks_match_spec_and_join_to_the_whole_answer(client):
    request = {"model": "tiny-llama", "messages": HELLO, "max_tokens": 20, "temperature": 0}
    whole = client.post("/v1/chat/completions", json=request).json()
    events = read_sse(client, "/v1/chat/completions", {**request, "stream": True,
                                                       "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    for chunk in chunks:
        assert_valid(chunk, "CreateChatCompletionStreamResponse")
        assert chunk["id"] == chunks[0]["id"]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finish == [whole["choices"][0]["finish_reason"]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
    assert all(c["usage"] is None for c in chunks[:-1])


def test_stream_without_usage_has_no_usage_chunk(client):
    events = read_sse(client, "/v1/chat/completions", {"model": "tiny-gemma", "messages": HELLO, "max_tokens": 4,
                                                       "stream": True, "n": 2})
    assert events[-1] == "[DONE]"
    assert all(e["choices"] and "usage" not in e for e in events[:-1])
    assert {e["choices"][0]["index"] for e in events[:-1]} == {0, 1}


def test_sdk_chat_and_stream(openai_client):
    reply = openai_client.chat.completions.create(model="gpt-4", messages=HELLO, max_tokens=6, temperature=0)
    assert reply.choices[0].message.role == "assistant"
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    stream = openai_client.chat.completions.create(model="gpt-4", messages=HELLO, max_tokens=6, temperature=0,
                                                   stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == reply.choices[0].message.content


def test_client_disconnect_aborts_generation(client, registry):
    engine = registry.resolve("tiny-llama")
    request = {"model": "tiny-llama", "messages": HELLO, "max_tokens": 100, "stream": True, "temperature": 0}
    with client.stream("POST", "/v1/chat/completions", json=request) as response:
        lines = response.iter_lines()
        next(lines)  # the first chunk arrived; now hang up
    import time

    deadline = time.time() + 5
    while engine._jobs and time.time() < deadline:
        time.sleep(0.05)
    assert engine._jobs == {}


def test_a_full_waiting_queue_answers_429_with_retry_after(client, registry, monkeypatch):
    engine = registry.resolve("tiny-llama")
    # as if the queue were full (with room to spare: a request an earlier test left queued may be taken in meanwhile)
    monkeypatch.setattr(engine, "_pending", engine.config.max_waiting + 64)
    response = client.post("/v1/chat/completions", json={"model": "tiny-llama", "messages": HELLO, "max_tokens": 2})
    assert response.status_code == 429 and response.headers["Retry-After"] == "1"
    assert_valid(response.json(), "ErrorResponse")
    assert response.json()["error"]["code"] == "engine_overloaded"
    monkeypatch.undo()
    assert client.post("/v1/chat/completions", json={"model": "tiny-llama", "messages": HELLO,
                                                      "max_tokens": 2}).status_code == 200
