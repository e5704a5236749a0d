"""Ratios measured in turns, so that the machine's drift cannot make or break them (issue #22's targets).

    python benchmarks/rounds.py [--rounds 5] [--streams 1 32] [--quantization none int8] [--no-llama]
                                [--max-tokens 128] [--out DIR]

On the shared 2-core machines this project is measured on, a system's speed drifts by 10-30% within minutes:
llama.cpp at one stream gave 30.2 and 39.3 tok/s in two runs of chat_throughput.py 9 minutes apart. That script
measures each system once, minutes after the one it is compared with, so its ratios carry the drift whole. Here:
- our servers, one per `--quantization`, start once and stay up (an idle server takes no CPU);
- each round measures, at each stream count, every server, then llama.cpp (at 1-8 streams, where `.peers/llama`
  holds llama-cpp-python; see chat_throughput.py), one after another, within a minute or two;
- each round's ratios are taken between figures measured side by side, and the report gives every round's ratios and
  their median.
Streams, prompts, greedy decoding and ignore_eos are chat_throughput.py's. vLLM is left out: its offline run loads
for a minute or two each time, and at 32 streams it trails by more than the drift (chat_throughput.py measures it).
Results: benchmarks/results/rounds.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from chat_throughput import http_run, llama_gguf, llama_run, server_configs
from ozwell_server import ROOT, free_port, start_server


def ratios(figures: dict[str, float], quantization: list[str]) -> dict[str, float]:
    """One round's ratios: each of our modes over llama.cpp, and each mode over the first, at each stream count."""
    out = {}
    for name, value in figures.items():
        system, streams = name.split("@")
        if not system.startswith("ozwell_"):
            continue
        mode = system.removeprefix("ozwell_")
        if figures.get(f"llama_cpp@{streams}"):
            out[f"{mode}/llama_cpp@{streams}"] = value / figures[f"llama_cpp@{streams}"]
        if mode != quantization[0]:
            out[f"{mode}/{quantization[0]}@{streams}"] = value / figures[f"ozwell_{quantization[0]}@{streams}"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--quantization", nargs="+", default=["none", "int8"], choices=["none", "int8", "int4", "int6"])
    parser.add_argument("--no-llama", action="store_true", help="leave llama.cpp out")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".ozwell", help="keeps the converted weights")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    gguf = None if args.no_llama else llama_gguf(args.data_dir)
    workdir = Path(tempfile.mkdtemp(prefix="ozwell-rounds-"))
    servers: dict[str, tuple] = {}
    rounds = []
    try:
        for mode in args.quantization:
            port = free_port()
            servers[mode] = (start_server(port, server_configs(workdir, mode), args.data_dir),
                             f"http://127.0.0.1:{port}")
        key = (args.data_dir / "admin_key").read_text().strip()
        for index in range(args.rounds):
            figures = {}
            for streams in args.streams:
                for mode, (_, url) in servers.items():
                    print(f"round {index + 1}: ozwell ({mode}), {streams} stream(s) ...", flush=True)
                    figures[f"ozwell_{mode}@{streams}"] = asyncio.run(
                        http_run(url, key, streams, args.max_tokens))["tok_per_s"]
                if gguf is not None and streams <= 8:
                    print(f"round {index + 1}: llama.cpp, {streams} stream(s) ...", flush=True)
                    figures[f"llama_cpp@{streams}"] = llama_run(gguf, [streams], args.max_tokens)[streams]
            rounds.append({"tok_per_s": {k: round(v, 2) for k, v in figures.items()},
                           "ratios": {k: round(v, 3) for k, v in ratios(figures, args.quantization).items()}})
            print(json.dumps(rounds[-1]), flush=True)
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(60)
        shutil.rmtree(workdir, ignore_errors=True)
    names = list(rounds[0]["ratios"]) if rounds else []
    medians = {name: round(statistics.median(r["ratios"][name] for r in rounds), 3) for name in names}
    for name in names:
        print(f"{name:28s} median {medians[name]:.3f}  rounds " + " ".join(f"{r['ratios'][name]:.3f}" for r in rounds))
    result = {"benchmark": "rounds", "model": "gemma-3-270m", "max_tokens": args.max_tokens, "cpus": os.cpu_count(),
              "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "median_ratios": medians, "rounds": rounds}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rounds.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out / 'rounds.json'}")


if __name__ == "__main__":
    main()
