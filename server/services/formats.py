"""The wire formats the generation services share: ids, finish reasons, logprobs, SSE framing."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator

from engines.protocol import GenerationEngine, TokenLogprobs
from server.errors import InternalServerError, OpenAIError

log = logging.getLogger("ozwell.server")

# Internal finish reasons mapped to OpenAI's. "abort" reaches a client only when the server
# itself stops a request; the engine has already freed its work then.
_FINISH_REASONS = {"stop": "stop", "length": "length", "abort": "stop"}


def openai_finish_reason(reason: str) -> str:
    return _FINISH_REASONS.get(reason, "stop")


def new_id(prefix: str, separator: str = "-") -> str:
    """`chatcmpl-...` and `cmpl-...`; the Responses API writes its ids with "_" (`resp_...`, `msg_...`)."""
    return f"{prefix}{separator}{uuid.uuid4().hex}"


def _token_entry(engine: GenerationEngine, token_id: int, logprob: float) -> dict:
    text = engine.token_text(token_id)
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def chat_logprobs(engine: GenerationEngine, token_ids: list[int], entries: list[TokenLogprobs]) -> dict:
    """OpenAI's chat shape: {"content": [{token, logprob, bytes, top_logprobs: [...]}], "refusal": null}."""
    return {"content": [{**_token_entry(engine, token_id, entry.logprob),
                         "top_logprobs": [_token_entry(engine, i, lp) for i, lp in entry.top]}
                        for token_id, entry in zip(token_ids, entries)], "refusal": None}


def legacy_logprobs(engine: GenerationEngine, token_ids: list[int], entries: list[TokenLogprobs | None],
                    offset: int = 0) -> dict:
    """The legacy completions shape: tokens, token_logprobs, top_logprobs (token -> logprob), text_offset.

    As OpenAI's, a position's top_logprobs holds the token there besides the top k (so up to k + 1 entries, and
    at `logprobs: 0` the token's own). An echoed prompt's first token has no logprob: None and None."""
    tokens = [engine.token_text(t) for t in token_ids]
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token)
    return {"tokens": tokens, "token_logprobs": [None if e is None else e.logprob for e in entries],
            "top_logprobs": [None if e is None else {**{engine.token_text(i): lp for i, lp in e.top},
                                                     token: e.logprob}
                             for token, e in zip(tokens, entries)],
            "text_offset": offsets}


def join_legacy_logprobs(head: dict, tail: dict) -> dict:
    """An echoed prompt's logprobs followed by its completion's (whose text_offset already continues)."""
    return {key: head[key] + tail[key] for key in head}


def sse(payload: dict) -> str:
    # ASCII only: a raw U+2028 or U+0085 in a line would split it for clients that split on str lines.
    return f"data: {json.dumps(payload, separators=(',', ':'), ensure_ascii=True)}\n\n"


def sse_event(kind: str, payload: dict) -> str:
    """A named event (the Responses API's semantic events)."""
    return f"event: {kind}\n{sse(payload)}"


SSE_DONE = "data: [DONE]\n\n"


def sse_error(exc: Exception) -> str:
    if not isinstance(exc, OpenAIError):
        log.exception("unexpected error while streaming", exc_info=exc)
        exc = InternalServerError("The server had an error while processing your request.")
    return sse(exc.body())


async def sse_stream(chunks: AsyncIterator[str]) -> AsyncIterator[str]:
    """A chat or completion stream: its chunks, an error reported in-band once it has started, then [DONE]."""
    try:
        async for chunk in chunks:
            yield chunk
    except Exception as exc:  # noqa: BLE001 - the stream has started; report in-band
        yield sse_error(exc)
    finally:
        await chunks.aclose()
    yield SSE_DONE
