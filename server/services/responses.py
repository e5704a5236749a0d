"""POST /v1/responses: input items (+ a stored chain) -> prompt -> engine events -> a Response object,
or OpenAI's semantic stream events; stored when `store` is true.

Every Response carries an `ozwell` extension object with timing and engine facts (queue time, time
to first token, generation tokens/s, engine kind, model revision); the SDKs ignore unknown fields.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from engines.protocol import ContextLengthExceeded, GenerationEngine
from engines.registry import EngineRegistry
from server.context import RequestContext
from server.errors import (
    InvalidRequestError,
    NotFoundError,
    OpenAIError,
    UnsupportedParameterError,
)
from server.protocol import ResponseRequest
from server.services.files import FileService
from server.services.formats import new_id, sse_event
from server.services.pipeline import (
    TEMPLATE_ROLES,
    FileText,
    GenerationPipeline,
    Prepared,
    off_loop,
    prompt_floor,
)
from server.services.response_store import ResponseStore, not_found
from server.services.streaming import Observers, stream_events


def _id(prefix: str) -> str:
    return new_id(prefix, "_")


def _output_text_part(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


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
        if file_text is None:
            raise UnsupportedParameterError(param, "needs the files API, which this server runs without")
        try:
            return file_text(part["file_id"])
        except NotFoundError:
            raise InvalidRequestError(f"No such file: {part['file_id']}.", param=f"{param}.file_id",
                                      code="file_not_found") from None
    raise InvalidRequestError(f"Content part type {kind!r} is not supported in {param}; this server supports "
                              "input_text, and input_file with an uploaded UTF-8 text file.", param=f"{param}.type")


def _input_texts(req: ResponseRequest) -> list[str]:
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


def parse_input(value: str | list[dict], file_text: FileText | None) -> tuple[list[dict], list[dict]]:
    """(messages for the template, input item resources to store)."""
    if isinstance(value, str):
        item = {"id": _id("msg"), "type": "message", "role": "user", "status": "completed",
                "content": [{"type": "input_text", "text": value}]}
        return [{"role": "user", "content": value}], [item]
    messages, items = [], []
    for i, raw in enumerate(value):
        kind, role = raw.get("type", "message"), raw.get("role")
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
        text = "".join(_part_text(p, role, f"input[{i}].content[{j}]", file_text) for j, p in enumerate(parts))
        messages.append({"role": TEMPLATE_ROLES[role], "content": text})
        if role == "assistant":
            items.append({"id": _id("msg"), "type": "message", "role": "assistant", "status": "completed",
                          "content": [_output_text_part(p["text"]) for p in parts]})
        else:
            items.append({"id": _id("msg"), "type": "message", "role": role, "status": "completed",
                          "content": [dict(p) for p in parts]})
    return messages, items


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
        try:
            prompt = engine.encode_chat(system + turns[dropped:])
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
    counts = engine.count_tokens([str(turn.get("content") or "") for turn in turns])
    overhead = max(0, (total - sum(counts)) // len(turns)) if total is not None else 0
    remaining = total if total is not None else sum(counts) + overhead * len(turns)
    dropped = 0
    while dropped < len(turns) - 1 and remaining > budget:
        remaining -= counts[dropped] + overhead
        dropped += 1
    return max(dropped, 1)


@dataclass
class _Run:
    """One response in the making: its identity, request echo, and what the engine produced."""

    id: str
    req: ResponseRequest
    engine: GenerationEngine
    created_at: int
    prompt_ids: list[int]
    message_id: str = field(default_factory=lambda: _id("msg"))
    text: str = ""
    output_tokens: int = 0
    finish_reason: str | None = None
    error: dict | None = None
    submitted: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    finished_at: float | None = None
    queue_time_s: float | None = None

    @property
    def status(self) -> str:
        if self.error is not None:
            return "failed"
        if self.finish_reason is None:
            return "in_progress"
        return "incomplete" if self.finish_reason == "length" else "completed"

    def message(self, status: str | None = None) -> dict:
        content = [_output_text_part(self.text)] if status != "in_progress" else []
        return {"id": self.message_id, "type": "message", "role": "assistant", "status": status or (
            "incomplete" if self.status == "incomplete" else "completed"), "content": content}

    def extension(self) -> dict:
        ttft = None if self.first_token_at is None else self.first_token_at - self.submitted
        gen_s = None if self.first_token_at is None or self.finished_at is None else (
            self.finished_at - self.first_token_at)
        rate = (self.output_tokens - 1) / gen_s if gen_s and self.output_tokens > 1 else None
        return {"engine": self.engine.config.engine.value, "model_revision": self.engine.revision,
                "queue_time_ms": None if self.queue_time_s is None else round(self.queue_time_s * 1000, 2),
                "time_to_first_token_ms": None if ttft is None else round(ttft * 1000, 2),
                "generation_tokens_per_s": None if rate is None else round(rate, 2)}

    def body(self) -> dict:
        status = self.status
        req = self.req
        body = {
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status,
            "completed_at": int(time.time()) if status in ("completed", "incomplete") else None,
            "error": self.error,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
            "model": self.engine.config.id,
            "output": [self.message()] if status != "in_progress" and self.error is None else [],
            "parallel_tool_calls": True, "previous_response_id": req.previous_response_id,
            "store": bool(req.store), "temperature": 1.0 if req.temperature is None else req.temperature,
            "top_p": 1.0 if req.top_p is None else req.top_p, "tool_choice": "auto", "tools": [],
            "truncation": req.truncation or "disabled", "metadata": req.metadata or {},
            "text": {"format": {"type": "text"}}, "ozwell": self.extension(),
        }
        if status != "in_progress":
            body["usage"] = {
                "input_tokens": len(self.prompt_ids),
                "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                "output_tokens": self.output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": len(self.prompt_ids) + self.output_tokens}
        if req.user is not None:
            body["user"] = req.user
        if req.safety_identifier is not None:
            body["safety_identifier"] = req.safety_identifier
        return body


class ResponseService(GenerationPipeline):
    route = "/v1/responses"
    prompt_param = "input"

    def __init__(self, registry: EngineRegistry, store: ResponseStore | None, files: FileService | None,
                 observers: Observers | None = None):
        super().__init__(registry, observers, files)
        self.store = store

    # ---- create ------------------------------------------------------------------------------
    def admission(self, req: ResponseRequest, engine: GenerationEngine) -> tuple[int, int]:
        # A truncated prompt holds at most the context less the room for the output.
        room = req.max_output_tokens or 1
        return 1, max(min(prompt_floor(engine, _input_texts(req)), engine.max_model_len - room), 1) + room

    async def prepare(self, req: ResponseRequest, engine: GenerationEngine, context: RequestContext) -> Prepared:
        owner = context.owner
        current, items = await off_loop(parse_input, req.input, self.file_reader(owner))
        history: list[dict] = []
        if req.previous_response_id:
            if self.store is None:
                raise not_found(req.previous_response_id, "previous_response_id")
            history = await off_loop(self.store.chain, owner, req.previous_response_id)
        system = [{"role": "system", "content": req.instructions}] if req.instructions else []
        # A prompt that cannot fit comes back as 400 context_length_exceeded (off_loop maps it).
        prompt_ids, _ = await off_loop(fit_prompt, engine, system, history, current, req.max_output_tokens,
                                       req.truncation or "disabled")
        return Prepared([prompt_ids], state=(current, items))

    async def respond(self, req: ResponseRequest, context: RequestContext, engine: GenerationEngine,
                      prepared: Prepared) -> dict | AsyncIterator[str]:
        current, items = prepared.state
        params = prepared.params[0]
        run = _Run(_id("resp"), req, engine, int(time.time()), prepared.prompts[0])
        if req.stream:
            return self._stream(run, params, context, current, items)
        try:
            async for _ in self._generate(run, params):
                pass
        finally:
            await context.settle(len(run.prompt_ids), run.output_tokens)
        return await self._finish(run, context.owner, current, items)

    async def _generate(self, run: _Run, params) -> AsyncIterator[str]:
        """Drive the engine, filling `run`; yields each text delta."""
        async for event in stream_events(run.engine, run.id, run.prompt_ids, params, self.observers):
            if event.queue_time_s is not None:
                run.queue_time_s = event.queue_time_s
            if run.first_token_at is None and event.token_ids:
                run.first_token_at = time.perf_counter()
            run.output_tokens = event.completion_tokens
            run.text += event.text
            if event.finish_reason:
                run.finish_reason = event.finish_reason
            if event.text:
                yield event.text
        run.finished_at = time.perf_counter()

    async def _finish(self, run: _Run, owner: str, current: list[dict], items: list[dict]) -> dict:
        body = run.body()
        if self.store is not None and run.req.store:
            conversation = [*current, {"role": "assistant", "content": run.text}]
            await off_loop(self.store.save, owner, body, conversation, items)
        return body

    async def _stream(self, run: _Run, params, context: RequestContext, current: list[dict],
                      items: list[dict]) -> AsyncIterator[str]:
        sequence = 0

        def event(kind: str, **payload) -> str:
            nonlocal sequence
            data = {"type": kind, **payload, "sequence_number": sequence}
            sequence += 1
            return sse_event(kind, data)

        where = {"item_id": run.message_id, "output_index": 0, "content_index": 0}
        yield event("response.created", response=run.body())
        yield event("response.in_progress", response=run.body())
        yield event("response.output_item.added", output_index=0, item=run.message("in_progress"))
        yield event("response.content_part.added", **where, part=_output_text_part(""))
        try:
            async for delta in self._generate(run, params):
                yield event("response.output_text.delta", **where, delta=delta, logprobs=[])
        except OpenAIError as exc:
            run.error = {"code": "server_error", "message": exc.message}
        finally:
            await context.settle(len(run.prompt_ids), run.output_tokens)
        if run.error is None:
            yield event("response.output_text.done", **where, text=run.text, logprobs=[])
            yield event("response.content_part.done", **where, part=_output_text_part(run.text))
            yield event("response.output_item.done", output_index=0, item=run.message())
        body = await self._finish(run, context.owner, current, items)
        final = {"completed": "response.completed", "incomplete": "response.incomplete"}.get(body["status"],
                                                                                            "response.failed")
        yield event(final, response=body)

    # ---- stored ------------------------------------------------------------------------------
    def _store(self) -> ResponseStore:
        if self.store is None:
            raise NotFoundError("This server keeps no responses (it runs without a database).")
        return self.store

    async def retrieve(self, owner: str, response_id: str) -> dict:
        return await off_loop(self._store().get, owner, response_id)

    async def delete(self, owner: str, response_id: str) -> dict:
        return await off_loop(self._store().delete, owner, response_id)

    async def input_items(self, owner: str, response_id: str, limit: int, order: str, after: str | None) -> dict:
        return await off_loop(self._store().input_items, owner, response_id, limit, order, after)
