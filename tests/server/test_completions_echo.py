"""Legacy completions' `echo` (the prompt before the completion, and with `logprobs` the prompt's logprobs as a
forward pass gives them), `max_tokens: 0` to score a text, `logprobs: 0`, and `seed`'s int64 bounds."""

import copy
import math

import openai
import pytest
import torch

from tests.openapi_schemas import assert_valid
from tests.reference import greedy_ids, reference_model
from tests.server.sse import read_sse

MODEL = "tiny-llama"  # float32 weights and K/V (kv_cache_dtype: model): the engine's logprobs are transformers'
PROMPT = "The numbers one two three four five six seven eight nine ten"


def _assert_valid_echo(body: dict) -> None:
    """The spec's schema, but for the first echoed token's null logprob and top_logprobs: OpenAI's API (and vLLM)
    send null there, nothing preceding it, where the spec's items are numbers and objects."""
    body = copy.deepcopy(body)
    for choice in body["choices"]:
        logprobs = choice["logprobs"]
        if logprobs is not None:
            assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
            logprobs["token_logprobs"][0], logprobs["top_logprobs"][0] = 0.0, {}
    assert_valid(body, "CreateCompletionResponse")


def _forward_logprobs(engine, ids: list[int]) -> torch.Tensor:
    """log_softmax of one forward pass over `ids`, from a separate transformers copy of the weights."""
    with torch.inference_mode():
        logits = reference_model(engine)(torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)


def _assert_scores(engine, logprobs: dict, ids: list[int], k: int) -> None:
    """Token i > 0's logprob is row i - 1's of a forward pass over `ids`, its top k alternatives too."""
    forward = _forward_logprobs(engine, ids)
    assert logprobs["tokens"] == [engine.token_text(t) for t in ids]
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    for i in range(1, len(ids)):
        assert math.isclose(logprobs["token_logprobs"][i], forward[i - 1, ids[i]].item(), abs_tol=1e-3)
        top = logprobs["top_logprobs"][i]
        expected = {engine.token_text(t): forward[i - 1, t].item() for t in forward[i - 1].topk(k).indices.tolist()}
        assert top.keys() == expected.keys() | {logprobs["tokens"][i]}  # the top k, and the token itself
        for token, value in expected.items():
            assert math.isclose(top[token], value, abs_tol=1e-3)
    offsets = logprobs["text_offset"]
    assert offsets == [sum(len(t) for t in logprobs["tokens"][:i]) for i in range(len(ids))]


def test_echo_returns_the_prompt_before_each_completion(openai_client):
    plain = openai_client.completions.create(model=MODEL, prompt=[PROMPT, "Hello"], max_tokens=5, temperature=0,
                                             n=2)
    echoed = openai_client.completions.create(model=MODEL, prompt=[PROMPT, "Hello"], max_tokens=5, temperature=0,
                                              n=2, echo=True)
    assert_valid(echoed.model_dump(exclude_unset=True), "CreateCompletionResponse")
    assert [c.index for c in echoed.choices] == [0, 1, 2, 3]
    for p, e in zip(plain.choices, echoed.choices):
        prompt = PROMPT if e.index < 2 else "Hello"
        assert e.text == prompt + p.text and e.finish_reason == p.finish_reason
    assert echoed.usage == plain.usage


def test_echo_logprobs_equal_a_forward_pass(openai_client, registry):
    engine = registry.resolve(MODEL)
    prompt_ids = engine.encode_text(PROMPT)
    body = openai_client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0, echo=True,
                                            logprobs=3, extra_body={"ignore_eos": True})
    _assert_valid_echo(body.model_dump(exclude_unset=True))
    choice = body.choices[0]
    logprobs = choice.logprobs.model_dump()
    assert len(logprobs["tokens"]) == len(prompt_ids) + 6 == body.usage.prompt_tokens + body.usage.completion_tokens
    completion = greedy_ids(engine, prompt_ids, 6, exact_length=True)
    _assert_scores(engine, logprobs, prompt_ids + completion, 3)  # prompt and completion, one forward pass
    assert choice.text == PROMPT + engine.tokenizer.decode(completion, skip_special_tokens=True)


def test_echo_logprobs_of_a_cached_prompt_are_computed_again(openai_client, registry):
    """The prefix cache holds the prompt's K/V from a first request; an echo with logprobs still scores every
    prompt token (it takes no prefix hits), the same as when nothing was cached."""
    engine = registry.resolve(MODEL)
    prompt = PROMPT + " and once more " + PROMPT  # several full KV blocks
    ids = engine.encode_text(prompt)
    openai_client.completions.create(model=MODEL, prompt=prompt, max_tokens=1)  # the prompt's blocks cached
    scored = openai_client.completions.create(model=MODEL, prompt=prompt, max_tokens=0, echo=True, logprobs=2, n=2)
    for choice in scored.choices:
        assert choice.text == prompt and choice.finish_reason == "length"
        _assert_scores(engine, choice.logprobs.model_dump(), ids, 2)
    assert scored.usage.completion_tokens == 0 and scored.usage.prompt_tokens == len(ids)


def test_max_tokens_zero_scores_the_prompt_only_with_echo(client, registry):
    engine = registry.resolve(MODEL)
    ids = engine.encode_text(PROMPT)
    body = client.post("/v1/completions", json={"model": MODEL, "prompt": ids, "max_tokens": 0, "echo": True,
                                                 "logprobs": 0}).json()
    _assert_valid_echo(body)
    choice = body["choices"][0]
    assert choice["text"] == engine.decode(ids) and choice["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 0, "total_tokens": len(ids)}
    _assert_scores(engine, choice["logprobs"], ids, 0)
    alone = client.post("/v1/completions", json={"model": MODEL, "prompt": PROMPT, "max_tokens": 0, "echo": True})
    assert alone.json()["choices"][0]["text"] == PROMPT and alone.json()["choices"][0]["logprobs"] is None
    refused = client.post("/v1/completions", json={"model": MODEL, "prompt": PROMPT, "max_tokens": 0})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "max_tokens"


def test_echo_stream_sends_the_prompt_in_each_choice_first_chunk(client):
    request = {"model": MODEL, "prompt": PROMPT, "max_tokens": 5, "temperature": 0, "n": 2, "echo": True,
               "logprobs": 2}
    whole = client.post("/v1/completions", json=request).json()
    chunks = read_sse(client, "/v1/completions", {**request, "stream": True})[:-1]
    for index in (0, 1):
        mine = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["index"] == index]
        assert mine[0]["text"].startswith(PROMPT)
        assert "".join(c["text"] for c in mine) == whole["choices"][index]["text"]
        joined = {key: [v for c in mine if c["logprobs"] for v in c["logprobs"][key]]
                  for key in ("tokens", "token_logprobs", "text_offset")}
        expected = whole["choices"][index]["logprobs"]
        assert joined["tokens"] == expected["tokens"] and joined["text_offset"] == expected["text_offset"]
        assert joined["token_logprobs"][0] is None
        assert all(math.isclose(a, b, abs_tol=1e-5)
                   for a, b in zip(joined["token_logprobs"][1:], expected["token_logprobs"][1:]))


def test_logprobs_zero_gives_the_sampled_token_its_own_entry(openai_client):
    body = openai_client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, logprobs=0, seed=3)
    logprobs = body.choices[0].logprobs
    assert len(logprobs.tokens) == 4
    for token, value, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs):
        assert top == {token: value}


@pytest.mark.parametrize("seed", [2**63, -(2**63) - 1])
def test_seed_outside_int64_is_refused(openai_client, seed):
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=1, seed=seed)
    assert refused.value.body["param"] == "seed"
    with pytest.raises(openai.BadRequestError) as chat:
        openai_client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                              max_tokens=1, seed=seed)
    assert chat.value.body["param"] == "seed"


def test_seed_at_the_int64_bounds_is_accepted(openai_client):
    for seed in (2**63 - 1, -(2**63)):
        body = openai_client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, seed=seed)
        assert body.usage.completion_tokens == 2 or body.choices[0].finish_reason == "stop"
