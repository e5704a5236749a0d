"""Attribute filters: every comparison, nesting, kinds that do not mix, missing keys, and bad input."""

from __future__ import annotations

import pytest

from server.errors import InvalidRequestError
from server.vector_stores.filters import parse_filters

FILES = {
    "a": {"author": "ann", "year": 2021, "score": 4.5, "draft": False, "tag": "x"},
    "b": {"author": "bob", "year": 2023, "score": 3, "draft": True},
    "c": {"author": "cy", "year": "2023", "date": "2024-05-01"},
    "d": {},
}


def matching(raw) -> list[str]:
    parsed = parse_filters(raw)
    return sorted(name for name, attributes in FILES.items() if parsed.matches(attributes))


@pytest.mark.parametrize("op,value,expected", [
    ("eq", 2023, ["b"]),            # "2023" (c) is a string: kinds do not mix
    ("eq", "2023", ["c"]),
    ("ne", 2023, ["a", "c", "d"]),  # a missing key is "not equal"
    ("gt", 2021, ["b"]),
    ("gte", 2021, ["a", "b"]),
    ("lt", 2023, ["a"]),
    ("lte", 2023.0, ["a", "b"]),    # int and float are one kind
    ("in", [2021, "2023"], ["a", "c"]),
    ("nin", [2021, "2023"], ["b", "d"]),
])
def test_comparisons_on_year(op, value, expected):
    assert matching({"type": op, "key": "year", "value": value}) == expected


def test_booleans_are_not_numbers():
    assert matching({"type": "eq", "key": "draft", "value": True}) == ["b"]
    assert matching({"type": "eq", "key": "draft", "value": False}) == ["a"]
    assert matching({"type": "eq", "key": "score", "value": True}) == []
    assert matching({"type": "in", "key": "draft", "value": [1, 0]}) == []


def test_strings_order_lexically_so_iso_dates_work():
    assert matching({"type": "gte", "key": "date", "value": "2024-01-01"}) == ["c"]
    assert matching({"type": "lt", "key": "author", "value": "bz"}) == ["a", "b"]
    assert matching({"type": "gt", "key": "year", "value": "2000"}) == ["c"]  # only the string year


def test_missing_key_fails_all_but_ne_and_nin():
    for op, value in [("eq", "x"), ("gt", 0), ("lte", "z"), ("in", ["x"])]:
        assert "d" not in matching({"type": op, "key": "tag", "value": value})
    assert matching({"type": "ne", "key": "tag", "value": "x"}) == ["b", "c", "d"]
    assert matching({"type": "nin", "key": "tag", "value": ["x"]}) == ["b", "c", "d"]


def test_compound_and_or_nest():
    recent_or_ann = {"type": "or", "filters": [
        {"type": "eq", "key": "author", "value": "ann"},
        {"type": "and", "filters": [{"type": "gte", "key": "year", "value": 2022},
                                    {"type": "eq", "key": "draft", "value": True}]}]}
    assert matching(recent_or_ann) == ["a", "b"]
    not_ann = {"type": "ne", "key": "author", "value": "ann"}
    assert matching({"type": "and", "filters": [recent_or_ann, not_ann]}) == ["b"]
    assert matching({"type": "and", "filters": []}) == ["a", "b", "c", "d"]
    assert matching({"type": "or", "filters": []}) == []


def test_none_means_no_filter_and_equal_filters_share_a_key():
    assert parse_filters(None) is None
    one = parse_filters({"type": "eq", "key": "k", "value": 1})
    two = parse_filters({"value": 1, "key": "k", "type": "eq"})
    assert one.key == two.key != parse_filters({"type": "eq", "key": "k", "value": "1"}).key
    assert one.matches(None) is False


@pytest.mark.parametrize("raw,param", [
    ("author = ann", "filters"),
    ({"type": "like", "key": "a", "value": "x"}, "filters.type"),
    ({"key": "a", "value": "x"}, "filters.type"),
    ({"type": "eq", "value": "x"}, "filters.key"),
    ({"type": "eq", "key": 3, "value": "x"}, "filters.key"),
    ({"type": "eq", "key": "a"}, "filters.value"),
    ({"type": "eq", "key": "a", "value": None}, "filters.value"),
    ({"type": "eq", "key": "a", "value": ["x"]}, "filters.value"),
    ({"type": "eq", "key": "a", "value": {"x": 1}}, "filters.value"),
    ({"type": "in", "key": "a", "value": "x"}, "filters.value"),
    ({"type": "nin", "key": "a", "value": [True]}, "filters.value"),
    ({"type": "gt", "key": "a", "value": False}, "filters.value"),
    ({"type": "eq", "key": "a", "value": 1, "extra": 1}, "filters.extra"),
    ({"type": "and"}, "filters.filters"),
    ({"type": "or", "filters": {"type": "eq"}}, "filters.filters"),
    ({"type": "and", "filters": [{"type": "eq", "key": "a", "value": 1},
                                 {"type": "or", "filters": [{"type": "in", "key": "b", "value": 2}]}]},
     "filters.filters[1].filters[0].value"),
])
def test_bad_filters_are_400s_naming_the_parameter(raw, param):
    with pytest.raises(InvalidRequestError) as caught:
        parse_filters(raw)
    assert caught.value.param == param and caught.value.status_code == 400


def test_nesting_and_size_are_bounded():
    deep = {"type": "eq", "key": "a", "value": 1}
    for _ in range(40):
        deep = {"type": "and", "filters": [deep]}
    with pytest.raises(InvalidRequestError, match="nest at most"):
        parse_filters(deep)
    wide = {"type": "or", "filters": [{"type": "eq", "key": "a", "value": i} for i in range(5000)]}
    with pytest.raises(InvalidRequestError, match="at most 1000 filters"):
        parse_filters(wide)


def test_param_prefix_is_the_callers():
    with pytest.raises(InvalidRequestError) as caught:
        parse_filters({"type": "eq", "key": "a"}, param="tools[0].filters")
    assert caught.value.param == "tools[0].filters.value"
