"""The shared stores without model servers: the Redis limiter against the in-memory one, the migrations
on PostgreSQL as on SQLite, and the sweep of a files directory that several replicas share."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from server.db.database import Database, open_database
from server.ratelimit import InMemoryRateLimiter
from server.ratelimit_redis import RateLimiterUnavailable, RedisRateLimiter
from server.services.files import STALE_AFTER_S, FileService
from tests.process import free_port


@pytest.fixture
def limiter(redis_server):
    redis_server.cli("FLUSHALL")
    return RedisRateLimiter(redis_server.url)


def test_concurrent_hits_and_reservations_are_exact(limiter):
    async def run():
        hits = await asyncio.gather(*(limiter.hit_request("key_a", 20) for _ in range(60)))
        reservations = await asyncio.gather(*(limiter.reserve_tokens("key_a", 1000, 70) for _ in range(30)))
        return hits, reservations

    hits, reservations = asyncio.run(run())
    assert sum(d.allowed for d in hits) == 20
    assert sorted(d.state.remaining for d in hits if d.allowed) == list(range(20))
    refused = [d for d in hits if not d.allowed]
    assert all(0 < d.retry_after_s <= 60 and d.state.remaining == 0 for d in refused)
    admitted = [d for d, held in reservations if d.allowed]
    assert len(admitted) == 1000 // 70  # 14: a 15th would pass 1000
    # Only running reservations stand in the way: the short hint, as in memory.
    assert all(d.retry_after_s == 2.0 for d, _ in reservations if not d.allowed)


def test_a_burst_larger_than_the_connection_pool_waits_instead_of_failing(redis_server):
    redis_server.cli("FLUSHALL")

    async def run():
        limiter = RedisRateLimiter(redis_server.url, max_connections=4)
        try:
            return await asyncio.gather(*(limiter.hit_request("burst", 150) for _ in range(200)))
        finally:
            await limiter.close()

    decisions = asyncio.run(run())
    assert sum(d.allowed for d in decisions) == 150


def test_same_decisions_as_the_in_memory_limiter(limiter):
    """One sequence of steps through both limiters: the same allowed/refused, remaining and never."""

    async def steps(rl):
        out = []
        d, first = await rl.reserve_tokens("k", 100, 30)
        out.append((d.allowed, d.state.remaining))
        d, second = await rl.reserve_tokens("k", 100, 50)
        out.append((d.allowed, d.state.remaining))
        d = await rl.resize(first, 100, 60)  # 60 + 50 > 100: refused, left as it was
        out.append((d.allowed, d.state.remaining, d.retry_after_s))
        d = await rl.resize(first, 100, 45)
        out.append((d.allowed, d.state.remaining))
        await rl.reconcile(second, 10)  # refund 40
        out.append((await rl.tokens_state("k", 100)).remaining)
        d, never = await rl.reserve_tokens("k", 100, 101)
        out.append((d.allowed, d.never, never))
        d, third = await rl.reserve_tokens("k", 100, 46)  # 45 + 10 + 46 > 100, nothing running but 45
        out.append((d.allowed, d.state.remaining, d.retry_after_s > 2))
        await rl.hit_request("k", 5)
        await rl.hit_request("k", 5)
        state = await rl.requests_state("k", 5)  # the dashboard's live view: counts nothing
        out.append((state.limit, state.remaining, (await rl.requests_state("k", 5)).remaining))
        return out

    memory = asyncio.run(steps(InMemoryRateLimiter()))
    shared = asyncio.run(steps(limiter))
    assert shared == memory
    assert memory[2] == (False, 20, 2.0)


def test_window_moves_on_redis_time(limiter, redis_server, monkeypatch):
    import server.ratelimit_redis as module

    monkeypatch.setattr(module, "WINDOW_S", 1.0)

    async def run():
        first = [await limiter.hit_request("short", 2) for _ in range(3)]
        await asyncio.sleep(1.05)
        return first, await limiter.hit_request("short", 2)

    first, later = asyncio.run(run())
    assert [d.allowed for d in first] == [True, True, False]
    assert 0 < first[2].retry_after_s <= 1.0
    assert later.allowed


def test_unreachable_redis_raises_a_503():
    limiter = RedisRateLimiter(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
    with pytest.raises(RateLimiterUnavailable) as caught:
        asyncio.run(limiter.hit_request("k", 10))
    assert caught.value.status_code == 503 and caught.value.headers["Retry-After"] == "2"
    assert asyncio.run(limiter.ping()) is not None


def test_migrations_give_the_same_schema_on_sqlite_and_postgresql(postgres, tmp_path):
    lite = open_database(None, tmp_path)
    pg = open_database(postgres.url, tmp_path)
    pg_again = open_database(postgres.url, tmp_path)  # a second replica: already at head, nothing to do

    def schema(db):
        found = inspect(db.engine)
        return {table: sorted((c["name"], type(c["type"]).__name__.upper().replace("VARCHAR", "STRING"),
                               c["nullable"]) for c in found.get_columns(table))
                for table in found.get_table_names()}

    lite_schema, pg_schema = schema(lite), schema(pg)
    assert set(lite_schema) == set(pg_schema) == {"alembic_version", "api_keys", "usage_records", "files",
                                                  "responses", "response_input_items", "dashboard_sessions",
                                                  "batches", "batch_results", "vector_stores",
                                                  "vector_store_files", "vector_store_file_batches",
                                                  "vector_store_chunks", "chat_completions"}
    for table in lite_schema:
        assert [c[0] for c in lite_schema[table]] == [c[0] for c in pg_schema[table]], table
    assert ("tpm", "BIGINT", True) in pg_schema["api_keys"]
    assert pg_again.ping() is None and pg.dialect == "postgresql"


def test_replicas_migrating_at_once_take_turns(postgres, tmp_path):
    """Four processes upgrade one fresh database at the same moment: all succeed, the schema is made once."""
    postgres.psql("CREATE DATABASE race")
    url = postgres.url.rsplit("/", 1)[0] + "/race"
    code = "import sys; from server.db.database import open_database; open_database(sys.argv[1], sys.argv[2])"
    root = Path(__file__).resolve().parents[2]
    processes = [subprocess.Popen([sys.executable, "-c", code, url, str(tmp_path / str(i))], cwd=root,
                                  stderr=subprocess.PIPE, text=True) for i in range(4)]
    for process in processes:
        assert process.wait(120) == 0, process.stderr.read()
    with open_database(url, tmp_path).engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [Database.head_revision()]


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_shared_files_dir_sweep_spares_uploads_in_flight(postgres, tmp_path):
    shared = tmp_path / "shared"
    files = FileService(open_database(postgres.url, tmp_path), tmp_path, 10**6, 10**9, files_dir=shared,
                        instance="a")
    shared.mkdir()
    live, dead = _sleeper(), _sleeper()
    dead.kill()
    dead.wait()
    try:
        names = {
            "mine_live": f".upload-{files.host}~{live.pid}~file-{'1' * 32}",  # this host, a running process
            "mine_dead": f".upload-{files.host}~{dead.pid}~file-{'2' * 32}",  # this host, its process gone
            "other_host": f".upload-elsewhere~{dead.pid}~file-{'3' * 32}",  # another replica's box: unknown
            "other_stale": f".upload-elsewhere~1~file-{'4' * 32}",  # another box's, untouched for too long
            "fresh_bytes": f"file-{'5' * 32}",  # renamed a moment ago, its row on its way
            "stale_bytes": f"file-{'6' * 32}",  # bytes with no row for too long
        }
        for name in names.values():
            (shared / name).write_bytes(b"x")
        old = time.time() - STALE_AFTER_S - 60
        for stale in ("other_stale", "stale_bytes"):
            os.utime(shared / names[stale], (old, old))
        files.prepare()
        left = {p.name for p in shared.iterdir()}
        assert left == {names["mine_live"], names["other_host"], names["fresh_bytes"]}
    finally:
        live.kill()
        live.wait()
