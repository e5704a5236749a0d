"""What a running batch costs interactive requests: time to first token (TTFT) of interactive chat streams on an
idle server, then while a large batch runs on the same model, in one run.

    python benchmarks/batch_interference.py [--model smollm2-135m-instruct] [--interactive 24] [--lines 600]
                                            [--batch-max-tokens 16] [--concurrency 16] [--share S]

It starts `ozwell serve` with the shipped config of `--model` (its `batch_token_share` set to `--share`,
`--batch-concurrency` to `--concurrency`), measures the TTFT of `--interactive` streamed chat requests sent one
after another (max_tokens 16), uploads a batch of `--lines` chat lines (max_tokens `--batch-max-tokens`,
ignore_eos) and measures the same requests again while it runs; then it reports both p50s, their ratio (the
issue's target: at most 1.5x), and the batch's lines per second while interactive requests came and went.
Results go to benchmarks/results/batch_interference.json.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from ozwell_server import ROOT, free_port, start_server


def ttft(http: httpx.Client, model: str, i: int) -> float:
    body = {"model": model, "messages": [{"role": "user", "content": f"Say something about the number {i}."}],
            "max_tokens": 16, "temperature": 0, "stream": True}
    started = time.perf_counter()
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                delta = json.loads(line[6:])["choices"][0]["delta"]
                if delta.get("content"):
                    return time.perf_counter() - started
    raise RuntimeError("the stream sent no content")


def measure(http: httpx.Client, model: str, count: int, offset: int) -> list[float]:
    values = []
    for i in range(count):
        values.append(ttft(http, model, offset + i))
        time.sleep(0.2)  # interactive traffic comes and goes; it is not a second batch
    return values


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--interactive", type=int, default=24)
    parser.add_argument("--lines", type=int, default=600)
    parser.add_argument("--batch-max-tokens", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--share", type=float, default=None, help="batch_token_share (default: the config's)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ozwell-batch-bench-"))
    configs = work / "configs"
    configs.mkdir()
    source = (ROOT / "model_configs" / f"{args.model}.yaml").read_text()
    share = "" if args.share is None else f"\nbatch_token_share: {args.share}\n"
    (configs / f"{args.model}.yaml").write_text(source + share)
    for extra in (ROOT / "model_configs").glob("*.jinja"):
        (configs / extra.name).write_text(extra.read_text())
    # The shipped data dir holds the dequantised weights already; a fresh one would convert them again.
    data_dir = ROOT / ".ozwell"
    port = free_port()
    server = start_server(port, configs, data_dir, "--batch-concurrency", str(args.concurrency))
    try:
        key = (data_dir / "admin_key").read_text().strip()
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"},
                            timeout=600)
        measure(http, args.model, 3, 10_000)  # warm-up
        idle = measure(http, args.model, args.interactive, 0)
        print(f"idle: TTFT p50 {statistics.median(idle) * 1000:.0f} ms", flush=True)

        lines = [{"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
                  "body": {"model": args.model, "messages": [{"role": "user", "content": f"Describe item {i}."}],
                           "max_tokens": args.batch_max_tokens, "ignore_eos": True, "temperature": 0}}
                 for i in range(args.lines)]
        text = "".join(json.dumps(line) + "\n" for line in lines).encode()
        file_id = http.post("/v1/files", files={"file": ("bench.jsonl", io.BytesIO(text))},
                            data={"purpose": "batch"}).raise_for_status().json()["id"]
        batch = http.post("/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                                               "completion_window": "24h"}).raise_for_status().json()
        while (state := http.get(f"/v1/batches/{batch['id']}").json())["request_counts"]["completed"] < 2:
            time.sleep(0.2)
        started, done_before = time.perf_counter(), state["request_counts"]["completed"]
        busy = measure(http, args.model, args.interactive, 0)
        elapsed = time.perf_counter() - started
        state = http.get(f"/v1/batches/{batch['id']}").json()
        still_running = state["status"] == "in_progress"
        lines_per_s = (state["request_counts"]["completed"] - done_before) / elapsed
        http.post(f"/v1/batches/{batch['id']}/cancel")
    finally:
        server.terminate()
        server.wait(60)

    result = {
        "machine": f"{platform.processor() or platform.machine()}, {_cpu_flags()}",
        "model": args.model, "concurrency": args.concurrency,
        "batch_token_share": "config default" if args.share is None else args.share,
        "interactive_requests": args.interactive,
        "ttft_idle_p50_ms": round(statistics.median(idle) * 1000, 1),
        "ttft_busy_p50_ms": round(statistics.median(busy) * 1000, 1),
        "ttft_p50_ratio": round(statistics.median(busy) / statistics.median(idle), 2),
        "ttft_idle_max_ms": round(max(idle) * 1000, 1), "ttft_busy_max_ms": round(max(busy) * 1000, 1),
        "batch_lines_per_s_while_interactive": round(lines_per_s, 2),
        "batch_still_running_at_the_end": still_running,
    }
    print(json.dumps(result, indent=2))
    out = ROOT / "benchmarks" / "results" / "batch_interference.json"
    runs = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps([*runs, result], indent=2) + "\n")


def _cpu_flags() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0]
    except (OSError, IndexError):
        return "unknown CPU flags"
    return "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"


if __name__ == "__main__":
    main()
