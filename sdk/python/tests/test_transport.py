"""Errors, retries and streams at the edges a healthy server does not show: connection refused, a server
that never answers, a stream cut short, Retry-After as a date or too long to wait. Scripted loopback
servers (fake_server.py) play the other side; no Ozwell server is needed."""

from __future__ import annotations

import asyncio
import email.utils
import json
import time

import pytest
from ozwell import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AsyncOzwell,
    InternalServerError,
    Ozwell,
    StreamInterruptedError,
)
from ozwell._client import DEFAULT_BASE_URL
from ozwell._ratelimit import parse_retry_after, retry_delay

from .fake_server import FakeServer, SilentServer, free_port, partial_stream, respond

CHUNK = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
         "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}, "finish_reason": None}]}
COMPLETION = {"id": "chatcmpl-2", "object": "chat.completion", "created": 1, "model": "m",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
MESSAGES = [{"role": "user", "content": "Hi"}]


def sse(payload: object) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


def test_defaults_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OZWELL_API_KEY", raising=False)
    monkeypatch.delenv("OZWELL_BASE_URL", raising=False)
    bare = Ozwell()
    assert (bare.api_key, bare.base_url, bare.max_retries, bare.timeout) == (None, DEFAULT_BASE_URL, 2, 600.0)
    assert DEFAULT_BASE_URL == "http://127.0.0.1:8000/v1"
    monkeypatch.setenv("OZWELL_API_KEY", "ozw_env")
    monkeypatch.setenv("OZWELL_BASE_URL", "http://example.test:9/v1/")
    from_env = Ozwell()
    assert (from_env.api_key, from_env.base_url) == ("ozw_env", "http://example.test:9/v1")
    given = Ozwell(api_key="ozw_arg", base_url="http://h:1/v1", timeout=3, max_retries=0)
    assert (given.api_key, given.base_url, given.timeout, given.max_retries) == ("ozw_arg", "http://h:1/v1", 3, 0)


def test_connection_refused_is_retried_with_backoff_then_raised() -> None:
    client = Ozwell(base_url=f"http://127.0.0.1:{free_port()}/v1", api_key="k", max_retries=1)
    started = time.monotonic()
    with pytest.raises(APIConnectionError) as caught:
        client.models.list()
    elapsed = time.monotonic() - started
    assert not isinstance(caught.value, APITimeoutError)
    assert 0.375 <= elapsed < 3, elapsed  # one backoff of 0.5 s less up to a quarter of jitter


def test_a_server_that_never_answers_times_out() -> None:
    with SilentServer() as silent:
        client = Ozwell(base_url=silent.url, api_key="k", timeout=0.3, max_retries=0)
        started = time.monotonic()
        with pytest.raises(APITimeoutError):
            client.chat.completions.create(model="m", messages=MESSAGES)
        assert 0.25 <= time.monotonic() - started < 5


def test_per_call_timeout_overrides_the_client() -> None:
    with SilentServer() as silent:
        client = Ozwell(base_url=silent.url, api_key="k", timeout=60, max_retries=0)
        started = time.monotonic()
        with pytest.raises(APITimeoutError):
            client.models.list(timeout=0.2)
        assert time.monotonic() - started < 5


def test_a_cut_stream_raises_and_is_not_retried() -> None:
    with FakeServer(partial_stream([sse(CHUNK)]), respond(200, json.dumps(COMPLETION).encode())) as fake:
        client = Ozwell(base_url=fake.url, api_key="k", max_retries=2)
        stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        received = []
        with pytest.raises(StreamInterruptedError):
            for chunk in stream:
                received.append(chunk.choices[0].delta.content)
        assert received == ["Hel"]  # the part that came, then the error instead of a quiet end
        assert len(fake.requests) == 1  # never retried once a byte has arrived


def test_a_cut_stream_raises_in_the_async_client() -> None:
    async def main() -> list[str | None]:
        with FakeServer(partial_stream([sse(CHUNK), b"data: {\"id\""])) as fake:
            async with AsyncOzwell(base_url=fake.url, api_key="k") as client:
                stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
                received = []
                with pytest.raises(StreamInterruptedError):
                    async for chunk in stream:
                        received.append(chunk.choices[0].delta.content)
                return received

    assert asyncio.run(main()) == ["Hel"]


def test_a_cut_responses_stream_raises() -> None:
    created = {"type": "response.created", "sequence_number": 0, "response": {
        "id": "resp_1", "object": "response", "created_at": 1, "status": "in_progress", "model": "m", "output": []}}
    with FakeServer(partial_stream([b"event: response.created\n" + sse(created)])) as fake:
        client = Ozwell(base_url=fake.url, api_key="k")
        kinds = []
        with pytest.raises(StreamInterruptedError):
            for event in client.responses.create(model="m", input="Hi", stream=True):
                kinds.append(event.type)
        assert kinds == ["response.created"]


def test_an_error_sent_in_the_stream_raises_api_error() -> None:
    error = {"error": {"message": "The engine failed.", "type": "server_error", "param": None, "code": "boom"}}
    with FakeServer(partial_stream([sse(CHUNK), sse(error), b"data: [DONE]\n\n"])) as fake:
        client = Ozwell(base_url=fake.url, api_key="k")
        with pytest.raises(APIError) as caught:
            list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
        assert (caught.value.message, caught.value.code, caught.value.type) == ("The engine failed.", "boom",
                                                                                 "server_error")


def test_retry_after_as_an_http_date_is_waited() -> None:
    when = email.utils.formatdate(time.time() + 2, usegmt=True)  # whole seconds: 1 to 2 s from now
    error = json.dumps({"error": {"message": "busy", "type": "server_error", "param": None, "code": None}})
    with FakeServer(respond(503, error.encode(), {"Retry-After": when}),
                    respond(200, json.dumps(COMPLETION).encode())) as fake:
        client = Ozwell(base_url=fake.url, api_key="k", max_retries=1)
        started = time.monotonic()
        completion = client.chat.completions.create(model="m", messages=MESSAGES)
        elapsed = time.monotonic() - started
    assert completion.choices[0].message.content == "ok" and len(fake.requests) == 2
    assert 0.9 <= elapsed < 3.5, elapsed


def test_retry_after_of_a_minute_or_more_falls_back_to_backoff() -> None:
    error = json.dumps({"error": {"message": "busy", "type": "server_error", "param": None, "code": None}})
    with FakeServer(respond(500, error.encode(), {"Retry-After": "120"}),
                    respond(200, json.dumps(COMPLETION).encode())) as fake:
        client = Ozwell(base_url=fake.url, api_key="k", max_retries=1)
        started = time.monotonic()
        client.chat.completions.create(model="m", messages=MESSAGES)
        assert 0.375 <= time.monotonic() - started < 2  # the first backoff, not two minutes
    with FakeServer(respond(500, error.encode())) as fake:
        with pytest.raises(InternalServerError) as caught:
            Ozwell(base_url=fake.url, api_key="k", max_retries=0).models.list()
        assert caught.value.status == 500 and caught.value.message == "busy" and len(fake.requests) == 1


def test_backoff_schedule() -> None:
    for retries_done, ceiling in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)]:
        delays = [retry_delay(retries_done, None) for _ in range(200)]
        assert all(0.75 * ceiling <= delay <= ceiling for delay in delays), (retries_done, min(delays), max(delays))
        assert len(set(delays)) > 1  # jittered
    assert retry_delay(0, {"Retry-After": "3"}) == 3.0
    assert retry_delay(0, {"retry-after-ms": "250"}) == 0.25
    assert retry_delay(0, {"Retry-After": "60"}) <= 0.5
    assert parse_retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, now=1445412470.0) == 10.0
    assert parse_retry_after({"Retry-After": "soon"}) is None
