"""Response middleware (pure ASGI, so it works for streams): puts the rate-limit headers on every
authenticated response and writes one usage record when the response is done."""

from __future__ import annotations

import asyncio
import logging
import time

log = logging.getLogger("ozwell.server")


class RateLimitHeadersAndUsage:
    def __init__(self, app, usage_service_getter):
        self.app = app
        self._usage = usage_service_getter

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        scope.setdefault("state", {})  # shared with request.state, even where the scope is copied
        status = {"code": 500}

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                context = scope.get("state", {}).get("ozwell_context")
                if context is not None and context.headers:
                    existing = {k.decode("latin-1").lower() for k, _ in message.get("headers", [])}
                    extra = [(k.lower().encode("latin-1"), v.encode("latin-1"))
                             for k, v in context.headers.items() if k.lower() not in existing]
                    message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            await self._record(scope, status["code"], started)

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
        except Exception:  # noqa: BLE001 - metering must not break a response that was already sent
            log.exception("could not write the usage record")
