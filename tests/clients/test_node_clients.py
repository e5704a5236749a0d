"""The openai Node SDK and the Vercel AI SDK (ai 6) against a real server (issue #39). The Vercel SDK, on all three
of its providers: generateText with
tools and Output.object was a 400 on each; a forced call streamed opened with an empty text part; a call cut by
maxOutputTokens must be a tool call. Node and tests/clients/node's node_modules (`npm ci` there, as .ci/run
does) are needed; without them this skips, saying why."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.clients.conftest import MODEL

pytestmark = pytest.mark.clients

NODE_DIR = Path(__file__).parent / "node"
REPORTS = {"city": {"Paris", "Rome", "Oslo"}, "degrees": {10, 20, 30}}


@pytest.fixture(scope="module")
def node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    if not (NODE_DIR / "node_modules" / "ai").is_dir():
        pytest.skip(f"the Node clients are not installed: cd {NODE_DIR} && npm ci")
    return node


def _run(node: str, server, script: str) -> dict:
    done = subprocess.run([node, script, server.url + "/v1", server.key, MODEL], cwd=NODE_DIR,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_openai_node_sdk_final_response_is_what_the_events_built(node, clients_server):
    seen = _run(node, clients_server, "openai.mjs")
    responses = seen["responses"]
    final = [{k: v for k, v in item.items() if k != "parsed_arguments"} for item in responses["output"]]  # (the SDK's)
    assert responses["status"] == "incomplete" and final == responses["done"]
    assert [item["type"] for item in responses["output"]] == ["function_call"]
    assert responses["output"][0]["status"] == "incomplete" and "<tool" not in responses["outputText"]
    assert seen["chat"]["finish"] == "tool_calls" and seen["chat"]["content"] is None
    assert [name for name, _ in seen["chat"]["calls"]] == ["get_time"] and -12 <= seen["chat"]["calls"][0][1][
        "zone"] <= 12


def test_vercel_ai_sdk_on_its_three_providers(node, clients_server):
    seen = _run(node, clients_server, "vercel.mjs")
    assert set(seen) == {"chat", "responses", "compatible"}
    reports = 0
    for provider, entry in seen.items():
        output = entry["output"]
        if "error" in output:
            # no HTTP error (before #39: APICallError, status 400); the random model may spend its steps on calls
            assert output["error"] == "NoOutputGeneratedError" and output["status"] is None, (provider, output)
        else:
            assert set(output) == set(REPORTS) and all(output[k] in REPORTS[k] for k in REPORTS), (provider, output)
            reports += 1
        assert entry["stream"] == ["tool-call"], (provider, entry["stream"])  # no empty text part before it
        assert entry["cut"]["finish"] == "length" and entry["cut"]["calls"] == ["get_time"], (provider, entry["cut"])
        assert entry["cut"]["text"] == "" and "text" not in entry["cut"]["content"], (provider, entry["cut"])
    assert reports >= 1
