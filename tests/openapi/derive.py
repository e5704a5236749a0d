"""Derive the OpenAPI schema facts the tests validate against, from OpenAI's full spec.

    python tests/openapi/derive.py [path/to/openapi.yaml]     # default: ../shared/reference/openai-openapi/

It keeps the schemas the tests name and everything they reference: types, properties, required fields,
enums, nullability, unions and bounds, without OpenAI's prose (descriptions, examples, titles, x-
extensions). It adds OzwellCompletionStreamChunk: the spec has no schema of its own for a legacy-completions
stream chunk, and the API sends CreateCompletionResponse's shape with finish_reason null until a choice
ends. The result is written to tests/openapi/schemas.json, which is committed, so the tests need nothing
outside the repository; tests/test_openapi_facts.py checks it against a fresh derivation when the spec is
at hand."""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "schemas.json"
DEFAULT_SPEC = Path(os.environ.get(
    "OZWELL_OPENAPI_SPEC", HERE.parents[2] / "shared" / "reference" / "openai-openapi" / "openapi.yaml"))

# The schemas the tests validate against (tests/server/*.py).
ROOTS = [
    "CreateChatCompletionResponse", "CreateChatCompletionStreamResponse", "CreateCompletionResponse",
    "CreateEmbeddingResponse", "DeleteFileResponse", "ErrorResponse", "ListFilesResponse", "ListModelsResponse",
    "Model", "OpenAIFile", "Response", "ResponseItemList", "ResponseCreatedEvent", "ResponseInProgressEvent",
    "ResponseOutputItemAddedEvent", "ResponseContentPartAddedEvent", "ResponseTextDeltaEvent",
    "ResponseTextDoneEvent", "ResponseContentPartDoneEvent", "ResponseOutputItemDoneEvent",
    "ResponseCompletedEvent", "ResponseIncompleteEvent", "Batch", "ListBatchesResponse",
    "ResponseFileSearchCallInProgressEvent", "ResponseFileSearchCallSearchingEvent",
    "ResponseFileSearchCallCompletedEvent", "ResponseOutputTextAnnotationAddedEvent",
    "VectorStoreObject", "ListVectorStoresResponse", "DeleteVectorStoreResponse", "VectorStoreFileObject",
    "ListVectorStoreFilesResponse", "DeleteVectorStoreFileResponse", "VectorStoreFileBatchObject",
    "VectorStoreFileContentResponse", "VectorStoreSearchResultsPage",
    "ChatCompletionList", "ChatCompletionDeleted", "ChatCompletionMessageList",
]
# What validation reads; everything else (descriptions, examples, titles, x-oaiMeta...) is left out.
KEEP = {"type", "properties", "required", "enum", "const", "items", "anyOf", "oneOf", "allOf", "not", "nullable",
        "additionalProperties", "$ref", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minItems",
        "maxItems", "minLength", "maxLength", "pattern", "discriminator", "prefixItems", "format"}
PREFIX = "#/components/schemas/"


def _strip(node, refs: set[str]):
    if isinstance(node, list):
        return [_strip(item, refs) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "properties":  # property names are data, not keywords
            out[key] = {name: _strip(schema, refs) for name, schema in value.items()}
        elif key == "discriminator":
            out[key] = {"propertyName": value["propertyName"]}
        elif key in KEEP:
            if key == "$ref":
                refs.add(value.removeprefix(PREFIX))
            out[key] = _strip(value, refs)
    return out


def derive(spec_path: Path) -> dict:
    import yaml

    with spec_path.open(encoding="utf-8") as handle:
        spec = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    schemas = spec["components"]["schemas"]
    chunk = copy.deepcopy(schemas["CreateCompletionResponse"])
    chunk["properties"]["choices"]["items"]["properties"]["finish_reason"]["nullable"] = True
    schemas = {**schemas, "OzwellCompletionStreamChunk": chunk}
    kept: dict[str, dict] = {}
    pending = [*ROOTS, "OzwellCompletionStreamChunk"]
    while pending:
        name = pending.pop()
        if name in kept:
            continue
        refs: set[str] = set()
        kept[name] = _strip(schemas[name], refs)
        pending.extend(refs - kept.keys())
    commit = spec_path.with_name("SOURCE-COMMIT")
    source = "OpenAI's openapi.yaml (MIT), derived by tests/openapi/derive.py"
    if commit.exists():
        source += f" from commit {commit.read_text().split()[0]}"
    return {"source": source, "schemas": dict(sorted(kept.items()))}


def render(facts: dict) -> str:
    return json.dumps(facts, indent=1, sort_keys=True) + "\n"


if __name__ == "__main__":
    spec = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SPEC
    facts = derive(spec)
    OUT.write_text(render(facts), encoding="utf-8")
    print(f"wrote {OUT} ({len(facts['schemas'])} schemas) from {spec}")
