"""Validate bodies against the schemas of OpenAI's own OpenAPI file (../shared/reference)."""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator

SPEC_PATH = Path(os.environ.get(
    "OZWELL_OPENAPI_SPEC",
    Path(__file__).resolve().parents[2] / "shared" / "reference" / "openai-openapi" / "openapi.yaml",
))


def _nullable_to_json_schema(node):
    """The file is OpenAPI 3.1 but still writes `nullable: true`; turn it into a JSON Schema null."""
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
def _spec() -> dict:
    with SPEC_PATH.open(encoding="utf-8") as handle:
        spec = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    schemas = spec["components"]["schemas"]
    # The spec has no schema of its own for a legacy-completions stream chunk. The API sends the
    # CreateCompletionResponse shape with finish_reason null until a choice ends.
    chunk = copy.deepcopy(schemas["CreateCompletionResponse"])
    chunk["properties"]["choices"]["items"]["properties"]["finish_reason"]["nullable"] = True
    schemas["OzwellCompletionStreamChunk"] = chunk
    return {"components": _nullable_to_json_schema(spec["components"])}


@functools.lru_cache(maxsize=None)
def _validator(name: str) -> Draft202012Validator:
    root = {**_spec(), "$ref": f"#/components/schemas/{name}"}
    return Draft202012Validator(root)


def assert_valid(body: dict, schema_name: str) -> None:
    errors = sorted(_validator(schema_name).iter_errors(body), key=lambda e: list(e.path))
    assert not errors, f"{schema_name}: " + "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])
