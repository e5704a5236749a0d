"""A batch's input file, line by line: reading it, and the checks every line passes before a batch runs."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from engines.registry import EngineRegistry, UnknownModel, engine_kind
from server.services.batches import MAX_LINES

MAX_REPORTED_ERRORS = 100


def iter_lines(path: Path, skip: set[int] | frozenset[int] = frozenset()) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) of the input file's non-blank lines, without those in `skip`."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number not in skip and raw.strip():
                yield number, raw


def parse_line(raw: bytes) -> dict | None:
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


class LineCheck:
    """Every line: a JSON object with a unique non-empty `custom_id`, `method` POST, the batch's `url`, and a
    `body` naming a model the server serves with an engine of `engine_kind` and the caller may use, the same
    model on every line; at most MAX_LINES lines. The errors are OpenAI's BatchError objects (up to
    MAX_REPORTED_ERRORS), each naming its line."""

    def __init__(self, url: str, engine_kind: type, registry: EngineRegistry, caller):
        self.url, self.engine_kind, self.registry, self.caller = url, engine_kind, registry, caller
        self.errors: list[dict] = []
        self.total = 0
        self.model: str | None = None
        self._seen: set[str] = set()

    def error(self, code: str, message: str, line: int | None = None, param: str | None = None) -> None:
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append({"code": code, "message": message, "param": param, "line": line})

    def all(self, lines: Iterable[tuple[int, bytes]]) -> None:
        for number, raw in lines:
            self.total += 1
            if self.total > MAX_LINES:
                self.error("too_many_requests", f"The input file has more than {MAX_LINES} requests.", number)
                break
            self.line(number, raw)
        if self.total == 0 and not self.errors:
            self.error("empty_file", "The input file has no requests.")

    def line(self, number: int, raw: bytes) -> None:
        value = parse_line(raw)
        if value is None:
            self.error("invalid_json_line", f"Line {number} is not a JSON object.", number)
            return
        custom_id = value.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            self.error("missing_custom_id", f"Line {number} has no custom_id (a non-empty string).", number,
                       "custom_id")
        elif custom_id in self._seen:
            self.error("duplicate_custom_id", f"Line {number} repeats the custom_id {custom_id!r}.", number,
                       "custom_id")
        else:
            self._seen.add(custom_id)
        if value.get("method") != "POST":
            self.error("invalid_method", f"Line {number}: method must be 'POST'.", number, "method")
        if value.get("url") != self.url:
            self.error("invalid_url", f"Line {number}: url {value.get('url')!r} is not this batch's endpoint "
                       f"{self.url}.", number, "url")
        body = value.get("body")
        if not isinstance(body, dict):
            self.error("invalid_request", f"Line {number} has no body (a JSON object).", number, "body")
            return
        name = body.get("model")
        problem = self._model_problem(name)
        if problem:
            self.error(problem[0], f"Line {number}: {problem[1]}", number, "body.model")
        elif self.model is None:
            self.model = name
        elif name != self.model:
            self.error("mismatched_model", f"Line {number} uses model {name!r}; every line of a batch must use the "
                       f"same model ({self.model!r}).", number, "body.model")

    def _model_problem(self, name) -> tuple[str, str] | None:
        if not isinstance(name, str) or not name:
            return "missing_model", "the body has no model."
        try:
            config = self.registry.config_of(name)  # loaded or not
        except UnknownModel:
            return "model_not_found", f"the model {name!r} is not served here."
        if not issubclass(engine_kind(config), self.engine_kind):
            return "model_not_supported", f"the model {name!r} cannot serve this endpoint."
        if self.caller is not None and not self.caller.may_use_model(config.names):
            return "model_not_allowed", f"this batch's API key may not use the model {name!r}."
        return None
