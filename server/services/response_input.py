"""The Responses API's input: items (and a stored chain) -> the messages for the chat template, the input
item resources to store, and a prompt that fits the context (`truncation`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from engines.protocol import (
    ContextLengthExceeded,
    GenerationEngine,
    InvalidGenerationRequest,
)
from server.errors import InvalidRequestError, UnsupportedParameterError
from server.images import ImageLoader, ImagePolicy, ImageRef, check_count, image_ref
from server.protocol import ResponseRequest
from server.services.formats import new_id
from server.services.prompt_files import PromptFiles
from server.services.prompts import (
    TEMPLATE_ROLES,
    FileText,
    file_part_text,
    files_floor,
    files_tokens,
    refuse_images,
    text_floor,
)
from server.services.response_store import content_chars, not_found
from server.tool_calls import ToolPlan, call_text

if TYPE_CHECKING:
    from server.services.file_search import FileSearch

MAX_ITEM_ID_CHARS = 64  # the stored column's width


def item_id(prefix: str) -> str:
    return new_id(prefix, "_")


def function_call_item(call_id: str, name: str, arguments: str, item: str | None = None,
                       status: str = "completed") -> dict:
    """A function_call output (or input) item."""
    return {"id": item or item_id("fc"), "type": "function_call", "call_id": call_id, "name": name,
            "arguments": arguments, "status": status}


def output_text_part(text: str, annotations: list[dict] | None = None) -> dict:
    return {"type": "output_text", "text": text, "annotations": annotations or [], "logprobs": []}


def _part_text(part: dict, role: str, param: str, file_text: FileText | None) -> str:
    kind = part.get("type")
    if kind == "input_text" or (kind == "output_text" and role == "assistant"):
        if not isinstance(part.get("text"), str):
            raise InvalidRequestError(f"{param}.text must be a string.", param=f"{param}.text")
        return part["text"]
    if kind == "input_file" and role != "assistant":
        if not isinstance(part.get("file_id"), str):
            raise InvalidRequestError("input_file needs the file_id of a file uploaded to /v1/files; file_data and "
                                      "file_url are not supported.", param=f"{param}.file_id")
        return file_part_text(part["file_id"], param, file_text)
    raise InvalidRequestError(f"Content part type {kind!r} is not supported in {param}; this server supports "
                              "input_text, input_image, and input_file with an uploaded UTF-8 text file.",
                              param=f"{param}.type")


def _image_part_ref(part: dict, param: str, policy: ImagePolicy) -> ImageRef:
    """An input_image part's shape: `image_url` (a data: URL; an http(s) URL with --allow-image-urls) or the
    `file_id` of an uploaded image (purpose vision or user_data), and its `detail`."""
    url = part.get("image_url")
    if isinstance(url, dict):  # the chat shape, {"url": ...}, sent to this route
        url = url.get("url")
    return image_ref(policy, f"{param}.image_url", url=url, file_id=part.get("file_id"), detail=part.get("detail"),
                     detail_param=f"{param}.detail", file_param=f"{param}.file_id")


def response_image_refs(value: str | list, policy: ImagePolicy) -> list[ImageRef]:
    """The input_image parts of a Responses input (not an assistant's), in order, their shape checked (nothing
    read or decoded), at most the server's images per request."""
    refs: list[ImageRef] = []
    if isinstance(value, str):
        return refs
    for i, item in enumerate(value):
        if not isinstance(item, dict) or item.get("role") == "assistant" or not isinstance(item.get("content"), list):
            continue
        for j, part in enumerate(item["content"]):
            if isinstance(part, dict) and part.get("type") == "input_image":
                refs.append(_image_part_ref(part, f"input[{i}].content[{j}]", policy))
                check_count(len(refs), policy, f"input[{i}].content[{j}]")
    return refs


def _content_text(content: str | list[dict]) -> str:
    return content if isinstance(content, str) else "".join(part.get("text", "") for part in content)


def _joined(parts: list[dict]) -> str | list[dict]:
    """Template content from text and image parts: a string without images, else Hugging Face parts with
    adjacent texts joined."""
    if not any(part["type"] == "image" for part in parts):
        return "".join(part["text"] for part in parts)
    joined: list[dict] = []
    for part in parts:
        if part["type"] == "text" and joined and joined[-1]["type"] == "text":
            joined[-1] = {"type": "text", "text": joined[-1]["text"] + part["text"]}
        elif part["type"] == "text":
            joined.append(dict(part))
        else:
            joined.append({"type": "image"})
    return joined


class _Ids(list):
    """A rendered prompt's ids, with the engine's prepared images (None without images)."""

    images: object = None


def input_texts(req: ResponseRequest) -> list[str]:
    """The inline texts of the request (instructions and input), for the cheap bound on its tokens."""
    texts = [req.instructions or ""]
    if isinstance(req.input, str):
        return [*texts, req.input]
    for item in req.input:
        content = item.get("content") if isinstance(item, dict) else None
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts += [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return texts


@dataclass
class ConversationPrompt:
    """A Responses request's prompt: its instructions, the stored chain it continues, and its input, cut to
    fit by `truncation`. Once tokenized it keeps the turns and input items that the stored response needs."""

    req: ResponseRequest
    files: PromptFiles | None  # measured (server/services/prompt_files.py) before the floor is read
    # (previous_response_id, characters of context, drop the oldest?) -> its stored messages (None: no store)
    chain: Callable[[str, int, bool], list[dict]] | None
    current: list[dict] = field(default_factory=list)
    items: list[dict] = field(default_factory=list)

    def floor(self, engine: GenerationEngine) -> int:
        if self.image_refs:
            refuse_images(engine, "input")
        # A truncated prompt holds at most the context less the room for the output.
        cap = engine.max_model_len - (self.req.max_output_tokens or 1)
        text = "".join(input_texts(self.req))
        # each image of the input is at least one token (its placeholders are counted exactly once tokenized)
        if self.files is None or not self.files.bytes:
            return max(min(text_floor(engine, text) + len(self.image_refs), cap), 1)
        if self.req.truncation == "auto":  # older turns, files and all, may be dropped to fit
            return max(min(files_tokens(engine, text, self.files) + len(self.image_refs), cap), 1)
        return min(files_floor(engine, text, self.files, "input", max(cap, 1)) + len(self.image_refs), max(cap, 1))

    tools: ToolPlan | None = None  # shown in the built-in format when they may be called
    grounding: FileSearch | None = None  # its results, as many as fit, join the system prompt
    image_loader: ImageLoader | None = None  # reads and decodes images (default: no files, default limits)
    image_refs: list[ImageRef] = field(init=False)  # the input's own input_image parts, checked for shape
    _prepared: object = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.image_loader is None:
            self.image_loader = ImageLoader(ImagePolicy())
        self.image_refs = response_image_refs(self.req.input, self.image_loader.policy)

    def images(self) -> object | None:
        return self._prepared

    def token_ids(self, engine: GenerationEngine) -> list[int]:
        req = self.req
        # text older than a context's worth of characters surely cannot fit: a chain leaves it unread
        budget, auto = engine.max_model_len * engine.max_token_chars(), req.truncation == "auto"
        history: list[dict] = []
        if req.previous_response_id:
            if self.chain is None:
                raise not_found(req.previous_response_id, "previous_response_id")
            history = self.chain(req.previous_response_id, budget, auto)
        known = {call_id for turn in history for call_id in turn.get("call_ids", ())}
        file_text = self.files.reader() if self.files else None
        policy = self.image_loader.policy
        self.current, self.items = parse_input(req.input, file_text, known, policy)
        newer = sum(len(_content_text(message["content"])) for message in self.current)
        history = replay_history(history, newer, budget, auto, file_text,
                                 (policy.max_images, len(self.image_refs)))
        refs = [ref for turn in history + self.current for ref in turn.get("images", ())]
        if refs:  # a chain's images too: the model must take them, and they are read again
            refuse_images(engine, "input" if self.image_refs else "previous_response_id")
        loaded = iter(self.image_loader.load_all(refs))
        instructions = [req.instructions] if req.instructions else []
        if self.tools is not None and self.tools.active:
            instructions.append(self.tools.system_prompt())
        history = [_turn(message, loaded) for message in history]
        current = [_turn(message, loaded) for message in self.current]

        def render(sources: str | None = None) -> list[int]:
            text = "\n\n".join([*instructions, sources] if sources else instructions)
            system = [{"role": "system", "content": text}] if text else []
            room = req.max_output_tokens or (self.grounding.answer_room(engine) if sources else None)
            return fit_prompt(engine, system, history, current, room, req.truncation or "disabled")[0]
        try:
            ids = render() if self.grounding is None else self.grounding.fit(render)
        except InvalidGenerationRequest as exc:  # text the tokenizer cannot take: blamed on this route's field
            if exc.param == "messages":
                exc.param = "input"
            raise
        self._prepared = getattr(ids, "images", None)
        return list(ids) if isinstance(ids, _Ids) else ids

    def stored_turn(self) -> list[dict]:
        """This turn's messages as a stored response keeps them: a file part by its id and length, not its text."""
        return [{"role": message["role"], "content": message.get("segments", message["content"])}
                for message in self.current]


def _turn(message: dict, loaded) -> dict:
    """A message for `fit_prompt`: its role and content, and the decoded images of its image parts."""
    turn = {"role": message["role"], "content": message["content"]}
    if message.get("images"):
        turn["images"] = [next(loaded) for _ in message["images"]]
    return turn


def _segment(part: dict, text: str, ref: ImageRef | None = None) -> dict:
    if ref is not None:
        return ref.stored()
    if part.get("type") == "input_file":
        return {"type": "file", "file_id": part["file_id"], "chars": len(text)}
    return {"type": "text", "text": text}


def replay_history(turns: list[dict], newer_chars: int, budget: int, drop_oldest: bool,
                   file_text: FileText | None, images: tuple[int, int] | None = None) -> list[dict]:
    """A stored chain's messages for the template, their files re-read and their images named again (each
    turn's `images`, read by the caller). A message older than `budget` characters of newer text surely cannot
    fit the context: it is dropped unread (truncation=auto would drop it) or the prompt is refused, so a chain
    never reads more than about a context's worth of files. `images` is (the most images a prompt may hold, the
    images of the newer input): a message whose images would pass it is dropped too, or the prompt refused."""
    most, newer_images = images or (None, 0)
    kept: list[dict] = []
    for turn in reversed(turns):
        if newer_chars > budget:
            if not drop_oldest:
                raise ContextLengthExceeded("The input and the previous responses' conversation are longer than "
                                            "this model's context; set truncation='auto' to drop the oldest turns.",
                                            param="input")
            break
        count = _image_count(turn["content"])
        if most is not None and count and newer_images + count > most:
            if not drop_oldest:
                raise InvalidRequestError(f"The input and the previous responses' conversation hold more than "
                                          f"{most} images, this server's limit a request; set truncation='auto' "
                                          "to drop the oldest turns, or start a new conversation.",
                                          param="previous_response_id", code="too_many_images")
            break
        newer_images += count
        newer_chars += content_chars(turn["content"])
        kept.append(turn)
    replayed = []
    for turn in reversed(kept):
        content, refs = _replayed(turn["content"], file_text)
        replayed.append({"role": turn["role"], "content": content, **({"images": refs} if refs else {})})
    return replayed


def _image_count(content: str | list[dict]) -> int:
    return 0 if isinstance(content, str) else sum(1 for segment in content if segment.get("type") == "image")


def _replayed(content: str | list[dict], file_text: FileText | None) -> tuple[str | list[dict], list[ImageRef]]:
    """A stored message's content for the template (its files re-read; Hugging Face parts when it holds images)
    and its images, to read again."""
    if isinstance(content, str):
        return content, []
    refs = [ImageRef(param="previous_response_id", url=segment.get("image_url"), file_id=segment.get("file_id"),
                     detail=segment.get("detail", "auto"))
            for segment in content if segment.get("type") == "image"]
    if not refs:
        return _replayed_text(content, file_text), []
    parts: list[dict] = []
    for segment in content:
        if segment.get("type") == "image":
            parts.append({"type": "image"})
        else:
            parts.append({"type": "text", "text": _replayed_text([segment], file_text)})
    return _joined(parts), refs


def _replayed_text(content: str | list[dict], file_text: FileText | None) -> str:
    if isinstance(content, str):  # no file parts, or stored before files were kept by reference
        return content
    texts = []
    for segment in content:
        if segment.get("type") != "file":
            texts.append(segment.get("text", ""))
            continue
        try:
            texts.append(file_part_text(segment["file_id"], "previous_response_id", file_text))
        except InvalidRequestError as exc:
            if exc.code != "file_not_found":
                raise
            raise InvalidRequestError(f"File {segment['file_id']}, in the input of a previous response, no longer "
                                      "exists; a chain re-reads its files, so start a new chain without it.",
                                      param="previous_response_id", code="file_not_found") from None
    return "".join(texts)


def parse_input(value: str | list[dict], file_text: FileText | None,
                known_calls: set[str] | None = None,
                policy: ImagePolicy | None = None) -> tuple[list[dict], list[dict]]:
    """(messages for the template, input item resources to store). Function calls are written into the
    assistant's text and their outputs come back as user turns, in the built-in format (server/tool_calls.py);
    an output's call_id must name a call in this input or in the chain it continues (`known_calls`). A message
    with input_image parts has Hugging Face parts as its content and its images' refs in `images`."""
    policy = policy or ImagePolicy()
    if isinstance(value, str):
        item = {"id": item_id("msg"), "type": "message", "role": "user", "status": "completed",
                "content": [{"type": "input_text", "text": value}]}
        return [{"role": "user", "content": value}], [item]
    messages: list[dict] = []
    items: list[dict] = []
    known = set(known_calls or ())
    for i, raw in enumerate(value):
        kind, role = raw.get("type", "message"), raw.get("role")
        if kind == "function_call":
            call = _function_call(raw, i)
            known.add(call["call_id"])
            text = call_text(call["name"], call["arguments"])
            if messages and messages[-1]["role"] == "assistant":
                messages[-1]["content"] += text
            else:
                messages.append({"role": "assistant", "content": text})
            items.append(call)
            continue
        if kind == "function_call_output":
            output = _function_output(raw, i, known)
            text = f"<tool_response>\n{output['output']}\n</tool_response>"
            if items and items[-1]["type"] == "function_call_output":
                messages[-1]["content"] += "\n" + text
            else:
                messages.append({"role": "user", "content": text})
            items.append(output)
            continue
        if kind == "file_search_call":  # a past response's search, sent back: kept, not read again
            items.append(_file_search_call(raw, i))
            continue
        if kind != "message":
            raise UnsupportedParameterError(f"input[{i}].type", f"'{kind}' is not supported by this server yet")
        if role not in TEMPLATE_ROLES:
            raise InvalidRequestError(f"input[{i}].role must be one of user, system, developer, assistant.",
                                      param=f"input[{i}].role", code="invalid_value")
        content = raw.get("content")
        if isinstance(content, str):
            parts = [{"type": "output_text" if role == "assistant" else "input_text", "text": content}]
        elif isinstance(content, list) and content:
            parts = content
        else:
            raise InvalidRequestError(f"input[{i}].content must be a string or a non-empty array of parts.",
                                      param=f"input[{i}].content")
        texts: list[str] = []
        refs: list[ImageRef | None] = []
        for j, p in enumerate(parts):
            param = f"input[{i}].content[{j}]"
            if not isinstance(p, dict):
                raise InvalidRequestError(f"{param} must be a content part object.", param=param,
                                          code="invalid_value")
            image = p.get("type") == "input_image" and role != "assistant"
            refs.append(_image_part_ref(p, param, policy) if image else None)
            texts.append("" if image else _part_text(p, role, param, file_text))
        images = [ref for ref in refs if ref is not None]
        messages.append({"role": TEMPLATE_ROLES[role], "content": _joined(
            [{"type": "image"} if ref is not None else {"type": "text", "text": text}
             for ref, text in zip(refs, texts)])})
        if images:
            messages[-1]["images"] = images
        if images or any(p.get("type") == "input_file" for p in parts):  # stored with files and images by reference
            messages[-1]["segments"] = [_segment(p, text, ref) for p, text, ref in zip(parts, texts, refs)]
        if role == "assistant":
            items.append({"id": item_id("msg"), "type": "message", "role": "assistant", "status": "completed",
                          "content": [output_text_part(p["text"]) for p in parts]})
        else:
            items.append({"id": item_id("msg"), "type": "message", "role": role, "status": "completed",
                          "content": [dict(p) for p in parts]})
    return messages, items


def _client_id(raw: dict, i: int) -> str | None:
    """An input item's own id, as the client chose it (kept as given: items are keyed by their place)."""
    value = raw.get("id")
    if value is not None and not (isinstance(value, str) and 0 < len(value) <= MAX_ITEM_ID_CHARS):
        raise InvalidRequestError(f"input[{i}].id must be a string of 1 to {MAX_ITEM_ID_CHARS} characters.",
                                  param=f"input[{i}].id", code="invalid_value")
    return value


def _function_call(raw: dict, i: int) -> dict:
    for name in ("call_id", "name", "arguments"):
        if not isinstance(raw.get(name), str):
            raise InvalidRequestError(f"input[{i}].{name} must be a string.", param=f"input[{i}].{name}")
    return function_call_item(raw["call_id"], raw["name"], raw["arguments"], _client_id(raw, i))


def _file_search_call(raw: dict, i: int) -> dict:
    queries = raw.get("queries")
    if not (isinstance(queries, list) and all(isinstance(q, str) for q in queries)):
        raise InvalidRequestError(f"input[{i}].queries must be an array of strings.", param=f"input[{i}].queries")
    return {"id": _client_id(raw, i) or item_id("fs"), "type": "file_search_call", "status": "completed",
            "queries": queries, "results": None}


def _function_output(raw: dict, i: int, known: set[str]) -> dict:
    if raw.get("call_id") not in known:
        raise InvalidRequestError(f"input[{i}].call_id must be the call_id of a function call earlier in the input "
                                  "or in the response it continues.", param=f"input[{i}].call_id",
                                  code="invalid_value")
    if not isinstance(raw.get("output"), str):
        raise InvalidRequestError(f"input[{i}].output must be a string.", param=f"input[{i}].output")
    return {"id": _client_id(raw, i) or item_id("fco"), "type": "function_call_output", "call_id": raw["call_id"],
            "output": raw["output"], "status": "completed"}


def fit_prompt(engine: GenerationEngine, system: list[dict], history: list[dict], current: list[dict],
               max_output: int | None, truncation: str) -> tuple[list[int], int]:
    """Render the conversation; with truncation=auto drop the oldest turns until it fits.

    Returns (prompt ids, number of turns dropped). Blocking: run off the event loop.

    The whole conversation is rendered once. If it is over, each turn's text is counted once (one batched
    tokenizer call) and the number of turns to drop is read off those counts; exact renders then confirm
    it, the estimate and its neighbour first, so a typical truncation costs three renders. Should the
    estimate miss, the search bisects, so the work stays O(n log n) in the number of turns, where dropping
    one turn at a time re-rendered the whole rest each time (quadratic: 90 s for 2,000 turns)."""
    turns = history + current
    room = max_output if max_output is not None else 1
    budget = engine.max_model_len - room
    lengths: dict[int, int | None] = {}  # turns dropped -> prompt length (None: refused unrendered)

    def render(dropped: int) -> list[int] | None:
        """The exact prompt with `dropped` turns left out, or None when it is over the budget."""
        kept = turns[dropped:]
        images = [image for turn in kept for image in turn.get("images", ())]
        try:
            if images:
                messages = [{key: value for key, value in turn.items() if key != "images"} for turn in kept]
                prompt, prepared = engine.encode_chat_images(system + messages, images)
                prompt = _Ids(prompt)
                prompt.images = prepared
            else:
                prompt = engine.encode_chat(system + kept)
        except ContextLengthExceeded:  # far over the context: refused before it was all tokenized
            lengths[dropped] = None
            return None
        lengths[dropped] = len(prompt)
        return prompt if len(prompt) <= budget else None

    def too_long() -> ContextLengthExceeded:
        length = lengths.get(0)
        size = f"The input ({length} tokens)" if length is not None else "The input"
        return ContextLengthExceeded(
            f"{size} plus max_output_tokens ({room}) is over this model's context of {engine.max_model_len} tokens"
            + ("; set truncation='auto' to drop the oldest turns." if truncation != "auto" else "."), param="input")

    prompt = render(0)
    if prompt is not None:
        return prompt, 0
    last = len(turns) - 1  # the newest turn always stays
    if truncation != "auto" or last == 0:
        raise too_long()
    guess = _turns_to_drop(engine, turns, lengths[0], budget)
    # The fewest turns to drop, in [1, last + 1]; last + 1 means even the newest turn alone is over.
    fitting: dict[int, list[int]] = {}
    lo, hi = 1, last + 1
    probes = [guess, guess - 1]
    while lo < hi:
        mid = probes.pop(0) if probes else (lo + hi) // 2
        if not lo <= mid < hi:
            continue
        prompt = render(mid)
        if prompt is not None:
            fitting[mid] = prompt
            hi = mid
        else:
            lo = mid + 1
    if lo > last:
        raise too_long()
    return fitting[lo], lo


def _turns_to_drop(engine: GenerationEngine, turns: list[dict], total: int | None, budget: int) -> int:
    """How many of the oldest turns to drop, from each turn's own token count (an estimate: the template's
    own tokens are spread evenly over the turns)."""
    counts = engine.count_tokens([_content_text(turn.get("content") or "") for turn in turns])
    overhead = max(0, (total - sum(counts)) // len(turns)) if total is not None else 0
    remaining = total if total is not None else sum(counts) + overhead * len(turns)
    dropped = 0
    while dropped < len(turns) - 1 and remaining > budget:
        remaining -= counts[dropped] + overhead
        dropped += 1
    return max(dropped, 1)
