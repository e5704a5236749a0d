"""The tiny VLM fixtures (tests/tiny_vlms.py) load offline with their processors and generate on an image."""

from __future__ import annotations

import time

import pytest

from tests.tiny_vlms import (
    GEMMA3_TOKENS_PER_IMAGE,
    LLAVA_TOKENS_PER_IMAGE,
    build_tiny_gemma3_vlm,
    build_tiny_llava,
    native_vlm_config,
)

FAMILIES = {
    "gemma3": (build_tiny_gemma3_vlm, GEMMA3_TOKENS_PER_IMAGE, "<start_of_image>"),
    "llava": (build_tiny_llava, LLAVA_TOKENS_PER_IMAGE, "<image>"),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_tiny_vlm_loads_processes_and_generates(tmp_path, family):
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    build, per_image, marker = FAMILIES[family]
    started = time.monotonic()
    source = build(tmp_path / family)
    assert time.monotonic() - started < 10  # < 2 s here; generous for a loaded CI box
    assert (source / "model.safetensors").stat().st_size < 2_000_000

    processor = AutoProcessor.from_pretrained(source, use_fast=False)
    assert type(processor.image_processor).__name__.endswith("Pil")  # no torchvision needed
    model = AutoModelForImageTextToText.from_pretrained(source)
    assert model.dtype == torch.float32
    image_token_id = model.config.image_token_id

    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Compare"}, {"type": "image"},
                                     {"type": "text", "text": "and"}, {"type": "image"}]},
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.count(marker) == 2
    images = [Image.new("RGB", (1024, 768), (200, 30, 40)), Image.new("RGB", (20, 30), (0, 90, 200))]
    inputs = processor(text=text, images=images, return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()
    assert ids.count(image_token_id) == 2 * per_image

    out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > len(ids)
    # Greedy decoding is a function of the pixels: the same inputs give the same tokens.
    again = model.generate(**processor(text=text, images=images, return_tensors="pt"), max_new_tokens=5,
                           do_sample=False)
    assert again.tolist() == out.tolist()


def test_text_only_prompt_renders_without_images(tmp_path):
    from transformers import AutoTokenizer

    source = build_tiny_gemma3_vlm(tmp_path / "gemma3")
    tokenizer = AutoTokenizer.from_pretrained(source)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hello"}], add_generation_prompt=True,
                                         tokenize=False)
    assert text == "<bos><start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n"


def test_native_vlm_config_validates(tmp_path):
    import yaml

    from engines.config import ModelConfig

    source = tmp_path / "gemma3"
    config = ModelConfig.model_validate(yaml.safe_load(native_vlm_config("tiny-vlm", source, max_model_len=256)))
    assert config.id == "tiny-vlm"
    assert str(config.source) == str(source)


def test_fixtures_have_what_vllm_looks_up(tmp_path):
    """vLLM (tests/vllm/test_vllm_vision.py) loads the published checkpoints' weight names
    (`vision_tower.vision_model.*`), and its Gemma 3 processor looks up the newline tokens of Gemma's vocabulary."""
    from safetensors import safe_open
    from transformers import AutoTokenizer

    for build in (build_tiny_gemma3_vlm, build_tiny_llava):
        source = build(tmp_path / build.__name__)
        with safe_open(source / "model.safetensors", "pt") as weights:
            tower = [name for name in weights.keys() if name.startswith("vision_tower.")]  # noqa: SIM118
        assert tower and all(name.startswith("vision_tower.vision_model.") for name in tower)
    vocab = AutoTokenizer.from_pretrained(tmp_path / build_tiny_gemma3_vlm.__name__).get_vocab()
    assert all("\n" * n in vocab for n in (1, 2, 3, 4))
