"""Agent frameworks and client libraries, unchanged, against a real server (issue #39). Each failure the issue
found is asserted here: tools together with a response format (pydantic-ai NativeOutput/PromptedOutput, the Agents
SDK's output_type on both model classes, instructor RESPONSES_TOOLS, LangChain bind_tools(response_format=...),
LiteLLM), and a tool call cut by max_tokens, which must come back as a call, never as markup in the text."""

from __future__ import annotations

import pytest

from tests.clients.conftest import run_client

pytestmark = pytest.mark.clients

REPORTS = {"city": {"Paris", "Rome", "Oslo"}, "degrees": {10, 20, 30}}


def _is_report(value) -> bool:
    return isinstance(value, dict) and set(value) == set(REPORTS) and all(value[k] in REPORTS[k] for k in REPORTS)


def test_langchain(clients_python, clients_server):
    seen = run_client(clients_python, clients_server, "langchain_client.py")
    assert [name for name, _ in seen["call"]] == ["GetTime"] and -12 <= seen["call"][0][1]["zone"] <= 12
    # bind_tools(..., response_format=Report): a call or a parsed Report each time (400 before #39)
    assert set(seen["tools_and_format"]) <= {"call", "answer"} and "answer" in seen["tools_and_format"]
    # a call cut by max_tokens is a call LangChain reads as invalid (partial arguments), not text with markup
    assert seen["cut"] == {"content": "", "calls": [], "invalid": ["GetTime"], "finish": "length"}
    assert seen["stream"]["chunks"] > 1 and "<tool" not in seen["stream"]["text"]
    assert [name for name, _ in seen["stream_call"]] == ["GetTime"]
    assert [name for name, _ in seen["responses_call"]] == ["GetTime"]


def test_instructor(clients_python, clients_server):
    seen = run_client(clients_python, clients_server, "instructor_client.py")
    assert _is_report(seen["tools"]) and _is_report(seen["responses_tools"])
    assert seen["cut"] == "IncompleteOutputException"  # before #39: the markup came back as content


def test_pydantic_ai(clients_python, clients_server):
    seen = run_client(clients_python, clients_server, "pydantic_ai_client.py")
    for model in ("chat", "responses"):
        # NativeOutput sends the response format beside the tools (400 before #39): a Report, or the run ended
        # by its limits while the random model called tools; never an HTTP error (the script would fail)
        for kind in ("native", "tool"):
            outcome = seen[f"{model}_{kind}"]
            assert _is_report(outcome) or outcome in ("request_limit", "cut_call"), (model, kind, outcome)
        assert _is_report(seen[f"{model}_native"]) or _is_report(seen[f"{model}_tool"])
        # PromptedOutput: accepted; a prompt alone holds the random model to nothing
        assert seen[f"{model}_prompted"] in ("retries_exceeded", "request_limit", "cut_call") or _is_report(
            seen[f"{model}_prompted"])


def test_openai_agents_sdk(clients_python, clients_server):
    seen = run_client(clients_python, clients_server, "agents_client.py")
    for model in ("chat", "responses"):  # tools + output_type on both model classes (400 before #39)
        assert _is_report(seen[model]) or seen[model] in ("max_turns", "incomplete"), seen
    assert _is_report(seen["chat"]) or _is_report(seen["responses"]), seen


def test_litellm(clients_python, clients_server):
    seen = run_client(clients_python, clients_server, "litellm_client.py")
    assert [name for name, _ in seen["call"]] == ["get_time"]
    assert set(seen["tools_and_format"]) <= {"call", "answer", "length"} and {"call", "answer"} & set(
        seen["tools_and_format"])
    assert seen["stream_call"][0] == ["get_time"] and -12 <= seen["stream_call"][1]["zone"] <= 12
    assert seen["cut"] == {"content": None, "finish": "length", "calls": ["get_time"]}
