"""Tiny random-weight vision-language models, saved as HF directories that load offline.

Two families: Gemma 3 (SigLIP tower, `<start_of_image>` expanded to `<image_soft_token>` x mm_tokens_per_image)
and LLaVA (CLIP tower, `<image>` repeated once per patch). Each directory holds the config, float32 safetensors,
a byte-level BPE tokenizer with the family's special tokens, a chat template that renders `{"type": "image"}`
parts, and the processor, so that

    AutoProcessor.from_pretrained(dir, use_fast=False)      # PIL + numpy image processor: no torchvision
    AutoModelForImageTextToText.from_pretrained(dir)

both work with no network. Images are resized to 56x56 (Gemma 3: 4 image tokens) or 28x28 (LLaVA: 4 tokens).
"""

from __future__ import annotations

from pathlib import Path

from tests.tiny_models import bpe_tokenizer

# Gemma 3's own chat template, shortened: turns are <start_of_turn>user|model ... <end_of_turn>, a system
# message is folded into the first user turn, image parts render as <start_of_image> (which the processor
# expands to <start_of_image> + <image_soft_token> * mm_tokens_per_image + <end_of_image>).
GEMMA3_VLM_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}"
    "{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] | trim }}"
    "{%- else -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

# ChatML with image parts rendered as <image> (the processor repeats it once per image feature).
LLAVA_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for part in m['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

GEMMA3_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>",
                   "<start_of_image>", "<end_of_image>", "<image_soft_token>"]
LLAVA_SPECIALS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|im_start|>", "<|im_end|>", "<image>"]

GEMMA3_IMAGE_SIZE = 56
GEMMA3_TOKENS_PER_IMAGE = 4    # a square (2x2) whose side divides the 4x4 patch grid
LLAVA_IMAGE_SIZE = 28
LLAVA_TOKENS_PER_IMAGE = (LLAVA_IMAGE_SIZE // 14) ** 2  # patches; the CLS feature is dropped ("default")


def _ids(tokenizer) -> dict:
    return {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}


def _save_model(model, out_dir: Path) -> None:
    """save_pretrained, then the vision tower's weights renamed to the published checkpoints' layout
    (`vision_tower.vision_model.*`: transformers 5.25 writes `vision_tower.*`, which vLLM does not load;
    transformers reads both)."""
    from safetensors.torch import load_file, save_file

    model.generation_config.do_sample = False
    model.generation_config.pad_token_id = model.config.get_text_config().pad_token_id
    model.save_pretrained(out_dir)
    path = out_dir / "model.safetensors"
    tower, published = "vision_tower.", "vision_tower.vision_model."
    weights = {(published + name[len(tower):] if name.startswith(tower) and not name.startswith(published) else name):
               tensor for name, tensor in load_file(path).items()}
    save_file(weights, path, metadata={"format": "pt"})


def build_tiny_gemma3_vlm(out_dir: Path, seed: int = 0, vision: dict | None = None,
                          image_size: int = GEMMA3_IMAGE_SIZE, tokens_per_image: int = GEMMA3_TOKENS_PER_IMAGE,
                          **text_overrides) -> Path:
    """A Gemma3ForConditionalGeneration: SigLIP tower (56 px, 14 px patches, one layer), 4 tokens per image,
    a two-layer gemma3_text (one sliding, one full attention layer), float32; with Gemma3Processor.
    `text_overrides` change the text config (vLLM's CPU kernels want head_dim=64, say), `vision` the SigLIP
    config, with `image_size` and `tokens_per_image` (benchmarks/vision_throughput.py builds a larger one)."""
    import torch
    from tokenizers import AddedToken
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessorPil,
        Gemma3Processor,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )

    out_dir = Path(out_dir)
    tokenizer = bpe_tokenizer(
        GEMMA3_SPECIALS, pad_token="<pad>", bos_token="<bos>", eos_token="<end_of_turn>", unk_token="<unk>",
        extra_special_tokens={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                              "image_token": "<image_soft_token>"},
    )
    # Gemma's SentencePiece vocabulary has "\n" .. "\n\n\n\n" as tokens (vLLM's Gemma 3 processor looks them up to
    # merge the newlines around an image as the tokenizer would); here they are added tokens.
    tokenizer.add_tokens([AddedToken("\n" * n, normalized=False, special=False) for n in (1, 2, 3, 4)])
    tokenizer.chat_template = GEMMA3_VLM_TEMPLATE
    text = Gemma3TextConfig(**{
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 256, "sliding_window": 8,
        "layer_types": ["sliding_attention", "full_attention"], **_ids(tokenizer), **text_overrides})
    vision = SiglipVisionConfig(**{"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                   "num_attention_heads": 2, **(vision or {})},
                                image_size=image_size, patch_size=14, vision_use_head=False)
    token = tokenizer.convert_tokens_to_ids
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=tokens_per_image,
                          boi_token_index=token("<start_of_image>"), eoi_token_index=token("<end_of_image>"),
                          image_token_index=token("<image_soft_token>"))
    config.eos_token_id = tokenizer.eos_token_id
    config.bos_token_id = tokenizer.bos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config).eval()
    with torch.no_grad():  # transformers starts the projection at zeros: every image would look the same
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(std=0.1)
    _save_model(model, out_dir)

    image_processor = Gemma3ImageProcessorPil(
        size={"height": image_size, "width": image_size}, do_pan_and_scan=False,
        pan_and_scan_min_crop_size=256, pan_and_scan_max_num_crops=4, pan_and_scan_min_ratio_to_activate=1.2,
    )
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                chat_template=GEMMA3_VLM_TEMPLATE, image_seq_length=tokens_per_image)
    processor.save_pretrained(out_dir)
    return out_dir


def build_tiny_llava(out_dir: Path, seed: int = 0, **text_overrides) -> Path:
    """A LlavaForConditionalGeneration: CLIP tower (28 px, 14 px patches, two layers; features of the
    second-last layer, CLS dropped: 4 tokens per image), a two-layer Llama, float32; with LlavaProcessor.
    `text_overrides` change the Llama config."""
    import torch
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    out_dir = Path(out_dir)
    tokenizer = bpe_tokenizer(LLAVA_SPECIALS, pad_token="<|pad|>", bos_token="<|bos|>", eos_token="<|im_end|>",
                               extra_special_tokens={"image_token": "<image>"})
    tokenizer.chat_template = LLAVA_TEMPLATE
    text = LlamaConfig(**{"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                          "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
                          **_ids(tokenizer), **text_overrides})
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=LLAVA_IMAGE_SIZE, patch_size=14, projection_dim=32)
    config = LlavaConfig(text_config=text, vision_config=vision,
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="default", vision_feature_layer=-2,
                         image_seq_length=LLAVA_TOKENS_PER_IMAGE)
    config.eos_token_id = tokenizer.eos_token_id
    config.bos_token_id = tokenizer.bos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    _save_model(model, out_dir)

    image_processor = CLIPImageProcessorPil(size={"shortest_edge": LLAVA_IMAGE_SIZE},
                                            crop_size={"height": LLAVA_IMAGE_SIZE, "width": LLAVA_IMAGE_SIZE})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                               vision_feature_select_strategy="default", chat_template=LLAVA_TEMPLATE,
                               image_token="<image>", num_additional_image_tokens=1)
    processor.save_pretrained(out_dir)
    return out_dir


def native_vlm_config(model_id: str, source: Path, device: str = "cpu", **fields) -> str:
    """The YAML of a native-engine chat model serving a tiny VLM directory in float32 (CPU unless told)."""
    from tests.tiny_models import native_chat_config

    return native_chat_config(model_id, source, device=device, **fields)


# ---- what the image tests send --------------------------------------------------------------------------------------
QUESTION = "What is in this image?"


def png(seed: int, size=(96, 64)) -> bytes:
    """A PNG of random pixels (each seed its own image)."""
    import io

    import torch
    from PIL import Image

    generator = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(size[1], size[0], 3, generator=generator) * 255).byte().numpy()
    encoded = io.BytesIO()
    Image.fromarray(pixels).save(encoded, "PNG")
    return encoded.getvalue()


def data_url(data: bytes) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(data).decode()


def chat_parts(*urls: str) -> list[dict]:
    """One user message: QUESTION, then an image_url part for each URL."""
    return [{"role": "user", "content": [{"type": "text", "text": QUESTION},
                                         *({"type": "image_url", "image_url": {"url": u}} for u in urls)]}]


def transformers_prompt_tokens(source: Path, images: int) -> int:
    """The prompt's tokens as transformers' processor makes them for chat_parts with png(0..images-1), each image's
    placeholders included."""
    import io

    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(source, use_fast=False)
    parts = [{"type": "text", "text": QUESTION}] + [{"type": "image"}] * images
    text = processor.apply_chat_template([{"role": "user", "content": parts}], add_generation_prompt=True,
                                         tokenize=False)
    pictures = [Image.open(io.BytesIO(png(i))) for i in range(images)]
    return processor(text=text, images=pictures, return_tensors="pt")["input_ids"].shape[1]
