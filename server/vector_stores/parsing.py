"""Parsing: a stored file's bytes to the plain text that is chunked and searched.

Chosen by the filename's suffix, never by sniffing: the text suffixes the Files API already accepts in prompts
(server.services.files.TEXT_SUFFIXES) plus .pdf; anything else (.zip, .png, .docx...) is `unsupported_file`.
Text must be UTF-8 (a BOM is dropped); a NUL byte or an undecodable byte makes it `invalid_file`, which is how
binary garbage under a text name is refused. HTML keeps its visible text only (stdlib html.parser; script,
style and the like dropped; block elements end a line).

PDF goes through pypdf with its work bounded: at most MAX_PDF_PAGES pages, each decompressed stream at most
MAX_PDF_STREAM_BYTES (pypdf's own limits, lowered from its 75 MB), and at most MAX_TEXT_CHARS of text in all.
A corrupt PDF, one locked by a password, or a zip bomb renamed .pdf is `invalid_file`; so is a file with no
text after all that (a scanned PDF: there is no OCR). Whitespace is normalised (runs of spaces to one, at most
one blank line) but line breaks and paragraphs are kept, and so is leading indentation (code).
"""

from __future__ import annotations

import contextlib
import html.parser
import logging
import re
from pathlib import Path

import pypdf
import pypdf.filters
from pypdf.errors import PyPdfError

from server.services.files import TEXT_SUFFIXES

log = logging.getLogger("ozwell.server")

MAX_PDF_PAGES = 5_000
MAX_PDF_STREAM_BYTES = 16 * 1024 * 1024
MAX_TEXT_CHARS = 64 * 1024 * 1024
HTML_SUFFIXES = {".html", ".htm"}
SUPPORTED_SUFFIXES = frozenset(TEXT_SUFFIXES | {".pdf"})


def _pdf_limits():
    """A context bounding pypdf's decompression: pypdf 7's scoped Configuration where it exists; before 7 its
    module globals, the only way there (set once; nothing else in this process reads PDFs)."""
    limits = {"zlib_maximum_output_length": MAX_PDF_STREAM_BYTES, "lzw_maximum_output_length": MAX_PDF_STREAM_BYTES,
              "run_length_maximum_output_length": MAX_PDF_STREAM_BYTES,
              "array_based_stream_maximum_output_length": MAX_PDF_STREAM_BYTES,
              "maximum_declared_stream_length": MAX_PDF_STREAM_BYTES}
    if hasattr(pypdf, "apply_configuration"):
        return pypdf.apply_configuration(**limits)
    for name in ("ZLIB_MAX_OUTPUT_LENGTH", "LZW_MAX_OUTPUT_LENGTH", "RUN_LENGTH_MAX_OUTPUT_LENGTH",
                 "MAX_ARRAY_BASED_STREAM_OUTPUT_LENGTH", "MAX_DECLARED_STREAM_LENGTH"):
        if getattr(pypdf.filters, name, 0) > MAX_PDF_STREAM_BYTES:
            setattr(pypdf.filters, name, MAX_PDF_STREAM_BYTES)
    return contextlib.nullcontext()


class ParseError(Exception):
    """Why a file cannot be indexed; `code` is the vector store file's last_error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code  # "unsupported_file" | "invalid_file"
        self.message = message


def extract_text(path: Path, filename: str) -> str:
    """The normalised text of the file at `path`, named `filename` by its uploader. Blocking: run in a thread."""
    suffix = Path(filename).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise ParseError("unsupported_file", f"Files of type '{suffix or filename}' are not supported; supported: "
                         f"PDF and UTF-8 text ({', '.join(sorted(s for s in SUPPORTED_SUFFIXES if s))}).")
    if suffix == ".pdf":
        text = _pdf_text(path)
    else:
        if Path(path).stat().st_size > MAX_TEXT_CHARS * 4:  # no UTF-8 character takes more than 4 bytes
            raise ParseError("invalid_file", f"{filename} holds more than {MAX_TEXT_CHARS} characters of text.")
        text = _utf8(Path(path).read_bytes(), filename)
        if suffix in HTML_SUFFIXES:
            text = _visible_html(text)
    text = normalise_whitespace(text)
    if not text:
        raise ParseError("invalid_file", f"{filename} contains no text.")
    if len(text) > MAX_TEXT_CHARS:
        raise ParseError("invalid_file", f"{filename} holds more than {MAX_TEXT_CHARS} characters of text.")
    return text


def _utf8(data: bytes, filename: str) -> str:
    if b"\x00" in data:
        raise ParseError("invalid_file", f"{filename} is binary (it holds NUL bytes), not UTF-8 text.")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ParseError("invalid_file", f"{filename} is not UTF-8 text (bad byte at offset {exc.start}).") from None


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u2028\u2029]")
_INNER_SPACES = re.compile(r"(?<=\S)[ \t\u00a0]+")
_TRAILING_SPACES = re.compile(r"[ \t\u00a0]+$", re.MULTILINE)
_BLANK_LINES = re.compile(r"\n{3,}")


def normalise_whitespace(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub(" ", text)
    text = _TRAILING_SPACES.sub("", text)
    text = _INNER_SPACES.sub(" ", text)
    return _BLANK_LINES.sub("\n\n", text).strip("\n").rstrip()


def _pdf_text(path: Path) -> str:
    try:
        with _pdf_limits():
            return _pdf_pages(path)
    except ParseError:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError,
            OverflowError, ZeroDivisionError, MemoryError, AssertionError, UnicodeError) as exc:
        # pypdf on hostile input raises its own errors and, from deep inside, plain Python ones.
        log.info("pdf parse failed for %s: %s: %s", path, type(exc).__name__, exc)
        raise ParseError("invalid_file", f"The PDF could not be read ({type(exc).__name__}: {exc})"[:500]) from None


def _pdf_pages(path: Path) -> str:
    reader = pypdf.PdfReader(path, strict=False)
    # Many PDFs are encrypted with an empty user password (only printing or copying restricted): open those.
    if reader.is_encrypted and not reader.decrypt(""):
        raise ParseError("invalid_file", "The PDF is encrypted with a password.")
    pages = len(reader.pages)
    if pages > MAX_PDF_PAGES:
        raise ParseError("invalid_file", f"The PDF has {pages} pages; at most {MAX_PDF_PAGES} are indexed.")
    texts, total = [], 0
    for page in reader.pages:
        text = page.extract_text() or ""
        total += len(text)
        if total > MAX_TEXT_CHARS:
            raise ParseError("invalid_file", f"The PDF holds more than {MAX_TEXT_CHARS} characters of text.")
        texts.append(text)
    return "\n\n".join(texts)


_HIDDEN = {"script", "style", "head", "title", "noscript", "template", "svg", "iframe", "object"}
_BLOCKS = {"p", "div", "br", "li", "ul", "ol", "tr", "table", "section", "article", "header", "footer", "h1", "h2",
           "h3", "h4", "h5", "h6", "pre", "blockquote", "dd", "dt", "hr", "main", "nav", "aside", "figcaption"}
_PARAGRAPHS = {"p", "div", "section", "article", "table", "ul", "ol", "pre", "blockquote", "h1", "h2", "h3", "h4",
               "h5", "h6"}


class _VisibleText(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag, attrs):
        if tag in _HIDDEN:
            self.hidden += 1
        elif tag in _BLOCKS:
            self._break(1)

    def handle_startendtag(self, tag, attrs):
        if tag in _BLOCKS:
            self._break(1)

    def handle_endtag(self, tag):
        if tag in _HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in _BLOCKS:
            self._break(2 if tag in _PARAGRAPHS else 1)

    def _break(self, lines: int) -> None:
        """End the line (1) or the paragraph (2), unless the text already does."""
        tail = "".join(self.parts[-2:])
        have = len(tail) - len(tail.rstrip("\n"))
        if self.parts and have < lines:
            self.parts.append("\n" * (lines - have))

    def handle_data(self, data):
        text = re.sub(r"\s+", " ", data)
        if self.hidden or (text == " " and (not self.parts or self.parts[-1].endswith("\n"))):
            return  # the indentation between block tags
        self.parts.append(text)


def _visible_html(source: str) -> str:
    parser = _VisibleText()
    parser.feed(source)
    parser.close()
    return "".join(parser.parts)
