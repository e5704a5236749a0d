"""Chunking: exact token windows with the real MiniLM tokenizer, the strategy's bounds, and big inputs."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from server.errors import InvalidRequestError
from server.vector_stores.chunking import (
    PIECE_CHARS,
    ChunkingStrategy,
    chunk_text,
    chunking_strategy,
)

# Common words that MiniLM's WordPiece keeps whole: every token is one word, so counts are easy to reason about.
WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "house", "river", "blue", "green", "old"]


def one_token_words(count: int) -> str:
    return " ".join(WORDS[(i * 7 + i // 3) % len(WORDS)] for i in range(count))


def reference(tokenizer, text: str):
    encoded = tokenizer(text, add_special_tokens=False, truncation=False, return_offsets_mapping=True,
                        verbose=False)
    return encoded["input_ids"], encoded["offset_mapping"]


def assert_windows_match(tokenizer, text: str, chunks, strategy: ChunkingStrategy):
    """Each chunk is exactly the window of whole-text tokens it claims, and windows step as specified."""
    ids, offsets = reference(tokenizer, text)
    step = strategy.max_chunk_size_tokens - strategy.chunk_overlap_tokens
    assert [c.start_token for c in chunks] == [i * step for i in range(len(chunks))]
    assert chunks[-1].start_token + chunks[-1].tokens == len(ids)
    for chunk in chunks:
        assert chunk.tokens == min(strategy.max_chunk_size_tokens, len(ids) - chunk.start_token)
        last = chunk.start_token + chunk.tokens - 1
        assert chunk.text == text[offsets[chunk.start_token][0]:offsets[last][1]]


def test_tokens_are_single_words(minilm_tokenizer):
    ids, _ = reference(minilm_tokenizer, one_token_words(50))
    assert len(ids) == 50


def test_auto_strategy_gives_800_token_windows_overlapping_by_400(minilm_tokenizer):
    text = one_token_words(2000)
    chunks = chunk_text(text, minilm_tokenizer, chunking_strategy(None))
    assert [(c.start_token, c.tokens) for c in chunks] == [(0, 800), (400, 800), (800, 800), (1200, 800)]
    assert_windows_match(minilm_tokenizer, text, chunks, chunking_strategy(None))
    words = text.split()
    for previous, chunk in itertools.pairwise(chunks):
        # The overlap is the previous chunk's last 400 words, exactly.
        assert chunk.text.split()[:400] == previous.text.split()[400:] == words[chunk.start_token:][:400]
        assert len(minilm_tokenizer(chunk.text, add_special_tokens=False, truncation=False,
                                    verbose=False)["input_ids"]) == 800


def test_one_token_more_adds_a_last_window_of_401(minilm_tokenizer):
    text = one_token_words(2001)
    chunks = chunk_text(text, minilm_tokenizer, chunking_strategy({"type": "auto"}))
    assert [(c.start_token, c.tokens) for c in chunks] == [(0, 800), (400, 800), (800, 800), (1200, 800),
                                                           (1600, 401)]


@pytest.mark.parametrize("size,overlap,total,expected", [
    (100, 0, 250, [(0, 100), (100, 100), (200, 50)]),
    (100, 50, 200, [(0, 100), (50, 100), (100, 100)]),
    (300, 100, 1000, [(0, 300), (200, 300), (400, 300), (600, 300), (800, 200)]),
    (4096, 2048, 800, [(0, 800)]),
])
def test_static_strategy_windows(minilm_tokenizer, size, overlap, total, expected):
    strategy = chunking_strategy({"type": "static", "static": {"max_chunk_size_tokens": size,
                                                               "chunk_overlap_tokens": overlap}})
    assert strategy == ChunkingStrategy(size, overlap)
    text = one_token_words(total)
    chunks = chunk_text(text, minilm_tokenizer, strategy)
    assert [(c.start_token, c.tokens) for c in chunks] == expected
    assert_windows_match(minilm_tokenizer, text, chunks, strategy)


def test_windows_follow_whole_text_tokens_across_pieces_and_subwords(minilm_tokenizer):
    # Real prose with words WordPiece splits ("tokenization" -> token ##ization), punctuation, accents, numbers
    # and line breaks, longer than one tokenizer piece, so piece boundaries fall inside the text.
    line = ("Tokenization of naïve café menus, 12,345 entries; retrieval-augmented generation works.\n"
            "Unbelievably, the rhinoceroses' antidisestablishmentarianism persisted (see §4.2).\n\n")
    text = line * (3 * PIECE_CHARS // len(line))
    strategy = ChunkingStrategy(100, 30)
    chunks = chunk_text(text, minilm_tokenizer, strategy)
    assert len(chunks) > 100
    assert_windows_match(minilm_tokenizer, text, chunks, strategy)


def test_short_text_is_one_chunk_and_empty_text_none(minilm_tokenizer):
    chunks = chunk_text("  Hello there, world.\n", minilm_tokenizer, chunking_strategy(None))
    assert [(c.text, c.start_token, c.tokens) for c in chunks] == [("Hello there, world.", 0, 5)]
    assert chunk_text("", minilm_tokenizer, chunking_strategy(None)) == []
    assert chunk_text(" \n\n \t", minilm_tokenizer, chunking_strategy(None)) == []


def test_a_run_without_spaces_is_cut_so_no_chunk_swallows_the_file(minilm_tokenizer):
    # One "word" of 1 MB (base64-like): WordPiece alone would make it one [UNK] token spanning everything.
    text = "QUJD" * 250_000
    chunks = chunk_text(text, minilm_tokenizer, chunking_strategy(None))
    assert len(chunks) > 10
    assert max(len(c.text) for c in chunks) <= 800 * 100
    assert "".join(c.text for c in chunks[::2]).startswith(text[:1000])


def test_ten_megabyte_single_line_is_chunked_quickly(minilm_tokenizer):
    size = 10 * 1024 * 1024
    line = one_token_words(2_600_000)[:size]
    line = line[:line.rfind(" ")].ljust(size)  # whole words only, padded with spaces
    assert "\n" not in line and len(line) == size
    started = time.perf_counter()
    chunks = chunk_text(line, minilm_tokenizer, chunking_strategy(None))
    elapsed = time.perf_counter() - started
    print(f"\n10 MB single line: {len(chunks)} chunks in {elapsed:.2f} s")
    total = chunks[-1].start_token + chunks[-1].tokens
    assert total == len(line.split())  # one token per word
    assert len(chunks) == (total - 400 + 399) // 400
    assert all(c.tokens == 800 for c in chunks[:-1])
    assert elapsed < 60  # about 3 s on the 2-core CI machine; the bound only catches a quadratic slip


def test_the_callers_tokenizer_is_left_as_it_was(minilm_tokenizer):
    before = minilm_tokenizer.backend_tokenizer.to_str()
    chunk_text(one_token_words(1000), minilm_tokenizer, chunking_strategy(None))
    assert minilm_tokenizer.backend_tokenizer.to_str() == before


def test_chunking_in_threads_while_the_tokenizer_is_in_use(minilm_tokenizer):
    text = one_token_words(3000)
    errors, results = [], []

    def chunker():
        try:
            for _ in range(5):
                results.append(len(chunk_text(text, minilm_tokenizer, chunking_strategy(None))))
        except Exception as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)

    def embedder():  # what the embedding engine does with the same object meanwhile
        try:
            for _ in range(20):
                minilm_tokenizer([text[:2000]] * 8, truncation=True, max_length=128, padding=True)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=chunker) for _ in range(2)] + [threading.Thread(target=embedder)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and results == [7] * 10


def test_strategy_object_round_trip():
    assert chunking_strategy(None).to_object() == {
        "type": "static", "static": {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": 400}}
    raw = {"type": "static", "static": {"max_chunk_size_tokens": 512, "chunk_overlap_tokens": 0}}
    assert chunking_strategy(raw).to_object() == raw


@pytest.mark.parametrize("raw,param", [
    ({"type": "static", "static": {"max_chunk_size_tokens": 99, "chunk_overlap_tokens": 0}},
     "chunking_strategy.static.max_chunk_size_tokens"),
    ({"type": "static", "static": {"max_chunk_size_tokens": 4097, "chunk_overlap_tokens": 0}},
     "chunking_strategy.static.max_chunk_size_tokens"),
    ({"type": "static", "static": {"max_chunk_size_tokens": 801, "chunk_overlap_tokens": 401}},
     "chunking_strategy.static.chunk_overlap_tokens"),
    ({"type": "static", "static": {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": -1}},
     "chunking_strategy.static.chunk_overlap_tokens"),
    ({"type": "static", "static": {"max_chunk_size_tokens": "800", "chunk_overlap_tokens": 0}},
     "chunking_strategy.static.max_chunk_size_tokens"),
    ({"type": "static", "static": {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": True}},
     "chunking_strategy.static.chunk_overlap_tokens"),
    ({"type": "static", "static": {"max_chunk_size_tokens": 800}}, "chunking_strategy.static.chunk_overlap_tokens"),
    ({"type": "static"}, "chunking_strategy.static"),
    ({"type": "static", "static": {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": 0, "x": 1}},
     "chunking_strategy.static.x"),
    ({"type": "auto", "static": {}}, "chunking_strategy.static"),
    ({"type": "other"}, "chunking_strategy.type"),
    ({}, "chunking_strategy.type"),
    ("auto", "chunking_strategy"),
])
def test_bad_strategies_are_400s_naming_the_parameter(raw, param):
    with pytest.raises(InvalidRequestError) as caught:
        chunking_strategy(raw)
    assert caught.value.param == param and caught.value.status_code == 400


def test_bounds_are_inclusive():
    assert chunking_strategy({"type": "static", "static": {"max_chunk_size_tokens": 100,
                                                           "chunk_overlap_tokens": 50}}) == ChunkingStrategy(100, 50)
    assert chunking_strategy({"type": "static", "static": {"max_chunk_size_tokens": 4096,
                                                           "chunk_overlap_tokens": 2048}}).max_chunk_size_tokens == 4096
    assert chunking_strategy({"type": "static", "static": {"max_chunk_size_tokens": 101, "chunk_overlap_tokens": 50},
                              }, param="x").chunk_overlap_tokens == 50
