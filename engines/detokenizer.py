"""Turning generated token ids into text deltas that are safe to show.

IncrementalDetokenizer decodes a short window instead of the whole sequence each step, and
holds back bytes of an unfinished UTF-8 character. StopStringMatcher matches stop strings on the
text and holds back only the tail that could still become a stop string.
"""

from __future__ import annotations

from collections.abc import Sequence

# How many prompt tokens to decode before the first generated one, so that a leading space
# (SentencePiece "▁") comes out as it would in the full text.
_CONTEXT_TOKENS = 5


def detokenizer_for(tokenizer, prompt_token_ids: Sequence[int]) -> IncrementalDetokenizer:
    """A fast tokenizer decodes through tokenizers' DecodeStream (about 2 us a token here, against 12
    for two windowed `decode` calls); any other tokenizer through the window."""
    if getattr(tokenizer, "backend_tokenizer", None) is not None:
        return StreamDetokenizer(tokenizer, prompt_token_ids)
    return IncrementalDetokenizer(tokenizer, prompt_token_ids)


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt_token_ids: Sequence[int]):
        self._tokenizer = tokenizer
        self._ids = list(prompt_token_ids[-_CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)

    def _decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        """Add one token; return the new text it completes (may be empty)."""
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix_offset:self._read_offset])
        full_text = self._decode(self._ids[self._prefix_offset:])
        if len(full_text) > len(prefix_text) and not full_text.endswith("\ufffd"):
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            return full_text[len(prefix_text):]
        return ""

    def flush(self) -> str:
        """The text still held back (an unfinished character) when the sequence ends."""
        prefix_text = self._decode(self._ids[self._prefix_offset:self._read_offset])
        full_text = self._decode(self._ids[self._prefix_offset:])
        self._prefix_offset = self._read_offset = len(self._ids)
        return full_text[len(prefix_text):] if len(full_text) > len(prefix_text) else ""


class StreamDetokenizer(IncrementalDetokenizer):
    """tokenizers' DecodeStream, seeded with the prompt's tail so that a leading space comes out right."""

    def __init__(self, tokenizer, prompt_token_ids: Sequence[int]):
        from tokenizers.decoders import DecodeStream

        self._backend = tokenizer.backend_tokenizer
        self._tokenizer = tokenizer
        self._stream = DecodeStream(ids=list(prompt_token_ids[-_CONTEXT_TOKENS:]), skip_special_tokens=True)
        self._held: list[int] = []  # tokens of a character not complete yet

    def push(self, token_id: int) -> str:
        text = self._stream.step(self._backend, token_id)
        if text is None:
            self._held.append(token_id)
            return ""
        self._held.clear()
        return text

    def flush(self) -> str:
        held, self._held = self._held, []
        return self._tokenizer.decode(held, skip_special_tokens=True) if held else ""


class StopStringMatcher:
    def __init__(self, stops: Sequence[str]):
        self._stops = tuple(stops)
        self._held = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Feed new text; return (text safe to emit, whether a stop string was hit).

        On a hit, the emitted text ends just before the stop string, which is not included.
        """
        if not self._stops:
            return text, False
        buffer = self._held + text
        hits = [i for i in (buffer.find(s) for s in self._stops) if i >= 0]
        if hits:
            self._held = ""
            return buffer[:min(hits)], True
        keep = self._longest_stop_prefix_suffix(buffer)
        self._held = buffer[len(buffer) - keep:] if keep else ""
        return buffer[:len(buffer) - keep], False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held

    def _longest_stop_prefix_suffix(self, buffer: str) -> int:
        """Length of the longest tail of `buffer` that is a proper prefix of some stop string."""
        best = 0
        for stop in self._stops:
            for length in range(min(len(stop) - 1, len(buffer)), best, -1):
                if buffer.endswith(stop[:length]):
                    best = length
                    break
        return best
