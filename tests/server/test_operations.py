"""Operations in process: /metrics, /ready, engine faults, the drain, request ids and limits, the
access log, and the bad-input battery. Real-process tiers (load, soak, SIGTERM, kill -9) are in
tests/ops/ and tests/server/test_shutdown.py."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading

import pytest
import torch
from fastapi.testclient import TestClient

from tests.openapi_schemas import assert_valid
from tests.server.sse import read_sse

HELLO = [{"role": "user", "content": "Hello!"}]


def _error(response, status, code, param=None, error_type="invalid_request_error"):
    assert response.status_code == status, response.text
    body = response.json()
    assert_valid(body, "ErrorResponse")
    assert (body["error"]["type"], body["error"]["code"], body["error"]["param"]) == (error_type, code, param)
    return body["error"]["message"]


def _metric(text: str, name: str, default: float | None = None, **labels) -> float:
    """The value of one sample in Prometheus text (`default` where the series has not started yet)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))  # the exposition sorts labels
    pattern = re.compile(rf"^{re.escape(name)}(\{{{re.escape(wanted)}\}})? (\S+)$" if wanted else
                         rf"^{re.escape(name)} (\S+)$", re.MULTILINE)
    match = pattern.search(text)
    if match is None and default is not None:
        return default
    assert match, f"{name}{{{wanted}}} not in metrics"
    return float(match.groups()[-1])


# ---- /metrics -----------------------------------------------------------------------------------
def test_metrics_count_a_chat_and_read_the_engine(client):
    before = client.get("/metrics")
    assert before.status_code == 200 and before.headers["content-type"].startswith("text/plain")
    prompt_before = _metric(before.text, "ozwell:prompt_tokens_total", 0, model_name="tiny-llama")
    generated_before = _metric(before.text, "ozwell:generation_tokens_total", 0, model_name="tiny-llama")
    ttft_before = _metric(before.text, "ozwell:time_to_first_token_seconds_count", 0, model_name="tiny-llama")
    reply = client.post("/v1/chat/completions", json={"model": "tiny-llama", "messages": HELLO, "max_tokens": 5,
                                                       "ignore_eos": True}).json()
    after = client.get("/metrics").text
    assert _metric(after, "ozwell:prompt_tokens_total", model_name="tiny-llama") - prompt_before == \
        reply["usage"]["prompt_tokens"]
    assert _metric(after, "ozwell:generation_tokens_total", model_name="tiny-llama") - generated_before == 5
    assert _metric(after, "ozwell:time_to_first_token_seconds_count", model_name="tiny-llama") == ttft_before + 1
    assert _metric(after, "ozwell:inter_token_latency_seconds_count", model_name="tiny-llama") >= 4
    assert _metric(after, "ozwell:request_success_total", model_name="tiny-llama", finished_reason="length") >= 1
    assert _metric(after, "ozwell:http_requests_total", route="/v1/chat/completions", method="POST",
                   status="200") >= 1
    # Engine gauges, read at scrape time: nothing is running now and every block is back.
    assert _metric(after, "ozwell:num_requests_running", model_name="tiny-llama") == 0
    assert _metric(after, "ozwell:num_requests_waiting", model_name="tiny-llama") == 0
    assert _metric(after, "ozwell:kv_cache_blocks_used", model_name="tiny-llama") == 0
    assert _metric(after, "ozwell:kv_cache_usage_perc", model_name="tiny-llama") == 0
    assert 0 <= _metric(after, "ozwell:prefix_cache_hit_rate", model_name="tiny-llama") <= 1
    assert _metric(after, "ozwell:engine_healthy", model_name="all-minilm-l6-v2") == 1
    assert _metric(after, "ozwell:avg_generation_throughput_toks_per_s", model_name="tiny-llama") > 0


def test_metrics_report_weight_and_kv_cache_bytes_and_the_process_rss(app, client, registry, tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    text = client.get("/metrics").text
    # The weights: the float32 checkpoint's parameters, packed for the CPU (a tied head may keep its own copy).
    checkpoint = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    float_bytes = sum(p.numel() for p in checkpoint.parameters()) * 4
    weights = _metric(text, "ozwell:weights_bytes", model_name="tiny-llama")
    assert float_bytes / 2 <= weights <= float_bytes * 2, (weights, float_bytes)
    assert _metric(text, "ozwell:weights_bytes", model_name="all-minilm-l6-v2") > 40 * 2**20  # 22.7M float32 params
    # The KV cache: exactly the runner's tensors (the k and v caches, and scales where the cache keeps them).
    runner = registry.resolve("tiny-llama").runner
    cache = [getattr(runner, name, None) for name in ("k_cache", "v_cache", "k_scales", "v_scales")]
    allocated = sum(t.numel() * t.element_size() for t in cache if t is not None)
    assert allocated > 0
    assert _metric(text, "ozwell:kv_cache_bytes", model_name="tiny-llama") == allocated
    assert 'ozwell:kv_cache_bytes{model_name="all-minilm-l6-v2"}' not in text  # an embedding model keeps none
    # The process: its RSS holds at least every model's weights; prometheus_client's process metrics are there too.
    every_weight = sum(_metric(text, "ozwell:weights_bytes", model_name=e.config.id) for e in registry.engines)
    rss = _metric(text, "ozwell:process_resident_memory_bytes")
    assert rss > every_weight
    assert _metric(text, "process_resident_memory_bytes") > every_weight
    # Each configured model's state (issue #36): every model here loads at start.
    assert _metric(text, "ozwell:model_state", model_name="tiny-llama", state="loaded") == 1
    assert _metric(text, "ozwell:model_state", model_name="tiny-llama", state="unloaded") == 0
    # The dashboard's Models page reads the same figures.
    rows = {row["model"]: row for row in app.state.services.models.overview()}
    assert rows["tiny-llama"]["weights_bytes"] == weights and rows["tiny-llama"]["kv_cache_bytes"] == allocated
    assert rows["all-minilm-l6-v2"]["kv_cache_bytes"] is None


def test_metrics_need_an_admin_key(app, client):
    _, plaintext = app.state.services.keys.create(name="metrics-user", plan="pro")
    response = client.get("/metrics", headers={"Authorization": f"Bearer {plaintext}"})
    _error(response, 403, "insufficient_scope", error_type="permission_error")
    _error(client.get("/metrics", headers={"Authorization": ""}), 401, "invalid_api_key",
           error_type="authentication_error")


def test_rate_limit_rejections_are_counted_by_limit(app, client):
    _, plaintext = app.state.services.keys.create(name="metrics-rpm", plan="free", rpm=1)
    start = _metric(client.get("/metrics").text, "ozwell:rate_limit_rejections_total", 0, limit="requests")
    headers = {"Authorization": f"Bearer {plaintext}"}
    assert client.get("/v1/models", headers=headers).status_code == 200
    assert client.get("/v1/models", headers=headers).status_code == 429
    assert _metric(client.get("/metrics").text, "ozwell:rate_limit_rejections_total", limit="requests") == start + 1


# ---- /ready, request ids, the access log ---------------------------------------------------------
def test_ready_lists_every_model_and_needs_no_key(client):
    response = client.get("/ready", headers={"Authorization": ""})
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert set(body["models"]) == {"tiny-llama", "tiny-llama-256", "tiny-short", "tiny-gemma", "all-minilm-l6-v2",
                                   "minilm-matryoshka"}
    assert all(m == {"status": "ok"} for m in body["models"].values())


def test_request_id_is_echoed_or_made(client):
    made = client.get("/v1/models").headers["x-request-id"]
    assert re.fullmatch(r"req_[0-9a-f]{32}", made)
    assert client.get("/v1/models", headers={"x-request-id": "trace-42.a"}).headers["x-request-id"] == "trace-42.a"
    # Something that is not a sane id is replaced, not echoed into the logs or headers.
    replaced = client.get("/v1/models", headers={"x-request-id": "bad id\twith spaces"}).headers["x-request-id"]
    assert replaced.startswith("req_")


def test_one_access_log_line_per_request_without_key_or_prompt(client, admin_key, caplog):
    secret_prompt = "my very private prompt text"
    with caplog.at_level(logging.INFO, logger="ozwell.access"):
        client.post("/v1/chat/completions", headers={"x-request-id": "log-test-1"},
                    json={"model": "gpt-4", "messages": [{"role": "user", "content": secret_prompt}],
                          "max_tokens": 3, "ignore_eos": True})
    lines = [r.getMessage() for r in caplog.records if r.name == "ozwell.access"]
    mine = [json.loads(line) for line in lines if '"log-test-1"' in line]
    assert len(mine) == 1
    entry = mine[0]
    assert entry["status"] == 200 and entry["model"] == "tiny-llama" and entry["completion_tokens"] == 3
    assert entry["prompt_tokens"] > 0 and entry["latency_ms"] > 0
    assert admin_key.startswith(entry["key_prefix"]) and len(entry["key_prefix"]) < len(admin_key)
    assert all(admin_key not in line and secret_prompt not in line for line in lines)


# ---- request limits ----------------------------------------------------------------------------------
def test_body_over_the_limit_is_413_before_parsing(client, app):
    limit = app.state.services.settings.max_body_bytes
    big = b'{"model": "gpt-4", "messages": [' + b" " * limit + b"]}"
    response = client.post("/v1/chat/completions", content=big, headers={"content-type": "application/json"})
    _error(response, 413, "request_too_large")


def test_chunked_body_over_the_limit_is_413(client, app):
    limit = app.state.services.settings.max_body_bytes

    def chunks():
        yield b'{"model": "gpt-4", "messages": ['
        for _ in range(limit // (1 << 16) + 2):
            yield b" " * (1 << 16)
        yield b"]}"

    response = client.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
    _error(response, 413, "request_too_large")


def test_too_many_headers_are_431(client):
    headers = {f"x-filler-{i}": "1" for i in range(120)}
    _error(client.get("/v1/models", headers=headers), 431, "request_headers_too_large")


def test_a_10_kb_header_is_431_even_on_public_paths(client):
    _error(client.get("/health", headers={"x-big": "a" * 10_240}), 431, "request_headers_too_large")


# ---- the bad-input battery ------------------------------------------------------------------------------
_BATTERY = [
    # (what, body or raw bytes, extra headers, status, code, param, type)
    ("invalid JSON", b'{"model": "gpt-4", "messages": [', None, 400, "invalid_json", None, None),
    ("a JSON array body", [{"model": "gpt-4"}], None, 400, "invalid_value", None, None),
    ("invalid UTF-8", b'{"model": "gpt-4", "messages": [{"role": "user", "content": "\xff\xfe"}]}', None, 400,
     "invalid_json", None, None),
    ("wrong type", {"model": "gpt-4", "messages": HELLO, "max_tokens": "many"}, None, 400, "invalid_value",
     "max_tokens", None),
    ("huge n", {"model": "gpt-4", "messages": HELLO, "n": 10_000}, None, 400, "invalid_value", "n", None),
    ("negative max_tokens", {"model": "gpt-4", "messages": HELLO, "max_tokens": -5}, None, 400, "invalid_value",
     "max_tokens", None),
    ("temperature out of range", {"model": "gpt-4", "messages": HELLO, "temperature": 2.5}, None, 400,
     "invalid_value", "temperature", None),
    ("unknown model", {"model": "no-such-model", "messages": HELLO}, None, 404, "model_not_found", "model", None),
    ("empty messages", {"model": "gpt-4", "messages": []}, None, 400, "invalid_value", "messages", None),
    ("too many messages", {"model": "gpt-4", "messages": HELLO * 2049}, None, 400, "invalid_value", "messages",
     None),
    ("empty content part list", {"model": "gpt-4", "messages": [{"role": "user", "content": []}]}, None, 400,
     "invalid_value", "messages[0].content", None),
    ("content part without a type", {"model": "gpt-4", "messages": [{"role": "user", "content": [{}]}]}, None, 400,
     "missing_required_parameter", "messages[0].content[0].type", None),
    ("too many stop strings", {"model": "gpt-4", "messages": HELLO, "stop": list("abcde")}, None, 400,
     "invalid_value", "stop", None),
    ("top_logprobs over 20", {"model": "gpt-4", "messages": HELLO, "logprobs": True, "top_logprobs": 21}, None, 400,
     "invalid_value", "top_logprobs", None),
    ("a 1 MB prompt over the context", {"model": "gpt-4", "messages": [{"role": "user", "content": "a " * 500_000}]},
     None, 400, "context_length_exceeded", "messages", None),
    ("a bad bearer format", {"model": "gpt-4", "messages": HELLO}, {"Authorization": "Token abc"}, 401,
     "invalid_api_key", None, "authentication_error"),
    ("a 10 KB header", {"model": "gpt-4", "messages": HELLO}, {"x-padding": "p" * 10_240}, 431,
     "request_headers_too_large", None, None),
]


@pytest.mark.parametrize("what, body, headers, status, code, param, error_type", _BATTERY,
                         ids=[case[0] for case in _BATTERY])
def test_bad_input_battery(client, what, body, headers, status, code, param, error_type):
    if isinstance(body, bytes):
        response = client.post("/v1/chat/completions", content=body,
                               headers={"content-type": "application/json", **(headers or {})})
    else:
        response = client.post("/v1/chat/completions", json=body, headers=headers)
    _error(response, status, code, param, error_type or "invalid_request_error")


def test_legacy_completion_caps(client):
    _error(client.post("/v1/completions", json={"model": "gpt-4", "prompt": "x", "logprobs": 6}), 400,
           "invalid_value", "logprobs")
    _error(client.post("/v1/completions", json={"model": "gpt-4", "prompt": "x", "n": 129}), 400, "invalid_value",
           "n")


# ---- engine faults, /ready and the drain on an app of their own -----------------------------------------
@pytest.fixture
def own_registry(tiny_config_dir, tiny_dir):
    """Engines of this test alone: a fault may kill them."""
    from engines.config import load_model_configs
    from engines.registry import EngineRegistry

    configs = [c for c in load_model_configs(tiny_config_dir) if c.id in ("tiny-llama", "tiny-gemma",
                                                                           "all-minilm-l6-v2")]
    return EngineRegistry.from_configs(configs, tiny_dir / "data")


@pytest.fixture
def own_client(own_registry, tiny_config_dir, tiny_dir):
    from server.app import create_app
    from server.settings import Settings

    app = create_app(Settings(config_dir=tiny_config_dir, data_dir=tiny_dir / "data", auth=False), own_registry)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def _chat(client, model="tiny-llama", **extra):
    return client.post("/v1/chat/completions", json={"model": model, "messages": HELLO, "max_tokens": 4, **extra})


def test_one_fault_fails_the_batch_and_the_engine_goes_on(own_client, own_registry, monkeypatch):
    engine = own_registry.resolve("tiny-llama")
    real_forward = engine.runner.forward
    calls = {"n": 0}

    def fail_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected fault")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(engine.runner, "forward", fail_once)
    _error(_chat(own_client), 500, "internal_error", error_type="server_error")
    assert _chat(own_client).status_code == 200
    assert own_client.get("/ready").status_code == 200
    text = own_client.get("/metrics").text
    assert _metric(text, "ozwell:engine_faults_total", model_name="tiny-llama") == 1
    assert _metric(text, "ozwell:kv_cache_blocks_used", model_name="tiny-llama") == 0


def test_repeated_faults_take_the_engine_down_and_the_others_serve_on(own_client, own_registry, monkeypatch):
    engine = own_registry.resolve("tiny-llama")

    def broken(*args, **kwargs):
        raise RuntimeError("device lost")

    monkeypatch.setattr(engine.runner, "forward", broken)
    for _ in range(engine.MAX_CONSECUTIVE_FAULTS - 1):
        _error(_chat(own_client), 500, "internal_error", error_type="server_error")
    events = read_sse(own_client, "/v1/chat/completions", {"model": "tiny-llama", "messages": HELLO, "stream": True})
    assert events[-1] == "[DONE]" and events[-2]["error"]["type"] == "server_error"
    ready = own_client.get("/ready")
    assert ready.status_code == 503 and ready.headers["retry-after"]
    body = ready.json()
    assert body["status"] == "not_ready" and body["models"]["tiny-llama"]["status"] == "down"
    assert "device lost" in body["models"]["tiny-llama"]["reason"]
    assert body["models"]["tiny-gemma"] == {"status": "ok"}
    response = _chat(own_client)
    _error(response, 503, "engine_unavailable", error_type="server_error")
    assert response.headers["retry-after"]
    # The other models keep serving.
    assert _chat(own_client, "tiny-gemma").status_code == 200
    assert own_client.post("/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": "hi"}).status_code == 200
    assert _metric(own_client.get("/metrics").text, "ozwell:engine_healthy", model_name="tiny-llama") == 0


def test_a_stalled_step_loop_is_not_ready(own_client, own_registry, monkeypatch):
    engine = own_registry.resolve("tiny-gemma")
    release = threading.Event()
    real_forward = engine.runner.forward

    def hang(*args, **kwargs):
        release.wait(30)
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(engine.runner, "forward", hang)
    monkeypatch.setattr(engine, "STALL_AFTER_S", 0.2)
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("r", _chat(own_client, "tiny-gemma")))
    worker.start()
    try:
        import time

        deadline = time.time() + 10
        while own_client.get("/ready").status_code == 200 and time.time() < deadline:
            time.sleep(0.05)
        body = own_client.get("/ready").json()
        assert body["models"]["tiny-gemma"]["status"] == "down" and "stalled" in body["models"]["tiny-gemma"]["reason"]
    finally:
        release.set()
        worker.join(30)
    assert result["r"].status_code == 200
    assert own_client.get("/ready").status_code == 200


def test_drain_lets_short_work_finish_and_cuts_the_rest(own_client):
    app = own_client.app
    lifecycle = app.state.services.lifecycle
    long_stream = {"model": "tiny-llama", "messages": HELLO, "max_tokens": 100, "ignore_eos": True, "stream": True}
    outcome: dict = {}
    started = threading.Event()

    def stream():
        with own_client.stream("POST", "/v1/chat/completions", json=long_stream) as response:
            lines = []
            for line in response.iter_lines():
                if line:
                    lines.append(line)
                    started.set()
            outcome["lines"] = lines

    def slow_engine_steps():
        # Slow the engine so that the stream is still running when the drain's timeout passes.
        engine = app.state.services.registry.resolve("tiny-llama")
        real = engine.runner.forward

        def slow(*args, **kwargs):
            import time

            time.sleep(0.05)
            return real(*args, **kwargs)

        engine.runner.forward = slow
        return lambda: setattr(engine.runner, "forward", real)

    restore = slow_engine_steps()
    try:
        worker = threading.Thread(target=stream)
        worker.start()
        assert started.wait(30)
        own_client.portal.call(lambda: asyncio.wait_for(lifecycle.drain(0.2, grace_s=10), 30))
        worker.join(30)
    finally:
        restore()
    lines = outcome["lines"]
    assert lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2].removeprefix("data: "))
    assert_valid(error, "ErrorResponse")
    assert error["error"]["code"] == "server_shutting_down"
    # Draining: new work is refused with 503 and Retry-After; probes still answer.
    refused = _chat(own_client)
    _error(refused, 503, "server_shutting_down", error_type="server_error")
    assert int(refused.headers["retry-after"]) > 0
    assert own_client.get("/health").status_code == 200
    assert own_client.get("/ready").json()["status"] == "draining"
    assert lifecycle.in_flight == 0


def test_ready_tells_why_an_engine_is_down_only_to_an_operator_key(app, client, admin_key, monkeypatch):
    engine = app.state.services.registry.resolve("tiny-gemma")
    monkeypatch.setattr(engine, "health", lambda: "RuntimeError('secret path /srv/weights')")
    _, worker = app.state.services.keys.create(name="ready-worker", plan="pro")
    anonymous = client.get("/ready", headers={"Authorization": ""})
    assert anonymous.status_code == 503
    assert anonymous.json()["models"]["tiny-gemma"] == {"status": "down"} and "secret" not in anonymous.text
    plain = client.get("/ready", headers={"Authorization": f"Bearer {worker}"})
    assert plain.json()["models"]["tiny-gemma"] == {"status": "down"}
    operator = client.get("/ready")  # the session's key has the operator scope
    assert "secret path" in operator.json()["models"]["tiny-gemma"]["reason"]
