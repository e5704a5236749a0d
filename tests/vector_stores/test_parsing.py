"""Parsing: text types, HTML, PDF (built here, by hand and with pypdf), and each kind of bad file's answer."""

from __future__ import annotations

import io
import os
import time
import zipfile
import zlib

import pypdf
import pytest

from server.vector_stores import parsing
from server.vector_stores.parsing import ParseError, extract_text


def make_pdf(pages: list[str], compress: bool = False, raw_stream: bytes | None = None) -> bytes:
    """A minimal valid PDF, one Helvetica text line per page; `raw_stream` replaces the first page's content."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", None,
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    kids = []
    for i, text in enumerate(pages):
        escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)").encode("latin-1")
        content = b"BT /F1 12 Tf 72 720 Td (" + escaped + b") Tj ET"
        if raw_stream is not None and i == 0:
            content = raw_stream
        flate = compress or (raw_stream is not None and i == 0)
        body = zlib.compress(content) if flate and raw_stream is None else content
        head = b"<< /Length %d%s >>" % (len(body), b" /Filter /FlateDecode" if flate else b"")
        objects.append(head + b"\nstream\n" + body + b"\nendstream")
        kids.append(len(objects) + 1)
        objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> "
                       b">> /Contents %d 0 R >>" % (len(objects)))
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % k for k in kids), len(kids))
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, obj in enumerate(objects, 1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + obj + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    out.writelines(b"%010d 00000 n \n" % offset for offset in offsets)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def write(tmp_path, name: str, data: bytes | str):
    path = tmp_path / "stored-bytes"  # stored under the file id: only `filename` carries the suffix
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def parse(tmp_path, name: str, data: bytes | str) -> str:
    return extract_text(write(tmp_path, name, data), name)


def refused(tmp_path, name: str, data: bytes | str) -> ParseError:
    with pytest.raises(ParseError) as caught:
        parse(tmp_path, name, data)
    return caught.value


def test_text_is_utf8_with_whitespace_normalised_and_paragraphs_kept(tmp_path):
    raw = ("\ufeffTitle  here\r\n\r\n\r\n\r\nFirst\tparagraph,   with  spaces.   \r\nSecond line.\n\n\n\n"
           "Next — café.\n\n")
    expected = "Title here\n\nFirst paragraph, with spaces.\nSecond line.\n\nNext — café."
    assert parse(tmp_path, "notes.TXT", raw) == expected


def test_code_keeps_its_indentation(tmp_path):
    source = "def f(x):\n    if x:\n        return  1\n\n\n\n    return 2\n"
    assert parse(tmp_path, "a.py", source) == "def f(x):\n    if x:\n        return 1\n\n    return 2"


@pytest.mark.parametrize("name", ["a.md", "a.json", "a.csv", "a.yaml", "a.rs", "README"])
def test_other_text_types_are_read(tmp_path, name):
    assert parse(tmp_path, name, '{"k": "v"}\n') == '{"k": "v"}'


def test_html_keeps_visible_text_only(tmp_path):
    page = ("<html><head><title>T</title><style>p {color: red}</style><script>var x = '<p>no</p>';</script></head>"
            "<body><h1>Heading</h1><p>First &amp; <b>bold</b>\n   text.</p><div>Second<br>line</div>"
            "<noscript>enable js</noscript><ul><li>one</li><li>two</li></ul></body></html>")
    assert parse(tmp_path, "page.html", page) == "Heading\n\nFirst & bold text.\n\nSecond\nline\n\none\ntwo"
    indented = "<body>\n  <ul>\n    <li>one</li>\n    <li>two <i>and</i> a half</li>\n  </ul>\n  <p>After.</p>\n</body>"
    assert parse(tmp_path, "page.htm", indented) == "one\ntwo and a half\n\nAfter."


def test_binary_garbage_is_invalid(tmp_path):
    error = refused(tmp_path, "data.txt", os.urandom(4096) + b"\x00")
    assert error.code == "invalid_file" and "binary" in error.message


def test_undecodable_bytes_are_invalid(tmp_path):
    error = refused(tmp_path, "latin.txt", "caf\u00e9 au lait".encode("latin-1"))
    assert error.code == "invalid_file" and "not UTF-8" in error.message


@pytest.mark.parametrize("data", [b"", b"   \n\n\t  \r\n"])
def test_empty_file_is_invalid(tmp_path, data):
    error = refused(tmp_path, "empty.txt", data)
    assert error.code == "invalid_file" and "no text" in error.message


@pytest.mark.parametrize("name", ["archive.zip", "photo.png", "report.docx", "sheet.xlsx", "a.exe"])
def test_unknown_suffix_is_unsupported(tmp_path, name):
    error = refused(tmp_path, name, "plain words")
    assert error.code == "unsupported_file" and ".pdf" in error.message


def test_pdf_pages_are_extracted(tmp_path):
    text = parse(tmp_path, "doc.pdf", make_pdf(["Hello from page one.", "Page two (with parentheses)."],
                                                compress=True))
    assert text == "Hello from page one.\n\nPage two (with parentheses)."


def test_pdf_written_by_pypdf_round_trips(tmp_path):
    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(make_pdf(["Alpha beta gamma."]))))
    writer.add_blank_page(612, 792)
    writer.add_metadata({"/Title": "not body text"})
    buffer = io.BytesIO()
    writer.write(buffer)
    assert parse(tmp_path, "copy.PDF", buffer.getvalue()) == "Alpha beta gamma."


def test_zip_bomb_renamed_pdf_is_invalid(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb.bin", b"\0" * (64 * 1024 * 1024))
    assert len(buffer.getvalue()) < 200_000
    started = time.perf_counter()
    error = refused(tmp_path, "report.pdf", buffer.getvalue())
    assert error.code == "invalid_file" and time.perf_counter() - started < 5


def test_pdf_whose_page_stream_inflates_past_the_limit_is_invalid(tmp_path):
    # 40 MB of text operators squeezed into ~40 KB: pypdf stops at MAX_PDF_STREAM_BYTES instead of inflating it.
    bomb = zlib.compress(b"BT /F1 12 Tf 72 720 Td (" + b"A" * (40 * 1024 * 1024) + b") Tj ET", 9)
    started = time.perf_counter()
    error = refused(tmp_path, "bomb.pdf", make_pdf(["x"], raw_stream=bomb))
    assert error.code == "invalid_file" and time.perf_counter() - started < 10


def test_corrupt_pdf_is_invalid(tmp_path):
    whole = make_pdf(["Some text."])
    assert refused(tmp_path, "cut.pdf", b"%PDF-1.4\n" + os.urandom(2000)).code == "invalid_file"
    assert refused(tmp_path, "cut.pdf", whole[:40]).code == "invalid_file"


def test_pdf_without_text_is_invalid(tmp_path):
    writer = pypdf.PdfWriter()
    writer.add_blank_page(612, 792)
    buffer = io.BytesIO()
    writer.write(buffer)
    error = refused(tmp_path, "scan.pdf", buffer.getvalue())
    assert error.code == "invalid_file" and "no text" in error.message


def encrypted_pdf(user_password: str) -> bytes:
    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(make_pdf(["Secret."]))))
    writer.encrypt(user_password, owner_password="owner", algorithm="RC4-128")
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def test_pdf_locked_by_a_password_is_invalid(tmp_path):
    error = refused(tmp_path, "locked.pdf", encrypted_pdf("user-password"))
    assert error.code == "invalid_file" and "encrypted with a password" in error.message


def test_pdf_encrypted_with_an_empty_user_password_is_read(tmp_path):
    assert parse(tmp_path, "restricted.pdf", encrypted_pdf("")) == "Secret."


def test_pdf_page_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(parsing, "MAX_PDF_PAGES", 2)
    error = refused(tmp_path, "long.pdf", make_pdf(["one", "two", "three"]))
    assert error.code == "invalid_file" and "3 pages" in error.message
    assert parse(tmp_path, "short.pdf", make_pdf(["one", "two"])) == "one\n\ntwo"


def test_ten_megabyte_single_line_parses_quickly(tmp_path):
    line = ("word " * (2 * 1024 * 1024 + 1))[:10 * 1024 * 1024]
    started = time.perf_counter()
    text = parse(tmp_path, "one-line.txt", line)
    elapsed = time.perf_counter() - started
    print(f"\n10 MB single line parsed in {elapsed:.2f} s")
    assert text == line.rstrip() and "\n" not in text
    assert elapsed < 30  # well under a second here; the bound only catches a regex gone quadratic


def test_text_over_the_cap_is_invalid(tmp_path, monkeypatch):
    monkeypatch.setattr(parsing, "MAX_TEXT_CHARS", 10)
    assert "more than 10 characters" in refused(tmp_path, "big.txt", "x" * 41).message  # refused before reading
    assert "more than 10 characters" in refused(tmp_path, "big.txt", "word " * 6).message
    assert parse(tmp_path, "small.txt", "ten chars!") == "ten chars!"
