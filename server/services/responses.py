"""POST /v1/responses: input items (+ a stored chain, + file_search results) -> prompt -> engine events -> a
Response object (server/services/response_run.py), or OpenAI's semantic stream events; stored when `store` is
true. The file_search tool runs before generation (server/services/file_search.py). With `background`, the
request is admitted here as any other, then stored at once and run detached (server/services/background.py).

Every Response carries an `ozwell` extension object with timing and engine facts (queue time, time
to first token, generation tokens/s, engine kind, model revision); the SDKs ignore unknown fields.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from engines.protocol import BATCH
from engines.registry import EngineRegistry
from server.context import RequestContext
from server.errors import (
    InvalidRequestError,
    NotFoundError,
    OpenAIError,
)
from server.images import ImageLoader, ImagePolicy
from server.protocol import ResponseRequest
from server.services.background import BackgroundResponses
from server.services.file_search import FileSearch
from server.services.pipeline import GenerationPipeline, callable_tools, off_loop
from server.services.prompt_files import FileStore, PromptFiles, response_file_parts
from server.services.response_input import (
    ConversationPrompt,
    function_call_item,
    item_id,
    output_text_part,
)
from server.services.response_run import ResponseEvents, ResponseRun
from server.services.response_store import ResponseStore
from server.services.streaming import Generation, Observers
from server.tool_calls import StreamParser

if TYPE_CHECKING:
    from server.vector_stores.service import VectorStoreService


class ResponseService:
    def __init__(self, registry: EngineRegistry, store: ResponseStore | None, files: FileStore | None,
                 observers: Observers | None = None, vector_stores: VectorStoreService | None = None,
                 background: BackgroundResponses | None = None, images: ImagePolicy | None = None):
        self.pipeline = GenerationPipeline(registry, "/v1/responses", "input", observers)
        self.store = store
        self.files = files
        self.images = images or ImagePolicy()  # the server's image limits (server/images.py)
        self.vector_stores = vector_stores  # file_search's (None without a database)
        self.background = background  # background responses' runner (None without a database)

    # ---- create ------------------------------------------------------------------------------
    async def create(self, req: ResponseRequest, context: RequestContext) -> dict | AsyncIterator[str]:
        if req.background:
            return await self._create_background(req, context)
        run, generation, prompt = await self._prepare(req, context)
        if req.stream:
            return self._events(run, generation, context.owner, prompt)
        async for _ in self._generate(run, generation):
            pass
        return await self._finish(run, context.owner, prompt)

    async def _prepare(self, req: ResponseRequest, context: RequestContext
                       ) -> tuple[ResponseRun, Generation, ConversationPrompt]:
        """Checked, admitted, its tokens reserved and its prompt built: ready to generate."""
        owner = context.owner
        chain = None if self.store is None else functools.partial(self.store.chain, owner)
        # input_image parts' shapes first (cheap): they are read and decoded with the prompt's tokens, once admitted
        prompt = ConversationPrompt(req, None, chain, image_loader=ImageLoader(self.images, self.files, owner))
        if self.store is not None and req.store:
            await off_loop(self.store.check_room, owner)  # a full quota refuses before any work
        tools = await callable_tools(req)
        files = PromptFiles(self.files, owner, lambda: response_file_parts(req.input))
        await asyncio.to_thread(files.measure)  # their records' sizes, so that admission counts them
        search = FileSearch.plan(req)
        if search is not None:
            await search.run(self.vector_stores, owner, context.priority)
        prompt.files, prompt.tools, prompt.grounding = files, tools, search
        generation = await self.pipeline.start(req, [prompt], context, item_id("resp"))
        if search is not None:
            generation.settle = search.charged(generation.settle)
        run = ResponseRun(generation.request_id, req, generation.engine, generation.created, generation.prompts[0],
                          tools=tools is not None, search=search)
        return run, generation, prompt

    def _events(self, run: ResponseRun, generation: Generation, owner: str,
                prompt: ConversationPrompt) -> AsyncIterator[str]:
        if run.tools:
            return self._stream_with_tools(run, generation, owner, prompt)
        return self._stream(run, generation, owner, prompt)

    async def _create_background(self, req: ResponseRequest, http: RequestContext) -> dict | AsyncIterator[str]:
        """Admitted as a foreground request is, under a copy of its context that outlives it; then stored as
        queued and run detached (server/services/background.py)."""
        if self.background is None:
            raise InvalidRequestError("background needs a server with a database (it stores the response).",
                                      param="background")
        if not req.store:
            raise InvalidRequestError("background=true requires store=true.", param="background")
        if http.priority == BATCH:
            raise InvalidRequestError("background is not supported in a batch; leave it unset.", param="background")
        context = http.detached()
        try:
            run, generation, prompt = await self._prepare(req, context)
        except BaseException:
            await context.release()
            raise
        finally:  # the request's answer carries the limits' headers, and its usage record the model
            http.headers, http.model = context.headers, context.model
        # shielded: once admitted it is stored and runs, even if the client leaves before it hears the id
        job = await asyncio.shield(self.background.launch(run, self._events(run, generation, context.owner, prompt),
                                                          context, prompt.stored_turn(), prompt.items))
        return job.events.follow() if job.events is not None else job.created

    async def _generate(self, run: ResponseRun, generation: Generation) -> AsyncIterator[str]:
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

    async def _finish(self, run: ResponseRun, owner: str, prompt: ConversationPrompt) -> dict:
        run.read_calls()
        body = run.body()
        if self.store is not None and run.req.store:
            # the assistant's turn as the model wrote it (calls included), and its call ids for the outputs
            # a next response will bring back
            answer = {"role": "assistant", "content": run.text}
            if run.calls:
                answer["call_ids"] = [call["call_id"] for call in run.calls]
            conversation = [*prompt.stored_turn(), answer]
            if run.req.background:  # stored when it began: its end is written unless a cancel came first
                await off_loop(self.store.update, run.id, body, conversation)
            elif not await off_loop(self.store.save, owner, body, conversation, prompt.items):
                # over the owner's quota: the answer is still the client's, but it is not kept
                body = {**body, "store": False, "ozwell": {**body["ozwell"], "store_error": {
                    "code": "quota_exceeded", "message": "This response was not stored: it would exceed your "
                    "storage quota (files and stored responses count against it)."}}}
        return body

    async def _stream(self, run: ResponseRun, generation: Generation, owner: str,
                      prompt: ConversationPrompt) -> AsyncIterator[str]:
        event = ResponseEvents()
        where = {"item_id": run.message_id, "output_index": run.first_index, "content_index": 0}
        yield event("response.created", response=run.body())
        yield event("response.in_progress", response=run.body())
        for line in run.search.events(event, 0) if run.search else ():
            yield line
        yield event("response.output_item.added", output_index=run.first_index, item=run.message("in_progress"))
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
            annotations = run.annotations(run.text)
            for i, annotation in enumerate(annotations):
                yield event("response.output_text.annotation.added", **where, annotation_index=i,
                            annotation=annotation)
            yield event("response.output_text.done", **where, text=run.text, logprobs=[])
            yield event("response.content_part.done", **where, part=output_text_part(run.text, annotations))
            yield event("response.output_item.done", output_index=run.first_index, item=run.message())
        yield event.final(await self._finish(run, owner, prompt))

    async def _stream_with_tools(self, run: ResponseRun, generation: Generation, owner: str,
                                 prompt: ConversationPrompt) -> AsyncIterator[str]:
        """With tools: items are added as the text shows them, a message for text outside calls and a
        function_call per call, each finished before the next begins."""
        event = ResponseEvents()
        parser = StreamParser()
        index = run.first_index - 1  # the output index of the open item
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
                annotations = run.annotations(text)
                return [*(event("response.output_text.annotation.added", **where, annotation_index=i,
                                annotation=annotation) for i, annotation in enumerate(annotations)),
                        event("response.output_text.done", **where, text=text, logprobs=[]),
                        event("response.content_part.done", **where, part=output_text_part(text, annotations)),
                        event("response.output_item.done", output_index=index, item={
                            "id": item["id"], "type": "message", "role": "assistant", "status": status,
                            "content": [output_text_part(text, annotations)]})]
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
        for line in run.search.events(event, 0) if run.search else ():
            yield line
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

    def _background(self) -> BackgroundResponses:
        if self.background is None:
            raise NotFoundError("This server keeps no responses (it runs without a database).")
        return self.background

    async def cancel(self, owner: str, response_id: str) -> dict:
        return await self._background().cancel(owner, response_id)

    async def resume(self, owner: str, response_id: str, starting_after: int | None) -> AsyncIterator[str]:
        """A background stream again, from the event after `starting_after`."""
        return await self._background().resume(owner, response_id, starting_after)
