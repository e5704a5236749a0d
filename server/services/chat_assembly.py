"""The chat.completion body a stream's chunks add up to: what store=true keeps of a streamed completion, the same
shape as the non-streamed body (content joined, tool-call deltas merged by their index, logprobs concatenated)."""

from __future__ import annotations

from typing import Any


class StreamedCompletion:
    def __init__(self) -> None:
        self.choices: dict[int, dict[str, Any]] = {}

    def add(self, choice: dict[str, Any]) -> None:
        """One chunk choice as sent: index, delta, finish_reason and logprobs."""
        index = choice["index"]
        into = self.choices.setdefault(index, {"index": index, "message": {"role": "assistant", "content": None,
                                                                           "refusal": None},
                                               "finish_reason": None, "logprobs": None})
        message, delta = into["message"], choice["delta"]
        if delta.get("content") is not None:
            message["content"] = (message["content"] or "") + delta["content"]
        for call in delta.get("tool_calls") or ():
            _merge_call(message.setdefault("tool_calls", []), call)
        logprobs = choice.get("logprobs")
        if logprobs:
            into["logprobs"] = into["logprobs"] or {"content": [], "refusal": None}
            into["logprobs"]["content"].extend(logprobs.get("content") or ())
        if choice.get("finish_reason"):
            into["finish_reason"] = choice["finish_reason"]

    def body(self, completion_id: str, created: int, model: str, usage: dict[str, int]) -> dict[str, Any]:
        choices = [self.choices[index] for index in sorted(self.choices)]
        return {"id": completion_id, "object": "chat.completion", "created": created, "model": model,
                "choices": choices, "usage": usage}


def _merge_call(calls: list[dict[str, Any]], delta: dict[str, Any]) -> None:
    """A tool-call delta: its first names the call (id, type, function name), the rest add argument text."""
    position = delta.get("index", len(calls))
    while len(calls) <= position:
        calls.append({"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
    call, function = calls[position], delta.get("function") or {}
    if delta.get("id"):
        call["id"] = delta["id"]
    if delta.get("type"):
        call["type"] = delta["type"]
    call["function"]["name"] += function.get("name") or ""
    call["function"]["arguments"] += function.get("arguments") or ""
