import pytest

from engines.detokenizer import (
    IncrementalDetokenizer,
    StopStringMatcher,
    StreamDetokenizer,
    detokenizer_for,
)


def test_stop_string_split_across_deltas_is_held_then_cut():
    matcher = StopStringMatcher(["STOP"])
    assert matcher.push("hello S") == ("hello ", False)
    assert matcher.push("TO") == ("", False)
    assert matcher.push("P and more") == ("", True)


def test_held_tail_is_released_when_it_cannot_become_a_stop():
    matcher = StopStringMatcher(["\n\n", "END"])
    assert matcher.push("a\n") == ("a", False)
    assert matcher.push("b") == ("\nb", False)
    assert matcher.push("EN") == ("", False)
    assert matcher.flush() == "EN"


def test_earliest_of_several_stops_wins():
    matcher = StopStringMatcher(["world", "lo w"])
    assert matcher.push("hello world") == ("hel", True)


def test_no_stops_passes_text_through():
    assert StopStringMatcher([]).push("abc") == ("abc", False)


@pytest.mark.parametrize("kind", [IncrementalDetokenizer, StreamDetokenizer])
@pytest.mark.parametrize("text", ["Hello café 🚀 and 東京!", "def add(a, b):\n    return a + b"])
def test_incremental_text_equals_full_decode(tiny_tokenizer_dir, text, kind):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    prompt = tokenizer("Once upon a time")["input_ids"]
    ids = tokenizer(text)["input_ids"]
    detok = kind(tokenizer, prompt)
    pieces = [detok.push(i) for i in ids]
    assert "".join(pieces) + detok.flush() == tokenizer.decode(ids)
    assert not any("\ufffd" in p for p in pieces)  # half characters are held back, never shown


def test_a_fast_tokenizer_decodes_through_decode_stream(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    assert isinstance(detokenizer_for(tokenizer, [1, 2]), StreamDetokenizer)


def test_a_character_cut_off_at_the_end_is_flushed(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    ids = tokenizer("🚀", add_special_tokens=False)["input_ids"]
    assert len(ids) >= 2  # the tiny byte-level tokenizer spells the rocket in several tokens
    for kind in (IncrementalDetokenizer, StreamDetokenizer):
        detok = kind(tokenizer, [])
        assert [detok.push(i) for i in ids[:-1]] == [""] * (len(ids) - 1)
        assert detok.flush() == tokenizer.decode(ids[:-1])
