"""The real-process tier for operations (issue #9): `ozwell serve` as a subprocess on loopback, driven
over real sockets. One tiny random-weight Llama is built here; one server is shared by the load, soak,
disconnect and event-loop tests (package scope), and the durability test runs its own pair of processes
(one killed with SIGKILL, one restarted on the same data dir).

Every test is bounded in count and time; the whole tier runs in about two minutes on two idle cores.
Deselect it with `-m "not ops"`."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.process import ServerProcess
from tests.tiny_models import tiny_llama_configs

MODEL = "ops-llama"


def pytest_configure(config):
    config.addinivalue_line("markers", "ops: real-process operations tier (load, soak, disconnect, durability)")


@pytest.fixture(scope="session")
def ops_config_dir(tmp_path_factory) -> Path:
    # 256 tokens of context for the long disconnect streams; 32 running sequences and room for 512
    # waiting ones, so 200 concurrent streams queue instead of meeting 429 engine_overloaded.
    return tiny_llama_configs(tmp_path_factory.mktemp("ops"), MODEL, max_model_len=256, max_num_seqs=32,
                              max_waiting=512)


@pytest.fixture(scope="package")
def ops_server(ops_config_dir, tmp_path_factory):
    """One server shared by this package's tests, stopped when they are done. Its first-run admin key
    is enterprise with 10,000 requests/min, far above what the tier sends in any minute."""
    server = ServerProcess(ops_config_dir, tmp_path_factory.mktemp("ops-data")).start()
    try:
        yield server
    finally:
        server.stop()


def metric_samples(server: ServerProcess) -> dict[tuple[str, tuple], float]:
    """GET /metrics (admin key) -> {(sample name, sorted labels): value}."""
    response = httpx.get(server.url + "/metrics", headers=server.headers, timeout=10)
    assert response.status_code == 200, response.text
    return parse_samples(response.text)


def parse_samples(text: str) -> dict[tuple[str, tuple], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def gauge(samples: dict, name: str, model: str = MODEL) -> float:
    return samples[(name, (("model_name", model),))]


def engine_gauges(server: ServerProcess, model: str = MODEL) -> dict[str, float]:
    return parse_gauges(metric_samples(server), model)


def parse_gauges(samples: dict | str, model: str = MODEL) -> dict[str, float]:
    """The engine gauges the tier asserts on, from parsed samples or the exposition text."""
    if isinstance(samples, str):
        samples = parse_samples(samples)
    return {name: gauge(samples, f"ozwell:{name}", model) for name in (
        "num_requests_running", "num_requests_waiting", "kv_cache_blocks_used", "kv_cache_blocks_free")}


def wait_until_idle(server: ServerProcess, within_s: float, model: str = MODEL,
                    since: float | None = None) -> tuple[float, dict]:
    """Poll /metrics until nothing runs or waits and no KV block is used; (seconds it took, counted from
    `since` (a perf_counter time) or from now, and the last gauges). Gives up after `within_s` and
    returns the last reading, for the caller to assert on."""
    started = time.perf_counter() if since is None else since
    while True:
        gauges = engine_gauges(server, model)
        elapsed = time.perf_counter() - started
        idle = (gauges["num_requests_running"] == 0 and gauges["num_requests_waiting"] == 0
                and gauges["kv_cache_blocks_used"] == 0)
        if idle or elapsed > within_s:
            return elapsed, gauges
        time.sleep(0.02)


def chat_body(content: str = "Hello! How are you today?", **extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}
