"""Validate bodies against OpenAI's schemas, from the facts committed in tests/openapi/schemas.json.

That file is derived from OpenAI's own OpenAPI file by tests/openapi/derive.py (types, required fields,
enums, nullability; no prose), so the tests need nothing outside the repository;
tests/test_openapi_facts.py checks it against the full spec when that is at hand."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from jsonschema import Draft202012Validator

FACTS = Path(__file__).resolve().parent / "openapi" / "schemas.json"


def _nullable_to_json_schema(node):
    """The spec is OpenAPI 3.1 but still writes `nullable: true`; turn it into a JSON Schema null."""
    if isinstance(node, list):
        return [_nullable_to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _nullable_to_json_schema(value) for key, value in node.items()}
    if node.pop("nullable", False) is True:
        if isinstance(node.get("type"), str):
            node["type"] = [node["type"], "null"]
            if "enum" in node:
                node["enum"] = [*node["enum"], None]
        else:
            node = {"anyOf": [node, {"type": "null"}]}
    return node


@functools.lru_cache(maxsize=1)
def _components() -> dict:
    schemas = json.loads(FACTS.read_text(encoding="utf-8"))["schemas"]
    return {"components": _nullable_to_json_schema({"schemas": schemas})}


@functools.lru_cache(maxsize=None)
def _validator(name: str) -> Draft202012Validator:
    components = _components()
    if name not in components["components"]["schemas"]:
        raise KeyError(f"{name} is not in {FACTS.name}: add it to ROOTS in tests/openapi/derive.py and rerun it")
    return Draft202012Validator({**components, "$ref": f"#/components/schemas/{name}"})


def assert_valid(body: dict, schema_name: str) -> None:
    errors = sorted(_validator(schema_name).iter_errors(body), key=lambda e: list(e.path))
    assert not errors, f"{schema_name}: " + "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])
