"""Load: 200 concurrent streaming chat completions against one tiny model, on real sockets."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from tests.ops.conftest import (
    MODEL,
    chat_body,
    engine_gauges,
    metric_samples,
    wait_until_idle,
)

pytestmark = pytest.mark.ops

STREAMS = 200
MAX_TOKENS = 12


async def _one_stream(client: httpx.AsyncClient, i: int) -> dict:
    body = chat_body(f"Stream number {i}: tell me a story.", stream=True, max_tokens=MAX_TOKENS, ignore_eos=True,
                     stream_options={"include_usage": True})
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        lines = [line async for line in response.aiter_lines() if line]
        return {"status": response.status_code, "lines": lines,
                "content_type": response.headers.get("content-type", "")}


async def _all_streams(server) -> list:
    limits = httpx.Limits(max_connections=STREAMS + 10, max_keepalive_connections=STREAMS + 10)
    timeout = httpx.Timeout(120, connect=30)
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers, limits=limits,
                                 timeout=timeout) as client:
        return await asyncio.gather(*(_one_stream(client, i) for i in range(STREAMS)), return_exceptions=True)


def _problems(result) -> list[str]:
    """What is wrong with one stream's result (empty when it is a complete, error-free stream)."""
    if isinstance(result, BaseException):
        return [f"client error: {result!r}"]
    problems = []
    if result["status"] != 200:
        return [f"status {result['status']}: {result['lines'][:3]}"]
    if not result["content_type"].startswith("text/event-stream"):
        problems.append(f"content-type {result['content_type']}")
    lines = result["lines"]
    if not lines or lines[-1] != "data: [DONE]":
        problems.append(f"does not end with [DONE]: {lines[-2:]}")
    payloads = [json.loads(line[len("data: "):]) for line in lines[:-1] if line.startswith("data: {")]
    if len(payloads) != len(lines) - 1:
        problems.append("a line that is not a JSON data event")
    if any("error" in p for p in payloads):
        problems.append(f"error event: {next(p for p in payloads if 'error' in p)}")
    finishes = [c["finish_reason"] for p in payloads for c in p.get("choices", []) if c.get("finish_reason")]
    if finishes != ["length"]:
        problems.append(f"finish reasons {finishes}")
    usage = payloads[-1].get("usage") if payloads else None
    if not usage or usage["completion_tokens"] != MAX_TOKENS:
        problems.append(f"usage {usage}")
    return problems


def test_200_concurrent_streams_all_complete_and_free_every_block(ops_server):
    before = metric_samples(ops_server)
    total_blocks = sum(engine_gauges(ops_server)[g] for g in ("kv_cache_blocks_used", "kv_cache_blocks_free"))
    ok_key = ("ozwell:http_requests_total", (("method", "POST"), ("route", "/v1/chat/completions"),
                                             ("status", "200")))

    started = time.perf_counter()
    results = asyncio.run(_all_streams(ops_server))
    elapsed = time.perf_counter() - started

    failures = {i: p for i, p in ((i, _problems(r)) for i, r in enumerate(results)) if p}
    assert not failures, f"{len(failures)} of {STREAMS} streams failed, e.g. {list(failures.items())[:3]}"

    # Every block is free again, nothing runs or waits, and the server counted 200 successful requests.
    took, gauges = wait_until_idle(ops_server, within_s=5)
    assert gauges["num_requests_running"] == 0 and gauges["num_requests_waiting"] == 0, gauges
    assert gauges["kv_cache_blocks_used"] == 0 and gauges["kv_cache_blocks_free"] == total_blocks, gauges
    tokens_key = ("ozwell:generation_tokens_total", (("model_name", MODEL),))
    deadline = time.monotonic() + 5  # the access counter is bumped when the middleware closes the response
    while True:
        after = metric_samples(ops_server)
        counted = after.get(ok_key, 0) - before.get(ok_key, 0)
        if counted >= STREAMS or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert counted == STREAMS
    assert after[tokens_key] - before.get(tokens_key, 0) == STREAMS * MAX_TOKENS
    print(f"{STREAMS} streams in {elapsed:.1f}s; idle {took:.2f}s after the last one")
