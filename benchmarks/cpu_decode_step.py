"""In-process CPU decode-step time (issue #22): the forward pass of the native runner at 1, 8 and 32 decoding
sequences, with the fused CPU fast path (engines/native/cpu_fused.py) off and on, in one process.

    python benchmarks/cpu_decode_step.py [--model DIR] [--batches 1 8 32] [--context 64] [--steps 10] [--int8]
                                         [--profile]

DIR is a transformers checkpoint (default: gemma-3-270m dequantised in .ozwell/models). The figures are medians
of `--steps` decode steps after two warm-up steps; the machine is shared and noisy, so compare the ratios.
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

from engines.native import cpu_fused  # noqa: E402
from engines.native.model_runner import PagedModelRunner  # noqa: E402
from engines.native.scheduler import ScheduledChunk  # noqa: E402
from engines.native.sequence import Sequence  # noqa: E402


def default_model() -> Path | None:
    for base in (ROOT / ".ozwell" / "models" / "gemma-3-270m", Path("/work/main/.ozwell/models/gemma-3-270m")):
        found = sorted(base.glob("*/config.json")) if base.is_dir() else []
        if found:
            return found[0].parent
    return None


def decode_chunks(batch: int, context: int, block_size: int) -> list[ScheduledChunk]:
    per = -(-(context + 64) // block_size)
    chunks = []
    for i in range(batch):
        seq = Sequence(f"s{i}", [(7 * i + j) % 1000 + 2 for j in range(context + 1)], block_size)
        seq.block_table = list(range(i * per, (i + 1) * per))
        seq.num_computed_tokens = context
        chunks.append(ScheduledChunk(seq, 1))
    return chunks


def time_steps(runner, chunks, steps: int) -> float:
    for _ in range(2):
        runner.forward(chunks)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        runner.forward(chunks)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--int8", action="store_true", help="the LM head in int8 (as gemma-3-270m ships)")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's table at batch 1")
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM

    path = args.model or default_model()
    if path is None:
        raise SystemExit("no model: pass --model DIR")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    if args.int8:
        from engines.native.cpu_quant import quantize_head

        quantize_head(model)
    block_size, blocks = 16, 32 * (-(-(args.context + 64) // 16)) + 1
    runner = PagedModelRunner(model, blocks, block_size, max_num_seqs=max(args.batches))
    fused = runner.fused_layers or None
    print(f"model {path.name}, threads {torch.get_num_threads()}, context {args.context}, fused: {bool(fused)}")
    rows = []
    for batch in args.batches:
        chunks = decode_chunks(batch, args.context, block_size)
        figures = {}
        for name, on in (("eager", False), ("fused", True)):
            if on and fused is None:
                continue
            cpu_fused.set_enabled(model, on)
            figures[name] = time_steps(runner, chunks, args.steps)
        cpu_fused.set_enabled(model, fused is not None)
        rows.append((batch, figures))
        ratio = figures["eager"] / figures["fused"] if "fused" in figures else float("nan")
        print(f"batch {batch:3d}: eager {figures['eager']:7.1f} ms  fused {figures.get('fused', float('nan')):7.1f} ms"
              f"  ({ratio:.2f}x)", flush=True)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        chunks = decode_chunks(1, args.context, block_size)
        for on in (False, True) if fused else (False,):
            cpu_fused.set_enabled(model, on)
            runner.forward(chunks)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                runner.forward(chunks)
            print(f"--- fused={on}")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
