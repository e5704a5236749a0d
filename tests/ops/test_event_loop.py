"""The event loop stays free: /health answers within 100 ms while a hostile 1 MB prompt is processed
(it ends in 400 context_length_exceeded).

Why this needed a fix (py-spy --gil, 2026-11-25): the Rust encode releases the GIL, but building the
Python id lists (transformers' `_convert_encoding`) and dropping a ~450k-token `tokenizers.Encoding` held
it for 20-110 ms in single C calls, so the loop stalled that long although the work ran in a thread.
Engines now tokenize a long text by a prefix first (`GenerationEngine.bounded_tokenize`) and refuse it
when the prefix alone is over the context, so the megabyte is never turned into Python ids."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.ops.conftest import chat_body

pytestmark = pytest.mark.ops

PROMPT_BYTES = 1024 * 1024
POLL_EVERY_S = 0.02
MAX_HEALTH_LATENCY_S = 0.1


def _hostile_prompt() -> str:
    # Many short, varied words: the slowest kind of text for this BPE tokenizer (about 2 s for 1 MB here).
    words = ("hello world the quick brown fox jumps over lazy dogs café 東京 🚀 12345 "
             "once upon a time there was a small model that wrote stories about numbers ")
    return (words * (PROMPT_BYTES // len(words) + 1))[:PROMPT_BYTES]


def test_health_answers_within_100ms_while_a_1mb_prompt_is_processed(ops_server):
    # Encoded up front, so that the client's own JSON work does not land in the probes' timings.
    body = json.dumps(chat_body(_hostile_prompt(), max_tokens=4)).encode()
    outcome: dict = {}

    def send_big_request():
        with httpx.Client(base_url=ops_server.url, headers=ops_server.headers, timeout=120) as client:
            outcome["started"] = time.perf_counter()
            outcome["response"] = client.post("/v1/chat/completions", content=body,
                                              headers={"content-type": "application/json"})
            outcome["ended"] = time.perf_counter()

    latencies = []
    with httpx.Client(base_url=ops_server.url, timeout=10) as probe:
        assert probe.get("/health").status_code == 200  # the connection is open before the clock starts
        sender = threading.Thread(target=send_big_request)
        sender.start()
        while True:  # at least one probe, however fast the refusal
            started = time.perf_counter()
            response = probe.get("/health")
            latencies.append(time.perf_counter() - started)
            assert response.status_code == 200 and response.json() == {"status": "ok"}
            if not sender.is_alive():
                break
            time.sleep(POLL_EVERY_S)
        sender.join()

    response = outcome["response"]
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "context_length_exceeded"), error
    took = outcome["ended"] - outcome["started"]
    print(f"1 MB prompt refused after {took:.2f}s; {len(latencies)} health probes, max "
          f"{max(latencies) * 1000:.1f} ms, mean {sum(latencies) / len(latencies) * 1000:.1f} ms")
    # The probes covered the whole request, one every 20 ms (plus its own answer time) at the least.
    assert len(latencies) >= took / (POLL_EVERY_S + MAX_HEALTH_LATENCY_S)
    assert max(latencies) < MAX_HEALTH_LATENCY_S, sorted(latencies)[-5:]
