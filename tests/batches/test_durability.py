"""A batch survives kill -9: `ozwell serve` is killed mid-batch and restarted on the same data dir; the batch
completes with every custom_id exactly once, and no line was run to completion twice (one usage record per
line). The operators' CLI (`ozwell batches list/show/cancel`) reads the same database."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx

from tests.process import ROOT, ServerProcess
from tests.tiny_models import tiny_llama_configs

MODEL = "batch-llama"
LINES = 240


def _batch(server: ServerProcess, batch_id: str) -> dict:
    response = httpx.get(f"{server.url}/v1/batches/{batch_id}", headers=server.headers, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _cli(data_dir, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server.cli", "batches", *args, "--data-dir", str(data_dir)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_kill_9_mid_batch_then_restart_completes_every_line_once(tmp_path):
    config_dir = tiny_llama_configs(tmp_path / "model", MODEL, max_model_len=256, max_num_seqs=16)
    data_dir = tmp_path / "data"
    server = ServerProcess(config_dir, data_dir, "--batch-concurrency", "8", "--batch-lease", "3").start()
    try:
        lines = [{"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
                  "body": {"model": MODEL, "messages": [{"role": "user", "content": f"item {i}"}],
                           "max_tokens": 24, "temperature": 0}} for i in range(LINES)]
        text = "".join(json.dumps(line) + "\n" for line in lines)
        upload = httpx.post(f"{server.url}/v1/files", headers=server.headers, timeout=60,
                            files={"file": ("work.jsonl", text.encode())}, data={"purpose": "batch"})
        assert upload.status_code == 200, upload.text
        created = httpx.post(f"{server.url}/v1/batches", headers=server.headers, timeout=30, json={
            "input_file_id": upload.json()["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"})
        batch_id = created.json()["id"]
        deadline = time.time() + 180
        while (before := _batch(server, batch_id))["request_counts"]["completed"] < 20:
            assert time.time() < deadline and before["status"] in ("validating", "in_progress"), before
            time.sleep(0.2)
        server.kill()  # SIGKILL: lines in flight are lost mid-generation
        assert before["request_counts"]["completed"] < LINES

        listed = _cli(data_dir, "list")
        assert listed.returncode == 0 and batch_id in listed.stdout and "in_progress" in listed.stdout
        shown = _cli(data_dir, "show", batch_id)
        assert shown.returncode == 0 and json.loads(shown.stdout)["id"] == batch_id
        assert _cli(data_dir, "show", "batch_missing").returncode == 1

        server.start()
        deadline = time.time() + 300
        while (after := _batch(server, batch_id))["status"] != "completed":
            assert time.time() < deadline and after["status"] in ("in_progress", "finalizing"), after
            time.sleep(0.5)
        assert after["request_counts"] == {"total": LINES, "completed": LINES, "failed": 0}
        output = httpx.get(f"{server.url}/v1/files/{after['output_file_id']}/content", headers=server.headers,
                           timeout=60).text.splitlines()
        ids = [json.loads(line)["custom_id"] for line in output]
        assert sorted(ids) == sorted(f"line-{i}" for i in range(LINES)) and len(ids) == LINES
        usage = httpx.get(f"{server.url}/v1/admin/usage", headers=server.headers, params={"limit": 5000},
                          timeout=60).json()
        records = [r for r in usage["data"] if r["endpoint"] == "batch:/v1/chat/completions"]
        assert len(records) == LINES  # each line recorded once, in the same transaction as its result

        # The CLI cancels: a completed batch cannot be, and says so.
        refused = _cli(data_dir, "cancel", batch_id)
        assert refused.returncode == 1 and "cannot be cancelled" in refused.stderr
    finally:
        server.stop()
