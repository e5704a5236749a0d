"""GPU decode throughput of the native engine against transformers, in one run, on random-weight models.

    python benchmarks/gpu_decode.py                     # on a CUDA box: both shapes, every figure
    python benchmarks/gpu_decode.py --shapes 1b         # one shape
    python benchmarks/gpu_decode.py --smoke             # a CPU check of the script itself (tiny shape)
    python benchmarks/gpu_decode.py --plot results.json # the PNG from a JSON (needs matplotlib)

Nothing is downloaded. The shapes are built here with random bf16 weights (Llama-3.2-1B: 16 layers, 2048
wide; Llama-3-8B: 32 layers, 4096 wide) and a synthetic word-level tokenizer of the SmolLM2 vocabulary's
size (49,152), saved once under --work-dir (reused by later runs). Every stream generates --max-tokens
greedy tokens with ignore_eos from a 16-token random prompt; figures are output tokens per second.

Per shape, in one run:
- the copy bandwidth of the GPU, and the batch-1 bound it allows (bandwidth / weight bytes);
- transformers `generate` (static batches) and `generate_batch` (its continuous batching);
- the anchor: transformers with a 512-token StaticCache and one decode step captured as a CUDA graph;
- ours in-process (the NativeEngine, CUDA graphs on), at 1, 8, 32, 128 and 256 streams, and its time to
  first token at 32 streams;
- ours over HTTP: `ozwell serve` on the same weights, /v1/completions streamed, at 1 and 32 streams.
It writes benchmarks/results/gpu_decode.json (and the PNG where matplotlib is installed).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

VOCAB = 49152
PROMPT_TOKENS = 16
SHAPES = {
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8),
    "smoke": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2),
}
# The streams each shape is measured at (the 8B shape's larger batches add little to its target).
STREAMS = {"1b": [1, 8, 32, 128, 256], "8b": [1, 8, 32, 128], "smoke": [1, 4]}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---- the models ---------------------------------------------------------------------------------------
def build_tokenizer(out_dir: Path) -> None:
    """A word-level tokenizer with VOCAB entries: w0 ... (ids 0-2 are pad, bos, eos)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>",
                                        eos_token="</s>")
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    tokenizer.save_pretrained(out_dir)


def build_model(shape: str, out_dir: Path, device: str, dtype: torch.dtype) -> Path:
    """Random weights of the shape, saved as an HF directory (once: a later run reuses it)."""
    if (out_dir / "config.json").exists():
        return out_dir
    from transformers import LlamaConfig, LlamaForCausalLM

    log(f"building the random {shape} model in {out_dir}")
    config = LlamaConfig(vocab_size=VOCAB, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0, tie_word_embeddings=False, **SHAPES[shape])
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    model.save_pretrained(out_dir)
    build_tokenizer(out_dir)
    del model
    return out_dir


def load_model(model_dir: Path, device: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()


def free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def random_prompts(count: int, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (count, PROMPT_TOKENS), generator=generator).tolist()


# ---- the peers ----------------------------------------------------------------------------------------
def copy_bandwidth(device: str) -> float | None:
    """Bytes per second a device-to-device copy moves (read + write)."""
    if device != "cuda":
        return None
    source = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    for _ in range(3):
        target.copy_(source)
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(20):
        target.copy_(source)
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / 20
    del source, target
    return 2 * (1 << 30) / seconds


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def hf_generate(model, streams: int, max_tokens: int, device: str) -> float:
    """transformers generate on one static batch of `streams` prompts: output tok/s."""
    ids = torch.tensor(random_prompts(streams), device=device)
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)  # warm-up
        sync(device)
        started = time.perf_counter()
        model.generate(ids, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False, pad_token_id=0)
        sync(device)
    return streams * max_tokens / (time.perf_counter() - started)


def hf_generate_batch(model, streams: int, max_tokens: int, device: str) -> float:
    """transformers' own continuous batching (`generate_batch`): output tok/s."""
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False,
                              eos_token_id=-1, pad_token_id=0)
    prompts = random_prompts(streams)
    model.generate_batch(inputs=prompts[:2], generation_config=config, progress_bar=False)  # warm-up
    sync(device)
    started = time.perf_counter()
    outputs = model.generate_batch(inputs=prompts, generation_config=config, progress_bar=False)
    sync(device)
    elapsed = time.perf_counter() - started
    produced = sum(len(o.generated_tokens) for o in outputs.values())
    return produced / elapsed


def graph_anchor(model, batch: int, device: str) -> float | None:
    """A 512-token StaticCache and one decode step (at position 16) captured as a CUDA graph: tok/s of replays."""
    if device != "cuda":
        return None
    from transformers import StaticCache

    cache = StaticCache(config=model.config, max_cache_len=512)
    ids = torch.tensor(random_prompts(batch), device=device)
    with torch.inference_mode():
        model(ids, past_key_values=cache, use_cache=True, cache_position=torch.arange(PROMPT_TOKENS, device=device))
        token = torch.zeros(batch, 1, dtype=torch.long, device=device)
        position = torch.tensor([PROMPT_TOKENS], device=device)

        def step():
            return model(token, past_key_values=cache, use_cache=True, cache_position=position,
                         position_ids=position[None].expand(batch, 1)).logits

        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        graph.replay()
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(50):
            graph.replay()
        torch.cuda.synchronize()
    return batch * 50 / (time.perf_counter() - started)


def attempt(name: str, func, *args):
    """A peer's figure, or None with the reason logged: one failing peer must not cost the run."""
    try:
        value = func(*args)
    except Exception as exc:  # noqa: BLE001 - report and go on
        log(f"  {name}: failed ({type(exc).__name__}: {str(exc)[:200]})")
        return None
    log(f"  {name}: {value:,.1f}" if isinstance(value, float) else f"  {name}: {value}")
    return value


# ---- ours -----------------------------------------------------------------------------------------
def write_config(config_dir: Path, name: str, model_dir: Path, device: str, dtype: str, max_num_seqs: int) -> Path:
    config_dir.mkdir(parents=True, exist_ok=True)
    path = config_dir / f"{name}.yaml"
    path.write_text(f"id: {name}\ntask: chat\nengine: transformers\nsource: {model_dir}\ndtype: {dtype}\n"
                    f"device: {device}\nmax_model_len: 512\nmax_num_seqs: {max_num_seqs}\n"
                    "max_num_batched_tokens: 2048\n")
    return path


async def _engine_run(engine, streams: int, max_tokens: int) -> tuple[float, float]:
    """(output tok/s, mean time to first token in s) for `streams` concurrent requests."""
    from engines.protocol import GenerationRequest, SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    started = time.perf_counter()
    firsts: list[float] = []

    async def one(i: int, prompt: list[int]) -> int:
        count = 0
        async for event in engine.generate(GenerationRequest(f"b{streams}-{i}-{time.monotonic_ns()}", prompt,
                                                             params)):
            if not count and event.token_ids:
                firsts.append(time.perf_counter() - started)
            count += len(event.token_ids)
        return count

    counts = await asyncio.gather(*(one(i, p) for i, p in enumerate(random_prompts(streams, seed=streams))))
    return sum(counts) / (time.perf_counter() - started), sum(firsts) / max(len(firsts), 1)


def ours_in_process(config_path: Path, data_dir: Path, streams_list: list[int], max_tokens: int) -> dict:
    from engines.config import load_model_config
    from engines.native.engine import NativeEngine

    engine = NativeEngine(load_model_config(config_path), data_dir)
    started = time.perf_counter()
    engine.load()
    result: dict = {"load_s": round(time.perf_counter() - started, 1),
                    "graphs": bool(engine.runner.static and engine.runner.static.graphs),
                    "kv_tokens": engine.stats()["kv_blocks_total"] * engine.block_size}

    async def main(engine):
        await engine.start()
        await _engine_run(engine, 2, 8)  # warm-up
        for streams in streams_list:
            rate, ttft = await _engine_run(engine, streams, max_tokens)
            result[str(streams)] = round(rate, 1)
            result[f"ttft_ms_{streams}"] = round(ttft * 1000, 1)
            log(f"  ours in-process, {streams} streams: {rate:,.1f} tok/s (TTFT {ttft * 1000:.0f} ms)")
        await engine.stop()

    asyncio.run(main(engine))
    del engine
    return result


def ours_over_http(config_dir: Path, data_dir: Path, model: str, streams_list: list[int], max_tokens: int) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        port = _free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--port", str(port), "--config-dir", str(config_dir),
             "--data-dir", scratch, "--no-auth", "--log-level", "warning"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            for line in process.stdout:
                if line.startswith("Ozwell ready on"):
                    break
            else:
                raise RuntimeError("ozwell serve exited before it was ready")
            result = {}
            for streams in streams_list:
                rate = asyncio.run(_http_run(f"http://127.0.0.1:{port}/v1/completions", model, streams, max_tokens))
                result[str(streams)] = round(rate, 1)
                log(f"  ours over HTTP, {streams} streams: {rate:,.1f} tok/s")
            return result
        finally:
            process.terminate()
            process.wait(timeout=60)


async def _http_run(url: str, model: str, streams: int, max_tokens: int) -> float:
    import httpx

    async with httpx.AsyncClient(timeout=600) as client:
        async def one(prompt: list[int]) -> int:
            body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                    "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
            tokens = 0
            async with client.stream("POST", url, json=body) as response:
                response.raise_for_status()
                async for line in response.aiter_lines():
                    if line.startswith("data: {") and '"usage":{' in line:
                        tokens = json.loads(line[6:])["usage"]["completion_tokens"]
            return tokens

        await one(random_prompts(1)[0])  # warm-up
        started = time.perf_counter()
        counts = await asyncio.gather(*(one(p) for p in random_prompts(streams, seed=streams)))
        return sum(counts) / (time.perf_counter() - started)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- the run ------------------------------------------------------------------------------------------
def run_shape(shape: str, args, device: str, dtype: torch.dtype, dtype_name: str) -> dict:
    work = Path(args.work_dir)
    model_dir = build_model(shape, work / f"llama-{shape}", device, dtype)
    streams_list = STREAMS[shape]
    figures: dict = {"streams": streams_list}
    free(device)
    model = load_model(model_dir, device, dtype)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    figures["weight_bytes"] = weights
    bandwidth = copy_bandwidth(device)
    figures["copy_bandwidth_bytes_s"] = bandwidth
    figures["batch1_bound_tok_s"] = round(bandwidth / weights, 1) if bandwidth else None
    log(f"{shape}: {weights / 1e9:.2f} GB of weights; copy bandwidth "
        + (f"{bandwidth / 1e12:.2f} TB/s, a batch-1 bound of {bandwidth / weights:.0f} tok/s" if bandwidth else "n/a"))
    figures["hf_generate"] = {str(n): attempt(f"generate, {n} streams", hf_generate, model, n, args.max_tokens, device)
                              for n in streams_list if n <= 128}
    figures["hf_generate_batch"] = {
        str(n): attempt(f"generate_batch, {n} streams", hf_generate_batch, model, n, args.max_tokens, device)
        for n in streams_list if n >= 32 or shape == "smoke"}
    figures["static_cache_graph"] = {str(n): attempt(f"StaticCache + CUDA graph, batch {n}", graph_anchor, model, n,
                                                     device) for n in (1, 32)}
    del model
    free(device)
    config_dir = work / f"configs-{shape}"
    config_path = write_config(config_dir, f"bench-{shape}", model_dir, device, dtype_name, max(streams_list))
    figures["ours"] = ours_in_process(config_path, work / "data", streams_list, args.max_tokens)
    free(device)
    if not args.no_http:
        figures["ours_http"] = attempt("ours over HTTP", ours_over_http, config_dir, work / "data", f"bench-{shape}",
                                       [1, 32], args.max_tokens)
    bound = figures["batch1_bound_tok_s"]
    if bound:
        figures["batch1_fraction_of_bound"] = round(figures["ours"]["1"] / bound, 3)
    return figures


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(results["shapes"])
    fig, axes = plt.subplots(1, len(shapes), figsize=(6 * len(shapes), 4.5), squeeze=False)
    for ax, shape in zip(axes[0], shapes):
        data = results["shapes"][shape]
        streams = data["streams"]
        series = {"ours (in-process)": data["ours"], "ours (HTTP)": data.get("ours_http") or {},
                  "transformers generate": data["hf_generate"], "generate_batch": data["hf_generate_batch"]}
        for label, values in series.items():
            points = [(n, values.get(str(n))) for n in streams if values.get(str(n))]
            if points:
                ax.plot(*zip(*points), marker="o", label=label)
        for n, value in (data.get("static_cache_graph") or {}).items():
            if value:
                ax.scatter([int(n)], [value], marker="*", s=120, label=f"StaticCache + graph, batch {n}")
        if data.get("batch1_bound_tok_s"):
            ax.axhline(data["batch1_bound_tok_s"], linestyle=":", color="grey", label="batch-1 bandwidth bound")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrent streams")
        ax.set_ylabel("output tokens / s")
        ax.set_title(f"{shape}: {results['device']}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    log(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["1b", "8b"], choices=["1b", "8b"])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--work-dir", default=str(ROOT / ".bench-gpu"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_decode.json"))
    parser.add_argument("--no-http", action="store_true", help="skip the ozwell serve measurement")
    parser.add_argument("--smoke", action="store_true", help="a tiny shape on the CPU: checks the script, no figures")
    parser.add_argument("--plot", metavar="JSON", help="only draw the PNG of an earlier run's JSON")
    args = parser.parse_args()
    if args.plot:
        plot(json.loads(Path(args.plot).read_text()), Path(args.plot).with_suffix(".png"))
        return
    if args.smoke:
        device, dtype, dtype_name, shapes, args.max_tokens = "cpu", torch.float32, "float32", ["smoke"], 8
        args.out = str(Path(tempfile.gettempdir()) / "gpu_decode_smoke.json")
    else:
        if not torch.cuda.is_available():
            sys.exit("gpu_decode.py needs a CUDA GPU (or --smoke for a CPU check of the script)")
        device, dtype, dtype_name, shapes = "cuda", torch.bfloat16, "bfloat16", args.shapes
    import transformers

    results = {"device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu",
               "torch": torch.__version__, "transformers": transformers.__version__, "max_tokens": args.max_tokens,
               "prompt_tokens": PROMPT_TOKENS, "dtype": dtype_name, "shapes": {}}
    started = time.perf_counter()
    for shape in shapes:
        results["shapes"][shape] = run_shape(shape, args, device, dtype, dtype_name)
    results["seconds"] = round(time.perf_counter() - started, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    log(f"wrote {out} ({results['seconds']} s)")
    try:
        plot(results, out.with_suffix(".png"))
    except ImportError:
        log("matplotlib is not installed: no PNG (run --plot on the JSON where it is)")


if __name__ == "__main__":
    main()
