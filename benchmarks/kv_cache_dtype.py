"""What `kv_cache_dtype` costs in quality and gives in decode-step time, on the default chat models, on a CPU (issue #36
item 2; nothing downloaded, no GPU).

    python benchmarks/kv_cache_dtype.py [--models smollm2-135m-instruct gemma-3-270m] [--dtypes float32 auto]
        [--kv model bfloat16 int8] [--steps 20] [--data-dir DIR]

Per model, loaded from its shipped config (model_configs/) as the e2e tier and the server load it (its GGUF converted
once into the data dir, its `quantization` applied), in float32 and in the CPU's best dtype (`dtype: auto`: bfloat16
where the CPU has AVX-512 BF16, else float32), one native runner per KV dtype over the same weights:
- perplexity on PROSE below (a few paragraphs written for this benchmark), in windows of 512 tokens, each prefilled
  through the runner's paged attention: its keys and values stored in the KV dtype and read back from the cache;
- greedy agreement over 64 new tokens on 8 prompts decoded together (the decode kernels): the share of steps where the
  KV dtype picks the `model` cache's token given that run's prefix (teacher-forced), and the mean common prefix of the
  free-running sequences;
- the decode step at 32 sequences of 512-token contexts, their blocks interleaved as a server's decodes leave them
  and every slot of the caches written first: the median (and best) ms of --steps steps, the runners' steps
  alternating (benchmarks/cpu_decode_step.py); and the decode-attention kernel alone on one layer's cache.
Results: benchmarks/results/kv_cache_dtype.json.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.cpu_decode_step import decode_chunks, time_steps
from engines.config import load_model_config
from engines.native import kv_cache, step_layout
from engines.native.cpu_quant import quantize_model
from engines.native.kv_cache import resolve_kv_dtype
from engines.native.loader import kv_block_size, kv_bytes_per_token, load_model
from engines.native.model_runner import PagedModelRunner
from engines.native.scheduler import ScheduledChunk
from engines.native.sequence import Sequence

PROSE = """\
The harbour town woke slowly in winter. Before the sun cleared the hills, the bakers had already lit their ovens, and \
the smell of bread drifted down the narrow streets towards the water. Fishermen checked their nets by lantern light, \
talking quietly about the weather and the price of fuel, while the gulls waited on the roofs for whatever the boats \
might bring back in the afternoon.

Most visitors came in summer, when the beaches were warm and the cafes put their tables out on the square. They rarely \
saw the town as its people knew it: a place of repairs and small routines, where the same faces met at the post office \
every morning and the library stayed open late on Thursdays so that students could finish their homework somewhere \
warm. The mayor liked to say that a town is measured by how it spends its quiet months, and on that measure this one \
did well.

At the end of the main road stood an old lighthouse that no longer guided any ships. A group of volunteers had spent \
three years restoring it, replacing the rotten stairs, cleaning the brass and painting the walls a bright white that \
could be seen from the next bay. They opened it to the public on the first Saturday of every month. Children climbed \
to the top and pressed their faces against the glass, trying to count the islands on the horizon, and their parents \
read the panels about the storms and shipwrecks of the last two centuries.

Learning a new skill follows a similar pattern. At first every step is slow and uncertain, and the learner has to think \
about each movement or each word. With practice the steps join into larger pieces, and attention is free for the parts \
that are still difficult. Good teachers know this and break a task into pieces that are small enough to master, then \
show how the pieces fit together. They also know that mistakes are part of the process, because a mistake that is \
noticed and corrected teaches more than a success that came by luck.

A simple budget works in much the same way. Write down what comes in each month and what goes out, group the spending \
into a few broad categories, and compare the totals with what you expected. Most people find one or two surprises the \
first time they try it, usually small purchases that add up over several weeks. The point is not to stop spending but \
to decide where the money should go, so that the important things are paid for first and the rest can be enjoyed \
without worry.

In the evening the wind turned and the sea grew calm. The boats came in one by one, their lights reflected in the dark \
water of the harbour, and the market by the quay filled with people buying fish for supper. By nine o'clock the square \
was empty again, except for a cat sitting on the steps of the town hall, watching the last customers walk home.
"""
PROMPTS = ["Write a short story about a lighthouse keeper:", "The three most important rules of cooking are",
           "Question: why do leaves change colour in autumn? Answer:", "Here is a recipe for vegetable soup:",
           "The history of the printing press begins", "Dear team, thank you for", "In a small village by the sea,",
           "To learn a new language quickly, you should"]


@torch.inference_mode()
def perplexity(runner: PagedModelRunner, ids: list[int], window: int = 512) -> float:
    """exp(mean next-token loss) over `ids` in windows, each a fresh sequence prefilled in one step through the paged
    cache (the runner's `forward` keeps only the last token's logits, so its layout is set here for all of them)."""
    total, count = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = ids[start:start + window + 1]
        positions = torch.arange(len(chunk) - 1)
        layout = step_layout.StepLayout(runner.k_cache, runner.v_cache, positions, [(0, len(positions))], [positions],
                                        [positions], k_scales=runner.k_scales, v_scales=runner.v_scales)
        step_layout.active.layout = layout  # blocks 0, 1, ...: a position's slot is the position
        try:
            logits = runner.model(input_ids=torch.tensor([chunk[:-1]]), position_ids=positions[None], use_cache=False,
                                  logits_to_keep=0).logits[0].float()
        finally:
            step_layout.active.layout = None
        total += torch.nn.functional.cross_entropy(logits, torch.tensor(chunk[1:]), reduction="sum").item()
        count += len(chunk) - 1
    return math.exp(total / count)


@torch.inference_mode()
def greedy(runner: PagedModelRunner, prompts: list[list[int]], tokens: int,
           forced: list[list[int]] | None = None) -> list[list[int]]:
    """The prompts prefilled in one step, then decoded together, each step fed its own pick (or `forced`'s token):
    the pick of each step, per prompt."""
    size = runner.block_size
    per = -(-(max(map(len, prompts)) + tokens) // size)
    sequences = []
    for i, prompt in enumerate(prompts):
        sequence = Sequence(f"g{i}", prompt, size)
        sequence.block_table = list(range(i * per, (i + 1) * per))
        sequences.append(sequence)
    picks: list[list[int]] = [[] for _ in prompts]
    chunks = [ScheduledChunk(s, len(s.token_ids)) for s in sequences]
    for step in range(tokens):
        logits = runner.forward(chunks)
        for row, sequence in enumerate(sequences):
            picks[row].append(int(logits[row].argmax()))
            sequence.num_computed_tokens = len(sequence.token_ids)
            sequence.append_token(forced[row][step] if forced is not None else picks[row][-1])
        chunks = [ScheduledChunk(s, 1) for s in sequences]
    return picks


def agreement(runner, reference, prompts, tokens) -> tuple[float, float]:
    """(teacher-forced agreement with `reference`, mean common prefix free-running)."""
    forced = greedy(runner, prompts, tokens, reference)
    same = sum(a == b for got, want in zip(forced, reference) for a, b in zip(got, want))
    free = greedy(runner, prompts, tokens)
    prefix = [next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), tokens) for got, want in
              zip(free, reference)]
    return same / (len(prompts) * tokens), sum(prefix) / len(prefix)


@torch.inference_mode()
def fill(runner: PagedModelRunner) -> None:
    """Random keys and values in every slot, stored as the runner stores them: a cache's pages that were never written
    read as the kernel's shared zero page (cpu_kernel.fresh_zeros maps them fresh), which costs no memory
    traffic and would hide what the dtype saves."""
    generator = torch.Generator().manual_seed(0)
    for cache, scales in ((runner.k_cache, runner.k_scales), (runner.v_cache, runner.v_scales)):
        for layer in range(cache.shape[0]):
            rows = torch.randn(cache.shape[1:], generator=generator)
            kv_cache.write(cache[layer], None if scales is None else scales[layer], torch.arange(cache.shape[1]), rows)


@torch.inference_mode()
def attention_ms(runners: dict, chunks: dict, steps: int) -> dict[str, float]:
    """Median ms of the decode-attention kernel alone over one layer's cache (layer 0) for the chunks' contexts, the
    runners alternating call by call."""
    calls = {}
    for kv, runner in runners.items():
        config = runner.model.config.get_text_config()
        size, seqs = runner.block_size, [c.seq for c in chunks[kv]]
        tables = torch.tensor([s.block_table for s in seqs])
        lengths = torch.tensor([s.num_computed_tokens + 1 for s in seqs])
        query = torch.randn(len(seqs), config.num_attention_heads, runner.k_cache.shape[-1]).to(runner.model.dtype)
        scales = () if runner.k_scales is None else (runner.k_scales[0], runner.v_scales[0])
        calls[kv] = (query, runner.k_cache[0], runner.v_cache[0], tables, torch.zeros_like(lengths), lengths, size,
                     0.125, *scales)
    times: dict[str, list[float]] = {kv: [] for kv in runners}
    for i in range(steps + 2):
        for kv, runner in runners.items():
            started = time.perf_counter()
            runner.cpu_kernel(*calls[kv])
            if i >= 2:
                times[kv].append(time.perf_counter() - started)
    return {kv: statistics.median(t) * 1000 for kv, t in times.items()}


def cpu_flags() -> list[str]:
    try:
        line = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return sorted(f for f in line.split(":", 1)[1].split() if f in (
        "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8"))


def run_model(name: str, dtype_word: str, args) -> dict:
    config = load_model_config(ROOT / "model_configs" / f"{name}.yaml").model_copy(update={"dtype": dtype_word})
    loaded = load_model(config, Path(args.data_dir))
    model, dtype, device = loaded.model, loaded.dtype, loaded.device
    if config.quantization != "none":
        quantize_model(model, Path(args.data_dir) / "quantized" / config.id / f"{loaded.revision}-{config.quantization}.pt",
                       config.quantization)
    size = kv_block_size(config, on_gpu=False)
    batch, context = 32, 512
    blocks = batch * -(-(context + 64) // size) + 1
    runners = {kv: PagedModelRunner(model, blocks, size, max_num_seqs=batch,
                                    kv_dtype=resolve_kv_dtype(kv, dtype, device)) for kv in args.kv}
    tokenizer = loaded.tokenizer
    ids = tokenizer(PROSE)["input_ids"]
    prompts = [tokenizer(p)["input_ids"] for p in PROMPTS]
    row = {"model_dtype": str(dtype).removeprefix("torch."), "quantization": config.quantization,
           "text_tokens": len(ids), "kv": {}}
    reference = greedy(runners["model"], prompts, args.tokens) if "model" in runners else None
    for kv, runner in runners.items():
        figures = {"kv_dtype": str(runner.kv_dtype).removeprefix("torch."),
                   "bytes_per_token": kv_bytes_per_token(model, runner.kv_dtype), "ppl": perplexity(runner, ids)}
        if reference is not None:
            figures["teacher_forced_agreement"], figures["common_prefix"] = agreement(runner, reference, prompts,
                                                                                      args.tokens)
        row["kv"][kv] = figures
        print(name, row["model_dtype"], kv, json.dumps(figures), flush=True)
    for runner in runners.values():
        fill(runner)
    chunks = {kv: decode_chunks(batch, context, size, interleaved=True) for kv in runners}
    times = time_steps(runners, chunks, args.steps)
    layer = attention_ms(runners, chunks, 5 * args.steps) if all(r.cpu_kernel for r in runners.values()) else {}
    for kv in runners:
        row["kv"][kv]["step_ms"], row["kv"][kv]["step_ms_best"] = times[kv], times[f"{kv} best"]
        if kv in layer:
            row["kv"][kv]["attention_ms_per_layer"] = layer[kv]
    print(name, row["model_dtype"], "step ms at 32 x 512:", {kv: round(times[kv], 1) for kv in runners},
          "attention ms a layer:", {kv: round(t, 2) for kv, t in layer.items()}, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "gemma-3-270m"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "auto"], choices=["float32", "bfloat16", "auto"])
    parser.add_argument("--kv", nargs="+", default=["model", "bfloat16", "int8"],
                        choices=["model", "bfloat16", "int8", "auto"])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--data-dir", default=str(ROOT / ".ozwell"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "kv_cache_dtype.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    results = {"machine": platform.processor() or platform.machine(), "cpu_flags": cpu_flags(),
               "threads": torch.get_num_threads(), "torch": torch.__version__,
               "decode_step": "32 sequences of 512-token contexts, blocks of 64 interleaved; median of "
                              f"{args.steps} steps, the KV dtypes' runners alternating",
               "greedy": f"{len(PROMPTS)} prompts x {args.tokens} tokens, decoded together", "models": {}}
    for name in args.models:
        for dtype_word in args.dtypes:
            row = run_model(name, dtype_word, args)
            results["models"][f"{name} {row['model_dtype']}"] = row
            Path(args.out).write_text(json.dumps(results, indent=2) + "\n")  # after each, so a long run keeps its part


if __name__ == "__main__":
    main()
