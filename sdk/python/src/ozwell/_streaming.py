"""Server-sent events: a small line decoder, and the streams the SDK hands out. A stream must reach its
end marker ([DONE] for chat and completions, a final `response.*` event for the Responses API); one
that stops short raises StreamInterruptedError instead of ending quietly. An `error` sent in-band
raises APIError."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, TypeVar

import httpx

from ozwell.errors import APIError, APITimeoutError, StreamInterruptedError

T = TypeVar("T")


@dataclass
class ServerSentEvent:
    event: str | None
    data: str


class SSEDecoder:
    """Feed it lines (without their line break); it returns an event at each blank line. An event
    the stream's end cuts before its blank line is never dispatched (as the SSE spec says)."""

    def __init__(self) -> None:
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, line: str) -> ServerSentEvent | None:
        if not line:
            if not self._data and self._event is None:
                return None
            event = ServerSentEvent(self._event, "\n".join(self._data))
            self._event, self._data = None, []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None


class _Lines:
    """Splits decoded text into lines on \\n, \\r\\n or \\r (only those: SSE's line breaks)."""

    _BREAK = re.compile(r"\r\n|\r|\n")

    def __init__(self) -> None:
        self._buffer = ""

    def feed(self, text: str) -> list[str]:
        buffer, lines, start = self._buffer + text, [], 0
        for match in self._BREAK.finditer(buffer):
            if match.group() == "\r" and match.end() == len(buffer):
                break  # a \r that a \n may follow in the next piece
            lines.append(buffer[start:match.start()])
            start = match.end()
        self._buffer = buffer[start:]
        return lines


class _Protocol(Generic[T]):
    """What a stream's events mean: which event ends it, and how one is turned into a T."""

    def __init__(self, parse: Callable[[dict[str, Any]], T], final_events: frozenset[str] | None) -> None:
        self.parse = parse
        self.final_events = final_events  # None: the stream ends with data: [DONE]
        self.done = False

    def handle(self, sse: ServerSentEvent) -> T | None:
        if sse.data == "[DONE]":
            self.done = True
            return None
        try:
            payload = json.loads(sse.data)
        except json.JSONDecodeError:
            raise APIError(f"The server sent an event that is not JSON: {sse.data[:200]!r}") from None
        if not isinstance(payload, dict):
            raise APIError(f"The server sent an unexpected event: {sse.data[:200]!r}")
        kind = payload.get("type", sse.event)
        if kind == "error" or (self.final_events is None and "error" in payload and "choices" not in payload):
            error = payload.get("error", payload)
            message = error.get("message") if isinstance(error, dict) else None
            raise APIError(message or "The server reported an error in the stream.", body={"error": error})
        if self.final_events is not None and kind in self.final_events:
            self.done = True
        return self.parse(payload)

    def end(self) -> None:
        if not self.done:
            raise StreamInterruptedError("The stream ended before it was complete: the server or the network "
                                         "cut it.")


class Stream(Generic[T]):
    """A synchronous stream of parsed events; iterate it once. Use it as a context manager, or call
    close(), to release the connection when leaving early."""

    def __init__(self, response: httpx.Response, parse: Callable[[dict[str, Any]], T],
                 final_events: frozenset[str] | None = None) -> None:
        self.response = response
        self._protocol = _Protocol(parse, final_events)
        self._iterator = self._events()

    def __iter__(self) -> Iterator[T]:
        return self._iterator

    def __next__(self) -> T:
        return next(self._iterator)

    def _events(self) -> Iterator[T]:
        decoder, lines = SSEDecoder(), _Lines()
        try:
            try:
                for text in self.response.iter_text():
                    for line in lines.feed(text):
                        sse = decoder.feed(line)
                        if sse is not None and (item := self._protocol.handle(sse)) is not None:
                            yield item
            except httpx.TimeoutException:
                raise APITimeoutError("The stream timed out waiting for the server.") from None
            except httpx.HTTPError as exc:
                raise StreamInterruptedError(f"The stream was cut: {exc}") from exc
            self._protocol.end()
        finally:
            self.response.close()

    def close(self) -> None:
        self.response.close()

    def __enter__(self) -> Stream[T]:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


class AsyncStream(Generic[T]):
    """The asynchronous stream: `async for event in stream`, and `async with` or `await close()`."""

    def __init__(self, response: httpx.Response, parse: Callable[[dict[str, Any]], T],
                 final_events: frozenset[str] | None = None) -> None:
        self.response = response
        self._protocol = _Protocol(parse, final_events)
        self._iterator = self._events()

    def __aiter__(self) -> AsyncIterator[T]:
        return self._iterator

    async def __anext__(self) -> T:
        return await self._iterator.__anext__()

    async def _events(self) -> AsyncIterator[T]:
        decoder, lines = SSEDecoder(), _Lines()
        try:
            try:
                async for text in self.response.aiter_text():
                    for line in lines.feed(text):
                        sse = decoder.feed(line)
                        if sse is not None and (item := self._protocol.handle(sse)) is not None:
                            yield item
            except httpx.TimeoutException:
                raise APITimeoutError("The stream timed out waiting for the server.") from None
            except httpx.HTTPError as exc:
                raise StreamInterruptedError(f"The stream was cut: {exc}") from exc
            self._protocol.end()
        finally:
            await self.response.aclose()

    async def close(self) -> None:
        await self.response.aclose()

    async def __aenter__(self) -> AsyncStream[T]:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, value: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.close()
