"""Attribute filters for vector store search: OpenAI's ComparisonFilter (eq ne gt gte lt lte in nin) and
CompoundFilter (and / or, nested), parsed once into small objects that test a file's `attributes` dict.

Semantics, chosen to be unsurprising where OpenAI's spec is silent:
- Values compare only within one kind: strings with strings, numbers with numbers (int and float alike),
  booleans with booleans (True is not 1). `gt`/`gte`/`lt`/`lte` on strings compare them lexically (ISO dates
  work). A comparison across kinds is false.
- An attribute the file lacks makes every comparison false except `ne` and `nin`, which are true: the file's
  value is indeed not the one named. `in`/`nin` take an array of strings or numbers.
- An `and` of no filters matches everything, an `or` of none nothing.
Bad input is an InvalidRequestError naming the parameter path (`filters.filters[1].value`).
"""

from __future__ import annotations

import json
import operator

from server.errors import InvalidRequestError

COMPARISONS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "nin")
COMPOUNDS = ("and", "or")
MAX_DEPTH = 16
MAX_FILTERS = 1000
_ORDER = {"gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le}
_MISSING = object()


class Filter:
    def matches(self, attributes: dict) -> bool:
        raise NotImplementedError

    key: str  # canonical JSON of the filter: equal filters share cached masks


class ComparisonFilter(Filter):
    def __init__(self, op: str, attribute: str, value):
        self.op, self.attribute, self.value = op, attribute, value
        self.key = json.dumps({"type": op, "key": attribute, "value": value}, sort_keys=True)

    def matches(self, attributes: dict) -> bool:
        actual = attributes.get(self.attribute, _MISSING) if attributes else _MISSING
        if self.op in ("in", "nin"):
            found = actual is not _MISSING and any(_same_kind(actual, v) and actual == v for v in self.value)
            return found if self.op == "in" else not found
        if actual is _MISSING:
            return self.op == "ne"
        same = _same_kind(actual, self.value)
        if self.op == "eq":
            return same and actual == self.value
        if self.op == "ne":
            return not (same and actual == self.value)
        return same and not isinstance(actual, bool) and _ORDER[self.op](actual, self.value)


class CompoundFilter(Filter):
    def __init__(self, op: str, filters: list[Filter]):
        self.op, self.filters = op, filters
        self.key = json.dumps({"type": op, "filters": [json.loads(f.key) for f in filters]}, sort_keys=True)

    def matches(self, attributes: dict) -> bool:
        if self.op == "and":
            return all(f.matches(attributes) for f in self.filters)
        return any(f.matches(attributes) for f in self.filters)


def _kind(value) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return "string" if isinstance(value, str) else "other"


def _same_kind(a, b) -> bool:
    return _kind(a) == _kind(b) != "other"


def parse_filters(raw: dict | None, param: str = "filters") -> Filter | None:
    """The request's `filters` as a Filter, or None when absent."""
    if raw is None:
        return None
    budget = [MAX_FILTERS]
    return _parse(raw, param, 0, budget)


def _parse(raw, where: str, depth: int, budget: list[int]) -> Filter:
    if not isinstance(raw, dict):
        raise InvalidRequestError(f"Invalid '{where}': expected an object.", param=where)
    if depth > MAX_DEPTH:
        raise InvalidRequestError(f"Invalid '{where}': filters nest at most {MAX_DEPTH} deep.", param=where)
    budget[0] -= 1
    if budget[0] < 0:
        raise InvalidRequestError(f"Invalid '{where}': at most {MAX_FILTERS} filters in all.", param=where)
    kind = raw.get("type")
    if kind in COMPOUNDS:
        _only(raw, {"type", "filters"}, where)
        items = raw.get("filters")
        if not isinstance(items, list):
            raise InvalidRequestError(f"Invalid '{where}.filters': expected an array of filters.",
                                      param=f"{where}.filters")
        return CompoundFilter(kind, [_parse(item, f"{where}.filters[{i}]", depth + 1, budget)
                                     for i, item in enumerate(items)])
    if kind not in COMPARISONS:
        allowed = ", ".join(COMPARISONS + COMPOUNDS)
        raise InvalidRequestError(f"Invalid '{where}.type': {kind!r} is not one of {allowed}.",
                                  param=f"{where}.type")
    _only(raw, {"type", "key", "value"}, where)
    attribute = raw.get("key")
    if not isinstance(attribute, str):
        raise InvalidRequestError(f"Invalid '{where}.key': expected a string.", param=f"{where}.key")
    if "value" not in raw:
        raise InvalidRequestError(f"Missing required parameter: '{where}.value'.", param=f"{where}.value")
    return ComparisonFilter(kind, attribute, _value(kind, raw["value"], f"{where}.value"))


def _value(op: str, value, where: str):
    if op in ("in", "nin"):
        if not isinstance(value, list) or any(_kind(v) not in ("string", "number") for v in value):
            raise InvalidRequestError(f"Invalid '{where}': '{op}' takes an array of strings or numbers.",
                                      param=where)
        return value
    if _kind(value) == "other":
        raise InvalidRequestError(f"Invalid '{where}': expected a string, number or boolean for '{op}'.",
                                  param=where)
    if op in _ORDER and isinstance(value, bool):
        raise InvalidRequestError(f"Invalid '{where}': '{op}' compares numbers or strings, not booleans.",
                                  param=where)
    return value


def _only(raw: dict, allowed: set[str], where: str) -> None:
    extra = sorted(set(raw) - allowed)
    if extra:
        raise InvalidRequestError(f"Unrecognized parameter: '{where}.{extra[0]}'.", param=f"{where}.{extra[0]}")
