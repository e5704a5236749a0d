"""The native engine on tiny Llama and Gemma 3 models, against transformers' own generate."""

import asyncio

import pytest

from engines.protocol import (
    ContextLengthExceeded,
    GenerationRequest,
    InvalidGenerationRequest,
    SamplingParams,
)
from tests.reference import greedy_ids


def _engine(registry, name):
    return registry.resolve(name)


async def _run(engine, prompt, params, request_id="r1"):
    await engine.start()
    return [e async for e in engine.generate(GenerationRequest(request_id, prompt, params))]


def _hf_greedy(engine, prompt, max_new_tokens):
    return greedy_ids(engine, prompt, max_new_tokens, exact_length=True)


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gemma"])
def test_greedy_tokens_equal_transformers_generate(registry, model):
    engine = _engine(registry, model)
    prompt = engine.encode_text("Once upon a time there was a small model")
    # ignore_eos, so the whole 40 tokens are compared (and Gemma's 8-token window is crossed)
    params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
    events = asyncio.run(_run(engine, prompt, params))
    ours = [t for e in events for t in e.token_ids]
    assert ours == _hf_greedy(engine, prompt, 40)
    assert events[-1].finish_reason == "length" and events[-1].completion_tokens == 40
    assert "".join(e.text for e in events) == engine.tokenizer.decode(ours, skip_special_tokens=True)


def test_seeded_sampling_is_reproducible_and_n_choices_differ(registry):
    engine = _engine(registry, "tiny-llama")
    prompt = engine.encode_text("Hello")
    params = SamplingParams(max_tokens=12, temperature=1.0, n=3, seed=1234, ignore_eos=True)

    def texts():
        events = asyncio.run(_run(engine, prompt, params))
        return [[t for e in events if e.index == i for t in e.token_ids] for i in range(3)]

    first, second = texts(), texts()
    assert first == second
    assert len({tuple(t) for t in first}) > 1


def test_stop_token_ends_choice_with_stop(registry):
    engine = _engine(registry, "tiny-llama")
    prompt = engine.encode_text("Hello")
    greedy = _hf_greedy(engine, prompt, 10)
    params = SamplingParams(max_tokens=10, temperature=0.0, stop_token_ids=(greedy[3],))
    events = asyncio.run(_run(engine, prompt, params))
    assert [t for e in events for t in e.token_ids] == greedy[: greedy.index(greedy[3]) + 1]
    assert events[-1].finish_reason == "stop"


def test_stop_string_cuts_text_and_finishes(registry):
    engine = _engine(registry, "tiny-llama")
    prompt = engine.encode_text("Hello")
    full = engine.tokenizer.decode(_hf_greedy(engine, prompt, 20), skip_special_tokens=True)
    stop = full[5:8]
    events = asyncio.run(_run(engine, prompt, SamplingParams(max_tokens=20, temperature=0.0, stop=(stop,),
                                                             ignore_eos=True)))
    assert "".join(e.text for e in events) == full[: full.index(stop)]
    assert events[-1].finish_reason == "stop"


def test_abort_mid_stream_finishes_with_abort(registry):
    engine = _engine(registry, "tiny-llama")
    prompt = engine.encode_text("Hello")

    async def scenario():
        await engine.start()
        seen = []
        async for event in engine.generate(GenerationRequest("abort-me", prompt,
                                                             SamplingParams(max_tokens=100, temperature=0.0,
                                                                            ignore_eos=True))):
            seen.append(event)
            if len(seen) == 3:
                await engine.abort("abort-me")
        return seen

    events = asyncio.run(scenario())
    assert events[-1].finish_reason == "abort"
    assert events[-1].completion_tokens < 100
    assert "abort-me" not in engine._jobs


def test_context_limit_and_n_cap_are_checked_before_queueing(registry):
    engine = _engine(registry, "tiny-llama")
    with pytest.raises(ContextLengthExceeded, match="maximum context length is 128 tokens"):
        engine.check_request(100, SamplingParams(max_tokens=29))
    engine.check_request(100, SamplingParams(max_tokens=28))
    with pytest.raises(InvalidGenerationRequest, match="max_num_seqs"):
        engine.check_request(1, SamplingParams(max_tokens=1, n=engine.config.max_num_seqs + 1))


def test_a_prompt_far_over_the_context_is_refused_from_a_prefix(registry):
    engine = registry.resolve("tiny-llama")  # context 128
    seen = []

    def tokenize(text):
        seen.append(len(text))
        return engine.tokenizer(text, add_special_tokens=False)["input_ids"]

    hostile = "word " * 200_000  # 1 MB
    with pytest.raises(ContextLengthExceeded) as refused:
        engine.bounded_tokenize(hostile, tokenize, "prompt")
    assert refused.value.param == "prompt"
    assert seen == [(128 + 1) * 8]  # only the prefix was tokenized, never the megabyte


def test_a_long_text_that_fits_is_tokenized_whole_and_exactly(registry):
    engine = registry.resolve("tiny-llama")
    text = "<|im_start|>" * 110  # 1320 characters, more than 8 per token of context, in 110 tokens
    expected = engine.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(text) > (128 + 1) * 8 and len(expected) == 110
    seen = []

    def tokenize(t):
        seen.append(len(t))
        return engine.tokenizer(t, add_special_tokens=False)["input_ids"]

    assert engine.bounded_tokenize(text, tokenize, "prompt") == expected
    assert seen == [(128 + 1) * 8, len(text)]  # the prefix was not conclusive, so the whole text counted
