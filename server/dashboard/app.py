"""The dashboard at /dashboard: server-rendered pages (Jinja2), its own CSS and JS, no CDN.

It is a sub-application mounted on the API app: the API's bearer-key dependency does not apply here, and
the dashboard's own rules do instead. A browser signs in with an admin-scoped key once; the server keeps a
session (server/dashboard/sessions.py) and the browser only a random id in an HttpOnly, SameSite=Strict
cookie (Secure over TLS). Every form carries a CSRF token; a POST whose Origin is another site is refused
too. Failed sign-ins are rate-limited per client address. The pages reuse the API's services: keys, usage,
the limiter, models, files and stored responses, vector stores (vector_stores.py), always as the signed-in key's
owner, as the admin API does.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.auth.keys import ALL_SCOPES, API_SCOPES, GrantError, KeyAdminError
from server.dashboard import charts
from server.dashboard.sessions import SessionService, SignedIn
from server.dashboard.vector_stores import add_vector_store_pages
from server.errors import NotFoundError
from server.state import AppServices

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "ozwell_dashboard"
SIGNIN_COOKIE = "ozwell_dashboard_signin"  # the sign-in form's CSRF token (double submit), before any session
PATH = "/dashboard"
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                 b"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),  # no-referrer would make a browser send `Origin: null`
    (b"x-content-type-options", b"nosniff"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
NO_STORE = (b"cache-control", b"no-store")


class _SignInRequired(Exception):
    pass


class _Forbidden(Exception):
    def __init__(self, message: str):
        self.message = message


class SecurityHeaders:
    """Pure ASGI: the dashboard's security headers on every response; pages (not assets) are never cached;
    and the route's full path for the access log and the metrics."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        static = scope.get("path", "").startswith(f"{PATH}/static/")

        async def wrapped(message):
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), *SECURITY_HEADERS]
                if not static:
                    headers.append(NO_STORE)
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, wrapped)
        finally:
            # The access log and the HTTP metrics label requests by route: name the dashboard's in full
            # ("/dashboard/models", not the mount-relative "/models", which reads like an API route).
            route = scope.get("route")
            if route is not None and not getattr(route, "path", "").startswith(PATH):
                scope["route"] = SimpleNamespace(path=PATH + getattr(route, "path", ""))


def _when(value) -> str:
    if value is None:
        return "never"
    if isinstance(value, (int, float)):
        value = datetime.fromtimestamp(value, UTC)
    value = value if value.tzinfo else value.replace(tzinfo=UTC)
    return value.strftime("%Y-%m-%d %H:%M UTC")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _memory(n: int) -> str:
    """Bytes of memory in binary units: 490 KiB, 257 MiB, 1.50 GiB."""
    if n >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def create_dashboard(services: AppServices) -> FastAPI:
    settings = services.settings
    sessions = SessionService(services.keys.database, services.keys, settings.dashboard_session_ttl_s)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters.update(when=_when, size=_size, memory=_memory)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False)
    app.state.services, app.state.sessions = services, sessions
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    # ---- helpers ----------------------------------------------------------------------------
    def page(request: Request, name: str, status: int = 200, **context) -> HTMLResponse:
        return templates.TemplateResponse(request, name, context, status_code=status)

    def secure(request: Request) -> bool:
        return request.url.scheme == "https"

    async def signed_in(request: Request) -> SignedIn:
        found = await asyncio.to_thread(sessions.resolve, request.cookies.get(SESSION_COOKIE))
        if found is None:
            raise _SignInRequired()
        return found

    def same_origin(request: Request) -> bool:
        """A browser names the page that sent a POST in Origin (and says whence in Sec-Fetch-Site); a page
        from another origin, even of the same site, is refused outright."""
        if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return False
        origin = request.headers.get("origin")
        if origin is None or origin == "null":
            return origin is None
        return urlsplit(origin).netloc == request.headers.get("host", "")

    async def posted(request: Request, user: SignedIn) -> dict:
        """A signed-in form's fields, once its Origin and CSRF token check out."""
        form = await request.form()
        token = form.get("csrf_token")
        if not same_origin(request) or not isinstance(token, str) or \
                not hmac.compare_digest(token.encode(), user.csrf_token.encode()):
            raise _Forbidden("This form was not sent by the dashboard's own page (its CSRF token is missing or "
                             "wrong). Reload the page and try again.")
        return form

    @app.exception_handler(_SignInRequired)
    async def _to_signin(request: Request, _exc) -> Response:
        response = RedirectResponse(f"{PATH}/signin", status_code=303)
        if SESSION_COOKIE in request.cookies:
            response.delete_cookie(SESSION_COOKIE, path=PATH)
        return response

    @app.exception_handler(_Forbidden)
    async def _forbidden(request: Request, exc: _Forbidden) -> Response:
        return page(request, "error.html", 403, title="Refused", message=exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return page(request, "error.html", 404, title="Page not found",
                        message="There is no dashboard page at this address.")
        return page(request, "error.html", exc.status_code, title="Error", message=str(exc.detail))

    # ---- sign-in ----------------------------------------------------------------------------
    def signin_page(request: Request, status: int = 200, error: str | None = None,
                    headers: dict | None = None) -> Response:
        token = secrets.token_urlsafe(32)
        response = page(request, "signin.html", status, csrf_token=token, error=error)
        response.set_cookie(SIGNIN_COOKIE, token, max_age=3600, path=PATH, httponly=True, samesite="strict",
                            secure=secure(request))
        for name, value in (headers or {}).items():
            response.headers[name] = value
        return response

    async def record_failed_signin(request: Request) -> Response | None:
        """Count one failed sign-in against the client's address, atomically (the check and the record are one
        limiter call, so concurrent attempts cannot all pass a stale check), or the 429 once it is over the
        limit. Only failures count and only failures are refused: a valid admin key signs in from an address
        that others locked out (a key is 256 random bits; the lockout slows guessing, it is not the defence)."""
        window = f"dashboard-signin:{request.client.host if request.client else '-'}"
        decision, reservation = await services.limiter.reserve_tokens(window, settings.dashboard_signin_attempts, 1)
        if reservation is not None:
            await services.limiter.reconcile(reservation, 1)
        if decision.allowed:
            return None
        wait = max(int(decision.retry_after_s + 0.999), 1)
        return signin_page(request, 429, f"Too many failed sign-ins. Try again in {wait} s.",
                           {"Retry-After": str(wait)})

    @app.get("/signin")
    async def signin_form(request: Request) -> Response:
        return signin_page(request)

    @app.post("/signin")
    async def signin(request: Request) -> Response:
        form = await request.form()
        token, expected = form.get("csrf_token"), request.cookies.get(SIGNIN_COOKIE)
        if not same_origin(request) or not isinstance(token, str) or not expected or \
                not hmac.compare_digest(token.encode(), expected.encode()):
            return signin_page(request, 403, "The sign-in form had expired. Please try again.")
        key = form.get("api_key")
        result = await asyncio.to_thread(sessions.sign_in, key.strip()) if isinstance(key, str) else None
        if result is None:
            refusal = await record_failed_signin(request)
            if refusal is not None:
                return refusal
            return signin_page(request, 401, "That is not an active API key with the admin scope.")
        session_id, user = result
        response = RedirectResponse(f"{PATH}/keys", status_code=303)
        response.set_cookie(SESSION_COOKIE, session_id, max_age=max(int(settings.dashboard_session_ttl_s), 1),
                            path=PATH, httponly=True, samesite="strict", secure=secure(request))
        response.delete_cookie(SIGNIN_COOKIE, path=PATH)
        return response

    @app.post("/signout")
    async def signout(request: Request) -> Response:
        user = await signed_in(request)
        await posted(request, user)
        await asyncio.to_thread(sessions.sign_out, request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse(f"{PATH}/signin", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=PATH)
        return response

    @app.get("/")
    async def home(request: Request) -> Response:
        await signed_in(request)
        return RedirectResponse(f"{PATH}/keys", status_code=303)

    # ---- Settings -> API Keys -------------------------------------------------------------
    def grantable_scopes(user: SignedIn) -> list[str]:
        return [s for s in ALL_SCOPES if s in user.caller.scopes]

    async def keys_page(request: Request, user: SignedIn, status: int = 200, **extra) -> Response:
        keys = await asyncio.to_thread(services.keys.list, user.caller.owner)
        return page(request, "keys.html", status, user=user, keys=list(reversed(keys)), section="keys",
                    plans=services.keys.plans.names, scopes=grantable_scopes(user), default_scopes=API_SCOPES,
                    **extra)

    @app.get("/keys")
    async def keys(request: Request) -> Response:
        return await keys_page(request, await signed_in(request))

    @app.post("/keys")
    async def create_key(request: Request) -> Response:
        user = await signed_in(request)
        form = await posted(request, user)
        name, plan = str(form.get("name", "")).strip(), str(form.get("plan", "free"))
        scopes = [s for s in form.getlist("scopes") if isinstance(s, str)]
        fields = {"name": name, "plan": plan, "scopes": scopes}
        try:
            if not 1 <= len(name) <= 200:
                raise KeyAdminError("Give the key a name (1 to 200 characters).")
            if not scopes:
                raise KeyAdminError("Choose at least one scope.")
            limits = {}
            for field in ("rpm", "tpm"):
                raw = str(form.get(field, "")).strip()
                if raw:
                    if not raw.isdigit():
                        raise KeyAdminError(f"{field.upper()} must be a whole number.")
                    limits[field] = int(raw)
            record, plaintext = await asyncio.to_thread(
                services.keys.create, name=name, owner=user.caller.owner, plan=plan, scopes=scopes,
                grantor=user.caller, **limits)
        except GrantError as exc:
            return await keys_page(request, user, 403, error=str(exc), form=fields)
        except KeyAdminError as exc:
            return await keys_page(request, user, 400, error=str(exc), form=fields)
        # The only time the key is shown: in this response's body, which is never cached (no-store).
        return page(request, "key_created.html", 201, user=user, key=record, plaintext=plaintext, section="keys")

    async def owned_key(user: SignedIn, key_id: str):
        key = await asyncio.to_thread(services.keys.get, key_id)
        if key is None or key.owner != user.caller.owner:
            raise StarletteHTTPException(404)
        return key

    @app.get("/keys/{key_id}/revoke")
    async def confirm_revoke(key_id: str, request: Request) -> Response:
        user = await signed_in(request)
        return page(request, "revoke.html", user=user, key=await owned_key(user, key_id), section="keys")

    @app.post("/keys/{key_id}/revoke")
    async def revoke(key_id: str, request: Request) -> Response:
        user = await signed_in(request)
        await posted(request, user)
        key = await owned_key(user, key_id)
        await asyncio.to_thread(services.keys.revoke, key.id)
        return RedirectResponse(f"{PATH}/keys", status_code=303)

    # ---- Usage -----------------------------------------------------------------------------
    @app.get("/usage")
    async def usage(request: Request, window: str = "24h") -> Response:
        user = await signed_in(request)
        if window not in charts.WINDOWS:
            window = "24h"
        since, bucket_s, buckets = charts.window_start(window)
        owner = user.caller.owner
        summary = await asyncio.to_thread(services.usage.summary, owner, since, bucket_s, buckets)
        keys = await asyncio.to_thread(services.keys.list, owner)
        names = {k.id: f"{k.name} ({k.prefix}…)" for k in keys} | {"-": "(no key)"}
        live = []
        for key in keys:
            if key.revoked_at is not None:
                continue
            try:
                limits = services.keys.plans.limits_for(key.plan, key.rpm, key.tpm)
            except ValueError:  # its plan left the plans file: the key cannot authenticate, so has no window
                continue
            live.append({"key": key, "requests": await services.limiter.requests_state(key.id, limits.rpm),
                         "tokens": await services.limiter.tokens_state(key.id, limits.tpm)})
        return page(request, "usage.html", user=user, section="usage", window=window, windows=list(charts.WINDOWS),
                    summary=summary, requests_chart=charts.column_chart(summary["timeline"], "requests", bucket_s),
                    tokens_chart=charts.column_chart(summary["timeline"], "tokens", bucket_s),
                    by_key=charts.ranking(summary["by_key"], names), by_model=charts.ranking(summary["by_model"], {"-": "(no model)"}),
                    live=live)

    # ---- Models ----------------------------------------------------------------------------
    @app.get("/models")
    async def models(request: Request) -> Response:
        user = await signed_in(request)
        return page(request, "models.html", user=user, section="models", models=services.models.overview(),
                    resident_bytes=services.models.resident_bytes(), draining=services.lifecycle.draining)

    # ---- Files and stored responses -------------------------------------------------------
    @app.get("/files")
    async def files(request: Request) -> Response:
        user = await signed_in(request)
        listing = await asyncio.to_thread(services.files.list, user.caller.owner, None, 100, "desc", None)
        responses = await services.responses.list_stored(user.caller.owner, 100)
        return page(request, "files.html", user=user, section="files", files=listing["data"],
                    more_files=listing["has_more"], responses=responses)

    @app.post("/files/{file_id}/delete")
    async def delete_file(file_id: str, request: Request) -> Response:
        user = await signed_in(request)
        await posted(request, user)
        try:
            await asyncio.to_thread(services.files.delete, user.caller.owner, file_id)
        except NotFoundError:
            raise StarletteHTTPException(404) from None
        return RedirectResponse(f"{PATH}/files", status_code=303)

    @app.post("/responses/{response_id}/delete")
    async def delete_response(response_id: str, request: Request) -> Response:
        user = await signed_in(request)
        await posted(request, user)
        try:
            await services.responses.delete(user.caller.owner, response_id)
        except NotFoundError:
            raise StarletteHTTPException(404) from None
        return RedirectResponse(f"{PATH}/files#responses", status_code=303)

    add_vector_store_pages(app, services, page, signed_in, posted)
    return app
