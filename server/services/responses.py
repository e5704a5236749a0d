"""POST /v1/responses: input items (+ a stored chain) -> prompt -> engine events -> a Response object,
or OpenAI's semantic stream events; stored when `store` is true.

Every Response carries an `ozwell` extension object with timing and engine facts (queue time, time
to first token, generation tokens/s, engine kind, model revision); the SDKs ignore unknown fields.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from pydantic import BaseModel

from engines.protocol import GenerationEngine
from engines.registry import EngineRegistry
from server.context import RequestContext
from server.errors import (
    NotFoundError,
    OpenAIError,
)
from server.protocol import ResponseRequest
from server.response_models import ResponseObject, ResponseUsage
from server.services.formats import sse_event
from server.services.pipeline import GenerationPipeline, callable_tools, off_loop
from server.services.prompt_files import FileStore, PromptFiles, response_file_parts
from server.services.response_input import ConversationPrompt, function_call_item, item_id, output_text_part
from server.services.response_store import ResponseStore
from server.services.streaming import Generation, Observers
from server.tool_calls import StreamParser
from server.tool_calls import parse as parse_tool_calls


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
    tools: bool = False  # tools may be called: the text is read for calls (server/tool_calls.py)
    content: str | None = None  # with tools: the text outside the calls
    calls: list[dict] = field(default_factory=list)  # with tools: the function_call output items
    calls_read: bool = False  # content and calls already built (by a stream's events: the body repeats them)

    @property
    def status(self) -> str:
        if self.error is not None:
            return "failed"
        if self.finish_reason is None:
            return "in_progress"
        return "incomplete" if self.finish_reason == "length" else "completed"

    def read_calls(self) -> None:
        """With tools, once the text is whole: its calls as function_call items, and the text around them."""
        if self.tools and not self.calls_read:
            self.content, calls = parse_tool_calls(self.text)
            cut = len(calls) - 1 if self.status == "incomplete" else -1  # the call max_output_tokens cut
            self.calls = [function_call_item(call["id"], call["function"]["name"], call["function"]["arguments"],
                                             status="incomplete" if i == cut else "completed")
                          for i, call in enumerate(calls)]

    def output(self) -> list[dict]:
        if not self.tools:
            return [self.message()]
        # text before calls was finished when the first call began: only a message that ends the output is cut
        message = self.message(None if not self.calls else "completed")
        return ([message] if self.content else []) + self.calls

    def message(self, status: str | None = None) -> dict:
        text = self.content or "" if self.tools else self.text
        content = [output_text_part(text)] if status != "in_progress" else []
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
            output=self.output() if done and self.error is None else [],
            previous_response_id=req.previous_response_id, store=bool(req.store),
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p, truncation=req.truncation or "disabled",
            metadata=req.metadata or {}, ozwell=self.extension(),
            tools=[tool.model_dump(exclude_none=True) for tool in req.tools or []],
            tool_choice=(req.tool_choice.model_dump() if isinstance(req.tool_choice, BaseModel) else
                         req.tool_choice or "auto"),
            parallel_tool_calls=req.parallel_tool_calls is not False,
            text={"format": req.text.format.echo() if req.text and req.text.format else {"type": "text"}},
            usage=ResponseUsage(input_tokens=len(self.prompt_ids), output_tokens=self.output_tokens,
                                total_tokens=len(self.prompt_ids) + self.output_tokens) if done else None,
            user=req.user, safety_identifier=req.safety_identifier).dump()


class _Events:
    """A Responses stream's semantic events, numbered in order (`sequence_number`)."""

    def __init__(self):
        self.sequence = 0

    def __call__(self, kind: str, **payload) -> str:
        data = {"type": kind, **payload, "sequence_number": self.sequence}
        self.sequence += 1
        return sse_event(kind, data)

    def final(self, body: dict) -> str:
        """The last event: completed, incomplete (cut by max_output_tokens) or failed, with the whole body."""
        kind = {"completed": "response.completed", "incomplete": "response.incomplete"}.get(body["status"],
                                                                                           "response.failed")
        return self(kind, response=body)


class ResponseService:
    def __init__(self, registry: EngineRegistry, store: ResponseStore | None, files: FileStore | None,
                 observers: Observers | None = None):
        self.pipeline = GenerationPipeline(registry, "/v1/responses", "input", observers)
        self.store = store
        self.files = files

    # ---- create ------------------------------------------------------------------------------
    async def create(self, req: ResponseRequest, context: RequestContext) -> dict | AsyncIterator[str]:
        owner = context.owner
        chain = None if self.store is None else functools.partial(self.store.chain, owner)
        if self.store is not None and req.store:
            await off_loop(self.store.check_room, owner)  # a full quota refuses before any work
        tools = await callable_tools(req)
        files = PromptFiles(self.files, owner, lambda: response_file_parts(req.input))
        await asyncio.to_thread(files.measure)  # their records' sizes, so that admission counts them
        prompt = ConversationPrompt(req, files, chain, tools=tools)
        generation = await self.pipeline.start(req, [prompt], context, item_id("resp"))
        run = _Run(generation.request_id, req, generation.engine, generation.created, generation.prompts[0],
                   tools=tools is not None)
        if req.stream:
            if tools is not None:
                return self._stream_with_tools(run, generation, owner, prompt)
            return self._stream(run, generation, owner, prompt)
        async for _ in self._generate(run, generation):
            pass
        return await self._finish(run, owner, prompt)

    async def _generate(self, run: _Run, generation: Generation) -> AsyncIterator[str]:
        """Drive the engine, filling `run`; yields each text delta."""
        async with generation.running() as events:
            async for _, event in events:
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

    async def _finish(self, run: _Run, owner: str, prompt: ConversationPrompt) -> dict:
        run.read_calls()
        body = run.body()
        if self.store is not None and run.req.store:
            # the assistant's turn as the model wrote it (calls included), and its call ids for the outputs
            # a next response will bring back
            answer = {"role": "assistant", "content": run.text}
            if run.calls:
                answer["call_ids"] = [call["call_id"] for call in run.calls]
            conversation = [*prompt.stored_turn(), answer]
            if not await off_loop(self.store.save, owner, body, conversation, prompt.items):
                # over the owner's quota: the answer is still the client's, but it is not kept
                body = {**body, "store": False, "ozwell": {**body["ozwell"], "store_error": {
                    "code": "quota_exceeded", "message": "This response was not stored: it would exceed your "
                    "storage quota (files and stored responses count against it)."}}}
        return body

    async def _stream(self, run: _Run, generation: Generation, owner: str,
                      prompt: ConversationPrompt) -> AsyncIterator[str]:
        event = _Events()
        where = {"item_id": run.message_id, "output_index": 0, "content_index": 0}
        yield event("response.created", response=run.body())
        yield event("response.in_progress", response=run.body())
        yield event("response.output_item.added", output_index=0, item=run.message("in_progress"))
        yield event("response.content_part.added", **where, part=output_text_part(""))
        deltas = self._generate(run, generation)
        try:
            async for delta in deltas:
                yield event("response.output_text.delta", **where, delta=delta, logprobs=[])
        except OpenAIError as exc:
            run.error = {"code": "server_error", "message": exc.message}
        finally:
            await deltas.aclose()
        if run.error is None:
            yield event("response.output_text.done", **where, text=run.text, logprobs=[])
            yield event("response.content_part.done", **where, part=output_text_part(run.text))
            yield event("response.output_item.done", output_index=0, item=run.message())
        yield event.final(await self._finish(run, owner, prompt))

    async def _stream_with_tools(self, run: _Run, generation: Generation, owner: str,
                                 prompt: ConversationPrompt) -> AsyncIterator[str]:
        """With tools: items are added as the text shows them, a message for text outside calls and a
        function_call per call, each finished before the next begins."""
        event = _Events()
        parser = StreamParser()
        index = -1  # the output index of the open item
        open_item: dict | None = None

        def close(last: bool = False) -> list[str]:
            """The open item's done events; it is kept in `run` as sent, so the final body repeats the events.
            The last item of a response cut by max_output_tokens is `incomplete`."""
            nonlocal open_item
            item, open_item = open_item, None
            if item is None:
                return []
            status = "incomplete" if last and run.status == "incomplete" else "completed"
            if item["type"] == "message":
                where = {"item_id": item["id"], "output_index": index, "content_index": 0}
                text = item["text"]
                run.content = (run.content or "") + text
                return [event("response.output_text.done", **where, text=text, logprobs=[]),
                        event("response.content_part.done", **where, part=output_text_part(text)),
                        event("response.output_item.done", output_index=index, item={
                            "id": item["id"], "type": "message", "role": "assistant", "status": status,
                            "content": [output_text_part(text)]})]
            done = function_call_item(item["call_id"], item["name"], item["arguments"], item["id"], status)
            run.calls.append(done)
            return [event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                          name=item["name"], arguments=item["arguments"]),
                    event("response.output_item.done", output_index=index, item=done)]

        def handle(delta: dict) -> list[str]:
            nonlocal index, open_item
            lines = []
            if "content" in delta:
                if open_item is None or open_item["type"] != "message":
                    lines += close()
                    index += 1
                    open_item = {"type": "message", "id": run.message_id, "text": ""}
                    lines.append(event("response.output_item.added", output_index=index,
                                       item=run.message("in_progress")))
                    lines.append(event("response.content_part.added", item_id=run.message_id, output_index=index,
                                       content_index=0, part=output_text_part("")))
                open_item["text"] += delta["content"]
                lines.append(event("response.output_text.delta", item_id=run.message_id, output_index=index,
                                   content_index=0, delta=delta["content"], logprobs=[]))
                return lines
            call = delta["tool_calls"][0]
            if "id" in call:  # a new call: its name is known
                lines += close()
                index += 1
                open_item = {"type": "function_call", "id": item_id("fc"), "call_id": call["id"],
                             "name": call["function"]["name"], "arguments": ""}
                added = function_call_item(call["id"], open_item["name"], "", open_item["id"], "in_progress")
                lines.append(event("response.output_item.added", output_index=index, item=added))
            fragment = call["function"].get("arguments", "")
            if fragment:
                open_item["arguments"] += fragment
                lines.append(event("response.function_call_arguments.delta", item_id=open_item["id"],
                                   output_index=index, delta=fragment))
            return lines

        yield event("response.created", response=run.body())
        yield event("response.in_progress", response=run.body())
        deltas = self._generate(run, generation)
        try:
            async for text in deltas:
                for delta in parser.feed(text):
                    for line in handle(delta):
                        yield line
            for delta in parser.feed("", final=True):
                for line in handle(delta):
                    yield line
        except OpenAIError as exc:
            run.error = {"code": "server_error", "message": exc.message}
        finally:
            await deltas.aclose()
        if run.error is None:
            for line in close(last=True):
                yield line
            run.calls_read = True
        yield event.final(await self._finish(run, owner, prompt))

    # ---- stored ------------------------------------------------------------------------------
    def _store(self) -> ResponseStore:
        if self.store is None:
            raise NotFoundError("This server keeps no responses (it runs without a database).")
        return self.store

    async def retrieve(self, owner: str, response_id: str) -> dict:
        return await off_loop(self._store().get, owner, response_id)

    async def delete(self, owner: str, response_id: str) -> dict:
        return await off_loop(self._store().delete, owner, response_id)

    async def list_stored(self, owner: str, limit: int = 100) -> list[dict]:
        """An owner's newest stored responses, newest first (the dashboard's list)."""
        return await off_loop(self._store().list, owner, limit)

    async def input_items(self, owner: str, response_id: str, limit: int, order: str, after: str | None) -> dict:
        return await off_loop(self._store().input_items, owner, response_id, limit, order, after)
