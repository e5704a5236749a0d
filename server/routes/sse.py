from collections.abc import AsyncIterator

from fastapi.responses import JSONResponse, StreamingResponse


def json_or_sse(result: dict | AsyncIterator[str]):
    if isinstance(result, dict):
        return JSONResponse(result)
    # no-cache and no proxy buffering, so each chunk reaches the client as it is made
    return StreamingResponse(result, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
