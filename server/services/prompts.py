"""What a generation request asks the engine to continue, before it is tokenized.

A `Prompt` offers two things to the pipeline (server/services/pipeline.py): a cheap lower bound on its
tokens, read without templating or tokenizing (what admission reserves before any work), and its token
ids (blocking work the pipeline runs off the event loop). Chat messages, a completion's text or token
ids, and the Responses API's conversation (server/services/response_input.py) are prompts."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from engines.protocol import ContextLengthExceeded, GenerationEngine
from server.errors import InvalidRequestError, NotFoundError, UnsupportedParameterError
from server.protocol import ChatMessage
from server.services.prompt_files import PromptFiles
from server.tool_calls import ToolPlan, call_text

# The chat templates we load know system, user and assistant; a developer message is the newer name for
# a system message. Chat and Responses both map their roles through this.
TEMPLATE_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
FileText = Callable[[str], str]  # file id -> its UTF-8 text (raises OpenAIError)


class Prompt(Protocol):
    def floor(self, engine: GenerationEngine) -> int:
        """A lower bound on its tokens, without templating or tokenizing (at most the context)."""

    def token_ids(self, engine: GenerationEngine) -> list[int]:
        """Its token ids (blocking: templates, files, tokenizing). Raises OpenAIError or the engine's refusal."""


def text_floor(engine: GenerationEngine, text: str) -> int:
    return min(engine.min_prompt_tokens(text), engine.max_model_len)


def files_tokens(engine: GenerationEngine, text: str, files: PromptFiles) -> int:
    """A lower bound on the tokens of inline text and file parts together, from their lengths alone."""
    return max(1, -(-(len(text) + files.min_chars()) // engine.max_token_chars()))


def files_floor(engine: GenerationEngine, text: str, files: PromptFiles, param: str, cap: int | None = None) -> int:
    """`files_tokens`, for admission; over `cap` (the context unless given), the prompt cannot fit, and is
    refused before any file is read or template rendered."""
    tokens = files_tokens(engine, text, files)
    cap = engine.max_model_len if cap is None else cap
    if tokens > cap:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {engine.max_model_len} tokens. However, your {param} with "
            f"their files ({files.bytes} bytes) take at least {tokens} tokens. Please reduce the files or the "
            "text.", param=param)
    return tokens


@dataclass
class TextPrompt:
    text: str

    def floor(self, engine: GenerationEngine) -> int:
        return text_floor(engine, self.text)

    def token_ids(self, engine: GenerationEngine) -> list[int]:
        return engine.encode_text(self.text)


@dataclass
class TokenPrompt:
    ids: list[int]
    param: str  # where it stands in the request, for the error

    def floor(self, engine: GenerationEngine) -> int:
        return min(len(self.ids), engine.max_model_len)

    def token_ids(self, engine: GenerationEngine) -> list[int]:
        vocab = engine.vocab_size()
        if any(t < 0 or t >= vocab for t in self.ids):
            raise InvalidRequestError(f"Token ids in {self.param} must be between 0 and {vocab - 1}.",
                                      param="prompt", code="invalid_value")
        return list(self.ids)


@dataclass
class ChatPrompt:
    messages: list[ChatMessage]
    files: PromptFiles | None = None  # measured (server/services/prompt_files.py) before the floor is read
    tools: ToolPlan | None = None  # shown in the built-in format (server/tool_calls.py) when they may be called

    @property
    def file_text(self) -> FileText | None:
        return None if self.files is None else self.files.reader()

    def floor(self, engine: GenerationEngine) -> int:
        text = "".join(_plain_text(m) for m in self.messages)
        if self.files is None or not self.files.bytes:
            return text_floor(engine, text)
        return files_floor(engine, text, self.files, "messages")

    def token_ids(self, engine: GenerationEngine) -> list[int]:
        if self.tools is not None and self.tools.active and engine.template_tool_format() == "hermes":
            # the template shows the tools and the calls itself, in the same <tool_call> format we decode
            return engine.encode_chat(template_messages(self.messages, self.file_text, native_tools=True),
                                      tools=self.tools.openai_tools())
        rendered = template_messages(self.messages, self.file_text)
        if self.tools is not None and self.tools.active:
            prompt = self.tools.system_prompt()
            if rendered and rendered[0]["role"] == "system":
                rendered[0] = {"role": "system", "content": rendered[0]["content"] + "\n\n" + prompt}
            else:
                rendered.insert(0, {"role": "system", "content": prompt})
        return engine.encode_chat(rendered)


def file_part_text(file_id: object, param: str, file_text: FileText | None) -> str:
    """An uploaded text file's content, for a prompt's file part at `param`."""
    if file_text is None:
        raise UnsupportedParameterError(param, "needs the files API, which this server runs without")
    try:
        return file_text(file_id)
    except NotFoundError:
        raise InvalidRequestError(f"No such file: {file_id}.", param=f"{param}.file_id",
                                  code="file_not_found") from None


def _message_text(message: ChatMessage, i: int, file_text: FileText | None = None) -> str:
    if message.content is None:
        if message.role == "assistant":
            return ""
        raise InvalidRequestError(f"messages[{i}].content is required for role '{message.role}'.",
                                  param=f"messages[{i}].content")
    if isinstance(message.content, str):
        return message.content
    if not message.content:
        raise InvalidRequestError(f"messages[{i}].content must not be an empty array.",
                                  param=f"messages[{i}].content", code="invalid_value")
    texts = []
    for j, part in enumerate(message.content):
        kind, param = part.get("type"), f"messages[{i}].content[{j}]"
        if kind is None:
            raise InvalidRequestError(f"Missing required parameter: '{param}.type'.",
                                      param=f"{param}.type", code="missing_required_parameter")
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "file" and message.role == "user":
            file = part.get("file")
            if not isinstance(file, dict) or not isinstance(file.get("file_id"), str):
                raise InvalidRequestError("A file content part needs {\"file\": {\"file_id\": \"file-...\"}} (upload "
                                          "it with /v1/files first); inline file_data is not supported.",
                                          param=f"{param}.file")
            texts.append(file_part_text(file["file_id"], f"{param}.file", file_text))
        else:
            raise InvalidRequestError(
                f"Content part type {kind!r} is not supported in {param}; this server supports "
                "text parts, and in user messages file parts with the file_id of an uploaded UTF-8 text file.",
                param=f"{param}.type", code="unsupported_value",
            )
    return "".join(texts)


def _plain_text(message: ChatMessage) -> str:
    """The message's inline text (file parts are not read here), for the cheap bound on its tokens."""
    if isinstance(message.content, str):
        return message.content
    return "".join(p.get("text", "") for p in message.content or [] if isinstance(p.get("text"), str))


def template_messages(messages: list[ChatMessage], file_text: FileText | None = None,
                      native_tools: bool = False) -> list[dict]:
    """The messages as the chat template takes them: developer as system; an assistant's tool calls written
    into its text, and tool results as user turns, in the built-in format (server/tool_calls.py). With
    `native_tools` (a template that renders tools itself), calls and results go to it in Hugging Face's shape:
    `tool_calls` with decoded arguments, and `tool` messages."""
    rendered: list[dict] = []
    call_ids: set[str] = set()
    for i, message in enumerate(messages):
        for name in ("function_call", "audio"):
            if getattr(message, name):
                raise UnsupportedParameterError(f"messages[{i}].{name}")
        if message.role == "tool":
            if message.tool_call_id not in call_ids:
                raise InvalidRequestError(f"messages[{i}].tool_call_id must be the id of a tool call in an earlier "
                                          "assistant message.", param=f"messages[{i}].tool_call_id",
                                          code="invalid_value")
            if native_tools:
                rendered.append({"role": "tool", "tool_call_id": message.tool_call_id,
                                 "content": _message_text(message, i, file_text)})
                continue
            text = f"<tool_response>\n{_message_text(message, i, file_text)}\n</tool_response>"
            if rendered and rendered[-1].get("tool_results"):  # results of one turn's calls: one user turn
                rendered[-1]["content"] += "\n" + text
            else:
                rendered.append({"role": "user", "content": text, "tool_results": True})
            continue
        if message.role not in TEMPLATE_ROLES:
            raise UnsupportedParameterError(f"messages[{i}].role", f"'{message.role}' is the deprecated "
                                            "function-calling role; use tools and role 'tool'")
        text = _message_text(message, i, file_text)
        if message.tool_calls:
            if message.role != "assistant":
                raise InvalidRequestError(f"messages[{i}].tool_calls is only for assistant messages.",
                                          param=f"messages[{i}].tool_calls")
            call_ids.update(call.id for call in message.tool_calls)
            if native_tools:
                rendered.append({"role": "assistant", "content": text, "tool_calls": [
                    {"id": call.id, "type": "function", "function": {
                        "name": call.function.name, "arguments": _arguments(call.function.arguments, i)}}
                    for call in message.tool_calls]})
                continue
            text += "".join(call_text(call.function.name, call.function.arguments) for call in message.tool_calls)
        rendered.append({"role": TEMPLATE_ROLES[message.role], "content": text})
    for turn in rendered:
        turn.pop("tool_results", None)
    return rendered


def _arguments(text: str, i: int) -> dict:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise InvalidRequestError(f"messages[{i}].tool_calls: arguments must be a JSON object.",
                                  param=f"messages[{i}].tool_calls", code="invalid_value")
    return value
