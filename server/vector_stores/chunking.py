"""Chunking: OpenAI's `chunking_strategy` (auto = 800 tokens, 400 overlap; static with its bounds) and the
token windows it describes, counted with the embedding model's own tokenizer.

A chunk is a window of `max_chunk_size_tokens` tokens; windows step by (max - overlap), so consecutive chunks share
exactly `chunk_overlap_tokens` tokens, and the last window ends at the text's last token. A chunk's text is the
slice of the original text from its first token's start to its last token's end, so citations quote the file.

Tokenizing a 10 MB line in one call costs memory and, for a run of 10 MB without spaces, yields a single [UNK]
token spanning the whole file. So the text is cut into pieces (at most PIECE_CHARS, cut at whitespace, where the
tokenizer splits anyway, so tokens are unchanged) and any run of more than LONG_RUN_CHARS non-space characters
(base64, a minified line) is cut every LONG_RUN_CHARS characters, so no token spans more than that. The pieces
go through one `encode_batch` of a private copy of the tokenizer's Rust backend: the copy has truncation and
padding off (the shipped MiniLM backend pads and truncates to 128) and is never mutated, so chunking in worker
threads cannot collide ("Already borrowed") with the embedding engine using the original at the same time.
"""

from __future__ import annotations

import bisect
import re
import threading
import weakref
from dataclasses import dataclass

from server.errors import InvalidRequestError

AUTO_MAX_TOKENS = 800
AUTO_OVERLAP_TOKENS = 400
MIN_MAX_TOKENS = 100
MAX_MAX_TOKENS = 4096
PIECE_CHARS = 32_768
LONG_RUN_CHARS = 100  # BERT's WordPiece turns a longer word into one [UNK] anyway
_LONG_RUN = re.compile(rf"\S{{{LONG_RUN_CHARS + 1},}}")
_WHITESPACE = (" ", "\n", "\t")


@dataclass(frozen=True)
class ChunkingStrategy:
    max_chunk_size_tokens: int
    chunk_overlap_tokens: int

    def to_object(self) -> dict:
        return {"type": "static", "static": {"max_chunk_size_tokens": self.max_chunk_size_tokens,
                                             "chunk_overlap_tokens": self.chunk_overlap_tokens}}


AUTO = ChunkingStrategy(AUTO_MAX_TOKENS, AUTO_OVERLAP_TOKENS)


def chunking_strategy(raw: dict | None, param: str = "chunking_strategy") -> ChunkingStrategy:
    """Validate a request's `chunking_strategy` as OpenAI does: max 100..4096, 0 <= overlap <= max / 2."""
    if raw is None:
        return AUTO
    if not isinstance(raw, dict):
        raise InvalidRequestError(f"Invalid '{param}': expected an object.", param=param)
    kind = raw.get("type")
    if kind == "auto":
        _no_extra_keys(raw, {"type"}, param)
        return AUTO
    if kind != "static":
        raise InvalidRequestError(f"Invalid '{param}.type': expected 'auto' or 'static', got {kind!r}.",
                                  param=f"{param}.type")
    _no_extra_keys(raw, {"type", "static"}, param)
    static = raw.get("static")
    if not isinstance(static, dict):
        raise InvalidRequestError(f"Missing required parameter: '{param}.static'.", param=f"{param}.static")
    _no_extra_keys(static, {"max_chunk_size_tokens", "chunk_overlap_tokens"}, f"{param}.static")
    size = _integer(static, "max_chunk_size_tokens", f"{param}.static")
    overlap = _integer(static, "chunk_overlap_tokens", f"{param}.static")
    if not MIN_MAX_TOKENS <= size <= MAX_MAX_TOKENS:
        raise InvalidRequestError(
            f"Invalid '{param}.static.max_chunk_size_tokens': {size} is not between {MIN_MAX_TOKENS} and "
            f"{MAX_MAX_TOKENS}.", param=f"{param}.static.max_chunk_size_tokens")
    if overlap < 0 or overlap * 2 > size:
        raise InvalidRequestError(
            f"Invalid '{param}.static.chunk_overlap_tokens': {overlap} must be at least 0 and at most half of "
            f"max_chunk_size_tokens ({size // 2}).", param=f"{param}.static.chunk_overlap_tokens")
    return ChunkingStrategy(size, overlap)


def _integer(obj: dict, key: str, where: str) -> int:
    value = obj.get(key)
    if value is None:
        raise InvalidRequestError(f"Missing required parameter: '{where}.{key}'.", param=f"{where}.{key}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(f"Invalid '{where}.{key}': expected an integer, got {value!r}.",
                                  param=f"{where}.{key}")
    return value


def _no_extra_keys(obj: dict, allowed: set[str], where: str) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        raise InvalidRequestError(f"Unrecognized parameter: '{where}.{extra[0]}'.", param=f"{where}.{extra[0]}")


@dataclass(frozen=True)
class Chunk:
    text: str
    start_token: int  # index of the chunk's first token in the whole text's tokens
    tokens: int


def chunk_text(text: str, tokenizer, strategy: ChunkingStrategy) -> list[Chunk]:
    """Cut `text` into token windows. Blocking (Rust tokenizer, ~1 s per 10 MB on one core): run in a thread."""
    spans = _pieces(text)
    if not spans:
        return []
    encodings = untruncated_backend(tokenizer).encode_batch([text[a:b] for a, b in spans], add_special_tokens=False)
    counts = [len(e) for e in encodings]
    ends = []  # cumulative token count after each piece
    total = 0
    for count in counts:
        total += count
        ends.append(total)
    offsets: dict[int, list[tuple[int, int]]] = {}

    def char_span(token: int) -> tuple[int, int]:  # the original-text span of the token'th token
        piece = bisect.bisect_right(ends, token)
        if piece not in offsets:
            offsets[piece] = encodings[piece].offsets
        start, end = offsets[piece][token - (ends[piece] - counts[piece])]
        return spans[piece][0] + start, spans[piece][0] + end

    step = strategy.max_chunk_size_tokens - strategy.chunk_overlap_tokens
    chunks = []
    for first in range(0, total, step):
        last = min(first + strategy.max_chunk_size_tokens, total) - 1
        chunks.append(Chunk(text[char_span(first)[0]:char_span(last)[1]], first, last - first + 1))
        if last == total - 1:
            break
    return chunks


def _pieces(text: str) -> list[tuple[int, int]]:
    """(start, end) spans that together cover every non-space character of `text`, each tokenized alone."""
    spans: list[tuple[int, int]] = []
    start = 0
    for run in _LONG_RUN.finditer(text):
        _cut_at_whitespace(text, start, run.start(), spans)
        spans.extend((a, min(a + LONG_RUN_CHARS, run.end())) for a in range(run.start(), run.end(), LONG_RUN_CHARS))
        start = run.end()
    _cut_at_whitespace(text, start, len(text), spans)
    return spans


def _cut_at_whitespace(text: str, start: int, stop: int, spans: list[tuple[int, int]]) -> None:
    while start < stop:
        end = min(start + PIECE_CHARS, stop)
        if end < stop:
            cut = max(text.rfind(space, start, end) for space in _WHITESPACE)
            end = cut if cut > start else end  # no whitespace: cut anywhere (cannot happen after _LONG_RUN)
        if not text[start:end].isspace():
            spans.append((start, end))
        start = end


# Private backends, one per tokenizer object (its lifetime); the lock only guards creating one.
_backends: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_backends_lock = threading.Lock()


def untruncated_backend(tokenizer):
    with _backends_lock:
        backend = _backends.get(tokenizer)
        if backend is None:
            from tokenizers import Tokenizer

            backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
            backend.no_truncation()
            backend.no_padding()
            _backends[tokenizer] = backend
        return backend
