"""OpenAI-shaped errors: one exception class per error type, rendered in one place.

Every error body is {"error": {"message", "type", "param", "code"}}, including FastAPI's own
validation errors, unknown routes, wrong methods and unexpected faults (500, no trace in the body).
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("ozwell.server")


class OpenAIError(Exception):
    """The base of every error a client gets. A subclass names its HTTP status, OpenAI's error type and its
    default code as class arguments: `class X(OpenAIError, status=404, kind="invalid_request_error")`."""

    status_code = 500
    error_type = "server_error"
    default_code: str | None = None

    def __init_subclass__(cls, status: int | None = None, kind: str | None = None, code: str | None = None, **kw):
        super().__init_subclass__(**kw)
        cls.status_code = status or cls.status_code
        cls.error_type = kind or cls.error_type
        cls.default_code = code or cls.default_code

    def __init__(self, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}


# 4xx: what the client can fix.
class InvalidRequestError(OpenAIError, status=400, kind="invalid_request_error"): pass
class ContextLengthExceededError(InvalidRequestError, code="context_length_exceeded"): pass
class AuthenticationError(OpenAIError, status=401, kind="authentication_error", code="invalid_api_key"): pass
class PermissionDeniedError(OpenAIError, status=403, kind="permission_error"): pass
class NotFoundError(InvalidRequestError, status=404): pass
class MethodNotAllowedError(InvalidRequestError, status=405, code="method_not_allowed"): pass
class ConflictError(InvalidRequestError, status=409, code="conflict"): pass  # not in the object's present state
class RequestTimeoutError(InvalidRequestError, status=408, code="request_timeout"): pass  # head or body too slow
class RequestTooLargeError(InvalidRequestError, status=413, code="request_too_large"): pass
class HeadersTooLargeError(InvalidRequestError, status=431, code="request_headers_too_large"): pass
# 5xx: ours.
class InternalServerError(OpenAIError, status=500, kind="server_error", code="internal_error"): pass


class UnsupportedParameterError(InvalidRequestError, code="unsupported_parameter"):
    def __init__(self, param: str, detail: str = "is not supported by this server yet"):
        super().__init__(f"Unsupported parameter: '{param}' {detail}.", param=param)


class ModelNotFoundError(NotFoundError, code="model_not_found"):
    def __init__(self, model: str):
        super().__init__(f"The model `{model}` does not exist or you do not have access to it.", param="model")


class RateLimitError(OpenAIError, status=429, code="rate_limit_exceeded"):
    def __init__(self, message: str, kind: str, headers: dict[str, str], never: bool = False):
        super().__init__(message, headers=headers)
        self.error_type = kind  # "requests" or "tokens", as OpenAI names the limit that was hit
        self.never = never  # the ask is larger than the whole limit: waiting will not help (a batch line gives up)


class EngineBusyError(OpenAIError, status=429, kind="server_overloaded", code="engine_overloaded"):
    """The engine's waiting queue is full (429, like a rate limit, with Retry-After)."""

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class ServiceUnavailableError(OpenAIError, status=503, code="service_unavailable"):
    """503 with Retry-After: the server is draining for shutdown, or a model's engine is down."""

    def __init__(self, message: str, code: str | None = None, retry_after_s: int = 5):
        super().__init__(message, code=code, headers={"Retry-After": str(retry_after_s)})


def error_response(exc: OpenAIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers or None)


def _param_from_loc(loc: tuple) -> str | None:
    parts = list(loc[1:]) if loc and loc[0] in ("body", "query", "path", "header") else list(loc)
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part == "[key]":  # a dict's key was wrong: blame the dict
            text = text.rsplit(".", 1)[0]
        elif not text:
            text = str(part)
        elif str(part).startswith(("function-after", "tagged-union", "list[", "str", "int")):
            continue  # pydantic's names for union branches say nothing to a client
        else:
            text += f".{part}"
    return text or None


_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}


def _body_problem(kind: str | None, received) -> str:
    """What is wrong with a body that is not a JSON object, in words a client can act on."""
    if kind == "missing" or received in (None, b"", ""):
        if received is None and kind != "missing":
            return "The request body must be a JSON object; it was null."
        return "The request body is empty; it must be a JSON object, sent with Content-Type: application/json."
    if isinstance(received, bytes):  # not parsed: no JSON content type
        return ("The request body must be a JSON object, sent with Content-Type: application/json (it came with "
                "another content type, or none).")
    return f"The request body must be a JSON object; it was {_JSON_KINDS.get(type(received), 'not an object')}."


def validation_error(exc: RequestValidationError) -> InvalidRequestError:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "Invalid request", "type": ""}
    if first.get("type") == "json_invalid":
        return InvalidRequestError(
            "We could not parse the JSON body of your request. The OpenAI API expects a JSON payload.",
            code="invalid_json",
        )
    loc = tuple(first.get("loc", ()))
    if loc == ("body",):  # the body as a whole is not an object
        kind, received = first.get("type"), first.get("input")
        unread = kind == "missing" or isinstance(received, bytes) or received == ""  # no JSON at all
        return InvalidRequestError(_body_problem(kind, received), code="invalid_json" if unread else "invalid_value")
    param = _param_from_loc(loc)
    if first.get("type") == "extra_forbidden":
        return InvalidRequestError(f"Unrecognized request argument supplied: {param}", param=param,
                                   code="unknown_parameter")
    if first.get("type") == "missing":
        return InvalidRequestError(f"Missing required parameter: '{param}'.", param=param,
                                   code="missing_required_parameter")
    message = str(first.get("msg", "Invalid value")).removeprefix("Value error, ")
    return InvalidRequestError(f"Invalid value for '{param}': {message}" if param else message, param=param,
                               code="invalid_value")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OpenAIError)
    async def _openai_error(request: Request, exc: OpenAIError) -> JSONResponse:
        request.state.error_type = exc.error_type  # for the metrics (which limit refused a request)
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc))

    @app.exception_handler(json.JSONDecodeError)
    async def _bad_json(_: Request, exc: json.JSONDecodeError) -> JSONResponse:
        return error_response(InvalidRequestError("We could not parse the JSON body of your request.",
                                                  code="invalid_json"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            err: OpenAIError = NotFoundError(f"Invalid URL ({request.method} {request.url.path})",
                                             code="unknown_url")
        elif exc.status_code == 400 and exc.__cause__ is not None:  # FastAPI could not read the body (bad UTF-8)
            err = InvalidRequestError("We could not parse the JSON body of your request (it must be UTF-8 JSON).",
                                      code="invalid_json")
        elif exc.status_code == 413:
            err = RequestTooLargeError(str(exc.detail))
        elif exc.status_code == 408:
            err = RequestTimeoutError(str(exc.detail))
        elif exc.status_code == 405:
            err = MethodNotAllowedError(f"Method {request.method} is not allowed for {request.url.path}")
        else:
            err = OpenAIError(str(exc.detail))
            err.status_code = exc.status_code
            err.error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        response = error_response(err)
        for key, value in (exc.headers or {}).items():
            response.headers[key] = value
        return response

    from sqlalchemy.exc import InterfaceError, OperationalError

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def _database_down(request: Request, exc: Exception) -> JSONResponse:
        # The database cannot be reached (a PostgreSQL restart, a network cut): the client may retry.
        log.error("database unavailable on %s %s: %s", request.method, request.url.path,
                  str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return error_response(ServiceUnavailableError("The database is unavailable; please try again shortly.",
                                                      code="database_unavailable", retry_after_s=2))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(InternalServerError("The server had an error while processing your request."))
