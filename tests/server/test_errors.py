"""Every error is OpenAI's shape, with the right status, type, code and param."""

import pytest

from server.services.chat import ChatService
from tests.openapi_schemas import assert_valid

HELLO = [{"role": "user", "content": "Hello!"}]


def _error(response, status, code, param, error_type="invalid_request_error"):
    assert response.status_code == status, response.text
    body = response.json()
    assert_valid(body, "ErrorResponse")
    assert (body["error"]["type"], body["error"]["code"], body["error"]["param"]) == (error_type, code, param)
    return body["error"]["message"]


def test_malformed_json_is_400(client):
    response = client.post("/v1/chat/completions", content=b'{"model": "gpt-4", "messages": [',
                           headers={"content-type": "application/json"})
    assert "parse the JSON body" in _error(response, 400, "invalid_json", None)


def test_body_that_is_not_an_object_is_400(client):
    _error(client.post("/v1/chat/completions", json=["gpt-4"]), 400, "invalid_value", None)


@pytest.mark.parametrize(
    "change, code, param",
    [
        ({"temperature": 3}, "invalid_value", "temperature"),
        ({"top_p": -0.1}, "invalid_value", "top_p"),
        ({"n": 0}, "invalid_value", "n"),
        ({"n": 9}, "invalid_value", "n"),  # over the model's max_num_seqs (8)
        ({"max_tokens": 0}, "invalid_value", "max_tokens"),
        ({"messages": []}, "invalid_value", "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "invalid_value", "messages[0].role"),
        ({"messages": [{"role": "user", "content": 7}]}, "invalid_value", "messages[0].content"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "invalid_value", "stop"),
        ({"model": None}, "invalid_value", "model"),
        ({"logit_bias": {"5": 101}}, "invalid_value", "logit_bias"),
        ({"logit_bias": {"five": 1}}, "invalid_value", "logit_bias"),
        ({"logit_bias": {"10000000": 1}}, "invalid_value", "logit_bias"),
        ({"top_logprobs": 3}, "invalid_value", "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "invalid_value", "top_logprobs"),
        ({"frequency_penalty": 2.5}, "invalid_value", "frequency_penalty"),
        ({"top_k": -2}, "invalid_value", "top_k"),
        ({"repetition_penalty": 0}, "invalid_value", "repetition_penalty"),
        ({"colour": "blue"}, "unknown_parameter", "colour"),
    ],
)
def test_bad_chat_params_are_400_naming_the_param(client, change, code, param):
    request = {"model": "gpt-4", "messages": HELLO, **change}
    _error(client.post("/v1/chat/completions", json=request), 400, code, param)


def test_missing_required_field_is_named(client):
    message = _error(client.post("/v1/chat/completions", json={"model": "gpt-4"}), 400,
                     "missing_required_parameter", "messages")
    assert "messages" in message


@pytest.mark.parametrize(
    "change, param",
    [
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"stream": True, "stream_options": {"include_obfuscation": True}}, "stream_options.include_obfuscation"),
        ({"messages": [{"role": "function", "content": "x", "name": "f"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio",
                                                     "input_audio": {"data": "x", "format": "wav"}}]}]},
         "messages[0].content[0].type"),
    ],
)
def test_parameters_we_cannot_honour_are_rejected_by_name(client, change, param):
    request = {"model": "gpt-4", "messages": HELLO, **change}
    response = client.post("/v1/chat/completions", json=request)
    code = "unsupported_parameter" if param != "messages[0].content[0].type" else "unsupported_value"
    message = _error(response, 400, code, param)
    assert param.split(".")[0].split("[")[0] in message


def test_neutral_values_of_unsupported_params_are_accepted(client):
    request = {"model": "gpt-4", "messages": HELLO, "max_tokens": 2, "tools": [], "response_format": {"type": "text"},
               "store": False, "user": "someone"}
    assert client.post("/v1/chat/completions", json=request).status_code == 200


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", {"model": "nope", "messages": HELLO}),
    ("/v1/completions", {"model": "nope", "prompt": "x"}),
])
def test_unknown_model_is_404_model_not_found(client, path, body):
    assert "nope" in _error(client.post(path, json=body), 404, "model_not_found", "model")


def test_embedding_model_cannot_chat(client):
    message = _error(client.post("/v1/chat/completions", json={"model": "text-embedding-3-small", "messages": HELLO}),
                     400, "model_not_supported", "model")
    assert "/v1/embeddings" in message


def test_context_length_exceeded_before_any_work(client, registry):
    engine = registry.resolve("tiny-llama")
    message = _error(client.post("/v1/chat/completions", json={"model": "gpt-4", "messages": HELLO,
                                                                "max_tokens": 128}),
                     400, "context_length_exceeded", "messages")
    assert "maximum context length is 128 tokens" in message
    long_prompt = "Hello there " * 200
    _error(client.post("/v1/completions", json={"model": "tiny-llama", "prompt": long_prompt}),
           400, "context_length_exceeded", "prompt")
    # with no max_tokens, a prompt that fills the context is still refused
    _error(client.post("/v1/chat/completions", json={"model": "gpt-4",
                                                      "messages": [{"role": "user", "content": long_prompt}]}),
           400, "context_length_exceeded", "messages")
    assert engine._jobs == {}


def test_completion_token_ids_out_of_vocab_are_400(client):
    _error(client.post("/v1/completions", json={"model": "tiny-llama", "prompt": [1, 2, 10_000_000]}),
           400, "invalid_value", "prompt")


def test_unknown_route_and_wrong_method(client):
    assert "Invalid URL (POST /v1/nothing)" in _error(client.post("/v1/nothing", json={}), 404, "unknown_url", None)
    _error(client.delete("/v1/chat/completions"), 405, "method_not_allowed", None)


def test_unexpected_failure_is_500_without_trace(client, monkeypatch):
    async def explode(self, req):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(ChatService, "create", explode)
    response = client.post("/v1/chat/completions", json={"model": "gpt-4", "messages": HELLO})
    message = _error(response, 500, "internal_error", None, error_type="server_error")
    assert "secret" not in response.text and "Traceback" not in response.text
    assert message


def test_engine_fault_is_500_and_in_band_for_streams(client, registry, monkeypatch):
    engine = registry.resolve("tiny-gemma")

    def broken_forward(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(engine.model, "forward", broken_forward)
    response = client.post("/v1/chat/completions", json={"model": "tiny-gemma", "messages": HELLO})
    assert "kernel" not in _error(response, 500, "internal_error", None, error_type="server_error")
    from tests.server.sse import read_sse

    events = read_sse(client, "/v1/chat/completions", {"model": "tiny-gemma", "messages": HELLO, "stream": True})
    assert events[-1] == "[DONE]"
    assert_valid(events[-2], "ErrorResponse")
    assert events[-2]["error"]["type"] == "server_error"
    monkeypatch.undo()
    assert client.post("/v1/chat/completions", json={"model": "tiny-gemma", "messages": HELLO,
                                                     "max_tokens": 2}).status_code == 200


BODY_ROUTES = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/admin/keys"]


@pytest.mark.parametrize("path", BODY_ROUTES)
@pytest.mark.parametrize("content, headers, words", [
    (b'{"model": "gpt-4"}', {"content-type": "text/plain"}, "sent with Content-Type: application/json"),
    (b"model=gpt-4", {"content-type": "application/x-www-form-urlencoded"}, "Content-Type: application/json"),
    (b"[1, 2]", {"content-type": "application/json"}, "it was an array"),
    (b'"hello"', {"content-type": "application/json"}, "it was a string"),
    (b"", {"content-type": "application/json"}, "is empty"),
])
def test_a_body_that_is_not_a_json_object_says_so(client, path, content, headers, words):
    response = client.post(path, content=content, headers=headers)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and words in error["message"], error
    assert_valid(response.json(), "ErrorResponse")


def test_an_unknown_model_is_worded_once_everywhere(client):
    responses = [client.get("/v1/models/nope"),
                 client.post("/v1/chat/completions", json={"model": "nope", "messages": HELLO}),
                 client.post("/v1/embeddings", json={"model": "nope", "input": "x"})]
    assert {(r.status_code, r.json()["error"]["code"], r.json()["error"]["message"]) for r in responses} == {
        (404, "model_not_found", "The model `nope` does not exist or you do not have access to it.")}
