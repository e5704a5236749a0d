"""Findings 6 and 7 of issue #35: stored responses kept their whole input, file text included, with no
quota, and a chain loaded it all back; client-chosen input item ids were one database key across owners
(the same id twice gave a 500 after generation, whose log line held the prompt). And the canary test: no
prompt text in any log line, at debug level, after the error paths have run.

One server of this module's own, at --log-level debug, with a 2 MB quota per owner (files and stored
responses together)."""

from __future__ import annotations

import re
import sqlite3
import uuid

import httpx
import pytest
from sqlalchemy import text

from server.db.database import Database
from tests.process import ServerProcess
from tests.security.conftest import (
    MODEL,
    assert_error,
    cli_key,
    client,
    long_context_configs,
)

pytestmark = pytest.mark.security

QUOTA = 2 * 1024 * 1024
CANARY = f"canary-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def store_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("stored-responses")
    config_dir = long_context_configs(root, MODEL, max_num_seqs=8)
    server = ServerProcess(config_dir, root / "data", "--owner-quota-mb", str(QUOTA // 2**20),
                           "--log-level", "debug").start()
    try:
        yield server
    finally:
        server.stop()


def _respond(http: httpx.Client, input, **extra) -> httpx.Response:
    return http.post("/v1/responses", json={"model": MODEL, "input": input, "max_output_tokens": 16, **extra})


def _upload(http: httpx.Client, data: bytes, name: str = "notes.txt") -> httpx.Response:
    return http.post("/v1/files", files={"file": (name, data)}, data={"purpose": "user_data"})


def _call_input(question: str) -> list[dict]:
    return [{"type": "function_call", "id": "fc_x", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            {"role": "user", "content": question}]


def test_a_client_item_id_repeated_by_one_owner_and_by_another_is_stored_each_time(store_server):
    other = cli_key(store_server, "--name", "item-ids-other", "--owner", "item-ids-other")
    created = []
    for key in (store_server.key, store_server.key, other):
        with client(store_server, key) as http:
            reply = _respond(http, _call_input("weather?"))
            assert reply.status_code == 200, reply.text
            assert reply.json()["store"] is True
            created.append((key, reply.json()["id"]))
    assert len({response_id for _, response_id in created}) == 3
    for key, response_id in created:
        with client(store_server, key) as http:
            items = http.get(f"/v1/responses/{response_id}/input_items", params={"order": "asc"}).json()
            assert [item["type"] for item in items["data"]] == ["function_call", "function_call_output", "message"]
            assert items["data"][0]["id"] == "fc_x" and items["first_id"] == "fc_x"
            after = http.get(f"/v1/responses/{response_id}/input_items", params={"order": "asc", "after": "fc_x"})
            assert [item["type"] for item in after.json()["data"]] == ["function_call_output", "message"]
    with client(store_server) as http:  # an id the stored column cannot hold is a 400 before any work
        assert_error(_respond(http, [{**_call_input("x")[0], "id": "f" * 65}, *_call_input("x")[1:]]), 400,
                     param="input[0].id")


def _left(error: dict) -> int:
    return int(re.search(r"\((\d+) bytes left", error["message"])[1])


def test_stored_responses_count_in_the_owners_quota(store_server):
    key = cli_key(store_server, "--name", "quota-owner", "--owner", "quota-owner")
    # 350 KB of text, truncated: stored twice (the input item, and the turn a chain replays), 700 KB a response
    big = [{"role": "user", "content": "a " * 175_000}, {"role": "user", "content": "hi"}]
    with client(store_server, key) as http:
        first = [_respond(http, big, truncation="auto") for _ in range(2)]
        assert [r.status_code for r in first] == [200, 200] and all(r.json()["store"] for r in first)
        # two stored responses hold 1.4 MB of the 2 MB: an 800 KB upload no longer fits
        refused = assert_error(_upload(http, b"x" * 800_000), 413, code="quota_exceeded")
        assert _left(refused) < QUOTA - 1_400_000
        # a response that would pass the quota is answered, but not stored, and says so
        over = _respond(http, big, truncation="auto")
        assert over.status_code == 200, over.text
        assert over.json()["store"] is False
        assert over.json()["ozwell"]["store_error"]["code"] == "quota_exceeded"
        assert_error(http.get(f"/v1/responses/{over.json()['id']}"), 404)
        # the quota full to the byte: a request to store is refused before any work, store=false still runs
        left = _left(assert_error(_upload(http, b"x" * QUOTA), 413, code="quota_exceeded"))
        assert _upload(http, b"x" * left).status_code == 200
        assert_error(_respond(http, "hello"), 413, param="store", code="quota_exceeded")
        assert _respond(http, "hello", store=False).status_code == 200
        # deleting a stored response makes room again
        assert http.delete(f"/v1/responses/{first[0].json()['id']}").json()["deleted"] is True
        again = _respond(http, "hello")
        assert again.status_code == 200 and again.json()["store"] is True


def test_a_chain_with_file_parts_stores_references_and_replays_within_bounds(store_server):
    words = " ".join(f"w{i % 997}" for i in range(200_000)).encode()[:1_000_000]
    with client(store_server, timeout=120) as http:
        upload = _upload(http, words)
        assert upload.status_code == 200, upload.text
        file_id = upload.json()["id"]
        turn = [{"role": "user", "content": [{"type": "input_file", "file_id": file_id}] * 4},
                {"role": "user", "content": "and now?"}]
        for _ in range(2):  # the server's peak for one request with these parts
            assert _respond(http, turn, truncation="auto", store=False).status_code == 200
        before = store_server.rss_bytes()
        previous = None
        for _ in range(3):  # a chain of 3, each turn with 4 MB of file parts
            reply = _respond(http, turn, truncation="auto", previous_response_id=previous)
            assert reply.status_code == 200, reply.text
            previous = reply.json()["id"]
        for _ in range(2):
            chained = _respond(http, "again", truncation="auto", previous_response_id=previous, store=False)
            assert chained.status_code == 200, chained.text
        grown = store_server.rss_bytes() - before
        print(f"RSS growth over a chain of 3 with 4 x 1 MB file parts a turn: {grown / 2**20:.1f} MB")
        assert grown < 25 * 2**20, grown / 2**20  # 44 MB before the fix (12 MB of stored text replayed)
        items = http.get(f"/v1/responses/{previous}/input_items", params={"order": "asc"}).json()["data"]
        assert items[0]["content"][0] == {"type": "input_file", "file_id": file_id}
    with sqlite3.connect(f"file:{store_server.data_dir / 'ozwell.db'}?mode=ro", uri=True) as db:
        stored, counted = db.execute("SELECT length(conversation), bytes FROM responses WHERE id = ?",
                                     (previous,)).fetchone()
    assert stored < 10_000 and counted < 20_000, (stored, counted)  # the file by reference, not its 4 MB


def test_a_database_error_message_holds_no_parameters(tmp_path):
    database = Database(f"sqlite:///{tmp_path / 'canary.db'}")
    with database.engine.begin() as connection:
        connection.execute(text("CREATE TABLE t (id TEXT PRIMARY KEY, prompt TEXT)"))
        connection.execute(text("INSERT INTO t VALUES ('x', :p)"), {"p": CANARY})
    with pytest.raises(Exception) as raised, database.engine.begin() as connection:
        connection.execute(text("INSERT INTO t VALUES ('x', :p)"), {"p": CANARY})
    assert "UNIQUE" in str(raised.value) and CANARY not in str(raised.value)


def test_no_prompt_text_reaches_the_log_after_the_error_paths(store_server):
    """Run each error path with the canary in the prompt, then grep everything the server wrote."""
    other = cli_key(store_server, "--name", "canary-other", "--owner", "canary-other")
    full = cli_key(store_server, "--name", "canary-full", "--owner", "canary-full")
    with client(store_server) as http, client(store_server, other) as other_http:
        # the same client item id twice, and by another owner (a 500 with the prompt logged, before the fix)
        for session in (http, http, other_http):
            assert _respond(session, _call_input(f"weather? {CANARY}")).status_code == 200
        for session in (http, other_http):
            stream = session.post("/v1/responses", json={"model": MODEL, "input": _call_input(CANARY),
                                                         "max_output_tokens": 16, "stream": True})
            assert stream.status_code == 200 and re.search(r"event: response\.(completed|incomplete)\n", stream.text)
        # bad requests carrying the canary
        assert_error(_respond(http, [{"role": "wizard", "content": CANARY}]), 400)
        assert_error(_respond(http, [{"role": "user", "content": [{"type": "input_image", "text": CANARY}]}]), 400)
        assert_error(_respond(http, [{"type": "function_call_output", "call_id": CANARY, "output": CANARY}]), 400)
        assert_error(_respond(http, CANARY * 3000, max_output_tokens=2048), 400)
        assert_error(_respond(http, CANARY, temperature=CANARY), 400)
        assert_error(_respond(http, CANARY, previous_response_id=f"resp_{CANARY}"), 404)
        reply = http.post("/v1/responses", content=b'{"model": "%s", "input": "%s' % (MODEL.encode(),
                                                                                        CANARY.encode()),
                          headers={"Content-Type": "application/json"})
        assert_error(reply, 400)
        chat = http.post("/v1/chat/completions", json={"model": MODEL, "max_tokens": 4,
                                                       "messages": [{"role": "user", "content": CANARY}]})
        assert chat.status_code == 200
    with client(store_server, full) as http:  # a store refused by the quota
        assert _upload(http, b"x" * QUOTA).status_code == 200
        assert_error(_respond(http, CANARY), 413, code="quota_exceeded")
    output = "".join(store_server.lines)
    assert '"POST /v1/responses HTTP/1.1" 413' in output  # at debug level: the access log is on
    assert CANARY not in output
    assert "Traceback" not in output and "IntegrityError" not in output
