"""uvicorn's httptools protocol, with limits that hold while a request's head is still arriving.

uvicorn hands the request to the app only once httptools has parsed the whole head, and httptools
keeps the partial header in memory until then: the RequestGuard's header limits came too late, and a
256 MB header value took 122 s (and 314 MB) to get its 431 while /health waited up to 19 s. The h11
cap that the CLI used to set applies only to uvicorn's h11 protocol, which was not the one running.

So this protocol counts the bytes of each request's head as they arrive and refuses a head longer
than `max_head_bytes` at once (431), and a head that has not arrived in full within `head_timeout_s`
of its first byte, or of the connection's start (408: slow-header clients hold a socket each). A
refusal is written with `Connection: close`, the write side is shut, and what the client still sends
is read and dropped for `linger_s`, so the client reads the answer instead of a connection reset.
Request bodies have an idle timeout in the RequestGuard (server/middleware.py)."""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from server.errors import HeadersTooLargeError, OpenAIError, RequestTimeoutError

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class GuardedHttpProtocol(HttpToolsProtocol):
    max_head_bytes = 64 * 1024
    head_timeout_s = 15.0
    linger_s = 2.0

    @classmethod
    def with_limits(cls, max_head_bytes: int, head_timeout_s: float) -> type[GuardedHttpProtocol]:
        """The class uvicorn.Config(http=...) takes, with these limits."""
        return type(cls.__name__, (cls,), {"max_head_bytes": max_head_bytes, "head_timeout_s": head_timeout_s})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._in_head = True  # between requests, or inside one's head
        self._head_bytes = 0
        self._refused = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._start_head_timer()

    def _start_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering after a refusal: read and drop
        if self._in_head:
            self._head_bytes += len(data)
            self._start_head_timer()
        super().data_received(data)
        # Counted before parsing and checked after: a chunk that completes the head (and starts the
        # body) has already left the head by now, so only a head still open past the limit is refused.
        if self._in_head and self._head_bytes > self.max_head_bytes and not self.transport.is_closing():
            self._refuse(HeadersTooLargeError(f"The request's head is over {self.max_head_bytes} bytes."))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._stop_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True  # the next request on this connection: its head counts from its first chunk
        self._head_bytes = 0

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._in_head or self.transport.is_closing():
            return
        if self._head_bytes == 0 and (self.cycle is None or self.cycle.response_complete):
            self.transport.close()  # a connection that never sent anything: nothing to answer
            return
        self._refuse(RequestTimeoutError(f"The request's headers did not arrive within {self.head_timeout_s:g}s."))

    def _refuse(self, error: OpenAIError) -> None:
        self._refused = True
        self._stop_head_timer()
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # a response is still being written on this connection: just end it
            return
        body = json.dumps(error.body()).encode()
        self.transport.write(b"".join([
            b"HTTP/1.1 %d %s\r\n" % (error.status_code, _REASONS[error.status_code]),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n", body]))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(self.linger_s, self.transport.close)
