import pytest

from engines.detokenizer import IncrementalDetokenizer, StopStringMatcher


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


@pytest.mark.parametrize("text", ["Hello café 🚀 and 東京!", "def add(a, b):\n    return a + b"])
def test_incremental_text_equals_full_decode(tiny_tokenizer_dir, text):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    prompt = tokenizer("Once upon a time")["input_ids"]
    ids = tokenizer(text)["input_ids"]
    detok = IncrementalDetokenizer(tokenizer, prompt)
    pieces = [detok.push(i) for i in ids]
    assert "".join(pieces) + detok.flush() == tokenizer.decode(ids)
    assert not any("\ufffd" in p for p in pieces)  # half characters are held back, never shown
