"""What each API call sends, shared by the synchronous and asynchronous resources."""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Union
from urllib.parse import quote

from ozwell._client import FinalRequest
from ozwell.types import RequestOptions

FileInput = Union[str, "os.PathLike[str]", bytes, IO[bytes], tuple[str, Union[bytes, IO[bytes]]]]
"""An upload: a path, bytes, a binary file object or stream, or (filename, bytes or stream)."""


def body(**fields: Any) -> dict[str, Any]:
    """The JSON body: the fields given, less those left at None."""
    return {name: value for name, value in fields.items() if value is not None}


def segment(value: str) -> str:
    if not value:
        raise ValueError("an id must not be empty")
    return quote(value, safe="")


def upload(file: FileInput, purpose: str, filename: str | None, options: RequestOptions) -> FinalRequest:
    """A multipart upload, streamed from a path or a file object (not read whole into memory). An upload
    from a stream that cannot be rewound is not retried."""
    name: str | None = filename
    content: bytes | IO[bytes]
    closes: list[IO[bytes]] = []
    if isinstance(file, tuple):
        name = name or file[0]
        content = file[1]
    elif isinstance(file, (str, os.PathLike)):
        path = Path(file)
        name = name or path.name
        content = path.open("rb")
        closes.append(content)
    else:
        content = file
    if isinstance(content, (bytes, bytearray, memoryview)):
        content = io.BytesIO(bytes(content))
    if name is None:
        name = Path(str(getattr(content, "name", "upload"))).name or "upload"
    replayable = _seekable(content)
    sent: Any = content if replayable else _ReadOnly(content)
    return FinalRequest("POST", "/files", data={"purpose": purpose}, files={"file": (name, sent)},
                        replayable=replayable, options=options, closes=list(closes))


class _ReadOnly:
    """A stream shown to httpx with read() alone: its length unknown (a pipe's size is not its length),
    so the form goes out chunked, read as it is sent."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream

    def read(self, size: int = -1) -> bytes:
        return self._stream.read(size)


def _seekable(content: IO[bytes]) -> bool:
    try:
        return bool(content.seekable())
    except (AttributeError, ValueError, OSError):
        return False


def epoch(value: int | datetime | None) -> int | None:
    if isinstance(value, datetime):
        return int(value.timestamp())
    return value


def as_list(value: Iterable[Any] | None) -> list[Any] | None:
    return None if value is None else list(value)


def query(**params: Any) -> Mapping[str, Any]:
    return {name: value for name, value in params.items() if value is not None}
