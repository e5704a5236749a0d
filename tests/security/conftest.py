"""The security tier (issue #23): each finding of the attacker's probe replayed against a real
`ozwell serve` on loopback, asserting the fixed behaviour. One server is shared by the tier; it has a
5 MB file quota per owner, short header and body timeouts, and a tiny random-weight Llama with a
2,048-token context (long enough for a request to be still generating when its client leaves)."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from tests.conftest import CHATML_TEMPLATE
from tests.process import ROOT, ServerProcess
from tests.tiny_models import (
    build_tiny_llama,
    build_tiny_tokenizer,
    minilm_config,
    native_chat_config,
    tiny_llama_configs,
)

MODEL = "sec-llama"
QUOTA_MB = 5
HEADER_TIMEOUT_S = 3.0  # shorter than the defaults (15 and 60), so the timeout tests are quick
BODY_TIMEOUT_S = 5.0


def pytest_configure(config):
    config.addinivalue_line("markers", "security: real-process security tier (issue #23)")


@pytest.fixture(scope="package")
def sec_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("security")
    tokenizer = build_tiny_tokenizer(root / "tokenizer", CHATML_TEMPLATE)
    llama = build_tiny_llama(root / "llama", tokenizer, max_position_embeddings=2048)
    config_dir = root / "configs"
    config_dir.mkdir()
    (config_dir / f"{MODEL}.yaml").write_text(native_chat_config(MODEL, llama, max_model_len=2048, max_num_seqs=16))
    server = ServerProcess(config_dir, root / "data", "--owner-quota-mb", str(QUOTA_MB), "--header-timeout",
                           str(HEADER_TIMEOUT_S), "--body-timeout", str(BODY_TIMEOUT_S)).start()
    try:
        yield server
    finally:
        server.stop()


def long_context_configs(root, model: str = MODEL, max_num_seqs: int = 16, embedding: str | None = None,
                         aliases: tuple[str, ...] = ()):
    """A config dir under `root`: the tier's tiny Llama with a 2,048-token context as `model`, and MiniLM as
    `embedding` (with `aliases`) when it is named."""
    configs = tiny_llama_configs(root, model, {"max_position_embeddings": 2048}, max_model_len=2048,
                                 max_num_seqs=max_num_seqs)
    if embedding is not None:
        (configs / f"{embedding}.yaml").write_text(minilm_config(embedding, aliases))
    return configs


def cli_key(server: ServerProcess, *args: str) -> str:
    """A key made with `ozwell keys create` on the server's own database (for owners other than the
    first-run admin's); the key is the last line printed."""
    done = subprocess.run([sys.executable, "-m", "server.cli", "keys", "create", "--data-dir", str(server.data_dir),
                           *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip().splitlines()[-1]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def client(server: ServerProcess, key: str | None = None, timeout: float = 60) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers=bearer(key or server.key), timeout=timeout)


def chat_body(content: str = "Hello! How are you today?", **extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


def assert_error(response: httpx.Response, status: int, param: str | None = None, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error
