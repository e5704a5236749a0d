"""Issue #35, findings 1 and 2, and the loop watchdog: no request's CPU work runs on the event loop.

1. Four clients with no key posting 8 MB JSON bodies: each is refused with 401 from its headers, its body
   never read, while /health stays under 100 ms and another owner's `GET /v1/models` within twice its
   baseline.
2. A pro key with four concurrent requests carrying a unique `anyOf` of 5,000 objects (0.58 MB of schema):
   each is refused quickly with a 400 naming the schema (over MAX_SCHEMA_BYTES), and schemas under the cap
   are compiled on the CPU pool, with the same bounds on /health and the other owner.
3. The watchdog: the server runs with OZWELL_LOOP_WATCHDOG_MS, which logs every lag of the event loop over
   that many ms (and where the loop was); 1 MB hostile bodies on every JSON POST route (and a 1 MB upload),
   one by one and four at a time, leave no lag over MAX_LAG_MS.

One server of this file's own: a tiny Llama with a 2,048-token context and the packaged MiniLM embedder."""

from __future__ import annotations

import concurrent.futures
import json
import re
import statistics
import time

import httpx
import pytest

from tests.process import ServerProcess
from tests.security.conftest import (
    MODEL,
    assert_error,
    bearer,
    cli_key,
    client,
    long_context_configs,
)

pytestmark = pytest.mark.security

EMBEDDER = "loop-minilm"
WATCHDOG_MS = 10  # the server logs each lag of its loop over this
# The worst lag allowed under hostile bodies. Measured on 2 shared cores: 10-60 ms (a worker thread rendering
# 15 MB of JSON, or validating 500,000 token ids, holds the GIL in C for tens of ms), 100-170 ms when other
# test runs load the machine; before the fix, one 1 MB completions body blocked it 150-280 ms.
MAX_LAG_MS = 100
HEALTH_S = 0.1
FLOOR_S = 0.1  # the least baseline of another owner's request (2 cores, shared with the attack and other work)
MB = 1 << 20
_BLOCKED = re.compile(r"event loop blocked for (\d+) ms")


@pytest.fixture(scope="module")
def loop_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("event-loop")
    configs = long_context_configs(root, MODEL, embedding=EMBEDDER)
    server = ServerProcess(configs, root / "data", env={"OZWELL_LOOP_WATCHDOG_MS": str(WATCHDOG_MS)}).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def bystander(loop_server) -> str:
    return cli_key(loop_server, "--name", "bystander", "--owner", "bystander", "--plan", "enterprise",
                   "--rpm", "100000", "--tpm", "100000000")


def _timed(call) -> tuple[float, httpx.Response]:
    begun = time.perf_counter()
    response = call()
    return time.perf_counter() - begun, response


def _baseline(server: ServerProcess, key: str) -> float:
    with client(server, key) as other:
        times = [_timed(lambda: other.get("/v1/models"))[0] for _ in range(15)]
    return max(statistics.median(times), FLOOR_S)


def _watch(server: ServerProcess, key: str, attack) -> tuple[list, list[float], list[float]]:
    """Run `attack()` (a list of futures' results) while polling /health and another owner's /v1/models."""
    health, models = [], []
    with client(server, key) as other, concurrent.futures.ThreadPoolExecutor(1) as runner:
        done = runner.submit(attack)
        while not done.done():
            seconds, reply = _timed(lambda: other.get("/health"))
            assert reply.status_code == 200
            health.append(seconds)
            seconds, reply = _timed(lambda: other.get("/v1/models"))
            assert reply.status_code == 200, reply.text
            models.append(seconds)
            time.sleep(0.02)
        return done.result(), health, models


def _int_array(size: int) -> bytes:
    return b"[" + b",".join([b"7"] * (size // 2 - 1)) + b"]"


def test_bodies_without_a_key_are_refused_before_they_are_read(loop_server, bystander):
    baseline = _baseline(loop_server, bystander)
    body = _int_array(8_000_000)  # 4M integers, under the 8 MiB body limit

    def one() -> list[tuple[float, int]]:
        with httpx.Client(base_url=loop_server.url, timeout=60) as anonymous:
            return [(s, r.status_code) for s, r in (_timed(lambda: anonymous.post(
                "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}))
                for _ in range(3))]

    def attack():
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            return [item for future in [pool.submit(one) for _ in range(4)] for item in future.result()]

    replies, health, models = _watch(loop_server, bystander, attack)
    assert [status for _, status in replies] == [401] * 12
    assert health and max(health) <= HEALTH_S, (max(health), len(health))
    assert max(models) <= 2 * baseline, (max(models), baseline)
    # A wrong key is refused the same way.
    wrong = httpx.post(f"{loop_server.url}/v1/chat/completions", content=body, timeout=60,
                       headers={**bearer("ozw_not_a_key"), "Content-Type": "application/json"})
    assert_error(wrong, 401, code="invalid_api_key")


def _anyof(count: int, tag: str) -> dict:
    return {"anyOf": [{"type": "object", "properties": {f"k{tag}_{i}": {"type": "string"}},
                       "required": [f"k{tag}_{i}"], "additionalProperties": False} for i in range(count)]}


def _properties(count: int, tag: str) -> dict:
    names = [f"property_{tag}_{i}" for i in range(count)]
    return {"type": "object", "properties": {name: {"type": "string"} for name in names}, "required": names,
            "additionalProperties": False}


def _formatted(schema: dict) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Answer in JSON."}], "max_tokens": 4,
            "response_format": {"type": "json_schema", "json_schema": {"name": "big", "schema": schema}}}


def test_large_schemas_are_bounded_and_checked_off_the_loop(loop_server, bystander):
    pro = cli_key(loop_server, "--name", "schema-pro", "--owner", "schema-pro", "--plan", "pro")
    baseline = _baseline(loop_server, bystander)

    def four(bodies: list[bytes]) -> list[tuple[float, httpx.Response]]:
        with client(loop_server, pro) as attacker, concurrent.futures.ThreadPoolExecutor(4) as pool:
            return list(pool.map(lambda b: _timed(lambda: attacker.post("/v1/chat/completions", content=b, headers={
                "Content-Type": "application/json"})), bodies))

    def unique(schema, count: int) -> list[bytes]:  # made before the attack: the client's work is not timed
        return [json.dumps(_formatted(schema(f"c{c}t{time.time_ns()}"))).encode() for c in range(count)]

    # Over the cap: refused before any compiling, quickly, naming the schema.
    over = unique(lambda tag: _anyof(5000, tag), 12)
    mark = len(loop_server.lines)
    replies, health, models = _watch(loop_server, bystander, lambda: [r for i in range(3) for r in four(
        over[4 * i:4 * i + 4])])
    print("loop lags:", _lags(loop_server, mark), "models:", sorted(round(m * 1000) for m in models)[-8:],
          "health:", sorted(round(m * 1000) for m in health)[-8:])
    for seconds, reply in replies:
        error = assert_error(reply, 400, param="response_format.json_schema.schema", code="schema_too_large")
        assert "262,144" in error["message"] and "anyOf" not in error["message"]
        assert seconds < 5, seconds
    print(f"over the cap: /health worst {max(health) * 1000:.0f} ms, /v1/models worst {max(models) * 1000:.0f} ms "
          f"(baseline {baseline * 1000:.0f} ms)")
    assert health and max(health) <= HEALTH_S, (max(health), len(health))
    assert max(models) <= 2 * baseline, (max(models), baseline)
    # Under it (240 KB, 2,000 properties): compiled on the CPU pool, then served.
    under = unique(lambda tag: _properties(2000, tag), 4)
    replies, health, models = _watch(loop_server, bystander, lambda: four(under))
    for _, reply in replies:
        assert reply.status_code == 200, reply.text
    print(f"under the cap: /health worst {max(health) * 1000:.0f} ms, /v1/models worst {max(models) * 1000:.0f} ms "
          f"{sorted(round(m * 1000) for m in models)[-5:]}")
    assert health and max(health) <= HEALTH_S, (max(health), len(health))
    assert max(models) <= 2 * baseline, (max(models), baseline)
    # The log holds no schema: no property name of any of them.
    assert not [line for line in loop_server.lines if "property_c" in line or '"anyOf"' in line]


def test_tool_schemas_share_the_bound(loop_server):
    tool = {"type": "function", "function": {"name": "big", "parameters": _anyof(5000, "tool")}}
    with client(loop_server) as admin:
        reply = admin.post("/v1/chat/completions", json={"model": MODEL, "max_tokens": 2, "tools": [tool],
                                                         "messages": [{"role": "user", "content": "Hi"}]})
        assert_error(reply, 400, param="tools[0].function.parameters", code="schema_too_large")
        fmt = {"type": "json_schema", "name": "big", "schema": _anyof(5000, "text")}
        reply = admin.post("/v1/responses", json={"model": MODEL, "input": "Hi", "max_output_tokens": 16,
                                                  "text": {"format": fmt}, "store": False})
        assert_error(reply, 400, param="text.format.schema", code="schema_too_large")


def _hostile_bodies(file_id: str) -> list[tuple[str, bytes, set[int]]]:
    """(route, a JSON body, the statuses it may get): every JSON POST route, ~1 MB bodies that cost the most
    to decode, validate, check and refuse (and one small body with a 15 MB answer)."""
    many_messages = [{"role": "user", "content": "word " * 100} for _ in range(2000)]
    tools = [{"type": "function", "function": {"name": f"t{i}", "parameters": _properties(300, f"t{i}")}}
             for i in range(60)]
    ints = json.loads(_int_array(MB))
    cases = [
        ("/v1/chat/completions", _int_array(MB), {400}),
        ("/v1/chat/completions", _int_array(MB)[:-1] + b",]", {400}),  # invalid JSON at its very end
        ("/v1/chat/completions", {"model": MODEL, "messages": many_messages, "max_tokens": 1}, {400}),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2,
                                  "tools": tools}, {200, 400}),
        ("/v1/chat/completions", _formatted(_properties(20000, "big")), {400}),
        ("/v1/completions", {"model": MODEL, "prompt": ints, "max_tokens": 1}, {400}),
        ("/v1/completions", {"model": MODEL, "prompt": ["ab"] * 150_000, "max_tokens": 1}, {400, 429}),
        ("/v1/embeddings", {"model": EMBEDDER, "input": ["word " * 100] * 2000, "encoding_format": "hex"}, {400}),
        # (a small body with a large answer: 2,048 vectors are 15 MB of JSON, rendered off the loop)
        ("/v1/embeddings", {"model": EMBEDDER, "input": ["a"] * 2048}, {200}),
        ("/v1/embeddings", {"model": EMBEDDER, "input": ints}, {400}),
        ("/v1/responses", {"model": MODEL, "input": [{"role": "user", "content": "word " * 100}] * 2000,
                           "max_output_tokens": 16, "store": False}, {400}),
        ("/v1/responses", {"model": MODEL, "input": "Hi", "max_output_tokens": 16, "store": False,
                           "tools": [{"type": "function", **t["function"]} for t in tools]}, {200, 400}),
        ("/v1/batches", {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h",
                         "metadata": {f"k{i}": "v" * 500 for i in range(2000)}}, {400}),
        ("/v1/admin/keys", {"name": "x" * MB}, {400}),
        ("/v1/admin/keys", _int_array(MB), {400}),
    ]
    return [(route, body if isinstance(body, bytes) else json.dumps(body).encode(), statuses)
            for route, body, statuses in cases]


def _lags(server: ServerProcess, since: int) -> list[int]:
    return [int(m.group(1)) for line in server.lines[since:] if (m := _BLOCKED.search(line))]


def test_no_route_blocks_the_loop_on_a_hostile_megabyte(loop_server):
    assert any("event loop watchdog on" in line for line in loop_server.lines)  # it is watching
    with client(loop_server, timeout=120) as admin:
        upload = admin.post("/v1/files", data={"purpose": "batch"},
                            files={"file": ("lines.jsonl", b'{"custom_id": "a"}\n' * (MB // 20))})
        assert upload.status_code == 200, upload.text
        cases = _hostile_bodies(upload.json()["id"])
        time.sleep(0.5)
        since = len(loop_server.lines)
        each = []  # (case, its lags), to name the route that blocked
        for i, (route, body, statuses) in enumerate(cases):
            mark = len(loop_server.lines)
            reply = admin.post(route, content=body, headers={"Content-Type": "application/json"})
            assert reply.status_code in statuses, (route, reply.status_code, reply.text[:300])
            if reply.status_code >= 400:
                assert_error(reply, reply.status_code)
            time.sleep(0.05)
            each.append((f"{i}:{route}:{reply.status_code}", _lags(loop_server, mark)))
            over = [line.strip() for line in loop_server.lines[mark:] if (m := _BLOCKED.search(line))
                    and int(m.group(1)) > MAX_LAG_MS]
            assert not over, (i, route, over)
        upload = admin.post("/v1/files", data={"purpose": "batch"},
                            files={"file": ("more.jsonl", b'{"custom_id": "b"}\n' * (MB // 20))})
        assert upload.status_code == 200, upload.text
        # And all of them at once, four at a time.
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            statuses = list(pool.map(lambda case: admin.post(case[0], content=case[1], headers={
                "Content-Type": "application/json"}).status_code, cases))
        assert all(status in case[2] for status, case in zip(statuses, cases, strict=True)), statuses
        time.sleep(0.2)
    lags = _lags(loop_server, since)
    print(f"loop lags over {WATCHDOG_MS} ms under hostile bodies: {sorted(lags)}; one by one: {each}")
    over = [line.strip() for line in loop_server.lines[since:] if (m := _BLOCKED.search(line))
            and int(m.group(1)) > MAX_LAG_MS]
    assert not over, over
