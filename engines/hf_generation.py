"""The base of both generation engines (native and vLLM): what an engine over a Hugging Face tokenizer
shares: chat templates, prompts, token counts and stop tokens."""

from __future__ import annotations

from collections.abc import Sequence

from engines.protocol import PROBE_CHARS_PER_TOKEN, GenerationEngine


class HFGenerationEngine(GenerationEngine):
    """A generation engine whose `tokenizer` is a transformers tokenizer, set when it loads."""

    tokenizer = None
    _max_token_chars: int | None = None

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(token_ids))

    def render_chat(self, messages: Sequence[dict], tools: Sequence[dict] | None = None) -> str:
        """The messages (and tools) through the chat template, with the generation prompt."""
        if not self.tokenizer.chat_template:
            raise ValueError(f"model {self.config.id!r} has no chat template; use /v1/completions")
        return self.tokenizer.apply_chat_template(list(messages), tools=list(tools) if tools else None,
                                                  add_generation_prompt=True, tokenize=False)

    def encode_chat(self, messages: Sequence[dict], tools: Sequence[dict] | None = None) -> list[int]:
        text = self.render_chat(messages, tools)
        # The template writes BOS itself where the model wants it.
        return self.bounded_tokenize(text, lambda t: self.tokenizer(t, add_special_tokens=False)["input_ids"],
                                     "messages")

    def template_tool_format(self) -> str | None:
        template = self.tokenizer.chat_template or ""
        return "hermes" if "tools" in template and "<tool_call>" in template else None

    def encode_text(self, text: str) -> list[int]:
        return self.bounded_tokenize(text, lambda t: self.tokenizer(t, add_special_tokens=True)["input_ids"],
                                     "prompt")

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        cap = (self.max_model_len + 1) * PROBE_CHARS_PER_TOKEN
        encoded = self.tokenizer([t[:cap] for t in texts], add_special_tokens=False)["input_ids"]
        return [len(ids) for ids in encoded]

    def max_token_chars(self) -> int:
        if self._max_token_chars is None:
            # Decoded one by one would take seconds for a 262k vocabulary; the raw token strings are at least
            # as long as the text a token stands for (byte-level BPE writes one character per byte, and
            # SentencePiece writes its space marker in the space's place), so their longest is a safe bound.
            longest = max((len(t) for t in self.tokenizer.get_vocab()), default=1)
            added = max((len(t) for t in self.tokenizer.get_added_vocab()), default=1)
            self._max_token_chars = max(longest, added, 1)
        return self._max_token_chars

    def stop_token_ids_with(self, eos: int | list[int] | None) -> frozenset[int]:
        """The config's stop tokens, the model's EOS (one id or several) and the tokenizer's."""
        ids = set(self.config.stop_token_ids)
        ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return frozenset(ids)
