"""A scripted HTTP server on loopback, for what a real server does not do on request: answer part of a
stream and hang up, send a Retry-After date, or never answer at all."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from types import TracebackType

Action = Callable[[socket.socket], None]


def respond(status: int, body: bytes = b"", headers: dict[str, str] | None = None,
            close: bool = True) -> Action:
    """A whole response."""

    def action(conn: socket.socket) -> None:
        head = {"Content-Length": str(len(body)), "Content-Type": "application/json", **(headers or {})}
        lines = "".join(f"{name}: {value}\r\n" for name, value in head.items())
        conn.sendall(f"HTTP/1.1 {status} X\r\n{lines}Connection: close\r\n\r\n".encode() + body)

    return action


def partial_stream(events: list[bytes]) -> Action:
    """A 200 event stream that sends `events` and then closes the connection without finishing."""

    def action(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
        for event in events:
            conn.sendall(event)

    return action


class FakeServer:
    """Answers each connection with the next scripted action (the last one repeats); counts requests."""

    def __init__(self, *actions: Action) -> None:
        self.actions = list(actions)
        self.requests: list[bytes] = []
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/v1"
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> FakeServer:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._sock.close()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                self.requests.append(_read_request(conn))
                index = min(len(self.requests), len(self.actions)) - 1
                self.actions[index](conn)


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


class SilentServer:
    """Accepts connections (the kernel does, from its backlog) and never answers."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/v1"

    def __enter__(self) -> SilentServer:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._sock.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
