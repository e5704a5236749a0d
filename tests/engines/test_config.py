from pathlib import Path

import pytest

from engines.config import ConfigError, load_model_config, load_model_configs
from tests.conftest import write_config

GOOD = """
id: m1
aliases: [gpt-4]
task: chat
engine: transformers
source: /nowhere
device: cuda:1
max_model_len: 512
"""


def test_good_config_loads_with_defaults(tmp_path):
    config = load_model_config(write_config(tmp_path, "m1", GOOD))
    assert (config.id, config.aliases, config.device, config.max_model_len, config.dtype) == (
        "m1", ["gpt-4"], "cuda:1", 512, "auto")
    assert config.names == ["m1", "gpt-4"]


@pytest.mark.parametrize(
    "change, field, words",
    [
        ({"device": "gpu"}, "device", "cpu, cuda, cuda:N or auto"),
        ({"task": "vision"}, "task", "'chat' or 'embedding'"),
        ({"engine": "sentence-transformers"}, "(top level)", "cannot serve task 'chat'"),
        ({"max_model_len": "8"}, "max_model_len", "greater than or equal to 16"),
        ({"dtype": "int3"}, "dtype", "'auto', 'float32', 'bfloat16' or 'float16'"),
        ({"colour": "blue"}, "colour", "Extra inputs are not permitted"),
        ({"id": None}, "id", "Field required"),
        ({"default_max_tokens": "0"}, "default_max_tokens", "greater than or equal to 1"),
        ({"default_max_tokens": "512"}, "(top level)", "leaves no room for a prompt within max_model_len (512)"),
    ],
)
def test_bad_config_names_file_field_and_problem(tmp_path, change, field, words):
    lines = [line for line in GOOD.strip().splitlines() if line.split(":")[0] not in change]
    lines += [f"{k}: {v}" for k, v in change.items() if v is not None]
    path = write_config(tmp_path, "bad", "\n".join(lines))
    with pytest.raises(ConfigError) as info:
        load_model_config(path)
    message = str(info.value)
    assert str(path) in message
    assert f"field '{field}'" in message
    assert words in message


def test_missing_chat_template_file_is_named(tmp_path):
    path = write_config(tmp_path, "t", GOOD + "chat_template: nothere.jinja\n")
    with pytest.raises(ConfigError, match=r"field 'chat_template': file 'nothere.jinja' not found"):
        load_model_config(path)


def test_chat_template_file_beside_config_is_read(tmp_path):
    (tmp_path / "turns.jinja").write_text("{{ messages[0]['content'] }}")
    config = load_model_config(write_config(tmp_path, "t", GOOD + "chat_template: turns.jinja\n"))
    assert config.resolved_chat_template() == "{{ messages[0]['content'] }}"


def test_inline_chat_template_is_kept(tmp_path):
    config = load_model_config(write_config(tmp_path, "t", GOOD + "chat_template: '{{ bos_token }}'\n"))
    assert config.resolved_chat_template() == "{{ bos_token }}"


def test_duplicate_alias_across_files_fails(tmp_path):
    write_config(tmp_path, "a", GOOD)
    write_config(tmp_path, "b", GOOD.replace("id: m1", "id: m2"))
    with pytest.raises(ConfigError, match=r"b.yaml: field 'aliases': name 'gpt-4' is already used by .*a.yaml"):
        load_model_configs(tmp_path)


def test_invalid_yaml_and_empty_dir_fail(tmp_path):
    with pytest.raises(ConfigError, match="no model config"):
        load_model_configs(tmp_path)
    write_config(tmp_path, "x", "id: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_model_configs(tmp_path)


def test_shipped_default_configs_are_valid():
    configs = load_model_configs(Path(__file__).resolve().parents[2] / "model_configs")
    by_id = {c.id: c for c in configs}
    assert set(by_id) == {"smollm2-135m-instruct", "gemma-3-270m", "all-minilm-l6-v2"}
    assert {"gpt-4", "gpt-4o-mini"} <= set(by_id["smollm2-135m-instruct"].aliases)
    assert by_id["gemma-3-270m"].stop_token_ids == [106]
    assert "<start_of_turn>" in by_id["gemma-3-270m"].resolved_chat_template()
