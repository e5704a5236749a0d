"""Structured outputs: what a generation's text must match, as engine terms (no HTTP, no tools), and its
grammar in llguidance's format.

Why llguidance (over xgrammar): one dependency-free abi3 wheel; a JSON-schema compiler whose default JSON has
no free whitespace (xgrammar's defaults let random logits write spaces forever inside JSON); Lark grammars for
the text-then-call shapes of tool calling; matchers that compute masks in native threads without the GIL; and
schema errors that name the keyword ("Unimplemented keys: [\"not\"]"). vLLM ships it as its `guidance`
backend, so the vLLM engine enforces the same grammars.

`strict` follows OpenAI: a strict schema that uses a keyword the compiler does not implement is refused
(400 naming it); a non-strict one is enforced leniently, the unimplemented keywords ignored and the rest held.

A JSON schema (a response format, or one tool's parameters) is at most MAX_SCHEMA_BYTES of compact JSON
(issue #35): compiling one costs about 30 ms per 100 KB. OpenAI's own limits (5,000 properties, 10 levels
of nesting, 120,000 characters of names and enum values) fit real schemas in far less; a 256 KiB schema
holds thousands of properties. Checking a schema compiles it: callers run `check` off the event loop.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any, Literal

from engines.protocol import InvalidGenerationRequest

# Compact JSON: no whitespace the model may repeat (a weak model would loop on it).
JSON_OPTIONS = {"whitespace_flexible": False}
MAX_SPEC_BYTES = 1 << 20  # a Lark grammar (the tools' call grammar holds every tool's schema)
MAX_SCHEMA_BYTES = 256 * 1024  # one JSON schema, as compact JSON


@dataclass(frozen=True)
class StructuredOutput:
    """`json_schema` (spec: the schema as JSON text), `json_object` (any JSON object) or `lark` (spec: a Lark
    grammar). `param` names the request field it came from, for errors."""

    kind: Literal["json_schema", "json_object", "lark"]
    spec: str = ""
    strict: bool = True
    param: str = "response_format"

    @classmethod
    def json_schema(cls, schema: dict[str, Any], strict: bool = True, param: str = "response_format"):
        return cls("json_schema", json.dumps(schema, sort_keys=True, separators=(",", ":")), strict, param)

    def grammar(self) -> str:
        """The llguidance grammar (JSON text); raises InvalidGenerationRequest for a malformed spec."""
        from llguidance import LLMatcher

        if self.kind == "json_schema" and len(self.spec) > MAX_SCHEMA_BYTES:
            raise InvalidGenerationRequest(
                f"The JSON schema is {len(self.spec):,} bytes (as compact JSON); at most {MAX_SCHEMA_BYTES:,} are "
                "accepted.", param=self.param, code="schema_too_large")
        if len(self.spec) > MAX_SPEC_BYTES:
            raise InvalidGenerationRequest(f"The grammar is {len(self.spec):,} bytes; at most {MAX_SPEC_BYTES:,} are "
                                           "accepted.", param=self.param, code="grammar_too_large")
        if self.kind == "lark":
            return LLMatcher.grammar_from_lark(self.spec)
        schema: Any = {"type": "object"} if self.kind == "json_object" else json.loads(self.spec)
        options = JSON_OPTIONS if self.strict else {**JSON_OPTIONS, "lenient": True}
        try:
            return LLMatcher.grammar_from_json_schema(schema, defaults=options)
        except ValueError as exc:
            raise InvalidGenerationRequest(f"invalid JSON schema: {exc}", param=self.param) from None

    def check(self) -> str:
        """The grammar, validated: a schema the compiler cannot enforce is refused with the compiler's reason
        (which names the keyword). Valid grammars are remembered, so a schema sent again is not checked again
        on the event loop."""
        return _checked(self)


@functools.lru_cache(maxsize=256)
def _checked(structured: StructuredOutput) -> str:
    from llguidance import LLMatcher

    grammar = structured.grammar()
    is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:  # (an exception is not cached: a refused schema is refused again each time, alike)
        what = "grammar" if structured.kind == "lark" else "JSON schema"
        raise InvalidGenerationRequest(f"this {what} cannot be enforced: {messages[0]}", param=structured.param,
                                       code="invalid_schema" if structured.kind != "lark" else "invalid_grammar")
    return grammar
