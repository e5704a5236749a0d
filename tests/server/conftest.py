"""Fixtures of the server tests that need more than the shared app: a tiny Llama with a 1,024-token context
(the built-in tool prompt does not fit the shared models' 128-256 tokens), and one with a template that takes
tools."""

import pytest

from tests.conftest import write_config
from tests.tiny_models import build_tiny_llama

# A template that takes tools and writes Hermes-style <tool_call> blocks, as Qwen's and Hermes' do.
HERMES_TEMPLATE = """{% if tools %}<|im_start|>system
TOOLS:{% for t in tools %} {{ t.function.name }}{% endfor %}. Call with <tool_call>.<|im_end|>
{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}
{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}\
{% elif m.role == 'tool' %}RESULT {{ m.content }}{% else %}{{ m.content }}{% endif %}<|im_end|>
{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


@pytest.fixture(scope="module")
def tools_client(tiny_dir, tiny_tokenizer_dir, tmp_path_factory):
    from fastapi.testclient import TestClient

    from engines.registry import EngineRegistry
    from server.app import create_app
    from server.db.database import open_database
    from server.settings import Settings

    root = tmp_path_factory.mktemp("tools")
    source = build_tiny_llama(tiny_dir / "llama-2048", tiny_tokenizer_dir, max_position_embeddings=2048)
    write_config(root / "configs", "tiny-tools", f"id: tiny-tools\ntask: chat\nengine: transformers\n"
                                                 f"source: {source}\ndtype: float32\ndevice: cpu\n"
                                                 "max_model_len: 1024\nmax_num_seqs: 16\n")
    write_config(root / "configs", "tiny-hermes", f"id: tiny-hermes\ntask: chat\nengine: transformers\n"
                                                  f"source: {source}\ndtype: float32\ndevice: cpu\n"
                                                  "max_model_len: 1024\nchat_template: |\n" + "".join(
                                                      f"  {line}\n" for line in HERMES_TEMPLATE.splitlines()))
    registry = EngineRegistry.from_config_dir(root / "configs", root / "data")
    app = create_app(Settings(config_dir=root / "configs", data_dir=root / "data"), registry,
                     database=open_database(None, root / "data"))
    with TestClient(app, raise_server_exceptions=False) as client:
        _, key = app.state.services.keys.create(name="t", plan="enterprise", rpm=10**6, tpm=10**10)
        client.headers["Authorization"] = f"Bearer {key}"
        yield client


