"""The full sampling parameter set through the API: penalties, bias, top_k/min_p, logprobs, ignore_eos."""

import math

import torch

from engines.native.sampler import SamplingBatch, _apply_penalties, sample
from engines.protocol import SamplingParams
from tests.openapi_schemas import assert_valid
from tests.reference import greedy_ids, reference_model
from tests.server.sse import read_sse

HELLO = [{"role": "user", "content": "Hello!"}]


def _teacher_forced_logprobs(engine, prompt, completion):
    """The model's log-probability of each completion token, from one forward pass over it all."""
    with torch.inference_mode():
        logits = reference_model(engine)(torch.tensor([prompt + completion])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return [logprobs[len(prompt) - 1 + i, t].item() for i, t in enumerate(completion)]


def test_chat_logprobs_match_the_model_and_the_spec(client, registry):
    engine = registry.resolve("tiny-llama")
    body = client.post("/v1/chat/completions", json={"model": "tiny-llama", "messages": HELLO, "max_tokens": 8,
                                                      "temperature": 0, "logprobs": True, "top_logprobs": 3,
                                                      "ignore_eos": True}).json()
    assert_valid(body, "CreateChatCompletionResponse")
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == body["usage"]["completion_tokens"] == 8
    prompt = engine.encode_chat(HELLO)
    completion = greedy_ids(engine, prompt, 8, exact_length=True)
    expected = _teacher_forced_logprobs(engine, prompt, completion)
    for entry, want, token_id in zip(content, expected, completion):
        assert math.isclose(entry["logprob"], want, abs_tol=1e-4)
        assert entry["token"] == engine.token_text(token_id)
        assert len(entry["top_logprobs"]) == 3
        assert entry["top_logprobs"][0]["logprob"] >= entry["top_logprobs"][1]["logprob"]
        assert math.isclose(entry["top_logprobs"][0]["logprob"], entry["logprob"], abs_tol=1e-6)  # greedy


def test_stream_logprobs_cover_every_token(client):
    events = read_sse(client, "/v1/chat/completions", {"model": "tiny-llama", "messages": HELLO, "max_tokens": 10,
                                                       "logprobs": True, "stream": True, "ignore_eos": True,
                                                       "stream_options": {"include_usage": True}})
    chunks = events[:-1]
    for chunk in chunks:
        assert_valid(chunk, "CreateChatCompletionStreamResponse")
    entries = [e for c in chunks if c["choices"] and c["choices"][0].get("logprobs")
               for e in c["choices"][0]["logprobs"]["content"]]
    assert len(entries) == chunks[-1]["usage"]["completion_tokens"] == 10


def test_legacy_completion_logprobs(client):
    body = client.post("/v1/completions", json={"model": "tiny-gemma", "prompt": "Once upon", "max_tokens": 6,
                                                 "temperature": 0, "logprobs": 2, "ignore_eos": True}).json()
    assert_valid(body, "CreateCompletionResponse")
    logprobs = body["choices"][0]["logprobs"]
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == len(logprobs["top_logprobs"]) == 6
    assert all(len(top) <= 2 for top in logprobs["top_logprobs"])
    assert logprobs["text_offset"][0] == 0
    assert all(b >= a for a, b in zip(logprobs["text_offset"], logprobs["text_offset"][1:]))


def test_logit_bias_forces_a_token_and_ignore_eos_runs_on(client, registry):
    engine = registry.resolve("tiny-llama")
    forced = engine.encode_text("fox")[-1]
    body = client.post("/v1/chat/completions", json={"model": "tiny-llama", "messages": HELLO, "max_tokens": 5,
                                                      "temperature": 1.0, "logit_bias": {str(forced): 100},
                                                      "logprobs": True}).json()
    tokens = [e["token"] for e in body["choices"][0]["logprobs"]["content"]]
    assert tokens == [engine.token_text(forced)] * 5
    eos = engine.tokenizer.eos_token_id
    request = {"model": "tiny-llama", "messages": HELLO, "max_tokens": 5, "logit_bias": {str(eos): 100}}
    stopped = client.post("/v1/chat/completions", json=request).json()
    assert stopped["choices"][0]["finish_reason"] == "stop" and stopped["usage"]["completion_tokens"] == 1
    running = client.post("/v1/chat/completions", json={**request, "ignore_eos": True}).json()
    assert running["choices"][0]["finish_reason"] == "length" and running["usage"]["completion_tokens"] == 5


def test_top_k_1_is_greedy_and_penalties_change_greedy_output(client):
    base = {"model": "tiny-llama", "messages": HELLO, "max_tokens": 24, "ignore_eos": True}
    greedy = client.post("/v1/chat/completions", json={**base, "temperature": 0}).json()
    top1 = client.post("/v1/chat/completions", json={**base, "temperature": 1.5, "top_k": 1}).json()
    assert top1["choices"][0]["message"]["content"] == greedy["choices"][0]["message"]["content"]
    penalised = client.post("/v1/chat/completions", json={**base, "temperature": 0, "frequency_penalty": 2,
                                                           "presence_penalty": 2}).json()
    assert penalised["choices"][0]["message"]["content"] != greedy["choices"][0]["message"]["content"]


def test_penalty_arithmetic():
    params = [SamplingParams(max_tokens=1, presence_penalty=0.5, frequency_penalty=0.25, repetition_penalty=2.0)]
    batch = SamplingBatch(params, [[1]], vocab_size=4, device=torch.device("cpu"))
    batch.record(torch.tensor([2]))
    batch.record(torch.tensor([2]))
    logits = torch.tensor([[1.0, 2.0, 3.0, -1.0]])
    out = _apply_penalties(logits, batch)[0].tolist()
    # token 1: in the prompt -> repetition only (2 / 2); token 2: twice in the output -> 3 / 2 - 0.25*2 - 0.5
    assert out == [1.0, 1.0, 1.5 - 0.5 - 0.5, -1.0]


def test_min_p_and_top_k_restrict_the_draw():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(2000, 1)
    generator = torch.Generator().manual_seed(0)
    for params, allowed in ((SamplingParams(max_tokens=1, min_p=0.5), {0, 1}),
                            (SamplingParams(max_tokens=1, top_k=3), {0, 1, 2})):
        batch = SamplingBatch([params] * 2000, [[]] * 2000, 4, torch.device("cpu"))
        tokens, *_ = sample(logits, batch, [generator] * 2000)
        assert set(tokens.tolist()) == allowed
