"""The clients: options, the HTTP core with its retries, and the resource tree."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx

from ozwell._ratelimit import RateLimitInfo, retry_delay, should_retry
from ozwell._version import __version__
from ozwell.errors import APIConnectionError, APITimeoutError, OzwellError, status_error
from ozwell.types import RequestOptions

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
DEFAULT_TIMEOUT_S = 600.0
DEFAULT_MAX_RETRIES = 2


@dataclass
class FinalRequest:
    """One API call as the resources describe it."""

    method: str
    path: str
    json: Any = None
    params: Mapping[str, Any] | None = None
    files: Any = None  # httpx multipart files
    data: Mapping[str, Any] | None = None  # multipart text fields
    stream: bool = False
    replayable: bool = True  # False for an upload from a stream that cannot be rewound
    options: RequestOptions = field(default_factory=lambda: RequestOptions())
    closes: list[Any] = field(default_factory=list)  # files the SDK opened for this call, closed after it


class _BaseClient:
    api_key: str | None
    base_url: str
    timeout: float
    max_retries: int
    last_rate_limit: RateLimitInfo | None

    def __init__(self, api_key: str | None, base_url: str | None, timeout: float | None, max_retries: int | None,
                 default_headers: Mapping[str, str] | None) -> None:
        self.api_key = api_key if api_key is not None else os.environ.get("OZWELL_API_KEY") or None
        self.base_url = (base_url or os.environ.get("OZWELL_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.timeout = DEFAULT_TIMEOUT_S if timeout is None else timeout
        self.max_retries = DEFAULT_MAX_RETRIES if max_retries is None else max_retries
        if self.max_retries < 0:
            raise OzwellError("max_retries must be 0 or more")
        self.default_headers = dict(default_headers or {})
        self.last_rate_limit = None  # the rate-limit headers of the latest response that had them

    def _headers(self, request: FinalRequest) -> dict[str, str]:
        headers = {"Accept": "text/event-stream" if request.stream else "application/json",
                   "User-Agent": f"ozwell-python/{__version__}", **self.default_headers}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        headers.update(request.options.get("extra_headers") or {})
        return headers

    def _build(self, http: httpx.Client | httpx.AsyncClient, request: FinalRequest) -> httpx.Request:
        options = request.options
        body = request.json
        if options.get("extra_body"):
            body = {**(body or {}), **options["extra_body"]}
        params = {k: v for k, v in {**(request.params or {}), **(options.get("extra_query") or {})}.items()
                  if v is not None}
        timeout = options.get("timeout", self.timeout)
        return http.build_request(request.method, self.base_url + request.path, json=body, params=params or None,
                                  files=request.files, data=request.data, headers=self._headers(request),
                                  timeout=httpx.Timeout(timeout))

    def _retries(self, request: FinalRequest) -> int:
        return request.options.get("max_retries", self.max_retries) if request.replayable else 0

    def _note(self, response: httpx.Response) -> None:
        info = RateLimitInfo.from_headers(response.headers)
        if info.present:
            self.last_rate_limit = info


def _error_body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


class SyncHTTP(_BaseClient):
    _http: httpx.Client

    def request(self, request: FinalRequest) -> httpx.Response:
        """Send with retries; a stream's response comes back unread (and is never retried once it has a
        status below 400), any other's read."""
        try:
            return self._send(request)
        finally:
            for handle in request.closes:
                handle.close()

    def _send(self, request: FinalRequest) -> httpx.Response:
        built = self._build(self._http, request)
        retries = self._retries(request)
        for attempt in range(retries + 1):
            last = attempt == retries
            try:
                response = self._http.send(built, stream=request.stream)
            except httpx.TimeoutException as exc:
                if last:
                    raise APITimeoutError() from exc
                time.sleep(retry_delay(attempt, None))
                continue
            except httpx.HTTPError as exc:
                if last:
                    raise APIConnectionError(f"Connection error: {exc}") from exc
                time.sleep(retry_delay(attempt, None))
                continue
            self._note(response)
            if response.status_code < 400:
                return response
            response.read()
            response.close()
            if not last and should_retry(response.status_code):
                time.sleep(retry_delay(attempt, response.headers))
                continue
            raise status_error(response, _error_body(response))
        raise AssertionError("unreachable")


class AsyncHTTP(_BaseClient):
    _http: httpx.AsyncClient

    async def request(self, request: FinalRequest) -> httpx.Response:
        try:
            return await self._send(request)
        finally:
            for handle in request.closes:
                handle.close()

    async def _send(self, request: FinalRequest) -> httpx.Response:
        built = self._build(self._http, request)
        retries = self._retries(request)
        for attempt in range(retries + 1):
            last = attempt == retries
            try:
                response = await self._http.send(built, stream=request.stream)
            except httpx.TimeoutException as exc:
                if last:
                    raise APITimeoutError() from exc
                await asyncio.sleep(retry_delay(attempt, None))
                continue
            except httpx.HTTPError as exc:
                if last:
                    raise APIConnectionError(f"Connection error: {exc}") from exc
                await asyncio.sleep(retry_delay(attempt, None))
                continue
            self._note(response)
            if response.status_code < 400:
                return response
            await response.aread()
            await response.aclose()
            if not last and should_retry(response.status_code):
                await asyncio.sleep(retry_delay(attempt, response.headers))
                continue
            raise status_error(response, _error_body(response))
        raise AssertionError("unreachable")


class Ozwell(SyncHTTP):
    """The synchronous client.

    `api_key` defaults to $OZWELL_API_KEY; `base_url` to $OZWELL_BASE_URL, then http://127.0.0.1:8000/v1.
    `timeout` is in seconds (default 600); `max_retries` (default 2) applies to 408, 409, 429, 5xx and
    connection errors."""

    def __init__(self, *, api_key: str | None = None, base_url: str | None = None, timeout: float | None = None,
                 max_retries: int | None = None, default_headers: Mapping[str, str] | None = None,
                 http_client: httpx.Client | None = None) -> None:
        super().__init__(api_key, base_url, timeout, max_retries, default_headers)
        self._http = http_client or httpx.Client()
        from ozwell.resources import (
            Admin,
            Batches,
            Chat,
            Completions,
            Embeddings,
            Files,
            Models,
            Responses,
        )
        from ozwell.vector_stores import VectorStores

        self.chat = Chat(self)
        self.completions = Completions(self)
        self.embeddings = Embeddings(self)
        self.models = Models(self)
        self.files = Files(self)
        self.batches = Batches(self)
        self.responses = Responses(self)
        self.vector_stores = VectorStores(self)
        self.admin = Admin(self)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Ozwell:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


class AsyncOzwell(AsyncHTTP):
    """The asynchronous client; the same options and resources as `Ozwell`, with awaitable methods."""

    def __init__(self, *, api_key: str | None = None, base_url: str | None = None, timeout: float | None = None,
                 max_retries: int | None = None, default_headers: Mapping[str, str] | None = None,
                 http_client: httpx.AsyncClient | None = None) -> None:
        super().__init__(api_key, base_url, timeout, max_retries, default_headers)
        self._http = http_client or httpx.AsyncClient()
        from ozwell.async_vector_stores import AsyncVectorStores
        from ozwell.resources import (
            AsyncAdmin,
            AsyncBatches,
            AsyncChat,
            AsyncCompletions,
            AsyncEmbeddings,
            AsyncFiles,
            AsyncModels,
            AsyncResponses,
        )

        self.chat = AsyncChat(self)
        self.completions = AsyncCompletions(self)
        self.embeddings = AsyncEmbeddings(self)
        self.models = AsyncModels(self)
        self.files = AsyncFiles(self)
        self.batches = AsyncBatches(self)
        self.responses = AsyncResponses(self)
        self.vector_stores = AsyncVectorStores(self)
        self.admin = AsyncAdmin(self)

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncOzwell:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, value: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.close()
