"""The Responses API's `file_search` tool, run by this server itself before the model generates.

OpenAI runs file_search as a hosted tool the model decides to call, with queries it writes. Here the search runs
once per request, before generation, with the text of the input's last user message as its one query; the best
chunks are given to the model in the system prompt as numbered sources ("[1] (from report.pdf)"), best first and
as many as fit the context (the rest are still listed in the call's results), and the model is asked to cite a
source as [n] after what it took from it. The output is then as OpenAI's: a `file_search_call` item (its
`results` only with include=["file_search_call.results"]) before the assistant's message, and the streamed
`response.file_search_call.in_progress / searching / completed` events inside that item's added / done events.

Citations: each [n] marker the model writes (also [1, 2]) becomes a `file_citation` annotation of source n's
file, its `index` the marker's place in the text; the markers stay in the text, as streamed. A model that cites
no source (small models rarely do) gets one annotation per file it was given, at the end of the text: the files
the answer was grounded on, not a claim about which sentence came from which. `ozwell.file_search.citations`
says which happened ("model" or "sources").

Usage: the response's input_tokens are the prompt the model read, retrieved text included. The query's
embedding tokens are reported in `ozwell.file_search.embedding_tokens` and are charged to the key (its
per-minute tokens and its usage record) with the prompt. Without a user message in the input (a continuation
that only returns function outputs), or with tool_choice "none", no search runs; tool_choice {"type":
"file_search"} runs it and calls no function. Function tools may be given with file_search: the search runs
first, then the model may call them as usual. With truncation "auto", older turns are dropped before any source
is; without max_output_tokens, sources leave the answer `FileSearch.answer_room` tokens. The search runs before the stream opens, so a store the owner
lacks is a plain 404 (param tools[i].vector_store_ids), and its three events are sent at once."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from engines.protocol import ContextLengthExceeded, GenerationEngine
from server.errors import InvalidRequestError, NotFoundError
from server.protocol import ResponseRequest
from server.protocol.formats import MAX_FILE_SEARCH_RESULTS, FileSearchTool
from server.services.response_input import item_id

INCLUDE_RESULTS = "file_search_call.results"
PREAMBLE = ("Sources from the user's files, the most relevant first. Answer from them, and cite each source you "
            "use by its number in square brackets, like [1]. If they do not hold the answer, say so.")
NOTHING_FOUND = "A search of the user's files found nothing relevant to this request."
NONE_FIT = "A search of the user's files found passages, but none fit in this model's context."
_MARKER = re.compile(r"\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]")


def search_query(value: str | list[dict]) -> str | None:
    """The text of the input's last user message (its input_text parts), or None when it has none."""
    if isinstance(value, str):
        return value.strip() or None
    for item in reversed(value):
        if item.get("type", "message") != "message" or item.get("role") != "user":
            continue
        content = item.get("content")
        if isinstance(content, str):
            return content.strip() or None
        if isinstance(content, list):
            texts = [p["text"] for p in content if isinstance(p, dict) and p.get("type") == "input_text"
                     and isinstance(p.get("text"), str)]
            return "\n".join(texts).strip() or None
    return None


def sources_text(results: list[dict], found: int = 0) -> str:
    """The system prompt's block of numbered sources (`found`: how many the search found, when more)."""
    if not results:
        return NONE_FIT if found else NOTHING_FOUND
    blocks = [f"[{n}] (from {r['filename']})\n{r['text'].strip()}" for n, r in enumerate(results, 1)]
    return "\n\n".join([PREAMBLE, *blocks])


def citations(text: str, sources: list[dict]) -> tuple[list[dict], str | None]:
    """The file_citation annotations of an answer given `sources` (numbered from 1), and how they were found:
    "model" (its [n] markers), "sources" (it cited none: each file once, at the end) or None (no text or no
    sources)."""
    if not text or not sources:
        return [], None
    cited = []
    for match in _MARKER.finditer(text):
        for number in (int(n) for n in match.group(1).split(",")):
            if 1 <= number <= len(sources):
                cited.append(_annotation(sources[number - 1], match.start()))
    if cited:
        return cited, "model"
    files = list({r["file_id"]: r for r in sources}.values())  # each file once, in rank order
    return [_annotation(r, len(text)) for r in files], "sources"


def _annotation(result: dict, index: int) -> dict:
    return {"type": "file_citation", "file_id": result["file_id"], "filename": result["filename"], "index": index}


@dataclass
class FileSearch:
    """One request's search: planned from the request, run against the owner's stores, then fitted into the
    prompt, and shown as the file_search_call item."""

    tool: FileSearchTool
    param: str  # the tool's place in the request, for a 400's param: "tools[0]"
    query: str
    include_results: bool
    id: str = field(default_factory=lambda: item_id("fs"))
    results: list[dict] = field(default_factory=list)
    embedding_tokens: int = 0
    in_prompt: int = 0  # how many of the results (the best) the prompt holds
    cited_by: str | None = None  # how the last annotated text's citations were found (see `citations`)

    @classmethod
    def plan(cls, req: ResponseRequest) -> FileSearch | None:
        """The request's search, checked (400 naming what is wrong); None when none is to run."""
        tools = req.file_search_tools()
        if not tools:
            return None
        if len(tools) > 1:
            raise InvalidRequestError("At most one file_search tool may be given; it may search two vector "
                                      "stores.", param=f"tools[{tools[1][0]}]", code="invalid_value")
        index, tool = tools[0]
        query = search_query(req.input)
        if req.tool_choice == "none" or query is None:
            return None
        return cls(tool, f"tools[{index}]", query, INCLUDE_RESULTS in (req.include or []))

    async def run(self, vector_stores: Any, owner: str, priority: int) -> None:
        """Search the stores (`VectorStoreService.search_chunks`): 404 for a store the owner does not have."""
        if vector_stores is None:
            raise InvalidRequestError("file_search needs vector stores, which this server keeps in its database; "
                                      "it runs without one.", param=f"{self.param}.type", code="invalid_value")
        tool = self.tool
        try:
            self.results, self.embedding_tokens = await vector_stores.search_chunks(
                owner, tool.vector_store_ids, self.query, tool.max_num_results or MAX_FILE_SEARCH_RESULTS,
                filters=tool.filters, ranking_options=tool.ranking_options, priority=priority)
        except (NotFoundError, InvalidRequestError) as exc:  # blamed on this tool's field
            field = {"vector_store_id": "vector_store_ids"}.get(exc.param, exc.param)
            exc.param = f"{self.param}.{field}" if field else self.param
            raise

    def fit(self, render: Callable[[str | None], list[int]]) -> list[int]:
        """The prompt with as many of the best results as fit: `render(sources block)` gives the prompt's ids or
        raises ContextLengthExceeded (`render(None)`: the prompt without them). Blocking; at most about
        log2(results) + 2 renders."""
        try:
            ids = render(sources_text(self.results))
            self.in_prompt = len(self.results)
            return ids
        except ContextLengthExceeded:
            if not self.results:
                raise
        best, low, high = None, 0, len(self.results) - 1  # the most results that fit is in [low, high]
        while low <= high:
            middle = (low + high) // 2
            try:
                best = (middle, render(sources_text(self.results[:middle], len(self.results))))
                low = middle + 1
            except ContextLengthExceeded:
                high = middle - 1
        if best is None:  # not even a word on the search fits: the prompt as it would be without it
            self.in_prompt = 0
            return render(None)
        self.in_prompt, ids = best
        return ids

    @staticmethod
    def answer_room(engine: GenerationEngine) -> int:
        """The tokens sources leave for the answer when the request sets no max_output_tokens: the model's
        default_max_tokens, or a quarter of its context, whichever is less."""
        return min(engine.config.default_max_tokens or engine.max_model_len, max(engine.max_model_len // 4, 1))

    def annotations(self, text: str) -> list[dict]:
        found, self.cited_by = citations(text, self.results[:self.in_prompt])
        return found

    def item(self, status: str = "completed") -> dict:
        """The file_search_call output item (in_progress: as first streamed, before the search's facts)."""
        if status == "in_progress":
            return {"id": self.id, "type": "file_search_call", "status": status, "queries": [], "results": None}
        results = [{key: r[key] for key in ("file_id", "filename", "score", "attributes", "text")}
                   for r in self.results] if self.include_results else None
        return {"id": self.id, "type": "file_search_call", "status": status, "queries": [self.query],
                "results": results}

    def events(self, event: Callable[..., str], index: int) -> list[str]:
        """The item's stream events, in OpenAI's order (the search has run: they are sent at once)."""
        where = {"output_index": index, "item_id": self.id}
        return [event("response.output_item.added", output_index=index, item=self.item("in_progress")),
                event("response.file_search_call.in_progress", **where),
                event("response.file_search_call.searching", **where),
                event("response.file_search_call.completed", **where),
                event("response.output_item.done", output_index=index, item=self.item())]

    def extension(self) -> dict:
        """The Response's `ozwell.file_search`."""
        return {"embedding_tokens": self.embedding_tokens, "results": len(self.results),
                "results_in_prompt": self.in_prompt, "citations": self.cited_by}

    def charged(self, settle: Callable[[int, int], Awaitable[None]]) -> Callable[[int, int], Awaitable[None]]:
        """A generation's settle that also charges the query's embedding tokens, as prompt tokens."""
        async def settle_with_query(prompt_tokens: int, completion_tokens: int) -> None:
            await settle(prompt_tokens + self.embedding_tokens, completion_tokens)
        return settle_with_query
