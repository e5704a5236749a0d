"""What `quantization: int8` and `int4` cost in quality, on the default chat models (no GPU, nothing downloaded).

    python benchmarks/quantization_quality.py [--models gemma-3-270m smollm2-135m-instruct] [--prompts 20]
        [--modes int8 int4]

Per model, the float model as the native engine loads it (fp32 here; bf16 where the CPU has it) against
the same weights with their linears quantised by engines/native/cpu_quant.py:
- perplexity on a fixed English text of about 2,000 tokens: the docstrings of a few standard-library
  modules of the running Python (public, identical on every install of one Python version), in 512-token
  windows;
- greedy agreement over 128 new tokens on 20 prompts (generated in one left-padded batch each): the share of
  positions where the quantised model picks the float model's token given the float model's own prefix
  (teacher-forced, so one early difference does not decide the rest), and the mean length of the prefix
  both generate alike.
Results go to benchmarks/results/quantization_quality.json.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import math
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engines.config import load_model_config  # noqa: E402
from engines.native.cpu_quant import quantize_model  # noqa: E402
from engines.native.loader import load_model  # noqa: E402

TEXT_MODULES = ["argparse", "json", "textwrap", "logging", "csv", "heapq", "bisect", "functools", "pickle", "zipfile"]
PROMPTS = ["Write a story about number {i}:", "The history of the city of {i} begins", "Question {i}: why is the sky blue?",
           "Here is a recipe with {i} ingredients:"]


def fixed_text(tokenizer, tokens: int = 2048) -> list[int]:
    import importlib

    parts = [inspect.getdoc(importlib.import_module(name)) or "" for name in TEXT_MODULES]
    ids = tokenizer("\n\n".join(parts))["input_ids"]
    if len(ids) < tokens:
        raise SystemExit(f"the fixed text has only {len(ids)} tokens")
    return ids[:tokens]


@torch.inference_mode()
def perplexity(model, ids: list[int], window: int = 512) -> float:
    total, count = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = torch.tensor([ids[start:start + window + 1]])
        logits = model(input_ids=chunk[:, :-1]).logits[0].float()
        total += torch.nn.functional.cross_entropy(logits, chunk[0, 1:], reduction="sum").item()
        count += chunk.shape[1] - 1
    return math.exp(total / count)


@torch.inference_mode()
def greedy(model, prompts: list[list[int]], tokens: int, pad: int) -> list[list[int]]:
    """All prompts in one left-padded batch, as a server would batch them."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=tokens, min_new_tokens=tokens,
                         do_sample=False, pad_token_id=pad)
    return out[:, width:].tolist()


@torch.inference_mode()
def agreement(full, quant, prompts: list[list[int]], tokens: int, pad: int) -> tuple[float, float]:
    wants = greedy(full, prompts, tokens, pad)
    gots = greedy(quant, prompts, tokens, pad)
    same, prefix = 0, 0
    for prompt, want, got in zip(prompts, wants, gots):
        prefix += next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), tokens)
        forced = quant(input_ids=torch.tensor([prompt + want[:-1]])).logits[0, len(prompt) - 1:].argmax(-1)
        same += sum(int(a == b) for a, b in zip(forced.tolist(), want))
    return same / (len(prompts) * tokens), prefix / len(prompts)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["gemma-3-270m", "smollm2-135m-instruct"])
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--data-dir", default=str(ROOT / ".ozwell"))
    parser.add_argument("--modes", nargs="+", default=["int8", "int4", "int6"], choices=["int8", "int4", "int6"])
    args = parser.parse_args()
    torch.manual_seed(0)
    results = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
               "text": f"docstrings of {', '.join(TEXT_MODULES)} (Python {platform.python_version()})", "models": {}}
    for name in args.models:
        config = load_model_config(ROOT / "model_configs" / f"{name}.yaml")
        loaded = load_model(config, Path(args.data_dir))
        full = loaded.model
        ids = fixed_text(loaded.tokenizer)
        prompts = [loaded.tokenizer(PROMPTS[i % len(PROMPTS)].format(i=i))["input_ids"] for i in range(args.prompts)]
        tokenizer = loaded.tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        row = {"dtype": str(loaded.dtype), "ppl_float": perplexity(full, ids)}
        for mode in args.modes:
            quant = copy.deepcopy(full)
            quantize_model(quant, mode=mode)
            ppl = perplexity(quant, ids)
            row[mode] = {"ppl": ppl, "ppl_change": ppl / row["ppl_float"] - 1}
            print(name, mode, json.dumps(row[mode]), flush=True)
            row[mode]["token_agreement"], row[mode]["common_prefix"] = agreement(full, quant, prompts, args.tokens,
                                                                                 pad)
            print(name, mode, json.dumps(row[mode]), flush=True)
            del quant
        results["models"][name] = row
    out = ROOT / "benchmarks" / "results" / "quantization_quality.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
