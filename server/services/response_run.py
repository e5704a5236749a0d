"""A Responses API response in the making (`ResponseRun`: its identity, the request it echoes, what the engine
and the file search produced, and its body), and the numbered events of its stream (`ResponseEvents`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pydantic import BaseModel

from engines.protocol import GenerationEngine
from server.protocol import ResponseRequest
from server.response_models import ResponseObject, ResponseUsage
from server.services.file_search import FileSearch
from server.services.formats import sse_event
from server.services.response_input import function_call_item, item_id, output_text_part
from server.tool_calls import parse as parse_tool_calls


@dataclass
class ResponseRun:
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
    search: FileSearch | None = None  # file_search ran: its item leads the output, its sources are cited
    queued: bool = False  # background: stored, not yet driven (server/services/background.py)
    cancelled: bool = False  # background: cancelled by its owner
    replica: str | None = None  # background: the --instance-id of the server running it (None: the only one)

    @property
    def first_index(self) -> int:
        """The output index of the first item the model writes (after the file_search_call item)."""
        return 0 if self.search is None else 1

    @property
    def status(self) -> str:
        if self.cancelled:
            return "cancelled"
        if self.queued:
            return "queued"
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
        searched = [] if self.search is None else [self.search.item()]
        if not self.tools:
            return [*searched, self.message()]
        # text before calls was finished when the first call began: only a message that ends the output is cut
        message = self.message(None if not self.calls else "completed")
        return searched + ([message] if self.content else []) + self.calls

    def annotations(self, text: str) -> list[dict]:
        """The file citations of a message's text (none without file_search)."""
        return [] if self.search is None else self.search.annotations(text)

    def message(self, status: str | None = None) -> dict:
        text = self.content or "" if self.tools else self.text
        content = [output_text_part(text, self.annotations(text))] if status != "in_progress" else []
        cut = self.status in ("incomplete", "cancelled")
        return {"id": self.message_id, "type": "message", "role": "assistant", "status": status or (
            "incomplete" if cut else "completed"), "content": content}

    def extension(self) -> dict:
        ttft = None if self.first_token_at is None else self.first_token_at - self.submitted
        gen_s = None if self.first_token_at is None or self.finished_at is None else (
            self.finished_at - self.first_token_at)
        rate = (self.output_tokens - 1) / gen_s if gen_s and self.output_tokens > 1 else None
        return {"engine": self.engine.config.engine.value, "model_revision": self.engine.revision,
                "queue_time_ms": None if self.queue_time_s is None else round(self.queue_time_s * 1000, 2),
                "time_to_first_token_ms": None if ttft is None else round(ttft * 1000, 2),
                "generation_tokens_per_s": None if rate is None else round(rate, 2),
                **({} if self.search is None else {"file_search": self.search.extension()}),
                **({"instance": self.replica} if self.replica else {})}

    def body(self) -> dict:
        status = self.status
        req = self.req
        done = status not in ("queued", "in_progress")
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
            tools=[tool.echo() for tool in req.tools or []],
            tool_choice=(req.tool_choice.model_dump() if isinstance(req.tool_choice, BaseModel) else
                         req.tool_choice or "auto"),
            parallel_tool_calls=req.parallel_tool_calls is not False,
            text={"format": req.text.format.echo() if req.text and req.text.format else {"type": "text"}},
            usage=ResponseUsage(input_tokens=len(self.prompt_ids), output_tokens=self.output_tokens,
                                total_tokens=len(self.prompt_ids) + self.output_tokens) if done else None,
            user=req.user, safety_identifier=req.safety_identifier, background=bool(req.background)).dump()


class ResponseEvents:
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
