"""What grammar-constrained decoding costs a step: the native engine in process on the chat default
(gemma-3-270m, a 262k vocabulary: the widest mask we serve), at 1 and 32 streams, once unconstrained and once
under a JSON schema, with the time spent masking logits and advancing matchers measured inside the step.

    python benchmarks/grammar_overhead.py [--streams 1 32] [--max-tokens 48]

The schema's one string field is long enough that choices rarely end before max_tokens. Results go to
benchmarks/results/grammar_overhead.json. The target (issue #16): at most 10% of a step at 32 streams.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from ozwell_server import ROOT

SCHEMA = {"type": "object", "properties": {"story": {"type": "string", "maxLength": 4000},
                                           "rating": {"type": "integer", "minimum": 1, "maximum": 5}},
          "required": ["story", "rating"], "additionalProperties": False}


class Timer:
    """Wraps a function and adds up the seconds spent in it."""

    def __init__(self, module, name: str):
        self.seconds, self.calls = 0.0, 0
        original = getattr(module, name)

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started
                self.calls += 1

        setattr(module, name, timed)


async def run(engine, streams: int, max_tokens: int, structured) -> tuple[float, int]:
    from engines.protocol import GenerationRequest, SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, structured=structured)
    await engine.prepare(params)
    prompt = engine.encode_chat([{"role": "user", "content": "Write a short story as JSON."}])
    started = time.perf_counter()

    async def one(i: int) -> int:
        count = 0
        async for event in engine.generate(GenerationRequest(f"g{streams}-{i}-{time.monotonic_ns()}", prompt,
                                                             params)):
            count += len(event.token_ids)
        return count

    counts = await asyncio.gather(*(one(i) for i in range(streams)))
    return time.perf_counter() - started, sum(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".ozwell", help="keeps the converted weights")
    args = parser.parse_args()

    import engines.native.core as core
    import engines.native.model_runner as runner
    from engines.config import load_model_config
    from engines.native.engine import NativeEngine
    from engines.structured import StructuredOutput

    masking, advancing = Timer(runner, "mask_logits"), Timer(core, "_grammar_done")
    stepping = Timer(core.EngineCore, "step")
    config = load_model_config(ROOT / "model_configs" / "gemma-3-270m.yaml")
    engine = NativeEngine(config.model_copy(update={"max_num_seqs": max(args.streams)}), args.data_dir)
    engine.load()
    structured = StructuredOutput.json_schema(SCHEMA)
    results = []

    async def measure():
        await engine.start()
        await run(engine, 1, 4, structured)  # warm-up, and the grammar compiled
        for streams in args.streams:
            for label, constraint in (("free", None), ("json_schema", structured)):
                for timer in (masking, advancing, stepping):
                    timer.seconds, timer.calls = 0.0, 0
                seconds, tokens = await run(engine, streams, args.max_tokens, constraint)
                step_ms = 1000 * stepping.seconds / max(stepping.calls, 1)
                grammar_ms = 1000 * (masking.seconds + advancing.seconds) / max(stepping.calls, 1)
                row = {"streams": streams, "decoding": label, "tok_per_s": round(tokens / seconds, 2),
                       "step_ms": round(step_ms, 2), "grammar_ms_per_step": round(grammar_ms, 3),
                       "grammar_share_of_step": round(grammar_ms / step_ms, 4) if step_ms else None}
                results.append(row)
                print(row, flush=True)
        await engine.stop()

    asyncio.run(measure())
    out = ROOT / "benchmarks" / "results" / "grammar_overhead.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": config.id, "max_tokens": args.max_tokens, "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
