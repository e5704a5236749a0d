"""The committed schema facts (tests/openapi/schemas.json) are what tests/openapi/derive.py derives from
OpenAI's full spec, when the spec is at hand (../shared, or OZWELL_OPENAPI_SPEC); and they hold every
schema the tests name."""

import pytest

from tests.openapi.derive import DEFAULT_SPEC, OUT, ROOTS, derive, render
from tests.openapi_schemas import assert_valid


def test_the_committed_facts_hold_every_schema_the_tests_name():
    import json

    schemas = json.loads(OUT.read_text())["schemas"]
    assert set(ROOTS) | {"OzwellCompletionStreamChunk"} <= set(schemas)
    assert not any("description" in schema or "example" in schema for schema in schemas.values())
    # Strict still: a wrong type, a missing required field and a bad enum value are all refused.
    good = {"error": {"message": "m", "type": "invalid_request_error", "param": None, "code": None}}
    assert_valid(good, "ErrorResponse")
    for bad in ({"error": {"message": 1, "type": "t", "param": None, "code": None}}, {"error": {"message": "m"}},
                {"object": "list", "data": [{"id": "m", "object": "mode", "created": 1, "owned_by": "o"}]}):
        with pytest.raises(AssertionError):
            assert_valid(bad, "ListModelsResponse" if "data" in bad else "ErrorResponse")


@pytest.mark.skipif(not DEFAULT_SPEC.exists(), reason=f"OpenAI's full spec is not at {DEFAULT_SPEC}")
def test_the_committed_facts_match_a_fresh_derivation_from_the_full_spec():
    assert OUT.read_text(encoding="utf-8") == render(derive(DEFAULT_SPEC)), (
        "tests/openapi/schemas.json is stale: run python tests/openapi/derive.py")
