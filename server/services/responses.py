"""POST /v1/responses: input items (+ a stored chain) -> prompt -> engine events -> a Response object,
or OpenAI's semantic stream events; stored when `store` is true.

Every Response carries an `ozwell` extension object with timing and engine facts (queue time, time
to first token, generation tokens/s, engine kind, model revision); the SDKs ignore unknown fields.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from engines.protocol import GenerationEngine
from engines.registry import EngineRegistry
from server.context import RequestContext
from server.errors import (
    NotFoundError,
    OpenAIError,
)
from server.protocol import ResponseRequest
from server.response_models import ResponseObject, ResponseUsage
from server.services.files import FileService
from server.services.formats import sse_event
from server.services.pipeline import (
    GenerationPipeline,
    Prepared,
    off_loop,
    prompt_floor,
)
from server.services.response_input import (
    fit_prompt,
    input_texts,
    item_id,
    output_text_part,
    parse_input,
)
from server.services.response_store import ResponseStore, not_found
from server.services.streaming import Observers, stream_events


@dataclass
class _Run:
    """One response in the making: its identity, request echo, and what the engine produced."""

    id: str
    req: ResponseRequest
    engine: GenerationEngine
    created_at: int
    prompt_ids: list[int]
    message_id: str = field(default_factory=lambda: item_id("msg"))
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
        content = [output_text_part(self.text)] if status != "in_progress" else []
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
        done = status != "in_progress"
        return ResponseObject(
            id=self.id, created_at=self.created_at, status=status,
            completed_at=int(time.time()) if status in ("completed", "incomplete") else None, error=self.error,
            incomplete_details={"reason": "max_output_tokens"} if status == "incomplete" else None,
            instructions=req.instructions, max_output_tokens=req.max_output_tokens, model=self.engine.config.id,
            output=[self.message()] if done and self.error is None else [],
            previous_response_id=req.previous_response_id, store=bool(req.store),
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p, truncation=req.truncation or "disabled",
            metadata=req.metadata or {}, ozwell=self.extension(),
            usage=ResponseUsage(input_tokens=len(self.prompt_ids), output_tokens=self.output_tokens,
                                total_tokens=len(self.prompt_ids) + self.output_tokens) if done else None,
            user=req.user, safety_identifier=req.safety_identifier).dump()


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
        return 1, max(min(prompt_floor(engine, input_texts(req)), engine.max_model_len - room), 1) + room

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
        run = _Run(item_id("resp"), req, engine, int(time.time()), prepared.prompts[0])
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
        yield event("response.content_part.added", **where, part=output_text_part(""))
        try:
            async for delta in self._generate(run, params):
                yield event("response.output_text.delta", **where, delta=delta, logprobs=[])
        except OpenAIError as exc:
            run.error = {"code": "server_error", "message": exc.message}
        finally:
            await context.settle(len(run.prompt_ids), run.output_tokens)
        if run.error is None:
            yield event("response.output_text.done", **where, text=run.text, logprobs=[])
            yield event("response.content_part.done", **where, part=output_text_part(run.text))
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
