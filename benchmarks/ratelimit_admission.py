"""What the shared rate limiter costs a request: the limiter's whole part in one chat request (count the
request, read the token window, reserve a lower bound, resize it to the exact need, settle at the end),
with the in-memory limiter and with Redis (a redis-server it starts on loopback), one request at a time
and with many at once. p50 and p99 per request, in milliseconds.

    python benchmarks/ratelimit_admission.py [--requests 2000] [--concurrency 1 32]

Results go to benchmarks/results/ratelimit_admission.json. Needs redis-server (apt-get install redis-server)
and the `scale` extra.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.ratelimit import InMemoryRateLimiter  # noqa: E402
from server.ratelimit_redis import RedisRateLimiter  # noqa: E402
from tests.scaleout.servers import Redis  # noqa: E402


async def one_request(limiter, key: str) -> float:
    started = time.perf_counter()
    await limiter.hit_request(key, 10**9)
    await limiter.tokens_state(key, 10**9)
    _, held = await limiter.reserve_tokens(key, 10**9, 20)
    await limiter.resize(held, 10**9, 300)
    await limiter.reconcile(held, 120)
    return time.perf_counter() - started


async def measure(limiter, requests: int, concurrency: int) -> dict:
    keys = [f"key_{i % 16}" for i in range(requests)]  # 16 keys, as from several clients
    for key in keys[:50]:
        await one_request(limiter, key)  # warm: connections open, script loaded
    times: list[float] = []
    queue = iter(keys)

    async def worker():
        for key in queue:
            times.append(await one_request(limiter, key))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    times.sort()
    return {"p50_ms": round(statistics.median(times) * 1000, 3),
            "p99_ms": round(times[int(len(times) * 0.99) - 1] * 1000, 3),
            "requests_per_s": round(requests / wall)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    args = parser.parse_args()
    redis = Redis(Path(tempfile.mkdtemp())).start()
    results = {"machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, redis on loopback",
               "requests": args.requests, "runs": []}
    try:
        for concurrency in args.concurrency:
            for name in ("in-memory", "redis"):
                async def run():
                    limiter = InMemoryRateLimiter() if name == "in-memory" else RedisRateLimiter(redis.url)
                    try:
                        return await measure(limiter, args.requests, concurrency)
                    finally:
                        if name == "redis":
                            await limiter.close()

                row = {"limiter": name, "concurrency": concurrency, **asyncio.run(run())}
                results["runs"].append(row)
                print(json.dumps(row), flush=True)
    finally:
        redis.stop()
    out = ROOT / "benchmarks" / "results" / "ratelimit_admission.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
