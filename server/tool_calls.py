"""Function calling in the built-in format: how tools are shown to the model, the grammar each `tool_choice`
decodes under, and how calls are read back out of the text (whole, or delta by delta while streaming).

The format is Hermes-style, one block per call:

    <tool_call>{"name":"get_weather","arguments":{"city":"Paris"}}</tool_call>

The tools are given in a system message (the built-in prompt below), earlier calls are shown in the
assistant's text in the same format, and tool results come back as user turns in <tool_response> blocks. A chat
template that takes tools and writes this same <tool_call> format (Hermes, Qwen) renders the tools, the calls and
the results itself instead; a template with another format (Llama 3's JSON) gets the built-in one. The models we
ship (SmolLM2, Gemma 3) have templates without tools.

How each `tool_choice` decodes (the grammar is llguidance's Lark, with each call's JSON compiled from the
tools' own schemas, compact, name first):
- `none`: plain text, tools not shown;
- `auto`: text with no <tool_call> in it, or text then calls; once a call starts the grammar holds it;
  with a JSON response format (`response_format`, `text.format`), the answer in that format or calls, the
  model choosing at its first token (as OpenAI allows the pair; agent frameworks send both every turn);
- `required`: one or more calls (just one with parallel_tool_calls false), from the first token; a response
  format does not constrain such a turn;
- a named function: exactly one call of it.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

from engines.structured import StructuredOutput

OPEN, CLOSE = "<tool_call>", "</tool_call>"
MAX_PARALLEL_CALLS = 8
_CALL = re.compile(re.escape(OPEN) + r"(.*?)" + re.escape(CLOSE), re.DOTALL)


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class Tool:
    name: str
    description: str | None
    parameters: dict | None  # None: no arguments
    strict: bool | None
    param: str = "tools"  # where its parameters stand in the request, for errors

    def __post_init__(self) -> None:
        self.parameters = self.parameters or {"type": "object", "properties": {}}
        self.strict = bool(self.strict)


@dataclass
class ToolPlan:
    """The request's tools and how they may be called: `choice` is none, auto, required, or a tool's name."""

    tools: list[Tool]
    choice: str
    parallel: bool = True
    answer: StructuredOutput | None = None  # the response format an answer that is not a call is held to

    @property
    def active(self) -> bool:
        return self.choice != "none" and bool(self.tools)

    def structured(self) -> StructuredOutput | None:
        if not self.active:
            return None
        named = [t for t in self.tools if t.name == self.choice]
        one_call = _call_rule(named or self.tools)
        calls = "call" if (named or not self.parallel) else f"call{{1,{MAX_PARALLEL_CALLS}}}"
        if self.choice == "auto" and self.answer is not None:
            start = f"start: answer | calls\nanswer: {_answer_rule(self.answer)}\n"
        elif self.choice == "auto":
            start = ("start: TEXT | TEXT? calls\n"
                     f"TEXT: /(?s:.+)/ & ~/(?s:.*{re.escape(OPEN)}.*)/\n")
        else:
            start = "start: calls\n"
        grammar = f"{start}calls: {calls}\ncall: {one_call}\n"
        return StructuredOutput("lark", grammar, param="tools")

    def openai_tools(self) -> list[dict]:
        """The tools in OpenAI's shape, as chat templates that take tools expect them."""
        return [{"type": "function", "function": {"name": t.name, "description": t.description or "",
                                                  "parameters": t.parameters}} for t in self.tools]

    def system_prompt(self) -> str:
        listed = "\n".join(json.dumps({"name": t.name, "description": t.description or "",
                                       "parameters": t.parameters}, ensure_ascii=False) for t in self.tools)
        return ("You can call these functions (JSON schemas of their arguments):\n<tools>\n" + listed + "\n</tools>\n"
                f"To call one, reply with {OPEN}{{\"name\": <function name>, \"arguments\": <arguments as a JSON "
                f"object>}}{CLOSE}, one block per call. Otherwise reply "
                + ("with your answer as JSON in the format asked for." if self.answer else "in plain text."))


def _call_rule(tools: list[Tool]) -> str:
    lenient = any(not t.strict for t in tools)
    alternatives = [{"type": "object", "properties": {"name": {"const": t.name}, "arguments": t.parameters},
                     "required": ["name", "arguments"], "additionalProperties": False} for t in tools]
    schema = alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives}
    schema = {**schema, "x-guidance": {"whitespace_flexible": False, "lenient": lenient}}
    return f'"{OPEN}" %json {json.dumps(schema, separators=(",", ":"))} "{CLOSE}"'


def _answer_rule(answer: StructuredOutput) -> str:
    """The response format as a Lark rule: its JSON schema (any object for json_object), compact as a call's."""
    schema = {"type": "object"} if answer.kind == "json_object" else json.loads(answer.spec)
    schema = {**schema, "x-guidance": {"whitespace_flexible": False, "lenient": not answer.strict}}
    return f"%json {json.dumps(schema, separators=(',', ':'))}"


def check_tool_schemas(tools: list[Tool]) -> None:
    """Each tool's parameters, compiled alone, so that a refusal names the tool (raises the engine's
    InvalidGenerationRequest, with the tool's param)."""
    for tool in tools:
        StructuredOutput.json_schema(tool.parameters, strict=tool.strict, param=tool.param).check()


def call_text(name: str, arguments: str) -> str:
    """A call as the model writes it (arguments: the JSON text of the arguments object)."""
    return f'{OPEN}{{"name":{json.dumps(name)},"arguments":{arguments}}}{CLOSE}'


def _split(inner: str) -> tuple[str, str] | None:
    """(name, arguments JSON text) of a call block's inside, or None when it is not a call."""
    try:
        value = json.loads(inner)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or "arguments" not in value:
        return None
    prefix = f'{{"name":{json.dumps(value["name"])},"arguments":'
    if inner.startswith(prefix) and inner.endswith("}"):
        return value["name"], inner[len(prefix):-1]  # the model's own text, as it was streamed
    return value["name"], json.dumps(value["arguments"], ensure_ascii=False)


def parse(text: str) -> tuple[str | None, list[dict]]:
    """(content, tool calls) of a whole answer, read exactly as a stream of it is read (StreamParser), so a
    reply gives the same calls streamed or not: a call cut short by the token limit is a call with the
    arguments it got, and its markup never reaches the content."""
    content, calls = "", []
    for delta in StreamParser().feed(text, final=True):
        if "content" in delta:
            content += delta["content"]
            continue
        entry = delta["tool_calls"][0]
        if "id" in entry:
            calls.append({"id": entry["id"], "type": "function",
                          "function": {"name": entry["function"]["name"], "arguments": ""}})
        calls[-1]["function"]["arguments"] += entry["function"]["arguments"]
    return (content.strip() or None) if calls else content, calls


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _held(text: str, marker: str) -> int:
    """How many characters at the end of `text` could begin `marker` (held back until they are known)."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


_NAME = re.compile(r'^\{"name":("(?:[^"\\]|\\.)*"),"arguments":')


@dataclass
class StreamParser:
    """One choice's text, streamed, as OpenAI's deltas: {"content": ...} for text outside calls, and per call
    first {"tool_calls": [{index, id, type, function: {name, arguments: ""}}]}, then argument fragments."""

    calls: int = 0
    _buffer: str = ""
    _in_call: bool = False
    _named: bool = False
    _sent: int = 0  # argument characters sent for the current call
    _prefix: int = 0

    @property
    def called(self) -> bool:
        return self.calls > 0 or (self._in_call and self._named)

    def feed(self, text: str, final: bool = False) -> list[dict]:
        self._buffer += text
        out: list[dict] = []
        while True:
            if not self._in_call:
                start = self._buffer.find(OPEN)
                if start < 0:
                    # (at the end, a tag cut short is dropped: the reply stopped as a call began)
                    cut = len(self._buffer) - _held(self._buffer, OPEN)
                    ready, self._buffer = self._buffer[:cut], "" if final else self._buffer[cut:]
                    if ready:
                        out.append({"content": ready})
                    return out
                if start:
                    out.append({"content": self._buffer[:start]})
                self._buffer, self._in_call, self._named, self._sent = self._buffer[start + len(OPEN):], True, False, 0
            if not self._named:
                match = _NAME.match(self._buffer)
                if match is None:
                    if not self._whole_block(out):
                        return out  # (at the end: a call cut before its name is known is dropped, markup too)
                    continue
                self._named, self._prefix = True, match.end()
                out.append(self._call({"index": self.calls, "id": call_id(), "type": "function",
                                       "function": {"name": json.loads(match.group(1)), "arguments": ""}}))
            end = self._buffer.find(CLOSE)
            if end < 0:
                available = len(self._buffer) - (self._cut_tail() if final else _held(self._buffer, "}" + CLOSE))
                fragment = self._buffer[self._prefix + self._sent:available]
                if fragment:
                    self._sent += len(fragment)
                    out.append(self._call({"index": self.calls, "function": {"arguments": fragment}}))
                return out
            fragment = self._buffer[self._prefix + self._sent:end - 1]  # less the block's closing brace
            if fragment:
                out.append(self._call({"index": self.calls, "function": {"arguments": fragment}}))
            self._buffer, self._in_call = self._buffer[end + len(CLOSE):], False
            self.calls += 1

    def _cut_tail(self) -> int:
        """At the end of a call cut short: how many characters at the end are the start of its closing
        `}</tool_call>` (dropped), unless the arguments are whole JSON as they stand."""
        if _is_json(self._buffer[self._prefix:]):
            return 0
        return _held(self._buffer, "}" + CLOSE)

    def _whole_block(self, out: list[dict]) -> bool:
        """A closed block not written compactly (no grammar held it): one call, its arguments whole, or the
        block as text when it is not a call. False while the block is still open."""
        end = self._buffer.find(CLOSE)
        if end < 0:
            return False
        inner, self._buffer, self._in_call = self._buffer[:end], self._buffer[end + len(CLOSE):], False
        split = _split(inner)
        if split is None:
            out.append({"content": OPEN + inner + CLOSE})
            return True
        out.append(self._call({"index": self.calls, "id": call_id(), "type": "function",
                               "function": {"name": split[0], "arguments": ""}}))
        out.append(self._call({"index": self.calls, "function": {"arguments": split[1]}}))
        self.calls += 1
        return True

    @staticmethod
    def _call(entry: dict) -> dict:
        return {"tool_calls": [entry]}
