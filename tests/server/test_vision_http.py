"""Images end to end (issue #38): the official openai SDKs (Python here, Node through tests/clients/node/vision.mjs)
send base64 images and uploaded files' ids to chat completions and to the Responses API of a real `ozwell serve`
serving tiny random-weight vision-language models (Gemma 3 and LLaVA) on the native engine."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import write_config
from tests.openapi_schemas import assert_valid
from tests.process import ServerProcess
from tests.tiny_vlms import (
    QUESTION,
    build_tiny_gemma3_vlm,
    build_tiny_llava,
    chat_parts,
    data_url,
    native_vlm_config,
    png,
    transformers_prompt_tokens,
)

GEMMA, LLAVA = "tiny-gemma3-vlm", "tiny-llava"
NODE_DIR = Path(__file__).parents[1] / "clients" / "node"


@pytest.fixture(scope="module")
def vision_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision")
    for name, build in ((GEMMA, build_tiny_gemma3_vlm), (LLAVA, build_tiny_llava)):
        write_config(root / "configs", name, native_vlm_config(name, build(root / name), max_model_len=256,
                                                                max_num_seqs=8))
    server = ServerProcess(root / "configs", root / "data").start()
    try:
        yield server, {GEMMA: root / GEMMA, LLAVA: root / LLAVA}
    finally:
        server.stop()


@pytest.fixture(scope="module")
def sdk(vision_server):
    from openai import OpenAI

    server, _ = vision_server
    return OpenAI(base_url=server.url + "/v1", api_key=server.key, max_retries=0)


@pytest.mark.parametrize("model", [GEMMA, LLAVA])
def test_python_sdk_base64_images_to_chat(vision_server, sdk, model):
    _, sources = vision_server
    first = sdk.chat.completions.create(model=model, messages=chat_parts(data_url(png(0))), max_tokens=8,
                                        temperature=0)
    assert_valid(first.model_dump(exclude_unset=True), "CreateChatCompletionResponse")
    assert first.usage.prompt_tokens == transformers_prompt_tokens(sources[model], 1)  # the image's placeholders counted
    again = sdk.chat.completions.create(model=model, messages=chat_parts(data_url(png(0))), max_tokens=8,
                                        temperature=0)
    assert again.choices[0].message.content == first.choices[0].message.content
    answers = {sdk.chat.completions.create(model=model, messages=chat_parts(data_url(png(seed))), max_tokens=8,
                                           temperature=0).choices[0].message.content for seed in range(1, 5)}
    assert len(answers | {first.choices[0].message.content}) > 1  # the answer depends on the image
    two = sdk.chat.completions.create(model=model, messages=chat_parts(data_url(png(0)), data_url(png(1))),
                                      max_tokens=4, temperature=0)
    assert two.usage.prompt_tokens == transformers_prompt_tokens(sources[model], 2)


def test_streamed_chat_with_an_image(sdk):
    chunks = list(sdk.chat.completions.create(model=GEMMA, messages=chat_parts(data_url(png(0))), max_tokens=6,
                                              temperature=0, stream=True, stream_options={"include_usage": True}))
    for chunk in chunks:
        assert_valid(chunk.model_dump(exclude_unset=True), "CreateChatCompletionStreamResponse")
    whole = sdk.chat.completions.create(model=GEMMA, messages=chat_parts(data_url(png(0))), max_tokens=6,
                                        temperature=0)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_python_sdk_images_to_responses_by_data_url_and_by_file_id(sdk):
    data = png(3)
    chat = sdk.chat.completions.create(model=LLAVA, messages=chat_parts(data_url(data)), max_tokens=16,
                                       temperature=0)
    inline = sdk.responses.create(model=LLAVA, max_output_tokens=16, temperature=0, input=[
        {"role": "user", "content": [{"type": "input_text", "text": QUESTION},
                                     {"type": "input_image", "image_url": data_url(data), "detail": "auto"}]}])
    assert_valid(inline.model_dump(exclude_unset=True), "Response")
    uploaded = sdk.files.create(file=("picture.png", data), purpose="vision")
    by_id = sdk.responses.create(model=LLAVA, max_output_tokens=16, temperature=0, input=[
        {"role": "user", "content": [{"type": "input_text", "text": QUESTION},
                                     {"type": "input_image", "file_id": uploaded.id, "detail": "auto"}]}])
    # one prompt, however the image came: the same tokens in, the same greedy answer out
    assert inline.usage.input_tokens == by_id.usage.input_tokens == chat.usage.prompt_tokens
    assert inline.output_text == by_id.output_text == chat.choices[0].message.content
    follow = sdk.responses.create(model=LLAVA, max_output_tokens=16, temperature=0, previous_response_id=by_id.id,
                                  input="And the colours?")
    assert follow.usage.input_tokens > by_id.usage.input_tokens  # the first turn, its image included, came along


def test_models_say_which_take_images(sdk, vision_server):
    server, _ = vision_server
    import httpx

    cards = {m["id"]: m for m in httpx.get(server.url + "/v1/models", headers=server.headers).json()["data"]}
    assert cards[GEMMA]["ozwell"]["input_modalities"] == ["text", "image"]
    assert cards[LLAVA]["ozwell"]["input_modalities"] == ["text", "image"]


def test_node_sdk_base64_images_and_file_ids(vision_server):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    if not (NODE_DIR / "node_modules" / "openai").is_dir():
        pytest.skip(f"the Node clients are not installed: cd {NODE_DIR} && npm ci")
    server, _ = vision_server
    image = png(2)
    done = subprocess.run([node, "vision.mjs", server.url + "/v1", server.key, LLAVA, base64.b64encode(image).decode()],
                          cwd=NODE_DIR, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["chat"]["finish"] in ("stop", "length") and seen["chat"]["promptTokens"] > 4
    assert seen["responses"]["inline"]["status"] in ("completed", "incomplete")
    # the same image by data URL and by file id: the same prompt, the same greedy answer
    assert seen["responses"]["inline"]["text"] == seen["responses"]["byFile"]["text"]
    assert seen["responses"]["inline"]["inputTokens"] == seen["responses"]["byFile"]["inputTokens"] \
        == seen["chat"]["promptTokens"]
    assert seen["chat"]["text"] == seen["responses"]["inline"]["text"]
    assert seen["fileSha256"] == hashlib.sha256(image).hexdigest()
