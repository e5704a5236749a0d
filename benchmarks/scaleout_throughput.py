"""Requests/s through one replica against two, on a tiny random-weight Llama on the CPU, both times with
PostgreSQL and Redis (started here on loopback, as in tests/scaleout). Concurrent clients send short
greedy chat requests (max_tokens with ignore_eos), spread over the replicas round-robin, as a load
balancer would. On one machine the replicas share its cores, so this shows the overhead of the shared
stores and the fleet's correctness under load more than scaling; on separate boxes or GPUs each replica
brings its own compute.

    python benchmarks/scaleout_throughput.py [--requests 200] [--clients 16] [--max-tokens 8]

Results go to benchmarks/results/scaleout_throughput.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from ozwell_server import ROOT

from tests.conftest import CHATML_TEMPLATE
from tests.process import ServerProcess
from tests.scaleout.servers import Postgres, Redis
from tests.tiny_models import build_tiny_llama, build_tiny_tokenizer, native_chat_config

MODEL = "bench-llama"


async def load(urls: list[str], key: str, requests: int, clients: int, max_tokens: int) -> dict:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "count to ten"}], "max_tokens": max_tokens,
            "ignore_eos": True, "temperature": 0}
    latencies: list[float] = []
    failures = 0
    counter = iter(range(requests))

    async def client(http: httpx.AsyncClient):
        nonlocal failures
        for i in counter:
            started = time.perf_counter()
            response = await http.post(urls[i % len(urls)] + "/v1/chat/completions", json=body,
                                       headers={"Authorization": f"Bearer {key}"})
            latencies.append(time.perf_counter() - started)
            failures += response.status_code != 200

    async with httpx.AsyncClient(timeout=120) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - started
    latencies.sort()
    return {"requests_per_s": round(requests / wall, 1), "p50_ms": round(statistics.median(latencies) * 1000, 1),
            "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 1), "failures": failures}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=8)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ozwell-bench-"))
    tokenizer = build_tiny_tokenizer(root / "tokenizer", CHATML_TEMPLATE)
    llama = build_tiny_llama(root / "llama", tokenizer)
    (root / "configs").mkdir()
    (root / "configs" / f"{MODEL}.yaml").write_text(native_chat_config(MODEL, llama, max_model_len=256,
                                                                       max_num_seqs=32, max_waiting=512))
    postgres, redis = Postgres().start(), Redis(root / "redis").start()
    results = {"machine": f"{platform.machine()}, {platform.processor() or 'cpu'}; replicas share its cores",
               "requests": args.requests, "clients": args.clients, "max_tokens": args.max_tokens, "runs": []}
    replicas, key = [], None
    try:
        for count in (1, 2):
            replicas = [ServerProcess(root / "configs", root / f"data-{count}-{i}", "--database-url", postgres.url,
                                      "--redis-url", redis.url, "--files-dir", str(root / "files"),
                                      "--log-level", "warning").start() for i in range(count)]
            key = key or next(r.key for r in replicas if (r.data_dir / "admin_key").exists())
            urls = [r.url for r in replicas]
            asyncio.run(load(urls, key, 20, 4, args.max_tokens))  # warm
            row = {"replicas": count, **asyncio.run(load(urls, key, args.requests, args.clients, args.max_tokens))}
            results["runs"].append(row)
            print(json.dumps(row), flush=True)
            for replica in replicas:
                replica.stop()
    finally:
        for replica in replicas:
            replica.stop()
        redis.stop()
        postgres.cleanup()
    out = ROOT / "benchmarks" / "results" / "scaleout_throughput.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
