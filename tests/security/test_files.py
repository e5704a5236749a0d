"""Findings 5, 7 and 8 on files: the quota under concurrent uploads, multipart text fields refused as
they arrive, and file names that broke the download's header."""

from __future__ import annotations

import concurrent.futures
import urllib.parse

import httpx
import pytest

from tests.security.conftest import QUOTA_MB, assert_error, cli_key, client

pytestmark = pytest.mark.security

UPLOAD = int(1.9 * 1024 * 1024)


def _upload(http: httpx.Client, name: str, data: bytes) -> httpx.Response:
    return http.post("/v1/files", files={"file": (name, data)}, data={"purpose": "user_data"})


def test_five_concurrent_uploads_cannot_pass_the_quota(sec_server):
    key = cli_key(sec_server, "--name", "uploader", "--owner", "quota-race", "--plan", "pro")
    with client(sec_server, key) as http, concurrent.futures.ThreadPoolExecutor(5) as pool:
        replies = list(pool.map(lambda i: _upload(http, f"part{i}.bin", bytes([i]) * UPLOAD), range(5)))
        stored = http.get("/v1/files").json()["data"]
    ok = [r for r in replies if r.status_code == 200]
    for refused in (r for r in replies if r.status_code != 200):
        assert_error(refused, 413, code="quota_exceeded")
    assert ok, [r.text for r in replies]
    assert len(stored) == len(ok)
    assert sum(f["bytes"] for f in stored) <= QUOTA_MB * 1024 * 1024


def _multipart(parts: list[bytes], boundary: bytes = b"B") -> bytes:
    return b"".join(b"--" + boundary + b"\r\n" + part + b"\r\n" for part in parts) + b"--" + boundary + b"--\r\n"


def _field(name: str, value: bytes) -> bytes:
    return f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value


def test_many_or_unknown_text_fields_are_refused_as_they_arrive(sec_server):
    headers = {"Content-Type": "multipart/form-data; boundary=B"}
    with client(sec_server) as http:
        many = _multipart([_field("purpose", b"user_data")] + [_field(f"f{i}", b"x" * 4000) for i in range(30_000)])
        assert_error(http.post("/v1/files", content=many, headers=headers), 400, code="unknown_parameter")
        repeated = _multipart([_field("purpose", b"user_data")] * 40)
        assert_error(http.post("/v1/files", content=repeated, headers=headers), 400)
        long_value = _multipart([_field("purpose", b"u" * 100_000)])
        assert_error(http.post("/v1/files", content=long_value, headers=headers), 400, param="purpose")


def test_a_non_multipart_upload_and_a_10000_character_name_are_400(sec_server):
    with client(sec_server) as http:
        assert_error(_upload(http, "x" * 10_000 + ".txt", b"content"), 400)
        assert_error(http.post("/v1/files", json={"purpose": "user_data"}), 400)
        assert_error(http.post("/v1/files", content=b"x", headers={"Content-Type": "text/plain"}), 400)


NAMES = {"cjk": "東京の報告.txt", "emoji": "rocket 🚀.md", "rtl-override": "evil\u202etxt.exe",
         "line-separator": "line\u2028break.txt", "c1-controls": "c1\x85\x9bcontrol.txt", "long": "x" * 1000 + ".txt"}


@pytest.mark.parametrize("name", NAMES.values(), ids=NAMES.keys())
def test_any_file_name_downloads_with_an_rfc_6266_header(sec_server, name):
    with client(sec_server) as http:
        created = _upload(http, name, b"content")
        assert created.status_code == 200, created.text
        stored = created.json()["filename"]
        assert all(c not in stored for c in "\u202e\u2028\x85\x9b") and len(stored.encode()) <= 255
        reply = http.get(f"/v1/files/{created.json()['id']}/content")
        assert reply.status_code == 200 and reply.content == b"content"
        disposition = reply.headers["content-disposition"]
        disposition.encode("ascii")  # a header in plain ASCII
        assert all(ord(c) >= 0x20 for c in disposition)
        encoded = disposition.split("filename*=UTF-8''", 1)[1]
        assert urllib.parse.unquote(encoded) == stored
        http.delete(f"/v1/files/{created.json()['id']}")
