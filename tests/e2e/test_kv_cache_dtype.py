"""End-to-end tier: the default SmolLM2 model (its shipped config, loaded in float32 as the server loads it: the GGUF
converted into the data dir, its int8 linears) greedy with a float32 KV cache against bfloat16 and int8 ones
(`kv_cache_dtype`, engines/native/kv_cache.py), 8 prompts x 64 tokens decoded together through the native runner.
About 10 s once the weights are converted; a fresh data dir converts the GGUF first (a minute or two;
OZWELL_E2E_DATA_DIR names one to keep)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.process import ROOT

pytestmark = pytest.mark.e2e

PROMPTS = ["Write a short story about a lighthouse keeper:", "The three most important rules of cooking are",
           "Question: why do leaves change colour in autumn? Answer:", "Here is a recipe for vegetable soup:",
           "The history of the printing press begins", "Dear team, thank you for", "In a small village by the sea,",
           "To learn a new language quickly, you should"]
TOKENS = 64


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    from engines.config import load_model_config
    from engines.native.cpu_quant import quantize_model
    from engines.native.loader import load_model

    data_dir = Path(os.environ.get("OZWELL_E2E_DATA_DIR") or tmp_path_factory.mktemp("e2e-data"))
    config = load_model_config(ROOT / "model_configs" / "smollm2-135m-instruct.yaml").model_copy(
        update={"dtype": "float32"})
    loaded = load_model(config, data_dir)
    if config.quantization != "none":
        quantize_model(loaded.model, None, config.quantization)
    return loaded


def _greedy(runner, prompts, forced=None) -> list[list[int]]:
    """The prompts prefilled in one step, then decoded together, each step fed its own pick (or `forced`'s token)."""
    from engines.native.scheduler import ScheduledChunk
    from engines.native.sequence import Sequence

    size = runner.block_size
    per = -(-(max(map(len, prompts)) + TOKENS) // size)
    sequences = []
    for i, prompt in enumerate(prompts):
        sequences.append(Sequence(f"s{i}", prompt, size))
        sequences[-1].block_table = list(range(i * per, (i + 1) * per))
    picks: list[list[int]] = [[] for _ in prompts]
    chunks = [ScheduledChunk(s, len(s.token_ids)) for s in sequences]
    with torch.inference_mode():
        for step in range(TOKENS):
            logits = runner.forward(chunks)
            for row, sequence in enumerate(sequences):
                picks[row].append(int(logits[row].argmax()))
                sequence.num_computed_tokens = len(sequence.token_ids)
                sequence.append_token(forced[row][step] if forced is not None else picks[row][-1])
            chunks = [ScheduledChunk(s, 1) for s in sequences]
    return picks


def test_smollm2_greedy_with_bfloat16_and_int8_kv_against_float32(smollm2):
    """Measured (AVX-512 BF16 host, 2 threads): bfloat16 picks the float32 cache's token at every one of the 512
    teacher-forced steps and all 8 sequences run identical over 64 tokens; int8 at 98.6% of the steps (a mean common
    prefix of 38 tokens free-running). Asserted with margin: 99% and 48 tokens (bfloat16), 96% and 16 (int8)."""
    from engines.native.model_runner import PagedModelRunner

    prompts = [smollm2.tokenizer(p)["input_ids"] for p in PROMPTS]
    blocks = len(prompts) * -(-(max(map(len, prompts)) + TOKENS) // 64) + 1

    def runner(kv_dtype):
        return PagedModelRunner(smollm2.model, blocks, 64, max_num_seqs=len(prompts), kv_dtype=kv_dtype)

    reference = _greedy(runner(torch.float32), prompts)
    for kv_dtype, agree_at_least, prefix_at_least in ((torch.bfloat16, 0.99, 48), (torch.int8, 0.96, 16)):
        other = runner(kv_dtype)
        forced = _greedy(other, prompts, reference)
        agree = sum(a == b for got, want in zip(forced, reference) for a, b in zip(got, want)) / (TOKENS * len(prompts))
        free = _greedy(other, prompts)
        prefixes = [next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), TOKENS)
                    for got, want in zip(free, reference)]
        assert agree >= agree_at_least and sum(prefixes) / len(prefixes) >= prefix_at_least, (kv_dtype, agree,
                                                                                              prefixes)
