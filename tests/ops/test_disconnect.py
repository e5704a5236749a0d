"""Disconnect: 20 long streams cut by the client mid-way; the engine must drop them and free their KV
blocks within a second."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.ops.conftest import (
    MODEL,
    chat_body,
    engine_gauges,
    metric_samples,
    parse_gauges,
    wait_until_idle,
)

pytestmark = pytest.mark.ops

STREAMS = 20
MAX_TOKENS = 150  # on a 256-token context, with ignore_eos: far more than is read before the cut
CHUNKS_BEFORE_CUT = 3


async def _read_a_little_then_hang_up(client: httpx.AsyncClient, i: int, all_reading: asyncio.Barrier,
                                      cut: asyncio.Event) -> None:
    body = chat_body(f"Disconnect {i}: write a long story.", stream=True, max_tokens=MAX_TOKENS, ignore_eos=True)
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        # An explicit iterator, kept alive: leaving an `async for` early would close the connection at once
        # (the abandoned generator's finaliser closes httpcore's stream), before every stream is reading.
        lines, seen = response.aiter_lines(), 0
        while seen < CHUNKS_BEFORE_CUT:
            line = await anext(lines)
            if line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                seen += 1
        await all_reading.wait()
        await cut.wait()
    # Leaving the block closes the half-read response, and with it its connection.


async def _cut_streams(server) -> tuple[float, dict]:
    """(the time the last stream was closed, the engine's gauges just before the cut)."""
    all_reading, cut = asyncio.Barrier(STREAMS + 1), asyncio.Event()
    limits = httpx.Limits(max_connections=STREAMS + 2, max_keepalive_connections=STREAMS + 2)
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers, limits=limits,
                                 timeout=httpx.Timeout(60)) as client:
        streams = asyncio.gather(*(_read_a_little_then_hang_up(client, i, all_reading, cut) for i in range(STREAMS)))
        await all_reading.wait()
        text = (await client.get("/metrics")).text
        cut.set()
        await streams
        return time.perf_counter(), text


def test_20_streams_cut_mid_way_free_their_blocks_within_a_second(ops_server):
    length_key = ("ozwell:request_success_total", (("finished_reason", "length"), ("model_name", MODEL)))
    tokens_key = ("ozwell:generation_tokens_total", (("model_name", MODEL),))
    wait_until_idle(ops_server, within_s=10)  # start from an idle engine
    before = metric_samples(ops_server)

    cut_at, metrics_text = asyncio.run(_cut_streams(ops_server))
    mid_way = parse_gauges(metrics_text)
    # The cut really is mid-way: all 20 were still in the engine, holding KV blocks.
    assert mid_way["num_requests_running"] + mid_way["num_requests_waiting"] == STREAMS, mid_way
    assert mid_way["kv_cache_blocks_used"] > 0, mid_way
    took, gauges = wait_until_idle(ops_server, within_s=5, since=cut_at)
    print(f"idle {took:.3f}s after the cut; {gauges}")
    assert gauges["num_requests_running"] == 0 and gauges["num_requests_waiting"] == 0, gauges
    assert gauges["kv_cache_blocks_used"] == 0, gauges
    assert took < 1.0

    after = metric_samples(ops_server)
    # The cut really was mid-way: no stream ran to its length, and far fewer tokens than 20 x 150 were made.
    assert after.get(length_key, 0) - before.get(length_key, 0) == 0
    generated = after[tokens_key] - before.get(tokens_key, 0)
    print(f"{generated:.0f} tokens generated before the cut")
    assert STREAMS * CHUNKS_BEFORE_CUT <= generated < STREAMS * MAX_TOKENS / 2, generated
    assert engine_gauges(ops_server)["kv_cache_blocks_used"] == 0
