"""What a generation request asks the engine to continue, before it is tokenized.

A `Prompt` offers two things to the pipeline (server/services/pipeline.py): a cheap lower bound on its
tokens, read without templating or tokenizing (what admission reserves before any work), and its token
ids (blocking work the pipeline runs off the event loop). Chat messages, a completion's text or token
ids, and the Responses API's conversation (server/services/response_input.py) are prompts."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from engines.protocol import ContextLengthExceeded, GenerationEngine, ImageInput
from server.errors import InvalidRequestError, NotFoundError, UnsupportedParameterError
from server.images import ImageLoader, ImagePolicy, ImageRef, check_count, image_ref
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
        """Its token ids (blocking: templates, files, images, tokenizing). Raises OpenAIError or the engine's
        refusal."""

    def images(self) -> object | None:
        """The engine's prepared images (`encode_chat_images`' second value) once `token_ids` ran, or None."""


def refuse_images(engine: GenerationEngine, param: str) -> None:
    """A 400 naming the model when it takes no images (before any image is read or decoded)."""
    if not engine.accepts_images:
        raise InvalidRequestError(f"The model `{engine.config.id}` does not take images (it is not a vision-language "
                                  "model); send the image parts to a model that does, or leave them out.",
                                  param=param, code="model_not_multimodal")


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

    def images(self) -> None:
        return None


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

    def images(self) -> None:
        return None


@dataclass
class ChatPrompt:
    """Chat messages. Their `image_url` parts (user messages only) are checked for shape when the prompt is made
    (server/images.py: nothing decoded), refused for a model that takes no images when the floor is read, and
    read and decoded by `token_ids`, which renders a message holding images as Hugging Face parts for the
    engine's `encode_chat_images`. The floor counts each image as one token: its placeholders are counted exactly
    once `token_ids` has run."""

    messages: list[ChatMessage]
    files: PromptFiles | None = None  # measured (server/services/prompt_files.py) before the floor is read
    tools: ToolPlan | None = None  # shown in the built-in format (server/tool_calls.py) when they may be called
    image_loader: ImageLoader | None = None  # reads and decodes the image parts (default: no files, default limits)
    image_refs: list[ImageRef] = field(init=False)
    _prepared: object = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.image_loader is None:
            self.image_loader = ImageLoader(ImagePolicy())
        self.image_refs = chat_image_refs(self.messages, self.image_loader.policy)

    @property
    def file_text(self) -> FileText | None:
        return None if self.files is None else self.files.reader()

    def floor(self, engine: GenerationEngine) -> int:
        if self.image_refs:
            refuse_images(engine, "messages")
        text = "".join(_plain_text(m) for m in self.messages)
        if self.files is None or not self.files.bytes:
            tokens = text_floor(engine, text)
        else:
            tokens = files_floor(engine, text, self.files, "messages")
        return min(tokens + len(self.image_refs), engine.max_model_len)

    def images(self) -> object | None:
        return self._prepared

    def token_ids(self, engine: GenerationEngine) -> list[int]:
        images: list[ImageInput] = []
        if self.image_refs:
            refuse_images(engine, "messages")
            images = self.image_loader.load_all(self.image_refs)
        if self.tools is not None and self.tools.active and engine.template_tool_format() == "hermes":
            # the template shows the tools and the calls itself, in the same <tool_call> format we decode
            rendered = template_messages(self.messages, self.file_text, native_tools=True)
            if images:
                return self._encode_images(engine, rendered, images, tools=self.tools.openai_tools())
            return engine.encode_chat(rendered, tools=self.tools.openai_tools())
        rendered = template_messages(self.messages, self.file_text)
        if self.tools is not None and self.tools.active:
            prompt = self.tools.system_prompt()
            if rendered and rendered[0]["role"] == "system":
                rendered[0] = {"role": "system", "content": _append_text(rendered[0]["content"], "\n\n" + prompt)}
            else:
                rendered.insert(0, {"role": "system", "content": prompt})
        if images:
            return self._encode_images(engine, rendered, images)
        return engine.encode_chat(rendered)

    def _encode_images(self, engine: GenerationEngine, rendered: list[dict], images: list[ImageInput],
                       tools: list[dict] | None = None) -> list[int]:
        ids, self._prepared = engine.encode_chat_images(rendered, images, tools=tools)
        return ids


def _append_text(content: str | list[dict], text: str) -> str | list[dict]:
    """A message's content with `text` added at its end (its last text part, for a parts list)."""
    if isinstance(content, str):
        return content + text
    if content and content[-1].get("type") == "text":
        return [*content[:-1], {"type": "text", "text": content[-1]["text"] + text}]
    return [*content, {"type": "text", "text": text}]


def chat_image_refs(messages: list[ChatMessage], policy: ImagePolicy) -> list[ImageRef]:
    """The `image_url` parts of the user messages, in order, their shape checked (nothing decoded): a data: URL
    (or, with --allow-image-urls, an http(s) URL), a `detail` of auto, low or high, and no more than the
    server's images per request."""
    refs: list[ImageRef] = []
    for i, message in enumerate(messages):
        if message.role != "user" or not isinstance(message.content, list):
            continue
        for j, part in enumerate(message.content):
            if part.get("type") != "image_url":
                continue
            param = f"messages[{i}].content[{j}].image_url"
            value = part.get("image_url")
            if isinstance(value, str):  # some clients send the URL alone
                value = {"url": value}
            if not isinstance(value, dict):
                raise InvalidRequestError('An image_url part needs {"image_url": {"url": "data:image/png;base64,..."}}.',
                                          param=param, code="missing_required_parameter")
            refs.append(image_ref(policy, f"{param}.url", url=value.get("url"), detail=value.get("detail"),
                                  detail_param=f"{param}.detail"))
            check_count(len(refs), policy, param)
    return refs


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
    content = _message_content(message, i, file_text)
    if isinstance(content, list):  # images outside a user message are refused by _message_content
        return "".join(part.get("text", "") for part in content)
    return content


def _message_content(message: ChatMessage, i: int, file_text: FileText | None = None) -> str | list[dict]:
    """The message's content for the template: its text, or, for a user message holding images, Hugging Face
    parts in request order (`{"type": "text", ...}` with adjacent texts joined, `{"type": "image"}`)."""
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
    parts: list[dict] = []
    images = False

    def add_text(text: str) -> None:
        if parts and parts[-1]["type"] == "text":
            parts[-1]["text"] += text
        else:
            parts.append({"type": "text", "text": text})

    for j, part in enumerate(message.content):
        kind, param = part.get("type"), f"messages[{i}].content[{j}]"
        if kind is None:
            raise InvalidRequestError(f"Missing required parameter: '{param}.type'.",
                                      param=f"{param}.type", code="missing_required_parameter")
        if kind == "text" and isinstance(part.get("text"), str):
            add_text(part["text"])
        elif kind == "file" and message.role == "user":
            file = part.get("file")
            if not isinstance(file, dict) or not isinstance(file.get("file_id"), str):
                raise InvalidRequestError("A file content part needs {\"file\": {\"file_id\": \"file-...\"}} (upload "
                                          "it with /v1/files first); inline file_data is not supported.",
                                          param=f"{param}.file")
            add_text(file_part_text(file["file_id"], f"{param}.file", file_text))
        elif kind == "image_url" and message.role == "user":  # checked and loaded by the ChatPrompt
            parts.append({"type": "image"})
            images = True
        else:
            raise InvalidRequestError(
                f"Content part type {kind!r} is not supported in {param}; this server supports "
                "text parts, and in user messages image_url parts and file parts with the file_id of an uploaded "
                "UTF-8 text file.", param=f"{param}.type", code="unsupported_value",
            )
    if not images:
        return "".join(p["text"] for p in parts)
    return parts


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
        text = _message_content(message, i, file_text)
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
