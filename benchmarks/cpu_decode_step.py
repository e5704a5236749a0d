"""In-process CPU decode-step time (issue #22): the forward pass of the native runner at 1, 8 and 32 decoding
sequences, in variants of the model run in one process, their steps alternating so that the machine's noise
falls on all alike:
    unfused       float32, as transformers wrote the layers (packed oneDNN linears)
    fused         float32 with the fused CPU layers (engines/native/cpu_fused.py)
    int8          `quantization: int8` (engines/native/cpu_quant.py), fused
    int8-unfused  the same int8 linears in the layers as transformers wrote them
    int4          `quantization: int4`, fused (4-bit decoder linears where 4 bits hold the weights, the rest int8)

    python benchmarks/cpu_decode_step.py [--model DIR] [--variants unfused fused] [--batches 1 8 32]
                                         [--context 64 [512 ...]] [--interleaved] [--steps 10]
                                         [--prefill TOKENS] [--profile] [--dtype float32|bfloat16]

With several contexts (`--context 16 512`), each variant's steps at each context alternate too, and the first
context's time is compared with the others' (issue #22: a step at 512 tokens within 25% of one at 16).

DIR is a transformers checkpoint (default: gemma-3-270m dequantised in .ozwell/models). The figures are the
median and the best of `--steps` decode steps after two warm-up steps; on a shared, noisy machine compare the
ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engines.native import cpu_kernel  # noqa: E402
from engines.native.model_runner import PagedModelRunner  # noqa: E402
from engines.native.scheduler import ScheduledChunk  # noqa: E402
from engines.native.sequence import Sequence  # noqa: E402


def default_model() -> Path | None:
    for base in (ROOT / ".ozwell" / "models" / "gemma-3-270m", Path("/work/main/.ozwell/models/gemma-3-270m")):
        found = sorted(base.glob("*/config.json")) if base.is_dir() else []
        if found:
            return found[0].parent
    return None


def decode_chunks(batch: int, context: int, block_size: int, interleaved: bool = False) -> list[ScheduledChunk]:
    """`batch` sequences of `context` tokens, each decoding one. Their blocks are each sequence's own run of adjacent
    blocks, or `interleaved`: block j of sequence i is j * batch + i, as where the sequences grew side by side, one
    block each in turn (a server's decodes), so that no two of a sequence's blocks are adjacent."""
    per = -(-(context + 64) // block_size)
    chunks = []
    for i in range(batch):
        seq = Sequence(f"s{i}", [(7 * i + j) % 1000 + 2 for j in range(context + 1)], block_size)
        seq.block_table = [j * batch + i for j in range(per)] if interleaved else list(range(i * per, (i + 1) * per))
        seq.num_computed_tokens = context
        chunks.append(ScheduledChunk(seq, 1))
    return chunks


def time_steps(runners: dict, chunks: dict, steps: int) -> dict[str, float]:
    """Median ms a step, per runner, the runners alternating step by step (two warm-up steps each)."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    for i in range(steps + 2):
        for name, runner in runners.items():
            started = time.perf_counter()
            runner.forward(chunks[name])
            if i >= 2:
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t) * 1000 for name, t in times.items()} | {
        f"{name} best": min(t) * 1000 for name, t in times.items()}


def report(what: str, figures: dict[str, float], variants: list[str]) -> None:
    """Each variant's median and best, and the first variant's time over each other's (its speed-up)."""
    first = variants[0]
    parts = [f"{v} {figures[v]:7.1f} ms (best {figures[v + ' best']:7.1f}"
             + (f", {figures[first] / figures[v]:.2f}x)" if v != first else ")") for v in variants]
    print(f"{what}: " + "; ".join(parts), flush=True)


def load(path: Path, quantization: str | None, fused: bool, blocks: int, block_size: int, max_num_seqs: int,
         dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    if quantization:
        from engines.native.cpu_quant import quantize_model

        print(f"{quantization}:", quantize_model(model, mode=quantization))
    saved = cpu_kernel._state.get("fused", "unset")
    if not fused:
        cpu_kernel._state["fused"] = None  # as where the ops cannot be built: the transformers modules serve
    try:
        return PagedModelRunner(model, blocks, block_size, max_num_seqs=max_num_seqs)
    finally:
        if saved == "unset":
            cpu_kernel._state.pop("fused", None)
        else:
            cpu_kernel._state["fused"] = saved


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--context", type=int, nargs="+", default=[64],
                        help="one or more contexts; with several, their steps alternate and each is compared with "
                             "the first")
    parser.add_argument("--interleaved", action="store_true",
                        help="the sequences' blocks interleaved, as a server's decodes leave them")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--block-size", type=int, nargs="+", default=[16],
                        help="tokens a KV block (the config's block_size); with several, a runner each, their steps "
                             "alternating too")
    parser.add_argument("--variants", nargs="+", default=["unfused", "fused"],
                        choices=["unfused", "fused", "int8", "int8-unfused", "int4", "int6"])
    parser.add_argument("--prefill", type=int, default=0, help="also time one prefill chunk of this many tokens")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's table at batch 1")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="the model's dtype (the server's `auto` is bfloat16 on a CPU with AVX-512 BF16)")
    args = parser.parse_args()
    path = args.model or default_model()
    if path is None:
        raise SystemExit("no model: pass --model DIR")
    sizes = args.block_size
    # a runner for each variant and block size, named "variant" or "variant/b<size>" where several sizes are compared
    runners = {}
    for v in args.variants:
        for size in sizes:
            blocks = max(max(args.batches) * (-(-(max(args.context) + 64) // size)), -(-args.prefill // size)) + 1
            runners[v if len(sizes) == 1 else f"{v}/b{size}"] = load(
                path, v.split("-")[0] if v.startswith("int") else None, not v.endswith("unfused"), blocks, size,
                max(args.batches), getattr(torch, args.dtype))
    print(f"model {path.name}, {args.dtype}, threads {torch.get_num_threads()}, context {args.context}, "
          f"block size {sizes}" + (" (interleaved blocks), " if args.interleaved else ", ")
          + ", ".join(f"{v}: {r.fused_layers} fused layers" for v, r in runners.items()))
    for batch in args.batches:
        # each (runner, context) timed on its own: the contexts' steps alternate as the runners' do
        timed = {f"{r}@{c}" if len(args.context) > 1 else r: runners[r] for r in runners for c in args.context}
        chunks = {name: decode_chunks(batch, int(name.split("@")[1]) if "@" in name else args.context[0],
                                      timed[name].block_size, args.interleaved) for name in timed}
        figures = time_steps(timed, chunks, args.steps)
        report(f"batch {batch:3d}", figures, list(timed))
    if args.prefill:
        def prefill_chunk(size: int):
            seq = Sequence("p", [(5 * j) % 1000 + 2 for j in range(args.prefill)], size)
            seq.block_table = list(range(-(-args.prefill // size)))
            return [ScheduledChunk(seq, args.prefill)]

        figures = time_steps(runners, {name: prefill_chunk(r.block_size) for name, r in runners.items()},
                             max(3, args.steps // 3))
        report(f"prefill {args.prefill}", figures, list(runners))
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for name, runner in runners.items():
            chunks = decode_chunks(1, args.context[0], runner.block_size)
            runner.forward(chunks)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                runner.forward(chunks)
            print(f"--- {name}, batch 1")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    main()
