"""How a generation route answers: one service call, as JSON or as a server-sent event stream."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable

from fastapi import Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from server.context import RequestContext
from server.executors import run_cpu

CLIENT_CLOSED = 499  # nginx's status for a request whose client left first (it reaches only the log)


async def json_or_sse(result: dict | AsyncIterator[str]):
    if isinstance(result, dict):  # rendered on the CPU pool: 2,048 embeddings are 15 MB of JSON (issue #35)
        return Response(await run_cpu(_render, result), media_type="application/json")
    # no-cache and no proxy buffering, so each chunk reaches the client as it is made
    return StreamingResponse(result, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def respond(request: Request, context: RequestContext, work: Awaitable[dict | AsyncIterator[str]]) -> Response:
    """Run one service call for a route.

    A client that leaves before a whole (non-streamed) answer is ready cancels the call, so the engine
    aborts its sequences and frees their KV blocks at once, as it does for a stream whose client leaves
    (StreamingResponse watches those). A call that fails gives back the tokens it had reserved."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_client_gone(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            return Response(status_code=CLIENT_CLOSED)
        result = task.result()
    except BaseException:
        await context.release()
        raise
    finally:
        watcher.cancel()
        task.cancel()  # a no-op once it is done; stops it if this handler itself was cancelled
    return await json_or_sse(result)


def _render(content: dict) -> bytes:
    return JSONResponse(content).body


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the body has been read, so the next message says so)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
