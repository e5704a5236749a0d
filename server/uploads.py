"""Streaming multipart/form-data: the file part goes straight to a sink, chunk by chunk, with its
size checked as it arrives; small text fields are collected, bounded in number, name and size, and
refused as they arrive. Nothing holds the whole upload in memory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection
from typing import BinaryIO

from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header

MAX_FIELD_BYTES = 4096  # one text field's value
MAX_PARTS = 16  # the file and the text fields together
MAX_PART_HEADER_BYTES = 16 * 1024  # the headers of one part


class UploadError(Exception):
    """The body is not a form we can read (400)."""

    def __init__(self, message: str, param: str = "file", code: str | None = None):
        super().__init__(message)
        self.param = param
        self.code = code


class MultipartFormReader:
    """`on_file_bytes(total)` is called as the file part grows and raises to refuse it; `fields` names the
    text fields the form may have, and any other is refused when its headers arrive."""

    def __init__(self, content_type: str, sink: BinaryIO | None, on_file_bytes: Callable[[int], None],
                 fields: Collection[str], file_field: str = "file"):
        kind, options = parse_options_header(content_type or "")
        boundary = options.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            raise UploadError("Uploads must be multipart/form-data with a boundary.", param=None)
        self.sink = sink
        self._on_file_bytes = on_file_bytes
        self._allowed = frozenset(fields)
        self._file_field = file_field
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.file_bytes = 0
        self._saw_file = False
        self._parts = 0
        self._header_bytes = 0
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._is_file = False
        self._value = bytearray()
        self._parser = MultipartParser(boundary, {
            "on_part_begin": self._part_begin, "on_header_field": self._header_field_data,
            "on_header_value": self._header_value_data, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        })

    async def read(self, chunks: AsyncIterator[bytes]) -> None:
        try:
            async for chunk in chunks:
                if chunk:
                    self._parser.write(chunk)
            self._parser.finalize()
        except FormParserError as exc:  # a malformed form, or a part header over the parser's own limit
            raise UploadError(f"The multipart form could not be read: {exc}.", param=None) from None
        if not self._saw_file:
            raise UploadError(f"Missing the '{self._file_field}' file part.")

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise UploadError(f"The form has more than {MAX_PARTS} parts.", param=None)
        self._headers, self._name, self._is_file, self._value = {}, None, False, bytearray()
        self._header_bytes = 0

    def _count_header(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_PART_HEADER_BYTES:
            raise UploadError(f"A form part's headers are longer than {MAX_PART_HEADER_BYTES} bytes.", param=None)

    def _header_field_data(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_field += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field, self._header_value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        if self._name == self._file_field:
            if self._saw_file:
                raise UploadError(f"Only one '{self._file_field}' part is allowed.")
            self._is_file = self._saw_file = True
            self.filename = options.get(b"filename", b"").decode("utf-8", "replace")
            return
        if self._name not in self._allowed:
            name = self._name[:64]
            raise UploadError(f"Unrecognized request argument supplied: {name}", param=name,
                              code="unknown_parameter")
        if self._name in self.fields:
            raise UploadError(f"The field '{self._name}' is given more than once.", param=self._name)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        piece = data[start:end]
        if self._is_file:
            self.file_bytes += len(piece)
            self._on_file_bytes(self.file_bytes)
            self.sink.write(piece)
        else:
            self._value += piece
            if len(self._value) > MAX_FIELD_BYTES:
                raise UploadError(f"Form field '{self._name}' is too long.", param=self._name)

    def _part_end(self) -> None:
        if not self._is_file and self._name:
            self.fields[self._name] = self._value.decode("utf-8", "replace")
