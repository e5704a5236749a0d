from tests.openapi_schemas import assert_valid
from tests.reference import greedy_text
from tests.server.sse import read_sse


def test_completion_continues_prompt_like_greedy_generate(client, registry):
    engine = registry.resolve("tiny-gemma")
    prompt = "Once upon a time"
    body = client.post("/v1/completions", json={"model": "tiny-gemma", "prompt": prompt, "max_tokens": 12,
                                                 "temperature": 0}).json()
    assert_valid(body, "CreateCompletionResponse")
    ids = engine.encode_text(prompt)
    assert body["choices"][0]["text"] == greedy_text(engine, ids, 12)
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["usage"]["prompt_tokens"] == len(ids)


def test_default_max_tokens_is_16(client):
    body = client.post("/v1/completions", json={"model": "tiny-llama", "prompt": "Hi", "temperature": 0,
                                                 "stop": None, "ignore_eos": True}).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 16


def test_prompt_list_and_token_ids_give_indexed_choices(client, registry):
    engine = registry.resolve("tiny-llama")
    token_prompt = engine.encode_text("The quick brown fox")
    by_text = client.post("/v1/completions", json={"model": "tiny-llama", "prompt": ["Hello", "The quick brown fox"],
                                                    "max_tokens": 5, "temperature": 0, "n": 2}).json()
    assert_valid(by_text, "CreateCompletionResponse")
    assert [c["index"] for c in by_text["choices"]] == [0, 1, 2, 3]
    by_ids = client.post("/v1/completions", json={"model": "tiny-llama", "prompt": token_prompt, "max_tokens": 5,
                                                   "temperature": 0}).json()
    assert by_ids["choices"][0]["text"] == by_text["choices"][2]["text"]
    nested = client.post("/v1/completions", json={"model": "tiny-llama", "prompt": [token_prompt, token_prompt],
                                                   "max_tokens": 5, "temperature": 0}).json()
    assert [c["text"] for c in nested["choices"]] == [by_ids["choices"][0]["text"]] * 2


def test_completion_stream_matches_whole(client):
    request = {"model": "tiny-gemma", "prompt": ["Hello", "Write a story"], "max_tokens": 10, "temperature": 0}
    whole = client.post("/v1/completions", json=request).json()
    events = read_sse(client, "/v1/completions", {**request, "stream": True,
                                                  "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    for chunk in events[:-1]:
        assert_valid(chunk, "OzwellCompletionStreamChunk")
    for index in (0, 1):
        text = "".join(c["choices"][0]["text"] for c in events[:-2] if c["choices"][0]["index"] == index)
        assert text == whole["choices"][index]["text"]
    assert events[-2]["usage"] == whole["usage"]


def test_sdk_completion(openai_client):
    reply = openai_client.completions.create(model="tiny-gemma", prompt="Once upon", max_tokens=5, temperature=0)
    assert reply.object == "text_completion" and reply.usage.prompt_tokens > 0
    streamed = "".join(c.choices[0].text for c in openai_client.completions.create(
        model="tiny-gemma", prompt="Once upon", max_tokens=5, temperature=0, stream=True))
    assert streamed == reply.choices[0].text
