"""Finding 6: a non-streamed request kept generating after its client had gone; and from finding 8
and 10, the usage query with an absurd `since`, and the database files' modes."""

from __future__ import annotations

import os
import socket
import stat
import time

import httpx
import pytest

from tests.security.conftest import MODEL, assert_error, client

pytestmark = pytest.mark.security


def _gauges(server) -> dict[str, float]:
    from tests.ops.conftest import parse_gauges

    reply = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {server.key}"}, timeout=10)
    return parse_gauges(reply.text, MODEL)


def test_a_disconnected_non_streaming_request_frees_its_sequences_within_1_s(sec_server):
    body = (b'{"model": "%s", "messages": [{"role": "user", "content": "Tell me everything."}], '
            b'"n": 8, "max_tokens": 1900, "ignore_eos": true}' % MODEL.encode())
    sock = socket.create_connection(("127.0.0.1", sec_server.port))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Authorization: Bearer " + sec_server.key.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
                 + body)
    deadline = time.time() + 30
    while _gauges(sec_server)["num_requests_running"] < 8:
        assert time.time() < deadline, "the request never started"
        time.sleep(0.05)
    sock.close()  # the client goes away mid-generation
    gone = time.perf_counter()
    while True:
        gauges = _gauges(sec_server)
        idle = gauges["num_requests_running"] == 0 and gauges["kv_cache_blocks_used"] == 0
        if idle or time.perf_counter() - gone > 5:
            break
        time.sleep(0.02)
    took = time.perf_counter() - gone
    assert idle and took < 1.0, (took, gauges)


def test_usage_since_far_in_the_future_is_400(sec_server):
    with client(sec_server) as http:
        assert_error(http.get("/v1/admin/usage", params={"since": "99999999999999999999"}), 400, param="since")
        assert http.get("/v1/admin/usage", params={"since": "0"}).status_code == 200


def test_the_database_files_are_private(sec_server):
    names = [n for n in os.listdir(sec_server.data_dir) if n.startswith("ozwell.db")]
    assert "ozwell.db" in names
    for name in names:
        mode = stat.S_IMODE(os.stat(sec_server.data_dir / name).st_mode)
        assert mode == 0o600, (name, oct(mode))
