"""Response middleware (pure ASGI, so it works for streams).

RateLimitHeadersAndUsage puts the rate-limit headers on every authenticated response and writes one
usage record when the response is done. RequestGuard, outside it, is the front door: request ids,
header and body limits, the drain, one log line and the HTTP metrics per request."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid

from starlette.exceptions import HTTPException as StarletteHTTPException

from engines.registry import EngineRegistry
from server.errors import (
    HeadersTooLargeError,
    OpenAIError,
    RequestTimeoutError,
    RequestTooLargeError,
    ServiceUnavailableError,
)
from server.lifecycle import Lifecycle
from server.metrics import Metrics
from server.settings import Settings

log = logging.getLogger("ozwell.server")


def _sending(send, outcome: dict, extra_headers):
    """`send`, noting the response's status in `outcome` and adding `extra_headers(existing headers)` to it."""

    async def wrapped(message):
        if message["type"] == "http.response.start":
            outcome["status"] = message["status"]
            headers = message.get("headers", [])
            message = {**message, "headers": [*headers, *extra_headers(headers)]}
        await send(message)

    return wrapped


class HTTPMiddleware:
    """Pure ASGI middleware for HTTP requests; lifespan and other scopes pass through untouched."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        await self.http(scope, receive, send, time.perf_counter())

    async def http(self, scope, receive, send, started: float) -> None:
        raise NotImplementedError


class RateLimitHeadersAndUsage(HTTPMiddleware):
    def __init__(self, app, usage_service_getter):
        super().__init__(app)
        self._usage = usage_service_getter

    async def http(self, scope, receive, send, started: float) -> None:
        scope.setdefault("state", {})  # shared with request.state, even where the scope is copied
        outcome = {"status": 500}

        def rate_limit_headers(existing: list) -> list:
            context = scope.get("state", {}).get("ozwell_context")
            if context is None or not context.headers:
                return []
            present = {k.decode("latin-1").lower() for k, _ in existing}
            return [(k.lower().encode("latin-1"), v.encode("latin-1"))
                    for k, v in context.headers.items() if k.lower() not in present]

        try:
            await self.app(scope, receive, _sending(send, outcome, rate_limit_headers))
        finally:
            await self._record(scope, outcome["status"], started)

    async def _record(self, scope, status: int, started: float) -> None:
        context = scope.get("state", {}).get("ozwell_context")
        usage = self._usage()
        if context is None or context.caller is None or usage is None:
            return
        route = scope.get("route")
        try:
            await asyncio.to_thread(
                usage.record, key_id=context.caller.key_id, owner=context.caller.owner, model=context.model,
                endpoint=getattr(route, "path", scope.get("path", "")), prompt_tokens=context.prompt_tokens,
                completion_tokens=context.completion_tokens, status=status,
                latency_ms=int((time.perf_counter() - started) * 1000))
        except Exception:
            log.exception("could not write the usage record")


_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Probes and scrapes: never refused while draining, not counted as in-flight work, not logged.
_PROBES = frozenset({"/health", "/ready", "/metrics"})
access_log = logging.getLogger("ozwell.access")


class BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"The request body is larger than this server accepts ({limit} bytes).")


class BodyTimeout(StarletteHTTPException):
    def __init__(self, timeout_s: float):
        super().__init__(408, f"The request body stopped arriving: no bytes for {timeout_s:g}s.")


class RequestGuard(HTTPMiddleware):
    """The outermost middleware (pure ASGI, so it sees streams to their end).

    Per request, in order: a request id (the client's `x-request-id` when it is sane, else a new
    one), echoed in the response; header count and size limits (431; the head's total size and arrival
    time are also bounded while it is parsed, in server/http_protocol.py); 503 with Retry-After while
    the server drains; the body size limit (413 from Content-Length before anything is read, or as
    soon as a chunked body passes it); in-flight accounting for the drain; and at the end one
    structured log line and the HTTP metrics. The log line never holds a key or a prompt.
    """

    def __init__(self, app, *, limits: Settings, lifecycle: Lifecycle, metrics: Metrics | None):
        super().__init__(app)
        self.limits = limits
        self.lifecycle = lifecycle
        self.metrics = metrics

    async def http(self, scope, receive, send, started: float) -> None:
        request_id = _request_id(scope)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        outcome = {"status": 0}
        send_with_id = _sending(send, outcome, lambda _: [(b"x-request-id", request_id.encode("ascii"))])

        path = scope.get("path", "")
        probe = path in _PROBES
        refusal = self._refusal(scope, probe)
        if refusal is not None:
            await _send_error(send_with_id, refusal)
        else:
            if not probe:
                self.lifecycle.request_started()
            try:
                async with EngineRegistry.leases():  # the models a request uses stay loaded until it is answered
                    await self.app(scope, self._limited(scope, receive), send_with_id)
            except BodyTooLarge as exc:  # a chunked body passed the limit outside FastAPI's body parsing
                if outcome["status"] == 0:
                    await _send_error(send_with_id, RequestTooLargeError(exc.detail))
            except BodyTimeout as exc:
                if outcome["status"] == 0:
                    await _send_error(send_with_id, RequestTimeoutError(exc.detail))
            finally:
                if not probe:
                    self.lifecycle.request_finished()
        self._finish(scope, request_id, outcome["status"] or 500, started, probe)

    def _body_limit(self, scope) -> int:
        if scope.get("method") == "POST" and scope.get("path") == "/v1/files":
            return self.limits.max_upload_bytes + 1024 * 1024  # the upload's own cap is checked as it streams
        return self.limits.max_body_bytes

    def _refusal(self, scope, probe: bool) -> OpenAIError | None:
        headers = scope.get("headers", [])
        if len(headers) > self.limits.max_header_count:
            return HeadersTooLargeError(f"The request has {len(headers)} headers; at most "
                                        f"{self.limits.max_header_count} are accepted.")
        total = 0
        for name, value in headers:
            size = len(name) + len(value)
            total += size
            if size > self.limits.max_header_bytes:
                return HeadersTooLargeError(f"The header '{name.decode('latin-1')[:64]}' is {size} bytes; at most "
                                            f"{self.limits.max_header_bytes} are accepted per header.")
        if total > self.limits.max_headers_total_bytes:
            return HeadersTooLargeError(f"The request's headers are {total} bytes; at most "
                                        f"{self.limits.max_headers_total_bytes} are accepted.")
        if self.lifecycle.draining and not probe:
            return ServiceUnavailableError("The server is shutting down. Please retry on another replica or later.",
                                           code="server_shutting_down", retry_after_s=self.lifecycle.retry_after_s)
        length = _header(headers, b"content-length")
        limit = self._body_limit(scope)
        if length is not None and length.isdigit() and int(length) > limit:
            return RequestTooLargeError(f"The request body is {int(length)} bytes, larger than this server accepts "
                                        f"({limit} bytes).")
        return None

    def _limited(self, scope, receive):
        """The body's size limit, and its idle timeout: until the body is complete, each message must come
        within body_timeout_s (later receives wait for a disconnect, and may wait as long as they like)."""
        limit = self._body_limit(scope)
        timeout = self.limits.body_timeout_s
        seen = 0
        complete = False

        async def receive_limited():
            nonlocal seen, complete
            if complete:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout)
            except TimeoutError:
                raise BodyTimeout(timeout) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
                complete = not message.get("more_body", False)
            else:
                complete = True
            return message

        return receive_limited

    def _finish(self, scope, request_id: str, status: int, started: float, probe: bool) -> None:
        elapsed = time.perf_counter() - started
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        if self.metrics is not None:
            self.metrics.observe_http(route, scope.get("method", ""), status, elapsed)
            if status == 429:
                kind = scope.get("state", {}).get("error_type")
                self.metrics.rate_limited.labels(kind if kind in ("requests", "tokens") else "engine").inc()
        if probe:
            return
        context = scope.get("state", {}).get("ozwell_context")
        caller = getattr(context, "caller", None)
        access_log.info(json.dumps({
            "request_id": request_id, "method": scope.get("method"), "path": scope.get("path"), "route": route,
            "status": status, "key_prefix": caller.prefix if caller is not None else None,
            "model": getattr(context, "model", None), "prompt_tokens": getattr(context, "prompt_tokens", 0),
            "completion_tokens": getattr(context, "completion_tokens", 0), "latency_ms": round(elapsed * 1000, 1),
        }, separators=(",", ":")))


def _header(headers, name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return None


def _request_id(scope) -> str:
    given = _header(scope.get("headers", []), b"x-request-id")
    if given and _REQUEST_ID.match(given):
        return given
    return f"req_{uuid.uuid4().hex}"


async def _send_error(send, error: OpenAIError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
