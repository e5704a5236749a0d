"""Function calling in chat completions, on random weights, in the built-in format (server/tool_calls.py):
`required` and named choices always give calls whose arguments validate; `auto` gives text or valid calls;
streamed calls arrive in OpenAI's delta shape and the SDK's stream helper assembles them; a tool round trip
works; and bad tools are a 400 naming the parameter. The built-in prompt needs a longer context than the
shared tiny models have, so this module uses `tools_client` (tests/server/conftest.py): a tiny Llama with a
1,024-token context."""

import json

import jsonschema
import pytest

from server.tool_calls import StreamParser, call_text
from server.tool_calls import parse as parse_calls
from tests.openapi_schemas import assert_valid
from tests.server.sse import read_sse

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8},
                                            "unit": {"enum": ["c", "f"]}},
           "required": ["city", "unit"], "additionalProperties": False}
TIME = {"type": "object", "properties": {"zone": {"type": "integer", "minimum": -12, "maximum": 12}},
        "required": ["zone"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": WEATHER, "strict": True}},
         {"type": "function", "function": {"name": "get_time", "parameters": TIME, "strict": True}}]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def sdk(tools_client):
    from openai import OpenAI

    return OpenAI(base_url=str(tools_client.base_url) + "/v1", api_key=tools_client.headers["Authorization"][7:],
                  http_client=tools_client, max_retries=0)


def _chat(client, **fields):
    response = client.post("/v1/chat/completions", json={"model": "tiny-tools", "messages": ASK, "max_tokens": 120,
                                                         "temperature": 1.0, **fields})
    assert response.status_code == 200, response.text
    body = response.json()
    assert_valid(body, "CreateChatCompletionResponse")
    return body


def _check_calls(calls, names=None):
    assert calls
    for call in calls:
        assert call["id"].startswith("call_") and call["type"] == "function"
        name = call["function"]["name"]
        assert name in (names or SCHEMAS)
        jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS[name])


def test_required_always_calls_a_tool(tools_client):
    for seed in range(10):
        body = _chat(tools_client, tools=TOOLS, tool_choice="required", parallel_tool_calls=False, seed=seed, n=2)
        for choice in body["choices"]:
            assert choice["finish_reason"] == "tool_calls", choice
            assert len(choice["message"]["tool_calls"]) == 1
            _check_calls(choice["message"]["tool_calls"])


def test_parallel_calls_parse_when_they_stop(tools_client):
    stopped = 0
    for seed in range(6):
        for choice in _chat(tools_client, tools=TOOLS, tool_choice="required", seed=seed, n=2,
                            max_tokens=300)["choices"]:
            if choice["finish_reason"] == "tool_calls":
                stopped += 1
                _check_calls(choice["message"]["tool_calls"])
                assert choice["message"]["content"] is None
    assert stopped


def test_a_named_choice_calls_that_function(tools_client):
    for seed in range(6):
        body = _chat(tools_client, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_time"}},
                     seed=seed)
        choice = body["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        assert [c["function"]["name"] for c in choice["message"]["tool_calls"]] == ["get_time"]
        _check_calls(choice["message"]["tool_calls"], ["get_time"])


def test_auto_gives_text_or_valid_calls(tools_client):
    for seed in range(6):
        for choice in _chat(tools_client, tools=TOOLS, tool_choice="auto", seed=seed, n=2)["choices"]:
            calls = choice["message"].get("tool_calls")
            if calls:
                _check_calls(calls)
                assert choice["finish_reason"] == "tool_calls"
            else:
                content = choice["message"]["content"]
                assert isinstance(content, str) and "<tool_call>" not in content


def test_none_is_plain_text(tools_client):
    choice = _chat(tools_client, tools=TOOLS, tool_choice="none", seed=1, max_tokens=20)["choices"][0]
    assert "tool_calls" not in choice["message"] and choice["finish_reason"] in ("stop", "length")


def test_streamed_calls_have_openais_delta_shape(tools_client):
    chunks = read_sse(tools_client, "/v1/chat/completions", {
        "model": "tiny-tools", "messages": ASK, "max_tokens": 120, "temperature": 1.0, "seed": 4, "stream": True,
        "tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False})
    assert chunks.pop() == "[DONE]"
    for chunk in chunks:
        assert_valid(chunk, "CreateChatCompletionStreamResponse")
    # a forced call opens with content null, as OpenAI's does (the Vercel AI SDK made a text part of "")
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    deltas = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks if c["choices"][0]["delta"].get("tool_calls")]
    first = deltas[0]
    assert first["id"].startswith("call_") and first["type"] == "function" and first["function"]["arguments"] == ""
    assert all("id" not in d and "name" not in d["function"] for d in deltas[1:])
    arguments = "".join(d["function"]["arguments"] for d in deltas)
    jsonschema.validate(json.loads(arguments), SCHEMAS[first["function"]["name"]])
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_the_sdk_stream_helper_assembles_the_call(sdk):
    with sdk.chat.completions.stream(model="tiny-tools", messages=ASK, tools=TOOLS, max_tokens=120, seed=2,
                                     tool_choice={"type": "function", "function": {"name": "get_weather"}}) as stream:
        final = stream.get_final_completion()
    call = final.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER)


def test_a_tool_round_trip(sdk):
    first = sdk.chat.completions.create(model="tiny-tools", messages=ASK, tools=TOOLS, tool_choice="required",
                                        parallel_tool_calls=False, max_tokens=120, seed=3)
    message = first.choices[0].message
    call = message.tool_calls[0]
    history = [*ASK, message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 18})}]
    final = sdk.chat.completions.create(model="tiny-tools", messages=history, tools=TOOLS, tool_choice="none",
                                        max_tokens=16, seed=3)
    assert final.choices[0].message.tool_calls is None and isinstance(final.choices[0].message.content, str)


@pytest.mark.parametrize("fields, param", [
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "missing"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [TOOLS[0]] * 2}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": f"f{i}"}} for i in range(129)]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "strict": True, "parameters": {
        "type": "object", "properties": {"a": {"not": {}}}}}}], "tool_choice": "required"},
     "tools[0].function.parameters"),
    ({"tools": TOOLS, "response_format": {"type": "json_schema", "json_schema": {"name": "r", "strict": True,
      "schema": {"type": "object", "properties": {"a": {"not": {}}}}}}}, "response_format.json_schema.schema"),
    ({"tools": TOOLS, "messages": [*ASK, {"role": "tool", "tool_call_id": "call_nope", "content": "x"}]},
     "messages[1].tool_call_id"),
])
def test_bad_tools_are_400_naming_the_parameter(tools_client, fields, param):
    response = tools_client.post("/v1/chat/completions", json={"model": "tiny-tools", "messages": ASK,
                                                               "max_tokens": 5, **fields})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param, response.json()


def test_the_stream_parser_splits_text_names_and_arguments():
    parser = StreamParser()
    text = "Sure. " + call_text("get_time", '{"zone":3}') + call_text("get_weather", '{"city":"Rome","unit":"c"}')
    deltas = parser.feed("Sure. <tool_")  # a possible tag start is held back
    assert deltas == [{"content": "Sure. "}]
    deltas += parser.feed(text[len("Sure. <tool_"):], final=True)  # both calls complete within one step
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert [c["function"].get("name") for c in calls if "id" in c] == ["get_time", "get_weather"]
    by_index = {}
    for c in calls:
        by_index[c["index"]] = by_index.get(c["index"], "") + c["function"]["arguments"]
    assert by_index == {0: '{"zone":3}', 1: '{"city":"Rome","unit":"c"}'} and parser.called
    content, whole = parse_calls(text)
    assert content == "Sure." and [c["function"]["arguments"] for c in whole] == list(by_index.values())


@pytest.mark.parametrize("max_tokens", [3, 8, 40, 50, 62])
def test_a_call_cut_by_max_tokens_is_a_call_streamed_or_not_and_never_markup(tools_client, max_tokens):
    """Issue #39: a call cut by the token limit came back non-streamed as `<tool_call>{"name":"get_` text, while
    the stream gave tool_calls deltas. Now both give the same call (arguments as far as they got), finish
    `length`, and no markup in the content."""
    fields = {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
              "max_tokens": max_tokens, "seed": 5}
    whole = _chat(tools_client, **fields)["choices"][0]
    assert whole["finish_reason"] == "length" and "<tool" not in (whole["message"]["content"] or "")
    chunks = read_sse(tools_client, "/v1/chat/completions", {"model": "tiny-tools", "messages": ASK,
                                                             "temperature": 1.0, "stream": True, **fields})
    assert chunks.pop() == "[DONE]"
    for chunk in chunks:
        assert_valid(chunk, "CreateChatCompletionStreamResponse")
    deltas = [c["choices"][0]["delta"] for c in chunks]
    streamed_text = "".join(d.get("content") or "" for d in deltas)
    streamed_args = "".join(t["function"]["arguments"] for d in deltas for t in d.get("tool_calls") or [])
    names = [t["function"]["name"] for d in deltas for t in d.get("tool_calls") or [] if "name" in t["function"]]
    assert "<tool" not in streamed_text and chunks[-1]["choices"][0]["finish_reason"] == "length"
    calls = whole["message"].get("tool_calls") or []
    assert [c["function"]["name"] for c in calls] == names
    assert "".join(c["function"]["arguments"] for c in calls) == streamed_args
    if max_tokens >= 40:  # past the name (38 tokens of the tiny tokenizer): a call, with the arguments it got
        assert names == ["get_weather"] and streamed_args.startswith("{")


def test_parse_drops_the_cut_closing_tag_and_reads_loose_blocks():
    cut = call_text("get_weather", '{"city":"Rome","unit":"c"}')
    for end in range(len(cut) - len("}</tool_call>"), len(cut)):  # whole arguments, the closing tag cut anywhere
        content, calls = parse_calls(cut[:end])
        assert content is None and calls[0]["function"]["arguments"] == '{"city":"Rome","unit":"c"}', end
    assert parse_calls('<tool_call>{"name":"get_') == ("", [])
    loose = '<tool_call>{"name": "get_time", "arguments": {"zone": 2}}</tool_call> done'
    content, calls = parse_calls(loose)
    assert content == "done" and calls[0]["function"]["name"] == "get_time"
    assert json.loads(calls[0]["function"]["arguments"]) == {"zone": 2}
    assert parse_calls("<tool_call>not a call</tool_call>") == ("<tool_call>not a call</tool_call>", [])


REPORT = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}, "degrees": {"type": "integer"}},
          "required": ["city", "degrees"], "additionalProperties": False}
REPORT_FORMAT = {"type": "json_schema", "json_schema": {"name": "report", "schema": REPORT, "strict": True}}


def test_tools_with_a_response_format_give_calls_or_the_answer_in_that_format(tools_client):
    """Issue #39: response_format with callable tools was 400 unsupported_parameter; OpenAI accepts the pair, and
    pydantic-ai, the Agents SDK, the Vercel AI SDK, instructor and LangChain send it every turn. The model now
    calls tools or answers in the format, its choice; every choice that ends is one or the other, whole."""
    seen = set()
    for seed in range(8):
        for choice in _chat(tools_client, tools=TOOLS, response_format=REPORT_FORMAT, seed=seed, n=2,
                            max_tokens=200)["choices"]:
            calls = choice["message"].get("tool_calls")
            if calls:
                _check_calls(calls)
                seen.add("call")
            else:
                content = choice["message"]["content"]
                assert "<tool_call>" not in content
                if choice["finish_reason"] == "stop":
                    jsonschema.validate(json.loads(content), REPORT)
                    seen.add("answer")
    assert seen == {"call", "answer"}, seen
    # `required` (or a named function): calls from the first token, the format aside
    for choice in _chat(tools_client, tools=TOOLS, response_format=REPORT_FORMAT, tool_choice="required",
                        parallel_tool_calls=False, seed=3, n=2)["choices"]:
        assert choice["finish_reason"] == "tool_calls"
        _check_calls(choice["message"]["tool_calls"])


def test_the_sdk_parse_helper_with_tools_and_a_pydantic_format(sdk):
    import openai
    import pydantic

    class Report(pydantic.BaseModel):
        city: str
        degrees: int

    class GetTime(pydantic.BaseModel):
        zone: int

    kinds = set()
    for seed in range(6):
        try:
            completion = sdk.chat.completions.parse(model="tiny-tools", messages=ASK, response_format=Report,
                                                    tools=[openai.pydantic_function_tool(GetTime)], max_tokens=150,
                                                    temperature=1.0, seed=seed)
        except openai.LengthFinishReasonError:  # the helper refuses a reply cut by max_tokens (random weights)
            continue
        message = completion.choices[0].message
        if message.tool_calls:
            assert isinstance(message.tool_calls[0].function.parsed_arguments, GetTime)
            kinds.add("call")
        elif completion.choices[0].finish_reason == "stop":
            assert isinstance(message.parsed, Report)
            kinds.add("answer")
    assert kinds, "no choice ended within 150 tokens"


def test_responses_with_function_tools_and_a_text_format(tools_client):
    fmt = {"format": {"type": "json_schema", "name": "report", "schema": REPORT, "strict": True}}
    shapes = set()
    for seed_text in ("Weather in Paris?", "Weather in Rome?", "Time in Oslo?", "Weather?", "Time?", "Now?"):
        body = _respond(tools_client, input=seed_text, tools=RESPONSE_TOOLS, text=fmt, max_output_tokens=200)
        assert body["text"]["format"]["type"] == "json_schema"
        for item in body["output"]:
            if item["type"] == "function_call" and item["status"] == "completed":  # (one cut by max_output_tokens
                jsonschema.validate(json.loads(item["arguments"]), SCHEMAS[item["name"]])  # is incomplete)
                shapes.add("call")
            elif item["type"] == "message" and body["status"] == "completed":
                jsonschema.validate(json.loads(item["content"][0]["text"]), REPORT)
                shapes.add("answer")
    assert shapes, shapes


RESPONSE_TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather in a city",
                   "parameters": WEATHER, "strict": True},
                  {"type": "function", "name": "get_time", "parameters": TIME, "strict": True}]


def _respond(client, **fields):
    response = client.post("/v1/responses", json={"model": "tiny-tools", "input": "Weather in Paris?",
                                                  "max_output_tokens": 120, "temperature": 1.0, **fields})
    assert response.status_code == 200, response.text
    body = response.json()
    assert_valid(body, "Response")
    return body


def test_responses_function_calls_and_a_chained_round_trip(tools_client):
    body = _respond(tools_client, tools=RESPONSE_TOOLS, tool_choice="required", parallel_tool_calls=False)
    calls = [item for item in body["output"] if item["type"] == "function_call"]
    assert len(calls) == 1 and calls[0]["call_id"].startswith("call_") and calls[0]["id"].startswith("fc_")
    jsonschema.validate(json.loads(calls[0]["arguments"]), SCHEMAS[calls[0]["name"]])
    assert body["status"] == "completed" and body["tool_choice"] == "required" and body["parallel_tool_calls"] is False
    assert [tool["name"] for tool in body["tools"]] == ["get_weather", "get_time"]
    # the tool's result comes back as a function_call_output, chained to the response that called
    final = _respond(tools_client, previous_response_id=body["id"], max_output_tokens=16, input=[
        {"type": "function_call_output", "call_id": calls[0]["call_id"], "output": "18 degrees"}])
    assert final["output"][0]["type"] == "message"
    items = tools_client.get(f"/v1/responses/{final['id']}/input_items").json()["data"]
    assert items[0]["type"] == "function_call_output" and items[0]["call_id"] == calls[0]["call_id"]
    # without the chain, the client sends the call back itself
    again = _respond(tools_client, max_output_tokens=16, input=[
        {"role": "user", "content": "Weather in Paris?"}, {key: calls[0][key] for key in (
            "type", "call_id", "name", "arguments")},
        {"type": "function_call_output", "call_id": calls[0]["call_id"], "output": "18 degrees"}])
    assert again["status"] in ("completed", "incomplete")


def test_responses_stream_function_call_events(tools_client):
    events = []
    with tools_client.stream("POST", "/v1/responses", json={
            "model": "tiny-tools", "input": "Time?", "max_output_tokens": 120, "temperature": 1.0, "stream": True,
            "tools": RESPONSE_TOOLS, "tool_choice": {"type": "function", "name": "get_time"}}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    kinds = [e["type"] for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" not in kinds  # a named choice: the call from the first token
    added = next(e for e in events if e["type"] == "response.output_item.added")
    assert added["item"]["type"] == "function_call" and added["item"]["name"] == "get_time"
    arguments = "".join(e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta")
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert done["arguments"] == arguments and done["item_id"] == added["item"]["id"]
    jsonschema.validate(json.loads(arguments), TIME)
    final = events[-1]["response"]
    assert_valid(final, "Response")
    assert final["output"][0]["arguments"] == arguments
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


@pytest.mark.parametrize("max_output_tokens, choice", [(50, "required"), (50, "auto"), (30, "required")])
def test_a_responses_call_cut_by_max_output_tokens_ends_as_its_events_built_it(tools_client, max_output_tokens,
                                                                               choice):
    """Issue #39: the stream announced a function_call item but `response.incomplete` held another, a message
    with the markup, so get_final_response() and the Agents SDK saw other output than the events. Now the
    final object's output is exactly the items the events finished, ids included; non-streamed, the same shape."""
    fields = {"model": "tiny-tools", "input": "Weather in Paris?", "max_output_tokens": max_output_tokens,
              "temperature": 0.0, "tools": RESPONSE_TOOLS, "tool_choice": choice}
    events = []
    with tools_client.stream("POST", "/v1/responses", json={**fields, "stream": True}) as response:
        assert response.status_code == 200
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    final = events[-1]
    assert final["type"] == "response.incomplete", [e["type"] for e in events]
    assert_valid(final["response"], "Response")
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert final["response"]["output"] == done and final["response"]["incomplete_details"] == {
        "reason": "max_output_tokens"}
    whole = _respond(tools_client, **{k: v for k, v in fields.items() if k != "model"})
    assert whole["status"] == "incomplete"
    for output in (final["response"]["output"], whole["output"]):
        texts = [part["text"] for item in output if item["type"] == "message" for part in item["content"]]
        assert not any("<tool" in text for text in texts), output
    if choice == "required" and max_output_tokens >= 40:  # past the call's name (38 tokens): a cut call
        for output in (final["response"]["output"], whole["output"]):
            assert [(i["type"], i["name"], i["status"]) for i in output][-1][::2] == ("function_call", "incomplete")
    assert [(i["type"], i.get("name"), i.get("arguments")) for i in whole["output"]] == [
        (i["type"], i.get("name"), i.get("arguments")) for i in done]


def test_a_template_that_takes_tools_renders_them_itself(tools_client):
    """The template shows the tools, the earlier call and its result (Hugging Face's shapes); the answer is still
    decoded and read in the same <tool_call> format."""
    from server.protocol import ChatCompletionRequest
    from server.services.prompts import ChatPrompt

    engine = tools_client.app.state.services.chat.pipeline.registry.resolve("tiny-hermes")
    assert engine.template_tool_format() == "hermes"
    history = [*ASK, {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function", "function": {
        "name": "get_time", "arguments": '{"zone":2}'}}]}, {"role": "tool", "tool_call_id": "call_1", "content": "9am"}]
    request = ChatCompletionRequest(model="tiny-hermes", messages=history, tools=TOOLS)
    text = engine.tokenizer.decode(ChatPrompt(request.messages, tools=request.tool_plan()).token_ids(engine))
    assert "TOOLS: get_weather get_time." in text and "You can call these functions" not in text
    assert '<tool_call>{"name": "get_time", "arguments": {"zone": 2}}</tool_call>' in text and "RESULT 9am" in text
    body = _chat(tools_client, model="tiny-hermes", messages=history, tools=TOOLS, tool_choice="required",
                 parallel_tool_calls=False, seed=1)
    _check_calls(body["choices"][0]["message"]["tool_calls"])
