"""Finding 3 and the redirect of finding 10: limits on the request head that hold with the parser in
use, timeouts for slow heads and bodies, and no redirect that echoes the Host header."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from tests.security.conftest import (
    BODY_TIMEOUT_S,
    HEADER_TIMEOUT_S,
    assert_error,
    client,
)

pytestmark = pytest.mark.security


def _read_response(sock: socket.socket, timeout_s: float) -> bytes:
    sock.settimeout(timeout_s)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data and data.split(b"\r\n\r\n", 1)[1].count(b"}") >= 2:
                break
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def test_a_64_mb_header_gets_431_within_2_s_and_health_stays_fast(sec_server):
    port = sec_server.port
    sock = socket.create_connection(("127.0.0.1", port))
    value = b"a" * (1 << 20)

    def send_all():
        try:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Huge: ")
            for _ in range(64):
                sock.sendall(value)
            sock.sendall(b"\r\n\r\n")
        except OSError:
            pass  # the server answered and closed: the rest is not wanted

    health_times = []
    stop = threading.Event()

    def probe():
        with httpx.Client(base_url=sec_server.url, timeout=10) as http:
            while not stop.is_set():
                begun = time.perf_counter()
                assert http.get("/health").status_code == 200
                health_times.append(time.perf_counter() - begun)
                time.sleep(0.01)

    prober = threading.Thread(target=probe)
    prober.start()
    time.sleep(0.2)
    begun = time.perf_counter()
    sender = threading.Thread(target=send_all)
    sender.start()
    answer = _read_response(sock, 5)
    took = time.perf_counter() - begun
    sender.join(30)
    time.sleep(0.3)
    stop.set()
    prober.join(30)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b'"request_headers_too_large"' in answer
    assert took < 2, took
    assert health_times and max(health_times) < 0.1, max(health_times)


def test_many_headers_under_the_byte_limit_still_get_431(sec_server):
    headers = {f"x-h{i}": "v" for i in range(150)}
    with client(sec_server) as http:
        assert_error(http.get("/v1/models", headers=headers), 431, code="request_headers_too_large")


def test_a_slow_head_is_cut_with_408(sec_server):
    # A client that sends a byte a second never finishes its head.
    sock = socket.create_connection(("127.0.0.1", sec_server.port))
    begun = time.perf_counter()
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    answer = b""
    sock.settimeout(1)
    for _ in range(int(HEADER_TIMEOUT_S) + 10):
        try:
            sock.sendall(b"X")
            answer += sock.recv(65536)
            if answer:
                break
        except TimeoutError:
            continue
        except OSError:
            break
    took = time.perf_counter() - begun
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert HEADER_TIMEOUT_S - 0.5 < took < HEADER_TIMEOUT_S + 3, took


def test_a_stalled_body_is_cut_with_408(sec_server):
    # Content-Length promises more than is ever sent: the body's idle timeout ends it.
    sock = socket.create_connection(("127.0.0.1", sec_server.port))
    body = b'{"model": "sec-llama", "messages": ['
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + sec_server.key.encode()
                 + b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n" + body)
    begun = time.perf_counter()
    answer = _read_response(sock, BODY_TIMEOUT_S + 10)
    took = time.perf_counter() - begun
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b"request_timeout" in answer
    assert BODY_TIMEOUT_S - 0.5 < took < BODY_TIMEOUT_S + 5, took


def test_no_trailing_slash_redirect_echoes_the_host(sec_server):
    with httpx.Client(base_url=sec_server.url, follow_redirects=False) as http:
        reply = http.get("/health/", headers={"Host": "evil.example"})
    assert reply.status_code == 404 and "location" not in reply.headers
    assert "evil.example" not in reply.text
