"""A request's file parts (chat `file`, Responses `input_file`), bounded before any file is read.

`MAX_PROMPT_FILE_BYTES` capped each part, not the request: 40 parts naming one 4 MB file had the template
render 160 MB of text (+470 MB of server memory) before the length check (issue #35). So a request names
at most `MAX_PROMPT_FILES` distinct files; its file parts together, a file named twice counted twice, hold
at most `MAX_REQUEST_FILE_BYTES`; each file is read once however often it is named; and the prompt's
admission floor counts the parts' bytes as tokens (a UTF-8 character is at most 4 bytes, and a token at
most `max_token_chars` characters), so a request that cannot fit its context is refused before any file is
read or any template rendered. The sizes come from the files' records: database reads, not file reads."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from server.errors import InvalidRequestError, NotFoundError
from server.protocol import ChatMessage

# A text file larger than this cannot fit any context we serve; refuse it before reading it.
MAX_PROMPT_FILE_BYTES = 4 * 1024 * 1024
MAX_PROMPT_FILES = 20  # distinct files named by one request's parts
MAX_REQUEST_FILE_BYTES = MAX_PROMPT_FILE_BYTES  # all of one request's file parts together, repeats counted

FilePart = tuple[str, str]  # (file id, where the part stands in the request)


class FileStore(Protocol):
    def text_size(self, owner: str, file_id: str, max_bytes: int) -> int: ...

    def read_text(self, owner: str, file_id: str, max_bytes: int) -> str: ...

    def image_bytes(self, owner: str, file_id: str, max_bytes: int) -> bytes: ...  # image parts (server/images.py)


class PromptFiles:
    """The file parts of one request: `measure` (blocking) checks their bounds from the files' records before
    the prompt is admitted; `text` then reads each file once, for the template."""

    def __init__(self, store: FileStore | None, owner: str, parts: Callable[[], Iterator[FilePart]]):
        self.store, self.owner, self._parts = store, owner, parts
        self.bytes = 0  # of every part, a file named twice counted twice
        self._texts: dict[str, str] = {}

    def measure(self) -> None:
        """Refuse (400, naming the part) more than MAX_PROMPT_FILES distinct files, a file that cannot go in a
        prompt, or parts holding more than MAX_REQUEST_FILE_BYTES together."""
        if self.store is None:  # no files API: the first file part is refused when the prompt is rendered
            return
        parts = list(self._parts())
        distinct: dict[str, str] = {}
        for file_id, param in parts:
            if file_id not in distinct:
                if len(distinct) == MAX_PROMPT_FILES:
                    raise InvalidRequestError(f"A request may name at most {MAX_PROMPT_FILES} distinct files in its "
                                              "file parts.", param=param, code="too_many_files")
                distinct[file_id] = param
        sizes = {file_id: self._size(file_id, param) for file_id, param in distinct.items()}
        total = 0
        for file_id, param in parts:
            total += sizes[file_id]
            if total > MAX_REQUEST_FILE_BYTES:
                raise InvalidRequestError(
                    f"The file parts of this request hold more than {MAX_REQUEST_FILE_BYTES} bytes of text together "
                    f"(a file named by several parts counts each time); at most {MAX_REQUEST_FILE_BYTES} bytes of "
                    "files go in one request.", param=param, code="files_too_large")
        self.bytes = total

    def _size(self, file_id: str, param: str) -> int:
        try:
            return self.store.text_size(self.owner, file_id, MAX_PROMPT_FILE_BYTES)
        except NotFoundError:
            raise InvalidRequestError(f"No such file: {file_id}.", param=f"{param}.file_id",
                                      code="file_not_found") from None

    def min_chars(self) -> int:
        """A lower bound on the characters of the parts' text, read from their sizes alone (UTF-8)."""
        return -(-self.bytes // 4)

    def reader(self) -> Callable[[str], str] | None:
        """What the prompt's file parts are read with (None without a files API)."""
        return None if self.store is None else self.text

    def text(self, file_id: str) -> str:
        """An uploaded text file's content, read once for the request however many parts name it."""
        if file_id not in self._texts:
            self._texts[file_id] = self.store.read_text(self.owner, file_id, MAX_PROMPT_FILE_BYTES)
        return self._texts[file_id]


def chat_file_parts(messages: list[ChatMessage]) -> Iterator[FilePart]:
    """The file parts of chat messages that the template would read (a user message's `file` parts)."""
    for i, message in enumerate(messages):
        if message.role != "user" or not isinstance(message.content, list):
            continue
        for j, part in enumerate(message.content):
            file = part.get("file") if part.get("type") == "file" else None
            if isinstance(file, dict) and isinstance(file.get("file_id"), str):
                yield file["file_id"], f"messages[{i}].content[{j}].file"


def response_file_parts(value: str | list) -> Iterator[FilePart]:
    """The `input_file` parts of a Responses input that the template would read (not an assistant's)."""
    if isinstance(value, str):
        return
    for i, item in enumerate(value):
        if not isinstance(item, dict) or item.get("role") == "assistant" or not isinstance(item.get("content"), list):
            continue
        for j, part in enumerate(item["content"]):
            if isinstance(part, dict) and part.get("type") == "input_file" and isinstance(part.get("file_id"), str):
                yield part["file_id"], f"input[{i}].content[{j}]"
