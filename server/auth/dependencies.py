"""FastAPI dependencies: every route is authenticated unless it is listed in PUBLIC_PATHS.

Every API route is an `ApiRoute` (server/routing.py), which calls `authenticate_headers` from the headers
alone, before the body is read (issue #35). The app also installs `authenticate` as a global dependency
(deny by default), which finds the request authenticated already and does nothing, unless a route was
added some other way. Routers add `require_scope(...)`. Scopes are checked against the route as routed,
never a Host-derived URL.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from server.auth.keys import ADMIN_SCOPE, Caller
from server.context import RequestContext, owner_window
from server.errors import AuthenticationError, PermissionDeniedError, RateLimitError
from server.executors import cpu_owner, run_auth
from server.ratelimit import rate_limit_headers
from server.state import services

PUBLIC_PATHS = frozenset({"/health", "/ready"})  # probes: liveness and readiness

def _route_path(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", "")


async def authenticate(request: Request) -> None:
    if _route_path(request) in PUBLIC_PATHS or getattr(request.state, "ozwell_context", None) is not None:
        return  # a probe, or authenticated already by its route (and its request counted once)
    await authenticate_headers(request)


async def authenticate_headers(request: Request) -> None:
    """The caller from the Authorization header, its request counted against its RPM: the request's context,
    or 401/429. Reads no body, so a request without a valid key costs a key lookup and nothing more."""
    state = services(request)
    if not state.auth_enabled:
        request.state.ozwell_context = RequestContext.unauthenticated()
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise AuthenticationError("You didn't provide an API key. Send it as 'Authorization: Bearer ozw_...'.")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError("Malformed Authorization header: expected 'Bearer ozw_...'.")
    caller = await run_auth(state.keys.authenticate, token.strip())
    if caller is None:
        raise AuthenticationError("Incorrect API key provided.")
    settings = state.settings
    decision = await state.limiter.hit_request(caller.key_id, caller.limits.rpm)
    limit, whose = caller.limits.rpm, ""
    if decision.allowed and settings.owner_rpm is not None:  # the owner's window, across all its keys
        decision = await state.limiter.hit_request(owner_window(caller.owner), settings.owner_rpm)
        limit, whose = settings.owner_rpm, " for this key's owner"
    tokens = await state.limiter.tokens_state(caller.key_id, caller.limits.tpm)
    context = RequestContext(caller=caller, limiter=state.limiter, requests_state=decision.state,
                             owner_tpm=settings.owner_tpm, completion_reserve=settings.completion_reserve_tokens)
    context.headers = rate_limit_headers(decision.state, tokens, None if decision.allowed else decision.retry_after_s)
    request.state.ozwell_context = context
    cpu_owner.set(caller.owner)  # this request's CPU work runs within its owner's share (server/executors.py)
    if not decision.allowed:
        raise RateLimitError(
            f"Rate limit reached on requests per minute (RPM){whose}: limit {limit}. "
            f"Please try again in {decision.retry_after_s:.1f}s.", "requests", context.headers)


async def optional_caller(request: Request) -> Caller | None:
    """The caller of a public route who presents a valid key, else None (probes need no key, so no 401)."""
    state = services(request)
    if not state.auth_enabled:
        return None
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return await run_auth(state.keys.authenticate, token.strip())


def require_scope(scope: str):
    async def check(request: Request) -> None:
        context: RequestContext = request.state.ozwell_context
        if context.caller is not None and scope not in context.caller.scopes:
            what = "the admin API" if scope == ADMIN_SCOPE else f"the '{scope}' endpoints"
            raise PermissionDeniedError(f"This API key is not allowed to use {what}.", code="insufficient_scope")

    return Depends(check)


def _context(request: Request) -> RequestContext:
    return request.state.ozwell_context


Context = Annotated[RequestContext, Depends(_context)]
