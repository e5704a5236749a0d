"""ApiRoute: every API route's front door, so that nothing heavy runs before the key is checked, and nothing
that grows with the body runs on the event loop (issue #35).

FastAPI's handler reads and json-decodes a body before any dependency runs, so an unauthenticated 8 MB body
cost 0.5 s of the loop before its 401. This route's handler first authenticates from the headers (the same
`authenticate_headers` the global dependency would call; that dependency then finds the request done and
does nothing). Then a JSON body over INLINE_BODY_BYTES is decoded with json.loads and validated against the
route's body model on the bounded CPU pool, within the owner's share (server/executors.py). Why not
pydantic's `model_validate_json`: it held the GIL for the whole 0.8 s of a 12 MB body, where json.loads plus
`model_validate` let another thread in every few ms. FastAPI's handler then finds the work done: Starlette
keeps the decoded body on the request (`_json`), and pydantic does not revalidate an instance of the model.
A smaller body is left to FastAPI: decoding it inline costs less than the hop to a thread.

Errors are FastAPI's own (RequestValidationError, a 400 HTTPException for a body that is not UTF-8), so a
client sees the same OpenAI-shaped 400 either way (server/errors.py).
"""

from __future__ import annotations

import email.message
import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import params
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from server.auth.dependencies import PUBLIC_PATHS, authenticate_headers
from server.executors import run_cpu

INLINE_BODY_BYTES = 32 * 1024  # decoded on the loop by FastAPI: well under a millisecond


def _is_json(content_type: str | None) -> bool:
    """As FastAPI decides whether to decode a body (an absent content type is not JSON: strict)."""
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def decode_body(body: bytes, field) -> Any:
    """The body as the route's model (blocking: run it on the CPU pool); FastAPI's errors for a bad one."""
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error",
                                       "input": {}, "ctx": {"error": exc.msg}}]) from None
    except Exception as exc:  # not UTF-8, nested too deep: as FastAPI answers it
        raise HTTPException(status_code=400, detail="There was an error parsing the body") from exc
    model, errors = field.validate(value, {}, loc=("body",))
    if errors:
        raise RequestValidationError(errors)
    return model


class ApiRoute(APIRoute):
    """The route class of every API router (`APIRouter(route_class=ApiRoute)`)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        public = self.path in PUBLIC_PATHS
        field = self._json_body_field()

        async def route_handler(request: Request) -> Response:
            if not public:
                await authenticate_headers(request)
            if field is not None and _is_json(request.headers.get("content-type")):
                body = await request.body()
                if len(body) > INLINE_BODY_BYTES:
                    request._json = await run_cpu(decode_body, body, field)  # Starlette's cache of request.json()
            return await handler(request)

        return route_handler

    def _json_body_field(self):
        """The route's one body model when it is decoded from JSON and validated whole (not embedded, no form)."""
        field = self.body_field
        if field is None or self._embed_body_fields:
            return None
        if isinstance(field.field_info, params.Form):
            return None
        return field
