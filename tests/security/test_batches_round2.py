"""Batches, round two (issue #35, items 5 and 11), on a real `ozwell serve` with an embedding model:

- a batch runs under its key's plan: a key with a small tokens-per-minute limit cannot use more through a batch;
- owners are served in turn: another owner's one-line batch completes while a long batch is still running;
- results count in the owner's storage quota as they are made (a batch that would pass it stops, saying so),
  and the output file is streamed, so finishing a large batch does not grow the server by the output's size;
- a batch cancelled while it validates ends cancelled, with cancelled_at set.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time

import httpx
import pytest

from tests.process import ServerProcess
from tests.security.conftest import assert_error, bearer, cli_key
from tests.tiny_models import minilm_config

EMBED = "sec-embed"
QUOTA_MB = 64
TPM = 150
LONG_LINES = 3000
UNLIMITED = ("--plan", "enterprise", "--rpm", "100000", "--tpm", "10000000")  # polling counts in a key's RPM too


@pytest.fixture(scope="module")
def embed_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("batches-round2")
    config_dir = root / "configs"
    config_dir.mkdir()
    (config_dir / f"{EMBED}.yaml").write_text(minilm_config(EMBED))
    server = ServerProcess(config_dir, root / "data", "--owner-quota-mb", str(QUOTA_MB), "--batch-lease", "3").start()
    try:
        yield server
    finally:
        server.stop()


def owner_client(server: ServerProcess, owner: str, *limits: str) -> httpx.Client:
    key = cli_key(server, "--name", owner, "--owner", owner, *(limits or UNLIMITED))
    return httpx.Client(base_url=server.url, headers=bearer(key), timeout=120)


def embed_line(i: int, inputs) -> dict:
    return {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/embeddings", "body": {"model": EMBED,
                                                                                           "input": inputs}}


def start_batch(http: httpx.Client, lines: list[dict]) -> str:
    text = "".join(json.dumps(line) + "\n" for line in lines).encode()
    upload = http.post("/v1/files", files={"file": ("batch.jsonl", text)}, data={"purpose": "batch"})
    assert upload.status_code == 200, upload.text
    created = http.post("/v1/batches", json={"input_file_id": upload.json()["id"], "endpoint": "/v1/embeddings",
                                             "completion_window": "24h"})
    assert created.status_code == 200, created.text
    return created.json()["id"]


def batch(http: httpx.Client, batch_id: str) -> dict:
    response = http.get(f"/v1/batches/{batch_id}")
    assert response.status_code == 200, response.text
    return response.json()


def wait_until(http: httpx.Client, batch_id: str, done, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while not done(body := batch(http, batch_id)):
        assert time.monotonic() < deadline, f"{batch_id} after {timeout_s}s: {body['status']} {body['request_counts']}"
        time.sleep(0.2)
    return body


def terminal(body: dict) -> bool:
    return body["status"] in ("completed", "failed", "expired", "cancelled")


def test_a_batch_is_held_to_its_keys_tokens_per_minute(embed_server):
    """Before: batch lines took no rate-limit reservation, and a free key used 7x its plan through a batch."""
    http = owner_client(embed_server, "tpm-owner", "--plan", "free", "--tpm", str(TPM), "--rpm", "1000")
    lines = [embed_line(i, f"the quick brown fox number {i} jumps") for i in range(40)]  # ~10 tokens a line
    batch_id = start_batch(http, lines)
    started = time.monotonic()
    wait_until(http, batch_id, lambda b: b["request_counts"]["completed"] >= 1 or terminal(b), 60)
    time.sleep(max(0.0, 12 - (time.monotonic() - started)))  # well inside the first minute's window
    body = batch(http, batch_id)
    used = body["usage"]["input_tokens"]
    print(f"\n[tpm] after {time.monotonic() - started:.1f}s: {used} tokens, "
          f"{body['request_counts']['completed']} of 40 lines, {body['status']}")
    assert body["status"] == "in_progress", body
    assert 0 < used <= TPM and 1 <= body["request_counts"]["completed"] < 40
    # The key's own requests share that window: an interactive request larger than what is left is refused.
    refused = http.post("/v1/embeddings", json={"model": EMBED, "input": " ".join(["word"] * (TPM - used + 5))})
    assert_error(refused, 429, code="rate_limit_exceeded")
    assert http.post(f"/v1/batches/{batch_id}/cancel").status_code == 200
    done = wait_until(http, batch_id, terminal, 60)
    assert done["status"] == "cancelled" and done["usage"]["input_tokens"] <= TPM


def test_another_owners_one_line_batch_completes_while_a_long_batch_runs(embed_server):
    """Before: batches ran oldest-first one at a time, and a 1-line batch waited behind a 300-line one."""
    owner_a = owner_client(embed_server, "long-owner")
    owner_b = owner_client(embed_server, "short-owner")
    long_id = start_batch(owner_a, [embed_line(i, [f"a sentence of several words, {i} {j}" for j in range(4)])
                                    for i in range(LONG_LINES)])
    wait_until(owner_a, long_id, lambda b: b["request_counts"]["completed"] >= 1 or terminal(b), 120)
    started = time.monotonic()
    short_id = start_batch(owner_b, [embed_line(0, "hello there")])
    short = wait_until(owner_b, short_id, terminal, 30)
    took = time.monotonic() - started
    long = batch(owner_a, long_id)
    print(f"\n[fair] the 1-line batch took {took:.1f}s; the long one had {long['request_counts']['completed']} "
          f"of {LONG_LINES} lines done, {long['status']}")
    assert short["status"] == "completed" and short["request_counts"]["completed"] == 1
    assert long["status"] == "in_progress", long  # it really ran beside the long one
    assert owner_a.post(f"/v1/batches/{long_id}/cancel").status_code == 200
    assert wait_until(owner_a, long_id, terminal, 60)["status"] == "cancelled"


class RssSampler:
    """The server's peak RSS while its batch runs, and (separately) once its lines are done and it finishes."""

    def __init__(self, server: ServerProcess):
        self.server, self.running_peak, self.finishing_peak, self.finishing = server, 0, 0, False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = self.server.rss_bytes()
            if self.finishing:
                self.finishing_peak = max(self.finishing_peak, rss)
            else:
                self.running_peak = max(self.running_peak, rss)
            time.sleep(0.01)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def test_a_large_output_is_streamed_and_counts_in_the_owners_quota(embed_server):
    """Before: `_finish` loaded every result row into memory, and the output file was not held to the quota."""
    http = owner_client(embed_server, "big-output")
    lines = [embed_line(i, [f"row {i} item {j}" for j in range(16)]) for i in range(350)]  # ~130 KB of output a line
    with RssSampler(embed_server) as rss:
        batch_id = start_batch(http, lines)
        while (body := batch(http, batch_id))["request_counts"]["completed"] < len(lines) and not terminal(body):
            time.sleep(0.02)
        rss.finishing = True  # every line is recorded: what follows is writing the files
        done = wait_until(http, batch_id, terminal, 300)
    assert done["status"] == "completed", done
    size = http.get(f"/v1/files/{done['output_file_id']}").json()["bytes"]
    growth = rss.finishing_peak - rss.running_peak
    print(f"\n[stream] output {size / 2**20:.1f} MB; server RSS peak {rss.running_peak / 2**20:.0f} MB running, "
          f"{rss.finishing_peak / 2**20:.0f} MB finishing ({growth / 2**20:+.1f} MB)")
    assert size > 40 * 2**20
    assert growth < size / 2, "finishing the batch grew the server by about its output's size"
    # The output file counts in the quota: an upload that would fit beside the owner's other files, but not
    # beside the output too, is refused.
    held = sum(f["bytes"] for f in http.get("/v1/files", params={"limit": 100}).json()["data"])
    fits_without_output = QUOTA_MB * 2**20 - (held - size) - 1
    refused = http.post("/v1/files", files={"file": ("x.txt", b"x" * fits_without_output)},
                        data={"purpose": "user_data"})
    assert_error(refused, 413, code="quota_exceeded")


def test_a_batch_whose_results_would_pass_the_quota_stops_saying_so(embed_server):
    """Before: a 52 KB input made an 86.9 MB output file past the owner's quota."""
    http = owner_client(embed_server, "over-quota")
    filler = http.post("/v1/files", files={"file": ("filler.txt", b"x" * ((QUOTA_MB - 3) * 2**20))},
                       data={"purpose": "user_data"})
    assert filler.status_code == 200, filler.text
    lines = [embed_line(i, [f"row {i} item {j}" for j in range(8)]) for i in range(100)]  # ~6.5 MB of output
    done = wait_until(http, start_batch(http, lines), terminal, 300)
    counts = done["request_counts"]
    print(f"\n[quota] {done['status']} after {counts['completed']} of 100 lines")
    assert done["status"] == "cancelled", done
    assert [e["code"] for e in done["errors"]["data"]] == ["quota_exceeded"]
    assert str(QUOTA_MB * 2**20) in done["errors"]["data"][0]["message"]
    assert 0 < counts["completed"] < 100
    held = sum(f["bytes"] for f in http.get("/v1/files", params={"limit": 100}).json()["data"])
    assert held <= QUOTA_MB * 2**20
    output = http.get(f"/v1/files/{done['output_file_id']}/content")
    assert len(output.text.splitlines()) == counts["completed"]


def test_a_batch_cancelled_while_it_validates_ends_cancelled(embed_server):
    """Before: `_validate` overwrote `cancelling` with `in_progress`, and the batch ended completed, 0 lines run."""
    http = owner_client(embed_server, "cancel-owner")
    lines = [embed_line(i, "x") for i in range(50_000)]  # validating them takes a few hundred ms
    batch_id = start_batch(http, lines)
    # Cancel as soon as a runner has claimed it, while it validates (read from the server's own database).
    with sqlite3.connect(embed_server.data_dir / "ozwell.db", timeout=10) as database:
        deadline = time.monotonic() + 30
        while database.execute("SELECT runner FROM batches WHERE id = ?", (batch_id,)).fetchone()[0] is None:
            assert time.monotonic() < deadline, "no runner claimed the batch"
            time.sleep(0.002)
        status = database.execute("SELECT status FROM batches WHERE id = ?", (batch_id,)).fetchone()[0]
    cancelled = http.post(f"/v1/batches/{batch_id}/cancel")
    assert status == "validating" and cancelled.status_code == 200, (status, cancelled.text)
    done = wait_until(http, batch_id, terminal, 120)
    assert done["status"] == "cancelled", done
    assert done["cancelled_at"] >= done["cancelling_at"] and "completed_at" not in done
    # The cancel usually lands while it validates, and then nothing ran. Validation may still win the race
    # between the status read above and the cancel (seen once in CI's run): then it was in progress first.
    if "in_progress_at" not in done:
        assert "output_file_id" not in done and done["request_counts"]["completed"] == 0, done
