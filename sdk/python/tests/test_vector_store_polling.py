"""The vector store poll helpers against scripted servers (fake_server.py): they wait as the server's
`openai-poll-after-ms` says unless told an interval, stop at a settled status, and raise TimeoutError at
`max_wait_seconds`; the paths they poll are the spec's. No Ozwell server is needed."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from ozwell import AsyncOzwell, Ozwell

from .fake_server import FakeServer, respond

COUNTS = {"in_progress": 0, "completed": 0, "failed": 0, "cancelled": 0, "total": 1}


def vs_file(status: str, hint_ms: int | None = None) -> object:
    body = {"id": "file-1", "object": "vector_store.file", "usage_bytes": 0, "created_at": 1,
            "vector_store_id": "vs_1", "status": status, "last_error": None}
    return respond(200, json.dumps(body).encode(), {"openai-poll-after-ms": str(hint_ms)} if hint_ms else None)


def batch(in_progress: int) -> object:
    counts = {**COUNTS, "in_progress": in_progress, "completed": 1 - in_progress}
    body = {"id": "vsfb_1", "object": "vector_store.files_batch", "created_at": 1, "vector_store_id": "vs_1",
            "status": "in_progress" if in_progress else "completed", "file_counts": counts}
    return respond(200, json.dumps(body).encode(), {"openai-poll-after-ms": "50"})


def test_file_poll_waits_as_the_server_hints_and_stops_when_settled() -> None:
    with FakeServer(vs_file("in_progress", 50), vs_file("in_progress", 50), vs_file("failed")) as fake:
        client = Ozwell(base_url=fake.url, api_key="k")
        started = time.monotonic()
        file = client.vector_stores.files.poll("file-1", vector_store_id="vs_1")
        elapsed = time.monotonic() - started
    assert file.status == "failed" and len(fake.requests) == 3
    assert 0.1 <= elapsed < 0.9, elapsed  # two waits of 50 ms, not the 1 s default
    assert fake.requests[0].startswith(b"GET /v1/vector_stores/vs_1/files/file-1 HTTP/1.1")


def test_poll_interval_ms_overrides_the_hint() -> None:
    with FakeServer(vs_file("in_progress", 5000), vs_file("completed")) as fake:
        client = Ozwell(base_url=fake.url, api_key="k")
        started = time.monotonic()
        assert client.vector_stores.files.poll("file-1", vector_store_id="vs_1", poll_interval_ms=20).status == \
            "completed"
        assert time.monotonic() - started < 2


def test_max_wait_seconds_raises_timeout_error() -> None:
    with FakeServer(vs_file("in_progress", 50)) as fake:
        client = Ozwell(base_url=fake.url, api_key="k")
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            client.vector_stores.files.poll("file-1", vector_store_id="vs_1", max_wait_seconds=0.3)
        assert 0.25 <= time.monotonic() - started < 2
        with pytest.raises(ValueError):
            client.vector_stores.files.poll("file-1", vector_store_id="vs_1", max_wait_seconds=-1)


def test_batch_poll_waits_until_no_file_is_in_progress_in_the_async_client() -> None:
    async def main() -> None:
        with FakeServer(batch(1), batch(1), batch(0)) as fake:
            async with AsyncOzwell(base_url=fake.url, api_key="k") as client:
                done = await client.vector_stores.file_batches.poll("vsfb_1", vector_store_id="vs_1")
            assert done.status == "completed" and done.file_counts.in_progress == 0 and len(fake.requests) == 3
            assert fake.requests[0].startswith(b"GET /v1/vector_stores/vs_1/file_batches/vsfb_1 HTTP/1.1")

    asyncio.run(main())
