"""Grammar-enforced output in the native engine, on random weights: every choice parses and validates against
its schema (20 seeds, n=3), whatever the model would rather write; grammars compile once and off the step loop;
a schema the compiler cannot enforce is refused naming the keyword; and constraints compose with logprobs
(of the masked distribution), penalties, preemption and abort."""

import asyncio
import json

import jsonschema
import pytest

from engines.config import load_model_config
from engines.native.engine import NativeEngine
from engines.protocol import GenerationRequest, InvalidGenerationRequest, SamplingParams
from engines.structured import StructuredOutput
from tests.conftest import write_config

# Strings, arrays and numbers are bounded where a random model would otherwise never close them.
SCHEMAS = {
    "nested": {"type": "object", "properties": {
        "user": {"type": "object", "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 999},
                                                  "tag": {"type": "string", "maxLength": 6}},
                 "required": ["id", "tag"], "additionalProperties": False},
        "ok": {"type": "boolean"}}, "required": ["user", "ok"], "additionalProperties": False},
    "array": {"type": "object", "properties": {"xs": {"type": "array", "items": {"type": "integer", "minimum": -5,
                                                                                   "maximum": 5},
                                                      "minItems": 1, "maxItems": 4}},
              "required": ["xs"], "additionalProperties": False},
    "enum": {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]},
                                              "size": {"type": "string", "enum": ["S", "M", "L"]}},
             "required": ["color", "size"], "additionalProperties": False},
    "any_of": {"type": "object", "properties": {"v": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9},
                                                              {"type": "string", "pattern": "^[a-c]{2}$"},
                                                              {"type": "null"}]}},
               "required": ["v"], "additionalProperties": False},
    "bounded_numbers": {"type": "object", "properties": {
        "p": {"type": "number", "minimum": 0, "maximum": 1},
        "n": {"type": "integer", "exclusiveMinimum": 10, "maximum": 20}}, "required": ["p", "n"],
        "additionalProperties": False},
    "pattern": {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"}},
                "required": ["code"], "additionalProperties": False},
}


@pytest.fixture(scope="module")
def engine(tiny_llama_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("structured")
    config = load_model_config(write_config(root, "m", f"id: m\ntask: chat\nengine: transformers\n"
                                                       f"source: {tiny_llama_dir}\ndtype: float32\ndevice: cpu\n"
                                                       "max_model_len: 256\nmax_num_seqs: 64\n"))
    engine = NativeEngine(config, root)
    engine.load()
    return engine


async def _choices(engine, request_id, prompt, params):
    await engine.prepare(params)
    texts: dict[int, str] = {}
    reasons: dict[int, str] = {}
    events = []
    async for event in engine.generate(GenerationRequest(request_id, prompt, params)):
        texts[event.index] = texts.get(event.index, "") + event.text
        events.append(event)
        if event.finish_reason:
            reasons[event.index] = event.finish_reason
    return texts, reasons, events


def _run(engine, coroutines):
    async def main():
        await engine.start()
        return await asyncio.gather(*coroutines())
    return asyncio.run(main())


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_every_choice_parses_and_validates(engine, name):
    schema = SCHEMAS[name]
    structured = StructuredOutput.json_schema(schema, strict=True)
    prompt = engine.encode_text("Once upon a time")
    results = _run(engine, lambda: [_choices(engine, f"{name}-{seed}", prompt, SamplingParams(
        max_tokens=200, temperature=1.0, seed=seed, n=3, structured=structured)) for seed in range(20)])
    for texts, reasons, _ in results:
        assert len(texts) == 3
        for index, text in texts.items():
            assert reasons[index] == "stop", text
            jsonschema.validate(json.loads(text), schema)


def test_constraints_compose_with_logprobs_penalties_and_ignore_eos(engine):
    prompt = engine.encode_text("Hello")
    schema = SCHEMAS["nested"]
    params = SamplingParams(max_tokens=200, temperature=0.9, seed=3, n=2, logprobs=2, presence_penalty=1.5,
                            repetition_penalty=1.3, ignore_eos=True, structured=StructuredOutput.json_schema(schema))
    texts, reasons, events = _run(engine, lambda: [_choices(engine, "mix", prompt, params)])[0]
    for index, text in texts.items():
        jsonschema.validate(json.loads(text), schema)
        assert reasons[index] == "stop"  # with ignore_eos, the grammar's end ends the choice
    entries = [entry for event in events for entry in event.logprobs or []]
    assert entries and all(entry.logprob > float("-inf") for entry in entries)
    # logprobs are those of the masked distribution: every alternative shown was allowed (finite)
    assert all(value > float("-inf") for entry in entries for _, value in entry.top)
    assert engine.stats()["kv_blocks_used"] == 0


def test_json_object_stops_as_an_object_or_is_cut_by_max_tokens(engine):
    """Any JSON object: keys and strings are unbounded, so a random model may run out of max_tokens inside one
    (finish_reason "length", as OpenAI's API does); every choice that stops is an object."""
    prompt = engine.encode_text("Hello")
    results = _run(engine, lambda: [_choices(engine, f"o{seed}", prompt, SamplingParams(
        max_tokens=64, temperature=1.0, seed=seed, n=3, structured=StructuredOutput("json_object")))
        for seed in range(6)])
    stopped = [text for texts, reasons, _ in results for index, text in texts.items() if reasons[index] == "stop"]
    assert stopped and all(isinstance(json.loads(text), dict) for text in stopped)
    cut = [text for texts, reasons, _ in results for index, text in texts.items() if reasons[index] == "length"]
    assert all(text.startswith("{") for text in cut)


def test_greedy_is_deterministic_under_the_grammar(engine):
    structured = StructuredOutput.json_schema(SCHEMAS["enum"])
    prompt = engine.encode_text("The quick brown fox")
    params = SamplingParams(max_tokens=60, temperature=0.0, structured=structured)
    first, second = _run(engine, lambda: [_choices(engine, "g1", prompt, params), _choices(engine, "g2", prompt,
                                                                                          params)])
    assert first[0] == second[0]
    jsonschema.validate(json.loads(first[0][0]), SCHEMAS["enum"])


def test_preemption_keeps_the_grammar_state(tiny_llama_dir, tmp_path):
    """A KV cache too small for the batch: sequences are preempted and recomputed mid-JSON, and still parse."""
    config = load_model_config(write_config(tmp_path, "tight", f"id: tight\ntask: chat\nengine: transformers\n"
                                                               f"source: {tiny_llama_dir}\ndtype: float32\n"
                                                               "device: cpu\nmax_model_len: 96\nblock_size: 4\n"
                                                               "kv_cache_tokens: 96\nmax_num_seqs: 4\n"
                                                               "max_num_batched_tokens: 16\n"))
    tight = NativeEngine(config, tmp_path)
    tight.load()
    schema = SCHEMAS["nested"]
    structured = StructuredOutput.json_schema(schema)
    prompt = tight.encode_text("Once upon a time there was a small model")
    results = _run(tight, lambda: [_choices(tight, f"t{seed}", prompt, SamplingParams(
        max_tokens=60, temperature=1.0, seed=seed, structured=structured)) for seed in range(4)])
    assert tight.stats()["preemptions"] > 0
    for texts, reasons, _ in results:
        if reasons[0] == "stop":
            jsonschema.validate(json.loads(texts[0]), schema)
    assert tight.stats()["kv_blocks_used"] == 0


def test_an_unimplemented_keyword_is_named_unless_the_schema_is_not_strict(engine):
    schema = {"type": "object", "properties": {"x": {"not": {"type": "string"}}}}
    with pytest.raises(InvalidGenerationRequest, match='"not"') as caught:
        engine.check_request(3, SamplingParams(max_tokens=5, structured=StructuredOutput.json_schema(
            schema, param="response_format.json_schema.schema")))
    assert caught.value.param == "response_format.json_schema.schema"
    lenient = SamplingParams(max_tokens=5, structured=StructuredOutput.json_schema(schema, strict=False))
    engine.check_request(3, lenient)  # enforced without the keyword it cannot implement
    with pytest.raises(InvalidGenerationRequest, match="Invalid type"):
        engine.check_request(3, SamplingParams(max_tokens=5, structured=StructuredOutput.json_schema(
            {"type": "objectx"})))


def test_grammars_are_compiled_once(engine):
    structured = StructuredOutput.json_schema(SCHEMAS["pattern"])

    async def twice():
        await engine.prepare(SamplingParams(max_tokens=5, structured=structured))
        first = engine.grammars.compile(structured)
        await engine.prepare(SamplingParams(max_tokens=9, structured=structured))
        return first, engine.grammars.compile(structured)

    first, second = asyncio.run(twice())
    assert first is second


def test_a_compile_over_the_time_limit_fails_that_request_alone(engine, monkeypatch):
    import time as clock

    import engines.native.grammar as grammar

    structured = StructuredOutput.json_schema({"type": "object", "properties": {"slow": {"type": "boolean"}}})
    original = grammar.GrammarCache.compile

    def slow(self, spec):
        if spec == structured:
            clock.sleep(0.5)
        return original(self, spec)

    monkeypatch.setattr(grammar, "COMPILE_TIMEOUT_S", 0.1)
    monkeypatch.setattr(grammar.GrammarCache, "compile", slow)
    prompt = engine.encode_text("Hello")

    async def scenario():
        await engine.start()
        with pytest.raises(InvalidGenerationRequest, match="took over 0.1 s to compile") as caught:
            await engine.prepare(SamplingParams(max_tokens=8, structured=structured))
        assert caught.value.code == "grammar_too_complex"
        # the engine goes on serving others meanwhile
        texts, reasons, _ = await _choices(engine, "other", prompt, SamplingParams(
            max_tokens=60, temperature=1.0, seed=1, structured=StructuredOutput.json_schema(SCHEMAS["enum"])))
        jsonschema.validate(json.loads(texts[0]), SCHEMAS["enum"])

    asyncio.run(scenario())
