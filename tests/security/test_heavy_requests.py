"""Findings 2 and 9: work that grows with the input ran before admission, on the thread pool that key
lookups use.

Six Responses requests of 2,000 one-word turns with truncation=auto now run beside another owner's
`GET /v1/models`, which answers in under a second throughout; truncation renders a few times instead
of once per dropped turn. A prompt list of 100,000 entries is refused before any of it is tokenized."""

from __future__ import annotations

import concurrent.futures
import time

import pytest

from tests.security.conftest import MODEL, assert_error, cli_key, client

pytestmark = pytest.mark.security

TURNS = 2000


def _long_conversation(i: int) -> dict:
    turns = [{"role": "user" if t % 2 == 0 else "assistant", "content": f"word{i}x{t}"} for t in range(TURNS - 1)]
    turns.append({"role": "user", "content": "And now?"})
    return {"model": MODEL, "input": turns, "truncation": "auto", "max_output_tokens": 16, "store": False}


def test_models_answers_within_a_second_while_six_2000_turn_truncations_run(sec_server):
    other = cli_key(sec_server, "--name", "bystander", "--owner", "bystander", "--plan", "pro")
    latencies = []
    with client(sec_server, timeout=300) as heavy, client(sec_server, other) as light, \
            concurrent.futures.ThreadPoolExecutor(6) as pool:
        started = time.perf_counter()
        replies = [pool.submit(heavy.post, "/v1/responses", json=_long_conversation(i)) for i in range(6)]
        while not all(r.done() for r in replies):
            begun = time.perf_counter()
            assert light.get("/v1/models").status_code == 200
            latencies.append(time.perf_counter() - begun)
            time.sleep(0.05)
        took = time.perf_counter() - started
        for reply in replies:
            response = reply.result()
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["status"] in ("completed", "incomplete")
            # Kept what fits: close to the 2,048-token context, less the 16 of output.
            assert 1500 < body["usage"]["input_tokens"] <= 2048 - 16
    assert latencies and max(latencies) < 1.0, (max(latencies), len(latencies))
    assert took < 60, took


def test_a_prompt_list_of_100000_is_refused_before_tokenizing(sec_server):
    prompts = [f"prompt number {i}" for i in range(100_000)]
    free = cli_key(sec_server, "--name", "free-lister", "--owner", "free-lister", "--plan", "free")
    with client(sec_server) as admin, client(sec_server, free) as free_client:
        begun = time.perf_counter()
        # The admin key's token budget would allow it; the engine's queue is checked first.
        assert_error(admin.post("/v1/completions", json={"model": MODEL, "prompt": prompts, "max_tokens": 1}), 429,
                     code="engine_overloaded")
        # A free key (10,000 tokens/min) is refused on its lower bound of tokens.
        few = prompts[:200]
        reply = free_client.post("/v1/completions", json={"model": MODEL, "prompt": few, "max_tokens": 100})
        assert_error(reply, 429)
        assert reply.json()["error"]["type"] == "tokens" and reply.headers["retry-after"]
        assert time.perf_counter() - begun < 5
        # The refusal held nothing back: a small request of the same key still passes.
        small = free_client.post("/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 2})
        assert small.status_code == 200, small.text
