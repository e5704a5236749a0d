"""Vision throughput: chat requests each carrying one 1024x768 image, through our HTTP server (the native engine)
against transformers' `generate` on the same model directory, in one run.

    python benchmarks/vision_throughput.py [--model-dir DIR] [--concurrency 1 4] [--requests 8] [--max-tokens 32]
                                           [--device cpu] [--dtype float32] [--same-image] [--out benchmarks/results]

Without --model-dir it builds the tiny random-weight Gemma 3 VLM of the tests (tests/tiny_vlms.py), which measures
the serving overheads (decoding the image, preprocessing, the vision tower, scheduling) more than a model; give a
real VLM's directory (Gemma 3 4B, say, with --device cuda) for model-bound numbers.

Each request is a streamed chat completion: a short question and a base64 PNG of 1024x768 random pixels (a different
one per request unless --same-image, which lets the prefix cache reuse the image's blocks), greedy, --max-tokens new
tokens with ignore_eos. For each concurrency C, C clients send --requests requests each to `ozwell serve`
(`engine: transformers`); then, the server stopped (its idle threads would take a small CPU's cycles), transformers
runs the same prompts and images as batches of C (left-padded) through `AutoProcessor` +
`AutoModelForImageTextToText.generate` in this process. It reports requests/s and time to first token (p50, p99;
for transformers, the time from a batch's start to its first new token, processor included) and writes
benchmarks/results/vision_throughput.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from ozwell_server import ROOT, free_port, start_server

MODEL_ID = "bench-vlm"
QUESTION = "What is in this image? Describe it."
SIZE = (1024, 768)
# --size small: SigLIP-base's tower at 224 px (256 patches pooled to 64 tokens), gemma-3-270m's decoder shapes (its
# vocabulary aside: the tests' tokenizer), random weights: a model whose compute, not the serving, is measured.
SMALL = {"vision": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12},
         "image_size": 224, "tokens_per_image": 64, "hidden_size": 640, "intermediate_size": 2048,
         "num_hidden_layers": 18, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
         "sliding_window": 512, "max_position_embeddings": 2048,
         "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 3}


def png(seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8)
    encoded = io.BytesIO()
    Image.fromarray(pixels).save(encoded, "PNG")
    return encoded.getvalue()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] if ordered else float("nan")


def chat_messages(image: bytes) -> list[dict]:
    url = "data:image/png;base64," + base64.b64encode(image).decode()
    return [{"role": "user", "content": [{"type": "text", "text": QUESTION},
                                         {"type": "image_url", "image_url": {"url": url}}]}]


# ---- ours: the HTTP server ---------------------------------------------------------------------------------------
async def one_request(http, image: bytes, max_tokens: int) -> dict:
    started = time.perf_counter()
    first, tokens = None, 0
    # logprobs: a token whose text is empty (a special token, or bytes of a character still incomplete: random
    # weights write them) still comes in a chunk, so the first token is timed, as transformers' streamer times it
    body = {"model": MODEL_ID, "messages": chat_messages(image), "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}, "logprobs": True}
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif first is None and chunk["choices"] and (chunk["choices"][0].get("logprobs") or {}).get("content"):
                first = time.perf_counter()
    return {"ttft": (first or time.perf_counter()) - started, "tokens": tokens,
            "latency": time.perf_counter() - started}


async def server_run(url: str, key: str, clients: int, images: list[list[bytes]], max_tokens: int) -> dict:
    import httpx

    async def client(mine: list[bytes], http) -> list[dict]:
        return [await one_request(http, image, max_tokens) for image in mine]

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=3600, limits=limits,
                                 headers={"Authorization": f"Bearer {key}"}) as http:
        await one_request(http, png(10**6), 2)  # warm-up
        started = time.perf_counter()
        results = await asyncio.gather(*(client(images[c], http) for c in range(clients)))
        elapsed = time.perf_counter() - started
    done = [r for per_client in results for r in per_client]
    return {"requests_per_s": len(done) / elapsed, "ttft_p50_s": percentile([r["ttft"] for r in done], 50),
            "ttft_p99_s": percentile([r["ttft"] for r in done], 99),
            "output_tokens_per_s": sum(r["tokens"] for r in done) / elapsed}


# ---- the floor: transformers' generate ------------------------------------------------------------------------------
class FirstTokenClock:
    """A generate() streamer noting when the first new token comes (its first put() is the prompt)."""

    def __init__(self):
        self.puts, self.first = 0, None

    def put(self, value) -> None:
        self.puts += 1
        if self.puts == 2 and self.first is None:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


def transformers_run(model, processor, batches: list[list[bytes]], max_tokens: int) -> dict:
    import torch
    from PIL import Image

    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": QUESTION}, {"type": "image"}]}],
        add_generation_prompt=True, tokenize=False)

    def run(batch: list[bytes], tokens: int) -> tuple[float, float]:
        started = time.perf_counter()
        pictures = [[Image.open(io.BytesIO(data)).convert("RGB")] for data in batch]
        inputs = processor(text=[text] * len(batch), images=pictures, padding=True, return_tensors="pt")
        inputs = inputs.to(model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        clock = FirstTokenClock()
        with torch.inference_mode():
            model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, streamer=clock)
        return (clock.first or time.perf_counter()) - started, time.perf_counter() - started

    run(batches[0][:1], 2)  # warm-up
    ttfts, total, requests = [], 0.0, 0
    for batch in batches:
        ttft, elapsed = run(batch, max_tokens)
        ttfts += [ttft] * len(batch)
        total += elapsed
        requests += len(batch)
    return {"requests_per_s": requests / total, "ttft_p50_s": percentile(ttfts, 50),
            "ttft_p99_s": percentile(ttfts, 99), "output_tokens_per_s": requests * max_tokens / total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, help="a VLM's HF directory (default: build a random Gemma 3 VLM)")
    parser.add_argument("--size", choices=["tiny", "small"], default="tiny",
                        help="without --model-dir: the tests' tiny Gemma 3 VLM, or a small one of real shapes "
                             "(SigLIP-base at 224 px, 64 tokens an image; gemma-3-270m's decoder, 18 layers)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--requests", type=int, default=8, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--same-image", action="store_true", help="one image for every request (cache hits)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from tests.tiny_vlms import build_tiny_gemma3_vlm, native_vlm_config

    load_before = os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="ozwell-bench-vision-"))
    model_dir = args.model_dir or (build_tiny_gemma3_vlm(workdir / "tiny-gemma3-vlm") if args.size == "tiny" else
                                   build_tiny_gemma3_vlm(workdir / "small-gemma3-vlm", **SMALL))
    most = max(args.concurrency)
    (workdir / "configs").mkdir()
    (workdir / "configs" / f"{MODEL_ID}.yaml").write_text(
        native_vlm_config(MODEL_ID, model_dir, device=args.device, max_num_seqs=max(most, 1), max_waiting=4 * most)
        .replace("dtype: float32", f"dtype: {args.dtype}"))
    pools = {clients: [png(0)] * (clients * args.requests) if args.same_image
             else [png(seed) for seed in range(clients * args.requests)] for clients in set(args.concurrency)}
    # Ours first, then transformers once the server is gone: on a small CPU an idle server's threads (and a loaded
    # model's) would otherwise take cycles from the other side.
    ours = []
    port = free_port()
    server = start_server(port, workdir / "configs", workdir / "data")
    key = (workdir / "data" / "admin_key").read_text().strip()  # made at first start, enterprise limits
    try:
        for clients in args.concurrency:
            pool = pools[clients]
            print(f"ozwell, {clients} concurrent: {len(pool)} requests with a {SIZE[0]}x{SIZE[1]} image ...",
                  flush=True)
            per_client = [pool[c * args.requests:(c + 1) * args.requests] for c in range(clients)]
            ours.append(asyncio.run(server_run(f"http://127.0.0.1:{port}", key, clients, per_client,
                                               args.max_tokens)))
            print(f"  {ours[-1]['requests_per_s']:7.2f} req/s   TTFT p50 {ours[-1]['ttft_p50_s'] * 1000:7.1f} ms  "
                  f"p99 {ours[-1]['ttft_p99_s'] * 1000:7.1f} ms", flush=True)
    finally:
        server.terminate()
        server.wait(30)
    rows = []
    try:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        processor = AutoProcessor.from_pretrained(model_dir, use_fast=False)
        processor.tokenizer.padding_side = "left"
        model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=getattr(torch, args.dtype))
        model = model.to(args.device).eval()
        for clients, served in zip(args.concurrency, ours):
            pool = pools[clients]
            print(f"transformers, batches of {clients}: {len(pool)} requests ...", flush=True)
            floor = transformers_run(model, processor, [pool[i:i + clients] for i in range(0, len(pool), clients)],
                                     args.max_tokens)
            print(f"  {floor['requests_per_s']:7.2f} req/s   TTFT p50 {floor['ttft_p50_s'] * 1000:7.1f} ms  p99 "
                  f"{floor['ttft_p99_s'] * 1000:7.1f} ms", flush=True)
            rows.append({"concurrency": clients, "requests": len(pool),
                         "ozwell": {k: round(v, 4) for k, v in served.items()},
                         "transformers": {k: round(v, 4) for k, v in floor.items()},
                         "requests_per_s_ratio": round(served["requests_per_s"] / floor["requests_per_s"], 3)})
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for row in rows:
        print(f"{row['concurrency']:3d} concurrent: ozwell {row['ozwell']['requests_per_s']:7.2f} req/s, TTFT p50 "
              f"{row['ozwell']['ttft_p50_s'] * 1000:6.1f} ms | transformers {row['transformers']['requests_per_s']:7.2f}"
              f" req/s, TTFT p50 {row['transformers']['ttft_p50_s'] * 1000:6.1f} ms | ratio "
              f"{row['requests_per_s_ratio']:.2f}", flush=True)
    result = {"benchmark": "vision_throughput", "model": str(args.model_dir or f"{args.size} random Gemma 3 VLM"),
              "image": f"{SIZE[0]}x{SIZE[1]} PNG of random pixels, {len(png(0)) / 2**20:.1f} MiB"
                       + (", the same for every request" if args.same_image else ""),
              "max_tokens": args.max_tokens, "device": args.device, "dtype": args.dtype,
              "machine": platform.machine(), "cpus": os.cpu_count(), "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
              # other work on the host skews a small CPU's numbers: the load before the run, and after it
              "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
              "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "vision_throughput.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
