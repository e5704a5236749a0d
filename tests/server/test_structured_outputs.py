"""response_format (chat, and legacy completions as an extension) and the Responses API's text.format, through
HTTP and the openai SDK's parse() helpers, on random weights: every answer that stops parses and validates, the
bodies and chunks validate against OpenAI's schemas, and a schema we cannot enforce is a 400 naming it."""

import json

import jsonschema
import pytest
from pydantic import BaseModel, Field

from tests.openapi_schemas import assert_valid
from tests.server.sse import read_sse

HELLO = [{"role": "user", "content": "Describe a user as JSON."}]
# Bounded everywhere a random model would otherwise never close a value.
SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 8},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
    "kind": {"anyOf": [{"type": "null"}, {"type": "string", "pattern": "^[xyz]{2}$"}]}},
    "required": ["name", "age", "tags", "kind"], "additionalProperties": False}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "user", "schema": SCHEMA, "strict": True}}


class Person(BaseModel):
    name: str = Field(max_length=8)
    age: int = Field(ge=0, le=120)
    admin: bool


@pytest.mark.parametrize("model", ["tiny-llama-256", "tiny-gemma"])
def test_json_schema_answers_validate(client, model):
    body = client.post("/v1/chat/completions", json={
        "model": model, "messages": HELLO, "max_tokens": 180 if model == "tiny-llama-256" else 90, "temperature": 1.0,
        "seed": 5, "n": 3, "response_format": JSON_SCHEMA}).json()
    assert_valid(body, "CreateChatCompletionResponse")
    assert len(body["choices"]) == 3
    for choice in body["choices"]:
        assert choice["finish_reason"] == "stop", choice
        jsonschema.validate(json.loads(choice["message"]["content"]), SCHEMA)


def test_streamed_json_schema_chunks_assemble_to_valid_json(client):
    for seed in range(20):
        chunks = read_sse(client, "/v1/chat/completions", {
            "model": "tiny-llama-256", "messages": HELLO, "max_tokens": 180, "temperature": 1.0, "seed": seed,
            "n": 3, "stream": True, "response_format": JSON_SCHEMA})
        assert chunks.pop() == "[DONE]"
        texts: dict[int, str] = {}
        reasons: dict[int, str] = {}
        for chunk in chunks:
            assert_valid(chunk, "CreateChatCompletionStreamResponse")
            for choice in chunk["choices"]:
                texts[choice["index"]] = texts.get(choice["index"], "") + (choice["delta"].get("content") or "")
                if choice["finish_reason"]:
                    reasons[choice["index"]] = choice["finish_reason"]
        assert sorted(texts) == [0, 1, 2] and set(reasons.values()) == {"stop"}, (seed, reasons)
        for text in texts.values():
            jsonschema.validate(json.loads(text), SCHEMA)


def test_the_sdk_parse_helper_returns_the_model(openai_client):
    for seed in range(3):
        completion = openai_client.chat.completions.parse(
            model="tiny-llama-256", messages=HELLO, response_format=Person, max_tokens=180, temperature=1.0,
            seed=seed)
        parsed = completion.choices[0].message.parsed
        assert isinstance(parsed, Person) and len(parsed.name) <= 8 and 0 <= parsed.age <= 120


def test_json_object_answers_that_stop_are_objects(client):
    body = client.post("/v1/chat/completions", json={
        "model": "tiny-llama-256", "messages": HELLO, "max_tokens": 80, "temperature": 1.0, "seed": 1, "n": 4,
        "response_format": {"type": "json_object"}}).json()
    assert_valid(body, "CreateChatCompletionResponse")
    stopped = [c["message"]["content"] for c in body["choices"] if c["finish_reason"] == "stop"]
    assert stopped and all(isinstance(json.loads(text), dict) for text in stopped)


def test_legacy_completions_take_response_format_as_an_extension(client):
    body = client.post("/v1/completions", json={
        "model": "tiny-llama-256", "prompt": "User:", "max_tokens": 180, "temperature": 1.0, "seed": 2,
        "response_format": JSON_SCHEMA}).json()
    assert_valid(body, "CreateCompletionResponse")
    jsonschema.validate(json.loads(body["choices"][0]["text"]), SCHEMA)


def test_responses_text_format_and_the_sdk_parse_helper(openai_client, client):
    body = client.post("/v1/responses", json={
        "model": "tiny-llama-256", "input": "Describe a user.", "max_output_tokens": 180, "temperature": 1.0,
        "text": {"format": {"type": "json_schema", "name": "user", "schema": SCHEMA, "strict": True}}}).json()
    assert_valid(body, "Response")
    assert body["text"]["format"]["type"] == "json_schema" and body["text"]["format"]["name"] == "user"
    jsonschema.validate(json.loads(body["output"][0]["content"][0]["text"]), SCHEMA)
    parsed = openai_client.responses.parse(model="tiny-llama-256", input="Who?", text_format=Person,
                                           max_output_tokens=180, temperature=1.0).output_parsed
    assert isinstance(parsed, Person)


@pytest.mark.parametrize("response_format, param, words", [
    ({"type": "json_schema", "json_schema": {"name": "x", "strict": True, "schema": {
        "type": "object", "properties": {"a": {"not": {"type": "string"}}}}}},
     "response_format.json_schema.schema", '"not"'),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objectx"}}},
     "response_format.json_schema.schema", "objectx"),
    ({"type": "json_schema", "json_schema": {"name": "bad name!", "schema": {}}}, "response_format.json_schema.name",
     "pattern"),
    ({"type": "json_schema"}, "response_format", "json_schema is required"),
    ({"type": "xml"}, "response_format.type", "json_schema"),
])
def test_schemas_we_cannot_enforce_are_400_naming_them(client, response_format, param, words):
    response = client.post("/v1/chat/completions", json={"model": "tiny-llama-256", "messages": HELLO,
                                                         "max_tokens": 5, "response_format": response_format})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"], error


def test_a_non_strict_schema_is_enforced_leniently(client):
    schema = {"type": "object", "properties": {"a": {"not": {"type": "string"}}, "b": {"type": "boolean"}},
              "required": ["b"], "additionalProperties": False}
    body = client.post("/v1/chat/completions", json={
        "model": "tiny-llama-256", "messages": HELLO, "max_tokens": 60, "temperature": 0,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}).json()
    assert isinstance(json.loads(body["choices"][0]["message"]["content"])["b"], bool)
