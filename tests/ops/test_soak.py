"""Soak: 2,000 sequential requests over one keep-alive connection; the server's RSS must not grow."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.ops.conftest import chat_body, wait_until_idle

pytestmark = pytest.mark.ops

WARMUP = 200
REQUESTS = 2000
MAX_GROWTH_BYTES = 50 * 1024 * 1024


def _send(client: httpx.Client, i: int) -> None:
    # Varied prompts and lengths, so that prompts, block allocation and the prefix cache all move.
    response = client.post("/v1/chat/completions", json=chat_body(
        f"Request {i}: {'the quick brown fox ' * (i % 7)}", max_tokens=1 + i % 4, ignore_eos=True))
    assert response.status_code == 200, (i, response.text)
    assert response.json()["usage"]["completion_tokens"] == 1 + i % 4


def test_2000_sequential_requests_keep_rss_flat(ops_server):
    with httpx.Client(base_url=ops_server.url, headers=ops_server.headers, timeout=30) as client:
        for i in range(WARMUP):
            _send(client, i)
        baseline = ops_server.rss_bytes()
        started = time.perf_counter()
        peak = baseline
        for i in range(REQUESTS):
            _send(client, WARMUP + i)
            if i % 100 == 99:
                peak = max(peak, ops_server.rss_bytes())
        elapsed = time.perf_counter() - started
    final = ops_server.rss_bytes()
    growth = max(peak, final) - baseline
    print(f"soak: {REQUESTS} requests in {elapsed:.1f}s ({elapsed / REQUESTS * 1000:.1f} ms each); RSS "
          f"{baseline / 2**20:.1f} MiB after warm-up, peak {max(peak, final) / 2**20:.1f} MiB, "
          f"growth {growth / 2**20:.1f} MiB")
    assert growth < MAX_GROWTH_BYTES
    _, gauges = wait_until_idle(ops_server, within_s=5)
    assert gauges["kv_cache_blocks_used"] == 0 and gauges["num_requests_running"] == 0, gauges
