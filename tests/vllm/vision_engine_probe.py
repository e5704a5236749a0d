"""Run by test_vllm_vision.py in the vLLM venv's python: drives the vLLM engine directly on a tiny VLM and prints, as
JSON, the prefix-cache hits of a prompt with an image first, the same prompt again, and the same text with another
image; and how it refuses images that a chat template renders no placeholder for.
Usage: python -m tests.vllm.vision_engine_probe MODEL_DIR WORK_DIR"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import sys
from pathlib import Path

from PIL import Image

from engines.config import load_model_config
from engines.protocol import (
    GenerationRequest,
    ImageInput,
    InvalidGenerationRequest,
    SamplingParams,
)
from engines.vllm_engine import VllmEngine


def image(color: tuple[int, int, int]) -> ImageInput:
    picture = Image.new("RGB", (320, 240), color)
    encoded = io.BytesIO()
    picture.save(encoded, "PNG")
    return ImageInput(picture, hashlib.sha256(encoded.getvalue()).hexdigest())


async def run(engine: VllmEngine) -> list[dict]:
    await engine.start()
    messages = [{"role": "user", "content": [{"type": "image"},
                                             {"type": "text", "text": "describe the picture please " * 10}]}]
    results = []
    try:
        for index, color in enumerate([(9, 9, 9), (9, 9, 9), (200, 9, 9)]):
            ids, prepared = engine.encode_chat_images(messages, [image(color)])
            before = engine._stats.prefix_hits
            params = SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True)
            events = [e async for e in engine.generate(GenerationRequest(f"probe-{index}", ids, params,
                                                                         images=prepared))]
            for _ in range(50):  # vLLM records a step's stats just after its outputs
                if engine._stats.prefix_hits != before or index == 0:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
            results.append({"prompt_tokens": len(ids), "hits": engine._stats.prefix_hits - before,
                            "completion_tokens": events[-1].completion_tokens})
    finally:
        await engine.stop()
    return results


def refusal_without_placeholders(engine: VllmEngine) -> dict:
    """A chat template that drops image parts leaves vLLM fewer placeholders than images: a 400, not a 500."""
    template = engine.tokenizer.chat_template
    engine.tokenizer.chat_template = ("{% for m in messages %}{% if m['content'] is string %}{{ m['content'] }}"
                                      "{% else %}{% for p in m['content'] if p['type'] == 'text' %}{{ p['text'] }}"
                                      "{% endfor %}{% endif %}{% endfor %}")
    try:
        engine.encode_chat_images([{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image"}]}],
                                  [image((1, 2, 3))])
        return {"refused": False}
    except InvalidGenerationRequest as exc:
        return {"refused": True, "param": exc.param, "message": str(exc)[:300]}
    finally:
        engine.tokenizer.chat_template = template


def main(model_dir: str, work_dir: str) -> None:
    work = Path(work_dir)
    (work / "m.yaml").write_text(
        f"id: probe\ntask: chat\nengine: vllm\nsource: {model_dir}\ndtype: float32\ndevice: cpu\nmax_model_len: 256\n"
        "max_num_seqs: 2\nblock_size: 32\nvllm:\n  enforce_eager: true\n  cpu_kvcache_space_gb: 1\n")
    engine = VllmEngine(load_model_config(work / "m.yaml"), work / "data")
    engine.load()
    refusal = refusal_without_placeholders(engine)
    print("PROBE " + json.dumps({"block_size": 32, "results": asyncio.run(run(engine)), "no_placeholder": refusal}),
          flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
