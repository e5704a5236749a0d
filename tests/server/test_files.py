"""Files API through the real app and the openai SDK: durable, owner-scoped, size-capped."""

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from server.services.files import FileService
from tests.openapi_schemas import assert_valid
from tests.server.test_auth import as_key

HELLO_FILE = "The secret word is pineapple.\nRemember it.\n"


def _files_dir(app) -> Path:
    return app.state.services.files.dir


def _visible(app) -> set[str]:
    return {p.name for p in _files_dir(app).iterdir()}


def test_sdk_round_trip(openai_client):
    created = openai_client.files.create(file=("notes.txt", HELLO_FILE.encode()), purpose="user_data")
    assert_valid(created.model_dump(exclude_unset=True), "OpenAIFile")
    assert created.id.startswith("file-") and len(created.id) == 5 + 32
    assert (created.filename, created.bytes, created.purpose) == ("notes.txt", len(HELLO_FILE.encode()), "user_data")
    assert openai_client.files.retrieve(created.id).id == created.id
    assert openai_client.files.content(created.id).read() == HELLO_FILE.encode()
    assert created.id in [f.id for f in openai_client.files.list(purpose="user_data")]
    deleted = openai_client.files.delete(created.id)
    assert_valid(deleted.model_dump(exclude_unset=True), "DeleteFileResponse")
    assert deleted.deleted is True
    with pytest.raises(openai.NotFoundError):
        openai_client.files.retrieve(created.id)


def test_storage_permissions_and_bytes_named_by_id(app, client):
    body = client.post("/v1/files", files={"file": ("a.txt", b"abc")}, data={"purpose": "assistants"}).json()
    directory = _files_dir(app)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / body["id"]).stat().st_mode) == 0o600
    assert (directory / body["id"]).read_bytes() == b"abc"


def test_pagination_with_after_cursor(client, app, admin_key):
    key = app.state.services.keys.create(name="pager", owner="pager-owner")[1]
    with as_key(client, key):
        ids = {client.post("/v1/files", files={"file": (f"f{i}.txt", b"x" * i)}, data={"purpose": "user_data"})
               .json()["id"] for i in range(5)}
        seen, after, pages = [], None, 0
        while True:
            params = {"limit": 2, "order": "asc", **({"after": after} if after else {})}
            page = client.get("/v1/files", params=params).json()
            assert_valid(page, "ListFilesResponse")
            seen += [f["id"] for f in page["data"]]
            pages += 1
            if not page["has_more"]:
                break
            after = page["last_id"]
        assert pages == 3 and len(seen) == 5 and set(seen) == ids
        desc = [f["id"] for f in client.get("/v1/files", params={"order": "desc"}).json()["data"]]
        assert desc == list(reversed(seen))
        sdk = openai.OpenAI(base_url=str(client.base_url) + "/v1", api_key=key, http_client=client, max_retries=0)
        assert {f.id for f in sdk.files.list(limit=2)} == ids  # the SDK's auto-pagination follows the cursor


def test_oversize_is_413_and_leaves_no_bytes(app, client, monkeypatch):
    monkeypatch.setattr(app.state.services.files, "max_file_bytes", 1000)
    before = _visible(app)
    response = client.post("/v1/files", files={"file": ("big.bin", b"x" * 5000)}, data={"purpose": "user_data"})
    assert response.status_code == 413
    assert response.json()["error"]["param"] == "file"
    assert _visible(app) == before


def test_owner_quota_is_checked_while_streaming(app, client, monkeypatch):
    key = app.state.services.keys.create(name="quota", owner="quota-owner")[1]
    monkeypatch.setattr(app.state.services.files, "owner_quota_bytes", 3000)
    with as_key(client, key):
        assert client.post("/v1/files", files={"file": ("a.txt", b"x" * 2000)},
                           data={"purpose": "user_data"}).status_code == 200
        before = _visible(app)
        response = client.post("/v1/files", files={"file": ("b.txt", b"x" * 2000)}, data={"purpose": "user_data"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "quota_exceeded" and "quota" in response.json()["error"]["message"]
    assert _visible(app) == before


@pytest.mark.parametrize("raw, shown", [
    ("../../etc/passwd", "passwd"), ("/abs/path/x.txt", "x.txt"), ("a\r\nb\x00c.txt", "abc.txt"),
    ("..\\..\\win.txt", "win.txt"), ("é" * 200 + ".txt", None),
])
def test_hostile_filenames_are_sanitised_for_display_only(app, client, raw, shown):
    body = client.post("/v1/files", files={"file": (raw, b"data")}, data={"purpose": "user_data"}).json()
    if shown is not None:
        assert body["filename"] == shown
    assert len(body["filename"].encode()) <= 255
    assert (_files_dir(app) / body["id"]).read_bytes() == b"data"
    assert not (_files_dir(app).parent.parent / "etc").exists()


def test_sanitise_filename_on_raw_names():
    from server.services.files import sanitise_filename

    assert sanitise_filename("a\r\nb\x00c.txt") == "abc.txt"
    assert sanitise_filename("../..") == "file" and sanitise_filename("") == "file"
    assert sanitise_filename("%2e%2e%2fsecret") == "secret"
    assert sanitise_filename("100%.txt") == "100%.txt"


def test_another_owner_gets_404_and_never_sees_the_file(app, client):
    mine = client.post("/v1/files", files={"file": ("mine.txt", b"private")}, data={"purpose": "user_data"}).json()
    other = app.state.services.keys.create(name="intruder", owner="someone-else")[1]
    with as_key(client, other):
        for method, path in (("GET", f"/v1/files/{mine['id']}"), ("GET", f"/v1/files/{mine['id']}/content"),
                             ("DELETE", f"/v1/files/{mine['id']}")):
            response = client.request(method, path)
            assert response.status_code == 404 and response.json()["error"]["code"] == "file_not_found"
        assert mine["id"] not in [f["id"] for f in client.get("/v1/files").json()["data"]]
    assert client.get(f"/v1/files/{mine['id']}").status_code == 200


def test_delete_removes_bytes_and_row(app, client, database):
    from server.db.models import StoredFile

    body = client.post("/v1/files", files={"file": ("d.txt", b"bye")}, data={"purpose": "user_data"}).json()
    assert client.delete(f"/v1/files/{body['id']}").json() == {"id": body["id"], "object": "file", "deleted": True}
    assert not (_files_dir(app) / body["id"]).exists()
    with database.session() as session:
        assert session.get(StoredFile, body["id"]) is None
    assert client.delete(f"/v1/files/{body['id']}").status_code == 404


def test_a_restart_keeps_files(app, client, database):
    body = client.post("/v1/files", files={"file": ("keep.txt", b"still here")}, data={"purpose": "user_data"}).json()
    restarted = FileService(database, _files_dir(app).parent, 10**6, 10**9)
    restarted.prepare()
    record = restarted.get("tests", body["id"])
    assert restarted.path(record).read_bytes() == b"still here"


@pytest.mark.parametrize("data, param", [({"purpose": "homework"}, "purpose"), ({}, "purpose"),
                                         ({"purpose": "user_data", "colour": "x"}, "colour"),
                                         ({"purpose": "user_data", "expires_after[anchor]": "created_at",
                                           "expires_after[seconds]": "10"}, "expires_after.seconds")])
def test_bad_form_fields_are_400_naming_them(app, client, data, param):
    before = _visible(app)
    response = client.post("/v1/files", files={"file": ("x.txt", b"x")}, data=data)
    assert response.status_code == 400 and response.json()["error"]["param"] == param
    assert _visible(app) == before


def test_batch_files_must_be_jsonl(app, client):
    good = "\n".join(json.dumps({"custom_id": str(i), "body": {}}) for i in range(3)) + "\n"
    assert client.post("/v1/files", files={"file": ("b.jsonl", good.encode())}, data={"purpose": "batch"}) \
        .status_code == 200
    before = _visible(app)
    bad = client.post("/v1/files", files={"file": ("b.jsonl", b'{"ok": 1}\nnot json\n')}, data={"purpose": "batch"})
    assert bad.status_code == 400 and "line 2" in bad.json()["error"]["message"]
    assert _visible(app) == before


def test_expired_files_are_swept(app, client):
    body = client.post("/v1/files", files={"file": ("e.txt", b"soon gone")},
                       data={"purpose": "user_data", "expires_after[anchor]": "created_at",
                             "expires_after[seconds]": "3600"}).json()
    assert body["expires_at"] == body["created_at"] + 3600
    assert app.state.services.files.sweep_expired(now=body["created_at"] + 3599) == 0
    assert app.state.services.files.sweep_expired(now=body["created_at"] + 3600) >= 1
    assert client.get(f"/v1/files/{body['id']}").status_code == 404
    assert not (_files_dir(app) / body["id"]).exists()


_CRASHING_UPLOAD = r"""
import asyncio, sys
from pathlib import Path
from server.db.database import open_database
from server.services.files import FileService

data_dir = Path(sys.argv[1])
files = FileService(open_database(None, data_dir), data_dir, 10**9, 10**12)
files.prepare()

async def body():
    yield b'--B\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nuser_data\r\n'
    yield b'--B\r\nContent-Disposition: form-data; name="file"; filename="big.txt"\r\n\r\n'
    for i in range(1000):
        yield b"y" * 65536
        if i == 10:
            print("halfway", flush=True)
        await asyncio.sleep(0.01)
    yield b"\r\n--B--\r\n"

asyncio.run(files.upload("crash-owner", "multipart/form-data; boundary=B", body()))
"""


def test_kill_9_mid_upload_leaves_nothing_visible_after_restart(tmp_path):
    root = Path(__file__).resolve().parents[2]
    process = subprocess.Popen([sys.executable, "-c", _CRASHING_UPLOAD, str(tmp_path)], cwd=root,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "halfway"
    leftovers = list((tmp_path / "files").iterdir())
    assert leftovers and leftovers[0].name.startswith(".upload-")  # the partial upload is on disk now
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)
    from server.db.database import open_database

    restarted = FileService(open_database(None, tmp_path), tmp_path, 10**9, 10**12)
    restarted.prepare()
    assert list((tmp_path / "files").iterdir()) == []
    assert restarted.list("crash-owner", None, 100, "desc", None)["data"] == []


def test_chat_reads_a_text_file_into_the_prompt(client, registry):
    created = client.post("/v1/files", files={"file": ("facts.md", HELLO_FILE.encode())},
                          data={"purpose": "user_data"}).json()
    messages = [{"role": "user", "content": [{"type": "text", "text": "Read this: "},
                                             {"type": "file", "file": {"file_id": created["id"]}}]}]
    body = client.post("/v1/chat/completions", json={"model": "tiny-llama", "messages": messages,
                                                      "max_tokens": 2}).json()
    expected = registry.resolve("tiny-llama").encode_chat([{"role": "user", "content": "Read this: " + HELLO_FILE}])
    assert body["usage"]["prompt_tokens"] == len(expected)


def test_chat_refuses_non_text_and_unknown_files(client):
    image = client.post("/v1/files", files={"file": ("pic.png", b"\x89PNG\r\n\x1a\n\x00\x00")},
                        data={"purpose": "vision"}).json()
    for file_id, code in ((image["id"], "unsupported_file"), ("file-" + "0" * 32, "file_not_found")):
        messages = [{"role": "user", "content": [{"type": "file", "file": {"file_id": file_id}}]}]
        response = client.post("/v1/chat/completions", json={"model": "tiny-llama", "messages": messages})
        assert response.status_code == 400
        assert response.json()["error"]["code"] == code
    assert "UTF-8 text" in client.post("/v1/chat/completions", json={"model": "tiny-llama", "messages": [
        {"role": "user", "content": [{"type": "file", "file": {"file_id": image["id"]}}]}]}).json()["error"]["message"]
