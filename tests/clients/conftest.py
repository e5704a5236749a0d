"""The clients tier (issue #39): the agent frameworks and client libraries users point at Ozwell, each running its
own idiom against a real `ozwell serve` on a tiny random-weight model, from a venv of their own
(.ci/clients-venv, pinned in tests/clients/requirements.txt; they pin an older openai SDK than the project's).
Grammar enforcement makes the tiny model's replies well-formed; the tests assert the protocol (a typed result,
a call, no markup, no 400), never the model's wisdom. Each library's script prints one JSON object of what it
saw; the tier skips, saying why, without the venv."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.process import ROOT, ServerProcess
from tests.tiny_models import tiny_llama_configs

MODEL = "tiny-tools"


def pytest_configure(config):
    config.addinivalue_line("markers", "clients: client libraries and agent frameworks in their own venv (issue #39)")
SCRIPTS = Path(__file__).parent / "python"


@pytest.fixture(scope="session")
def clients_python() -> str:
    python = os.environ.get("OZWELL_CLIENTS_PYTHON") or str(ROOT / ".ci-venvs" / "clients" / "bin" / "python")
    if not Path(python).exists():
        pytest.skip(f"no clients venv at {python}: run .ci/clients-venv (or set OZWELL_CLIENTS_PYTHON)")
    return python


@pytest.fixture(scope="session")
def clients_server(tmp_path_factory, clients_python):
    root = tmp_path_factory.mktemp("clients")
    config_dir = tiny_llama_configs(root, MODEL, {"max_position_embeddings": 2048}, max_model_len=2048,
                                    max_num_seqs=16)
    server = ServerProcess(config_dir, root / "data").start()
    try:
        yield server
    finally:
        server.stop()


def run_client(python: str, server: ServerProcess, script: str, env: dict | None = None) -> dict:
    """Run one library's script against the server; what it saw, as a dict (its stderr on failure). Nothing
    reaches the network: the libraries' telemetry is off, and LiteLLM reads its bundled model map."""
    quiet = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False", "OPENAI_AGENTS_DISABLE_TRACING": "1",
             "LANGCHAIN_TRACING_V2": "false", "PYTHONPATH": str(SCRIPTS)}
    done = subprocess.run([python, str(SCRIPTS / script), server.url + "/v1", server.key, MODEL], check=False,
                          capture_output=True, text=True, timeout=300, cwd=SCRIPTS,
                          env={**os.environ, **quiet, **(env or {})})
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
