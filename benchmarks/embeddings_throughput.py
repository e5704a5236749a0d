"""Embeddings throughput: /v1/embeddings under 1, 8 and 32 concurrent clients, each request carrying 16
sentences, against a direct SentenceTransformer.encode of the same sentences in the same run.

    python benchmarks/embeddings_throughput.py [--clients 1 8 32] [--requests-per-client 8] [--out benchmarks/results]

It starts `ozwell serve` with the shipped all-minilm-l6-v2 config on a free loopback port, sends
base64 requests as the openai SDK does, and prints inputs/s and the ratio to direct encode.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from ozwell_server import ROOT, free_port, start_server

CONFIG = ROOT / "model_configs" / "all-minilm-l6-v2.yaml"
SENTENCES_PER_REQUEST = 16
TOPICS = ["the sea", "a small model", "numbers", "the city at night", "a long train journey", "coffee", "rain"]


def sentences(count: int) -> list[str]:
    # Varied lengths (5 to ~40 words), as real inputs are.
    return [f"Sentence {i} is about {TOPICS[i % len(TOPICS)]}" + " and more words" * (i % 12) + "."
            for i in range(count)]


async def http_run(url: str, key: str, clients: int, requests_per_client: int, pool: list[str]) -> float:
    import httpx

    async def client(c: int, http: httpx.AsyncClient) -> None:
        for r in range(requests_per_client):
            start = ((c * requests_per_client + r) * SENTENCES_PER_REQUEST) % (len(pool) - SENTENCES_PER_REQUEST)
            response = await http.post("/v1/embeddings", json={
                "model": "text-embedding-3-small", "input": pool[start:start + SENTENCES_PER_REQUEST],
                "encoding_format": "base64"})
            response.raise_for_status()
            assert len(response.json()["data"]) == SENTENCES_PER_REQUEST

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits,
                                 headers={"Authorization": f"Bearer {key}"}) as http:
        await client(0, http)  # warm-up
        started = time.perf_counter()
        await asyncio.gather(*(client(c, http) for c in range(clients)))
        elapsed = time.perf_counter() - started
    return clients * requests_per_client * SENTENCES_PER_REQUEST / elapsed


def direct_run(model, pool: list[str], total: int, batch_size: int) -> float:
    inputs = [pool[i % len(pool)] for i in range(total)]
    model.encode(inputs[:batch_size], batch_size=batch_size, normalize_embeddings=True)  # warm-up
    started = time.perf_counter()
    model.encode(inputs, batch_size=batch_size, normalize_embeddings=True)
    return total / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests-per-client", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from sentence_transformers import SentenceTransformer

    from engines.config import load_model_config
    from engines.sources import locate

    config = load_model_config(CONFIG)
    max_batch = config.embedding.max_batch_size
    workdir = Path(tempfile.mkdtemp(prefix="ozwell-bench-"))
    (workdir / "configs").mkdir()
    shutil.copy(CONFIG, workdir / "configs" / CONFIG.name)
    pool = sentences(1024)
    port = free_port()
    server = start_server(port, workdir / "configs", workdir / "data")
    key = (workdir / "data" / "admin_key").read_text().strip()  # made at first start, enterprise limits
    rows = []
    try:
        model = SentenceTransformer(str(locate(config, workdir / "data").directory), device="cpu")
        for clients in args.clients:
            total = clients * args.requests_per_client * SENTENCES_PER_REQUEST
            batch_size = min(clients * SENTENCES_PER_REQUEST, max_batch)
            print(f"{clients} clients: {total} sentences ...", flush=True)
            served = asyncio.run(http_run(f"http://127.0.0.1:{port}", key, clients, args.requests_per_client, pool))
            direct = direct_run(model, pool, total, batch_size)
            rows.append({"clients": clients, "server_inputs_per_s": round(served, 1),
                         "direct_encode_inputs_per_s": round(direct, 1), "direct_batch_size": batch_size,
                         "ratio": round(served / direct, 3)})
            print(f"  server {served:7.1f}/s   direct encode (batch {batch_size}) {direct:7.1f}/s   "
                  f"ratio {served / direct:.3f}", flush=True)
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)
    result = {"benchmark": "embeddings_throughput", "model": config.id, "machine": platform.machine(),
              "cpus": os.cpu_count(), "sentences_per_request": SENTENCES_PER_REQUEST,
              "max_batch_size": max_batch, "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "embeddings_throughput.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
