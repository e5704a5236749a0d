"""End-to-end tier: `ozwell serve` as a subprocess with the shipped default models, driven by
the official openai SDK over loopback."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.openapi_schemas import assert_valid
from tests.process import ROOT, ServerProcess

pytestmark = pytest.mark.e2e

READY_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data_dir = Path(os.environ.get("OZWELL_E2E_DATA_DIR") or tmp_path_factory.mktemp("e2e-data"))
    process = ServerProcess(ROOT / "model_configs", data_dir)
    try:
        process.start(READY_TIMEOUT_S)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    # The first start with an empty key store made an admin key and kept it in a 0600 file.
    yield {"url": process.url, "data_dir": data_dir, "lines": process.lines, "key": process.key}
    process.stop()


@pytest.fixture(scope="module")
def sdk(server):
    from openai import OpenAI

    return OpenAI(base_url=server["url"] + "/v1", api_key=server["key"], max_retries=0, timeout=300)


def _converted_dir(data_dir: Path, model_id: str) -> Path:
    """The converted copy the server loaded for the shipped config (the data dir may hold older ones)."""
    from engines import sources
    from engines.config import load_model_config

    config = load_model_config(ROOT / "model_configs" / f"{model_id}.yaml")
    return sources.converted_gguf_dir(config, sources.locate(config, data_dir), data_dir, config.dtype)


def _hf_greedy(model_dir: Path, prompt_ids: list[int], max_new_tokens: int, quantization: str = "none") -> str:
    """transformers' greedy tokens on the server's converted weights, quantised as the shipped config says
    (`quantization: int8`, `int4` or `int6`: the same weights the server runs, cpu_quant.quantize_model)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    from engines.devices import resolve_dtype
    from engines.native.cpu_quant import quantize_model

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=resolve_dtype("auto", torch.device("cpu"))).eval()
    if quantization != "none":
        assert quantize_model(model, mode=quantization)
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, len(prompt_ids):], skip_special_tokens=True)


def test_ready_line_printed_once(server):
    assert sum(line.startswith("Ozwell ready on") for line in server["lines"]) == 1


def test_a_wrong_key_is_refused(server):
    import openai

    client = openai.OpenAI(base_url=server["url"] + "/v1", api_key="ozw_" + "n" * 43, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_models_list_has_defaults_and_aliases(sdk):
    ids = {m.id for m in sdk.models.list()}
    assert {"smollm2-135m-instruct", "gpt-4", "gpt-4o-mini", "gemma-3-270m", "all-minilm-l6-v2"} <= ids


def test_chat_answers_from_smollm2_in_a_turn(sdk, server):
    reply = sdk.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "Hello!"}],
                                        temperature=0, max_tokens=40)
    assert_valid(reply.model_dump(exclude_unset=True), "CreateChatCompletionResponse")
    assert reply.model == "smollm2-135m-instruct"
    text = reply.choices[0].message.content
    assert text.strip() and "<|im_start|>" not in text
    # Same model, prompt and dtype: greedy output equals transformers' generate.
    from transformers import AutoTokenizer

    model_dir = _converted_dir(server["data_dir"], "smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "Hello!"}], add_generation_prompt=True,
                                             tokenize=False)
    prompt_ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert reply.usage.prompt_tokens == len(prompt_ids)
    from engines.config import load_model_config

    quantization = load_model_config(ROOT / "model_configs" / "smollm2-135m-instruct.yaml").quantization
    expected = _hf_greedy(model_dir, prompt_ids, reply.usage.completion_tokens, quantization)
    assert text == expected


def test_chat_stream(sdk):
    stream = sdk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}],
                                         max_tokens=16, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    for chunk in chunks:
        assert_valid(chunk.model_dump(exclude_unset=True), "CreateChatCompletionStreamResponse")
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].usage.completion_tokens <= 16


def test_legacy_completion_continues_text_with_gemma(sdk, server):
    prompt = "The capital of France is"
    reply = sdk.completions.create(model="gemma-3-270m", prompt=prompt, max_tokens=12, temperature=0)
    assert_valid(reply.model_dump(exclude_unset=True), "CreateCompletionResponse")
    from transformers import AutoTokenizer

    model_dir = _converted_dir(server["data_dir"], "gemma-3-270m")
    prompt_ids = AutoTokenizer.from_pretrained(model_dir)(prompt)["input_ids"]
    assert reply.choices[0].text.strip()
    from engines.config import load_model_config

    quantization = load_model_config(ROOT / "model_configs" / "gemma-3-270m.yaml").quantization
    assert reply.choices[0].text == _hf_greedy(model_dir, prompt_ids, reply.usage.completion_tokens, quantization)
    streamed = "".join(c.choices[0].text for c in sdk.completions.create(
        model="gemma-3-270m", prompt=prompt, max_tokens=12, temperature=0, stream=True))
    assert streamed == reply.choices[0].text


def test_errors_through_the_sdk(sdk):
    import openai

    with pytest.raises(openai.NotFoundError) as info:
        sdk.chat.completions.create(model="gpt-5-nope", messages=[{"role": "user", "content": "x"}])
    assert info.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}], max_tokens=9000)
    assert info.value.body["code"] == "context_length_exceeded"


def test_second_start_uses_the_converted_copy(server, monkeypatch):
    from engines import sources
    from engines.config import load_model_config

    config = load_model_config(ROOT / "model_configs" / "smollm2-135m-instruct.yaml")

    def must_not_convert(*args):
        raise AssertionError("the GGUF was dequantised again")

    monkeypatch.setattr(sources, "_convert_gguf", must_not_convert)
    started = time.perf_counter()
    path = sources.resolve_hf_dir(config, server["data_dir"], config.dtype)
    assert path == _converted_dir(server["data_dir"], "smollm2-135m-instruct")
    assert time.perf_counter() - started < 5


def test_embeddings_default_model_through_the_sdk(sdk):
    import numpy as np

    default = sdk.embeddings.create(model="text-embedding-3-small", input=["hello world", "goodbye"])
    as_float = sdk.embeddings.create(model="text-embedding-3-small", input=["hello world", "goodbye"],
                                     encoding_format="float")
    assert default.model == "all-minilm-l6-v2" and len(default.data[0].embedding) == 384
    assert np.allclose(default.data[0].embedding, as_float.data[0].embedding, atol=1e-6)
    assert abs(np.linalg.norm(default.data[1].embedding) - 1) < 1e-5


def test_responses_and_files_on_the_chat_default(sdk):
    uploaded = sdk.files.create(file=("fact.txt", b"The sky is green today.\n"), purpose="user_data")
    first = sdk.responses.create(model="gpt-4", max_output_tokens=32, temperature=0, input=[
        {"role": "user", "content": [{"type": "input_text", "text": "Read this: "},
                                     {"type": "input_file", "file_id": uploaded.id}]}])
    assert first.output_text.strip()
    second = sdk.responses.create(model="gpt-4", max_output_tokens=16, input="And again?",
                                  previous_response_id=first.id)
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    assert sdk.responses.retrieve(second.id).output_text == second.output_text


class _City:
    """The schema the structured tests ask for (a pydantic model, as SDK users write it)."""

    @staticmethod
    def model():
        from pydantic import BaseModel, Field

        class City(BaseModel):
            name: str = Field(max_length=40)
            country: str = Field(max_length=40)
            # (an integer: a float's digits are not bounded by any schema, and a greedy 135M model can write
            # 12.7888888... until max_tokens; see the README)
            population_millions: int = Field(ge=0, le=100)

        return City


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
                   "required": ["city"], "additionalProperties": False}, "strict": True}}


def test_structured_output_parse_helpers_on_the_defaults(sdk):
    city = _City.model()
    for model in ("smollm2-135m-instruct", "gemma-3-270m"):
        completion = sdk.chat.completions.parse(model=model, response_format=city, max_tokens=120, temperature=0,
                                                messages=[{"role": "user", "content": "Describe Paris as JSON."}])
        assert isinstance(completion.choices[0].message.parsed, city), model
    parsed = sdk.responses.parse(model="gpt-4", input="Describe Rome as JSON.", text_format=city,
                                 max_output_tokens=120, temperature=0).output_parsed
    assert isinstance(parsed, city)


def test_a_streamed_tool_call_and_its_round_trip_on_the_default(sdk):
    import json

    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    with sdk.chat.completions.stream(model="gpt-4", messages=messages, tools=[WEATHER_TOOL], max_tokens=60,
                                     temperature=0, tool_choice="required", parallel_tool_calls=False) as stream:
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and isinstance(json.loads(call.function.arguments)["city"], str)
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"}]
    answer = sdk.chat.completions.create(model="gpt-4", messages=messages, tools=[WEATHER_TOOL], max_tokens=40,
                                         temperature=0)
    assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert answer.choices[0].message.content or answer.choices[0].message.tool_calls


def test_the_readmes_first_request_without_max_tokens_answers_within_a_minute(sdk):
    """Issue #39: the README's first request set no max_tokens and, sampled at temperature 1, ran 949 tokens for
    398 s. The chat default's `default_max_tokens` (256) bounds it; /v1/models says so."""
    assert sdk.models.retrieve("gpt-4").model_extra["ozwell"]["default_max_tokens"] == 256
    for seed in range(3):
        begun = time.perf_counter()
        reply = sdk.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "Hello!"}], seed=seed)
        assert reply.usage.completion_tokens <= 256 and time.perf_counter() - begun < 60
        assert reply.choices[0].finish_reason in ("stop", "length")
    greedy = sdk.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "Hello!"}],
                                         temperature=0)
    assert greedy.choices[0].finish_reason == "stop"  # int8 greedy ends its turn (33 tokens on 2026-12-07)
