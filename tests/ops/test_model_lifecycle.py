"""Models loaded and unloaded at run time (issue #36), on a real `ozwell serve` process.

One server serves two tiny Llamas (different weights) with `--lazy` and a host memory budget (`--memory-gib`) that
holds one of them, not both: the second load evicts the idle first; with the first busy, the second gets 503 with
Retry-After; an unload during a stream lets it finish; two loads of one model at once load it once; a reload with a
broken YAML changes nothing. A second server unloads its embedding model after its keep_alive, and its RSS drops.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.conftest import CHATML_TEMPLATE, write_config
from tests.process import ROOT, ServerProcess
from tests.tiny_models import (
    build_tiny_llama,
    build_tiny_tokenizer,
    minilm_config,
    native_chat_config,
)

pytestmark = pytest.mark.ops
MIB = 2**20
KV_GIB = 0.004  # the two Llamas' KV budget together: 2 MiB each


@pytest.fixture(scope="module")
def lazy_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("lazy")
    tokenizer = build_tiny_tokenizer(root / "tokenizer", CHATML_TEMPLATE)
    for seed, name in enumerate(("lazy-a", "lazy-b")):
        weights = build_tiny_llama(root / name, tokenizer, seed=seed, max_position_embeddings=2048)
        write_config(root / "configs", name, native_chat_config(name, weights, max_model_len=2048, max_num_seqs=4))
    weights_bytes = sum(p.stat().st_size for p in (root / "lazy-a").glob("*.safetensors"))
    # room for one model (its weights and its 2 MiB KV share) and a half, never two
    budget_gib = 1.5 * (weights_bytes + KV_GIB / 2 * 2**30) / 2**30
    server = ServerProcess(root / "configs", root / "data", "--lazy", "--kv-cache-gib", str(KV_GIB),
                           "--memory-gib", f"{budget_gib:.6f}").start()
    server.root = root
    server.weights = {name: root / name for name in ("lazy-a", "lazy-b")}
    try:
        yield server
    finally:
        server.stop()


def chat(server, model: str, max_tokens: int = 24, **extra) -> httpx.Response:
    return httpx.post(server.url + "/v1/chat/completions", headers=server.headers, timeout=120, json={
        "model": model, "messages": [{"role": "user", "content": "Count with me"}], "max_tokens": max_tokens,
        "temperature": 0, **extra})


def states(server) -> dict[str, str]:
    response = httpx.get(server.url + "/v1/admin/models", headers=server.headers, timeout=30)
    assert response.status_code == 200, response.text
    return {m["id"]: m["state"] for m in response.json()["data"]}


def loads_logged(server, model: str) -> int:
    return sum(f"loading {model} " in line for line in server.lines)


def stream_in_thread(server, model: str, max_tokens: int, first_chunk: threading.Event, out: dict) -> threading.Thread:
    """A greedy stream of exactly `max_tokens` (ignore_eos), read whole; `first_chunk` is set when it starts."""
    def run():
        text, finish, chunks = "", None, 0
        body = {"model": model, "messages": [{"role": "user", "content": "Go on"}], "max_tokens": max_tokens,
                "temperature": 0, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
        with httpx.stream("POST", server.url + "/v1/chat/completions", headers=server.headers, json=body,
                          timeout=300) as response:
            out["status"] = response.status_code
            for line in response.iter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                chunks += 1
                first_chunk.set()
                if chunk.get("usage"):
                    out["usage"] = chunk["usage"]
                for choice in chunk.get("choices", []):
                    text += choice["delta"].get("content") or ""
                    finish = choice.get("finish_reason") or finish
        out.update(text=text, finish=finish, chunks=chunks)
        first_chunk.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_models_load_on_demand_evict_the_idle_one_and_answer_the_same_after_a_reload(lazy_server):
    server = lazy_server
    listed = httpx.get(server.url + "/v1/models", headers=server.headers, timeout=30).json()["data"]
    assert {m["id"]: m["ozwell"]["state"] for m in listed} == {"lazy-a": "unloaded", "lazy-b": "unloaded"}

    first = chat(server, "lazy-a")
    assert first.status_code == 200, first.text
    assert states(server) == {"lazy-a": "loaded", "lazy-b": "unloaded"}
    card = httpx.get(server.url + "/v1/models/lazy-a", headers=server.headers, timeout=30).json()["ozwell"]
    assert card["state"] == "loaded" and card["kv_cache_tokens"] > 0 and card["kv_cache_gib"] == pytest.approx(0.002)

    other = chat(server, "lazy-b")
    assert other.status_code == 200, other.text
    assert states(server) == {"lazy-a": "unloaded", "lazy-b": "loaded"}  # the budget holds one: a was evicted
    assert any("unloaded (to make room for lazy-b)" in line for line in server.lines)

    again = chat(server, "lazy-a")
    assert again.status_code == 200, again.text
    assert again.json()["choices"][0]["message"]["content"] == first.json()["choices"][0]["message"]["content"]
    assert states(server) == {"lazy-a": "loaded", "lazy-b": "unloaded"}


def test_with_the_loaded_model_busy_another_gets_503_with_retry_after_and_the_stream_loses_nothing(lazy_server):
    server = lazy_server
    assert chat(server, "lazy-a").status_code == 200  # a is loaded (and b is not)
    started, out = threading.Event(), {}
    thread = stream_in_thread(server, "lazy-a", 1500, started, out)
    assert started.wait(120)
    refused = chat(server, "lazy-b")
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "model_capacity" and int(refused.headers["retry-after"]) > 0
    thread.join(300)
    assert out["status"] == 200 and out["finish"] == "length" and out["usage"]["completion_tokens"] == 1500
    assert chat(server, "lazy-b").status_code == 200  # a is idle again: evicted for b


def test_an_unload_during_a_stream_lets_it_finish_then_frees_the_model(lazy_server):
    server = lazy_server
    assert chat(server, "lazy-a").status_code == 200
    started, out = threading.Event(), {}
    thread = stream_in_thread(server, "lazy-a", 1000, started, out)
    assert started.wait(120)
    unloaded = httpx.post(server.url + "/v1/admin/models/lazy-a/unload", headers=server.headers, timeout=300)
    assert unloaded.status_code == 200 and unloaded.json()["state"] == "unloaded"
    thread.join(300)
    assert out["status"] == 200 and out["finish"] == "length" and out["usage"]["completion_tokens"] == 1000
    assert states(server)["lazy-a"] == "unloaded"


def test_two_requests_for_an_unloaded_model_load_it_once(lazy_server):
    server = lazy_server
    httpx.post(server.url + "/v1/admin/models/lazy-a/unload", headers=server.headers, timeout=300)
    httpx.post(server.url + "/v1/admin/models/lazy-b/unload", headers=server.headers, timeout=300)
    before = loads_logged(server, "lazy-a")
    results = [None, None]

    def ask(i):
        results[i] = chat(server, "lazy-a")

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert [r.status_code for r in results] == [200, 200]
    assert loads_logged(server, "lazy-a") == before + 1


def test_a_reload_with_a_broken_config_changes_nothing_and_a_good_one_adds_the_model(lazy_server):
    server = lazy_server
    assert chat(server, "lazy-a").status_code == 200
    before = states(server)
    broken = write_config(server.root / "configs", "broken", "id: broken\ntask: chat\nengine: transformers\n"
                                                             "source: /x\nmax_num_seqs: lots\n")
    refused = httpx.post(server.url + "/v1/admin/models/reload", headers=server.headers, timeout=60)
    assert refused.status_code == 400, refused.text
    message = refused.json()["error"]["message"]
    assert "broken.yaml" in message and "max_num_seqs" in message
    assert states(server) == before
    broken.unlink()
    write_config(server.root / "configs", "lazy-c", native_chat_config("lazy-c", server.weights["lazy-b"],
                                                                       max_model_len=2048, max_num_seqs=4))
    reloaded = httpx.post(server.url + "/v1/admin/models/reload", headers=server.headers, timeout=300)
    assert reloaded.status_code == 200, reloaded.text
    assert reloaded.json()["changes"]["added"] == ["lazy-c"]
    assert states(server)["lazy-a"] == before["lazy-a"] and states(server)["lazy-c"] == "unloaded"
    assert chat(server, "lazy-c").status_code == 200


def test_the_cli_loads_and_unloads_on_the_running_server(lazy_server):
    server = lazy_server
    env = {**os.environ, "OZWELL_API_KEY": server.key}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "server.cli", "models", *args, "--url", server.url], cwd=ROOT,
                              env=env, check=False, capture_output=True, text=True, timeout=300)

    unloaded = cli("unload", "lazy-a")
    assert unloaded.returncode == 0 and "lazy-a: unloaded" in unloaded.stdout, unloaded.stderr
    loaded = cli("load", "lazy-a")
    assert loaded.returncode == 0 and "lazy-a: loaded" in loaded.stdout, loaded.stderr
    status = cli("status")
    assert status.returncode == 0 and "lazy-a\tloaded" in status.stdout
    missing = cli("load", "no-such-model")
    assert missing.returncode == 1 and "404" in missing.stderr


def test_keep_alive_unloads_an_idle_model_and_its_memory_goes_back(tmp_path):
    write_config(tmp_path / "configs", "minilm", minilm_config("minilm") + "keep_alive: 3s\n")
    server = ServerProcess(tmp_path / "configs", tmp_path / "data").start()
    try:
        response = httpx.post(server.url + "/v1/embeddings", headers=server.headers, timeout=60,
                              json={"model": "minilm", "input": ["a sentence to embed"] * 16})
        assert response.status_code == 200, response.text
        held = httpx.get(server.url + "/v1/admin/models", headers=server.headers, timeout=30).json()["data"][0]
        assert held["state"] == "loaded" and held["memory_bytes"] > 40 * MIB
        loaded_rss = server.rss_bytes()
        deadline = time.time() + 30
        while states(server)["minilm"] != "unloaded" and time.time() < deadline:
            time.sleep(0.5)
        assert states(server)["minilm"] == "unloaded"
        assert any("unloaded (idle for 3s (keep_alive))" in line for line in server.lines)
        # the weights (about 87 MiB in float32) go back to the system: at least half of them leave the RSS
        assert server.rss_bytes() < loaded_rss - held["memory_bytes"] // 2, (loaded_rss, server.rss_bytes())
        again = httpx.post(server.url + "/v1/embeddings", headers=server.headers, timeout=60,
                           json={"model": "minilm", "input": "a sentence to embed"})
        assert again.status_code == 200
        # the same weights again (a batch of 16 and one of 1 differ in the last float bits)
        assert again.json()["data"][0]["embedding"] == pytest.approx(response.json()["data"][0]["embedding"],
                                                                     abs=1e-5)
    finally:
        server.stop()


def test_the_log_and_the_model_card_say_what_the_kv_share_holds(lazy_server):
    assert chat(lazy_server, "lazy-a").status_code == 200
    card = httpx.get(lazy_server.url + "/v1/models/lazy-a", headers=lazy_server.headers, timeout=30).json()
    tokens = card["ozwell"]["kv_cache_tokens"]
    # 2 MiB for a float32 Llama of 2 layers x 2 KV heads x 16 dims (256 bytes a token for K and V, or 128 in
    # bfloat16 where the KV dtype halves it): 8,192 or 16,384 tokens, cut to max_num_seqs x max_model_len = 8,192
    assert tokens == 8192
    assert any(f"KV cache {tokens} tokens" in line and "lazy-a" in line for line in lazy_server.lines)
