"""Typed errors. Every error the SDK raises is an `OzwellError`; errors the server answered with are
`APIStatusError`s carrying the HTTP status and the OpenAI-shaped body's type, code and param."""

from __future__ import annotations

from typing import Any

import httpx

from ozwell._ratelimit import RateLimitInfo

__all__ = [
    "OzwellError", "APIError", "APIStatusError", "APIConnectionError", "APITimeoutError", "StreamInterruptedError",
    "BadRequestError", "AuthenticationError", "PermissionDeniedError", "NotFoundError", "ConflictError",
    "UnprocessableEntityError", "RateLimitError", "InternalServerError",
]


class OzwellError(Exception):
    """Base of every error the SDK raises."""


class APIError(OzwellError):
    """An error about one request: the server's own (status, type, code, param), an error event in a
    stream (no status), or a failure to reach the server."""

    message: str
    status: int | None
    type: str | None
    code: str | None
    param: str | None
    request_id: str | None
    body: Any

    def __init__(self, message: str, *, status: int | None = None, body: Any = None,
                 request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.body = body
        self.request_id = request_id
        error = body.get("error") if isinstance(body, dict) and isinstance(body.get("error"), dict) else body
        fields = error if isinstance(error, dict) else {}
        self.type = _str(fields.get("type"))
        self.code = _str(fields.get("code"))
        self.param = _str(fields.get("param"))

    def __str__(self) -> str:
        head = f"Error code: {self.status} - " if self.status is not None else ""
        return f"{head}{self.message}"


class APIStatusError(APIError):
    """The server answered with a 4xx or 5xx status."""

    status: int
    response: httpx.Response
    headers: httpx.Headers

    def __init__(self, message: str, *, response: httpx.Response, body: Any) -> None:
        super().__init__(message, status=response.status_code, body=body,
                         request_id=response.headers.get("x-request-id"))
        self.status = response.status_code
        self.response = response
        self.headers = response.headers


class BadRequestError(APIStatusError):
    """400: the request is malformed or a parameter is invalid."""


class AuthenticationError(APIStatusError):
    """401: no key, an unknown key or a revoked key."""


class PermissionDeniedError(APIStatusError):
    """403: the key lacks the scope, plan or model the request needs."""


class NotFoundError(APIStatusError):
    """404: no such model, file, response or key (for this key's owner)."""


class ConflictError(APIStatusError):
    """409 (retried)."""


class UnprocessableEntityError(APIStatusError):
    """422."""


class RateLimitError(APIStatusError):
    """429: a per-key or per-owner limit, or a full engine queue. `rate_limit` holds the parsed
    X-RateLimit-* and x-ratelimit-*-requests/-tokens headers; `retry_after` the Retry-After, in seconds."""

    rate_limit: RateLimitInfo

    def __init__(self, message: str, *, response: httpx.Response, body: Any) -> None:
        super().__init__(message, response=response, body=body)
        self.rate_limit = RateLimitInfo.from_headers(response.headers)

    @property
    def retry_after(self) -> float | None:
        return self.rate_limit.retry_after


class InternalServerError(APIStatusError):
    """5xx (retried)."""


class APIConnectionError(APIError):
    """The server could not be reached, or the connection failed before an answer came."""

    def __init__(self, message: str = "Connection error.", *, request_id: str | None = None) -> None:
        super().__init__(message, request_id=request_id)


class APITimeoutError(APIConnectionError):
    """The request took longer than the client's timeout."""

    def __init__(self, message: str = "Request timed out.") -> None:
        super().__init__(message)


class StreamInterruptedError(APIConnectionError):
    """A stream stopped before its end ([DONE], or a Responses stream's final event): the connection was
    cut after the stream began. Streams are never retried once a byte has arrived."""


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError, 401: AuthenticationError, 403: PermissionDeniedError, 404: NotFoundError,
    409: ConflictError, 422: UnprocessableEntityError, 429: RateLimitError,
}


def status_error(response: httpx.Response, body: Any) -> APIStatusError:
    """The typed error for a response with status >= 400 and its (parsed) body."""
    message = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            message = _str(error.get("message"))
        elif isinstance(body.get("detail"), str):
            message = body["detail"]
    if message is None:
        message = body if isinstance(body, str) and body else f"HTTP {response.status_code}"
    cls = _BY_STATUS.get(response.status_code)
    if cls is None:
        cls = InternalServerError if response.status_code >= 500 else APIStatusError
    return cls(message, response=response, body=body)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None
