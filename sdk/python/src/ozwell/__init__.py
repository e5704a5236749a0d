"""The official Python SDK for Ozwell: `Ozwell` and `AsyncOzwell`."""

from ozwell import types
from ozwell._client import DEFAULT_BASE_URL, AsyncOzwell, Ozwell
from ozwell._ratelimit import RateLimitInfo
from ozwell._streaming import AsyncStream, Stream
from ozwell._version import __version__
from ozwell.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    OzwellError,
    PermissionDeniedError,
    RateLimitError,
    StreamInterruptedError,
    UnprocessableEntityError,
)

__all__ = [
    "Ozwell", "AsyncOzwell", "DEFAULT_BASE_URL", "Stream", "AsyncStream", "RateLimitInfo", "types", "__version__",
    "OzwellError", "APIError", "APIStatusError", "APIConnectionError", "APITimeoutError", "StreamInterruptedError",
    "BadRequestError", "AuthenticationError", "PermissionDeniedError", "NotFoundError", "ConflictError",
    "UnprocessableEntityError", "RateLimitError", "InternalServerError",
]
