"""`engine: vllm` configs: the options block, and a clear refusal where vLLM is not installed."""

from __future__ import annotations

import importlib.util

import pytest

from engines.config import ConfigError, EngineKind, load_model_config
from tests.conftest import write_config

VLLM = """
id: big
task: chat
engine: vllm
source: /nowhere
dtype: bfloat16
device: auto
max_model_len: 4096
max_num_seqs: 32
"""

needs_no_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is not None,
                                   reason="vllm is importable here; the refusal is for environments without it")


def test_vllm_options_pass_validation_with_defaults(tmp_path):
    config = load_model_config(write_config(tmp_path, "big", VLLM + """
vllm:
  tensor_parallel_size: 2
  gpu_memory_utilization: 0.5
  enable_prefix_caching: false
  quantization: awq
"""))
    assert config.engine is EngineKind.vllm
    assert (config.vllm.tensor_parallel_size, config.vllm.gpu_memory_utilization, config.vllm.enable_prefix_caching,
            config.vllm.quantization, config.vllm.enforce_eager) == (2, 0.5, False, "awq", False)
    assert (config.max_model_len, config.max_num_seqs, config.dtype) == (4096, 32, "bfloat16")
    assert load_model_config(write_config(tmp_path, "plain", VLLM)).vllm is None


@pytest.mark.parametrize("block, field, words", [
    ("vllm:\n  gpu_memory_utilization: 1.5\n", "vllm.gpu_memory_utilization", "less than or equal to 1"),
    ("vllm:\n  tensor_parallel_size: 0\n", "vllm.tensor_parallel_size", "greater than or equal to 1"),
    ("vllm:\n  swap_space: 4\n", "vllm.swap_space", "Extra inputs are not permitted"),
    ("vllm:\n  max_model_len: 2048\n", "vllm", "set 'max_model_len' at the top level"),
    ("vllm:\n  dtype: float16\n", "vllm", "set 'dtype' at the top level"),
])
def test_bad_vllm_options_name_the_field(tmp_path, block, field, words):
    path = write_config(tmp_path, "big", VLLM + block)
    with pytest.raises(ConfigError) as info:
        load_model_config(path)
    assert f"field '{field}'" in str(info.value)
    assert words in str(info.value)


def test_vllm_options_belong_to_the_vllm_engine_only(tmp_path):
    text = VLLM.replace("engine: vllm", "engine: transformers") + "vllm:\n  enforce_eager: true\n"
    with pytest.raises(ConfigError, match="'vllm' options are only for engine: vllm"):
        load_model_config(write_config(tmp_path, "big", text))


def test_vllm_cannot_serve_embeddings(tmp_path):
    text = VLLM.replace("task: chat", "task: embedding")
    with pytest.raises(ConfigError, match="engine 'vllm' cannot serve task 'embedding'"):
        load_model_config(write_config(tmp_path, "big", text))


@needs_no_vllm
def test_registry_without_vllm_says_what_to_install(tmp_path):
    from engines.registry import EngineRegistry

    config = load_model_config(write_config(tmp_path, "big", VLLM))
    with pytest.raises(ConfigError) as info:
        EngineRegistry.from_configs([config], tmp_path / "data", cuda_devices=list)
    message = str(info.value)
    assert "field 'engine'" in message and "big.yaml" in message
    assert "pip install 'ozwell-server[vllm]'" in message


@needs_no_vllm
def test_serve_without_vllm_stops_with_the_message_not_a_traceback(tmp_path, capsys):
    from server.cli import main

    write_config(tmp_path / "configs", "big", VLLM)
    assert main(["serve", "--config-dir", str(tmp_path / "configs"), "--data-dir", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'ozwell-server[vllm]'" in err
    assert "Traceback" not in err
