"""The Batch API in process, through the official openai SDK: real engines on the tiny models, the runner in
the app's lifespan. The kill -9 resume test is in test_durability.py (a real process)."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import openai
import pytest

from tests.openapi_schemas import assert_valid

CHAT = "tiny-llama"
EMBED = "all-minilm-l6-v2"


@pytest.fixture(scope="module", autouse=True)
def quick_leases(app):
    """Renew leases (and notice expiry and revocation) every half second instead of every ten."""
    runner = app.state.services.batches.runner
    saved = runner.lease_s
    runner.lease_s = 1.5
    yield
    runner.lease_s = saved


def upload(openai_client, lines: list[dict | str], name: str = "batch.jsonl") -> str:
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    return openai_client.files.create(file=(name, io.BytesIO(text.encode())), purpose="batch").id


def chat_line(i: int, max_tokens: int = 6, **extra) -> dict:
    return {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": CHAT, "messages": [{"role": "user", "content": f"count to {i} please"}],
                     "max_tokens": max_tokens, "temperature": 0, **extra}}


def wait_for(openai_client, batch_id: str, statuses: tuple[str, ...], timeout_s: float = 240):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        batch = openai_client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        time.sleep(0.2)
    raise AssertionError(f"batch {batch_id} is still {batch.status} after {timeout_s}s")


def wait_for_progress(openai_client, batch_id: str, completed: int, timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while openai_client.batches.retrieve(batch_id).request_counts.completed < completed:
        assert time.time() < deadline, f"batch {batch_id} has not completed {completed} lines in {timeout_s}s"
        time.sleep(0.1)


def read_jsonl(openai_client, file_id: str) -> list[dict]:
    return [json.loads(line) for line in openai_client.files.content(file_id).text.splitlines()]


def test_a_200_line_chat_batch_matches_direct_requests(openai_client, client):
    lines = [chat_line(i) for i in range(200)]
    lines[5]["body"]["seed"], lines[5]["body"]["temperature"] = 7, 1.0  # a seeded sampled one, too
    batch = openai_client.batches.create(input_file_id=upload(openai_client, lines), endpoint="/v1/chat/completions",
                                         completion_window="24h", metadata={"job": "eval"})
    assert batch.status == "validating" and batch.metadata == {"job": "eval"}
    done = wait_for(openai_client, batch.id, ("completed", "failed"))
    body = client.get(f"/v1/batches/{batch.id}").json()
    assert_valid(body, "Batch")
    assert done.status == "completed", done.errors
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (200, 200, 0)
    assert done.model == CHAT and done.error_file_id is None
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    outputs = read_jsonl(openai_client, done.output_file_id)
    assert [o["custom_id"] for o in outputs] == [f"req-{i}" for i in range(200)]
    assert openai_client.files.retrieve(done.output_file_id).purpose == "batch_output"
    prompt = completion = 0
    for line, output in zip(lines, outputs):
        assert output["error"] is None and output["response"]["status_code"] == 200
        answer = output["response"]["body"]
        assert_valid(answer, "CreateChatCompletionResponse")
        assert output["response"]["request_id"] == answer["id"]
        direct = client.post("/v1/chat/completions", json=line["body"]).json()
        assert answer["choices"][0]["message"] == direct["choices"][0]["message"], line["custom_id"]
        assert answer["usage"] == direct["usage"]
        prompt += answer["usage"]["prompt_tokens"]
        completion += answer["usage"]["completion_tokens"]
    assert (done.usage.input_tokens, done.usage.output_tokens) == (prompt, completion)
    listed = client.get("/v1/batches", params={"limit": 1}).json()
    assert_valid(listed, "ListBatchesResponse")
    assert listed["data"][0]["id"] == batch.id


def test_a_500_line_embeddings_batch_matches_direct_requests(openai_client):
    texts = [f"document number {i} about {'cats' if i % 2 else 'ships'}" for i in range(500)]
    lines = [{"custom_id": f"doc-{i}", "method": "POST", "url": "/v1/embeddings",
              "body": {"model": EMBED, "input": text}} for i, text in enumerate(texts)]
    batch = openai_client.batches.create(input_file_id=upload(openai_client, lines), endpoint="/v1/embeddings",
                                         completion_window="24h")
    done = wait_for(openai_client, batch.id, ("completed", "failed"))
    assert done.status == "completed" and done.request_counts.completed == 500
    outputs = read_jsonl(openai_client, done.output_file_id)
    assert len(outputs) == 500 and len({o["custom_id"] for o in outputs}) == 500
    direct = openai_client.embeddings.create(model=EMBED, input=texts)
    for i, output in enumerate(outputs):
        assert output["custom_id"] == f"doc-{i}"
        vector = np.array(output["response"]["body"]["data"][0]["embedding"])
        np.testing.assert_allclose(vector, direct.data[i].embedding, atol=1e-5)
    assert done.usage.input_tokens == direct.usage.prompt_tokens


def test_lines_that_fail_go_to_the_error_file_and_the_rest_completes(openai_client):
    lines = [chat_line(0), chat_line(1, max_tokens=-3), chat_line(2, stream=True), chat_line(3)]
    lines[3]["body"]["messages"] = "not a list"
    batch = openai_client.batches.create(input_file_id=upload(openai_client, lines),
                                         endpoint="/v1/chat/completions", completion_window="24h")
    done = wait_for(openai_client, batch.id, ("completed", "failed"))
    assert done.status == "completed"
    assert (done.request_counts.completed, done.request_counts.failed) == (1, 3)
    errors = read_jsonl(openai_client, done.error_file_id)
    assert [e["custom_id"] for e in errors] == ["req-1", "req-2", "req-3"]
    for entry in errors:
        assert entry["response"]["status_code"] == 400
        assert_valid(entry["response"]["body"], "ErrorResponse")
    assert errors[1]["response"]["body"]["error"]["param"] == "stream"
    assert [o["custom_id"] for o in read_jsonl(openai_client, done.output_file_id)] == ["req-0"]


def test_a_bad_file_fails_the_batch_naming_its_lines(openai_client):
    # Bad JSON is refused at upload already, naming the line.
    with pytest.raises(openai.BadRequestError) as refused:
        upload(openai_client, [chat_line(i) for i in range(6)] + ["{not json", chat_line(7)])
    assert "line 7" in refused.value.message
    lines = [chat_line(i) for i in range(10)]
    lines[2]["custom_id"] = "req-1"  # a duplicate, on line 3
    lines[4]["url"] = "/v1/completions"  # the wrong url, on line 5
    lines[6]["method"] = "GET"  # line 7
    lines[8]["body"]["model"] = "no-such-model"  # line 9
    batch = openai_client.batches.create(input_file_id=upload(openai_client, lines),
                                         endpoint="/v1/chat/completions", completion_window="24h")
    failed = wait_for(openai_client, batch.id, ("failed", "completed"))
    assert failed.status == "failed" and failed.failed_at and not failed.output_file_id
    found = {(e.line, e.code) for e in failed.errors.data}
    assert found == {(3, "duplicate_custom_id"), (5, "invalid_url"), (7, "invalid_method"), (9, "model_not_found")}
    assert all(str(e.line) in e.message for e in failed.errors.data)


def test_cancel_mid_way_keeps_what_finished(openai_client, app):
    lines = [chat_line(i, max_tokens=40) for i in range(400)]
    batch = openai_client.batches.create(input_file_id=upload(openai_client, lines),
                                         endpoint="/v1/chat/completions", completion_window="24h")
    wait_for_progress(openai_client, batch.id, 3)
    cancelling = openai_client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    done = wait_for(openai_client, batch.id, ("cancelled",), 60)
    counts = done.request_counts
    assert counts.total == 400 and 3 <= counts.completed < 400 and counts.failed == 0
    outputs = read_jsonl(openai_client, done.output_file_id)
    assert len(outputs) == counts.completed == len({o["custom_id"] for o in outputs})
    assert done.cancelled_at >= done.cancelling_at
    with pytest.raises(openai.ConflictError):
        openai_client.batches.cancel(wait_for(openai_client, one_line_batch(openai_client), ("completed",)).id)
    # nothing of the cancelled batch is still running in the engine
    assert app.state.services.registry.resolve(CHAT).stats()["running"] == 0


def one_line_batch(openai_client) -> str:
    """A batch of one line, completed."""
    batch = openai_client.batches.create(input_file_id=upload(openai_client, [chat_line(1)]),
                                         endpoint="/v1/chat/completions", completion_window="24h")
    assert wait_for(openai_client, batch.id, ("completed",)).request_counts.completed == 1
    return batch.id


def test_a_batch_past_its_window_expires_keeping_what_finished(openai_client, app):
    from sqlalchemy import update

    from server.db.models import StoredBatch

    lines = [chat_line(i, max_tokens=40) for i in range(300)]
    batch = openai_client.batches.create(input_file_id=upload(openai_client, lines),
                                         endpoint="/v1/chat/completions", completion_window="24h")
    wait_for_progress(openai_client, batch.id, 2)
    with app.state.services.database.session() as session, session.begin():
        session.execute(update(StoredBatch).where(StoredBatch.id == batch.id).values(expires_at=int(time.time())))
    done = wait_for(openai_client, batch.id, ("expired",), 60)
    counts = done.request_counts
    assert counts.completed >= 2 and counts.completed + counts.failed == 300 and done.expired_at
    errors = read_jsonl(openai_client, done.error_file_id)
    assert len(errors) == counts.failed and all(e["error"]["code"] == "batch_expired" for e in errors)
    outputs = read_jsonl(openai_client, done.output_file_id)
    assert {o["custom_id"] for o in outputs} | {e["custom_id"] for e in errors} == {f"req-{i}" for i in range(300)}


def test_refusals_at_create(openai_client, client):
    text_file = openai_client.files.create(file=("notes.txt", io.BytesIO(b"hello")), purpose="user_data").id
    cases = [
        ({"input_file_id": text_file, "endpoint": "/v1/chat/completions", "completion_window": "24h"}, 400,
         "input_file_id"),
        ({"input_file_id": "file-" + "0" * 32, "endpoint": "/v1/chat/completions", "completion_window": "24h"}, 404,
         "input_file_id"),
        ({"input_file_id": text_file, "endpoint": "/v1/moderations", "completion_window": "24h"}, 400, "endpoint"),
        ({"input_file_id": text_file, "endpoint": "/v1/embeddings", "completion_window": "1h"}, 400,
         "completion_window"),
        ({"input_file_id": text_file, "endpoint": "/v1/embeddings", "completion_window": "24h", "priority": 1}, 400,
         "priority"),
    ]
    for body, status, param in cases:
        response = client.post("/v1/batches", json=body)
        assert response.status_code == status, (body, response.text)
        assert_valid(response.json(), "ErrorResponse")
        assert response.json()["error"]["param"] == param
    missing = client.get("/v1/batches/batch_nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "batch_not_found"


def test_another_owner_sees_nothing_and_a_key_without_the_scope_cannot_create(app, client, openai_client):
    batch_id = one_line_batch(openai_client)
    keys = app.state.services.keys
    _, other = keys.create(name="other", owner="someone-else", plan="enterprise", rpm=10**6, tpm=10**10)
    _, no_chat = keys.create(name="embed-only", plan="enterprise", rpm=10**6, tpm=10**10,
                             scopes=["files", "embeddings"])
    stranger = {"Authorization": f"Bearer {other}"}
    assert client.get(f"/v1/batches/{batch_id}", headers=stranger).status_code == 404
    assert client.post(f"/v1/batches/{batch_id}/cancel", headers=stranger).status_code == 404
    assert batch_id not in [b["id"] for b in client.get("/v1/batches", headers=stranger).json()["data"]]
    file_id = upload(openai_client, [chat_line(0)])
    refused = client.post("/v1/batches", headers={"Authorization": f"Bearer {no_chat}"},
                          json={"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"})
    assert refused.status_code == 403 and refused.json()["error"]["param"] == "endpoint"


def test_revoking_the_key_stops_its_batch(app, client):
    keys = app.state.services.keys
    record, key = keys.create(name="doomed", plan="enterprise", rpm=10**6, tpm=10**10)
    doomed = {"Authorization": f"Bearer {key}"}
    text = "".join(json.dumps(chat_line(i, max_tokens=40)) + "\n" for i in range(300))
    file_id = client.post("/v1/files", headers=doomed, files={"file": ("b.jsonl", text.encode())},
                          data={"purpose": "batch"}).json()["id"]
    batch_id = client.post("/v1/batches", headers=doomed, json={
        "input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}).json()["id"]
    deadline = time.time() + 120
    while client.get(f"/v1/batches/{batch_id}", headers=doomed).json()["request_counts"]["completed"] < 1:
        assert time.time() < deadline
        time.sleep(0.1)
    keys.revoke(record.id)
    assert client.get(f"/v1/batches/{batch_id}", headers=doomed).status_code == 401
    batches = app.state.services.batches
    deadline = time.time() + 60
    while (body := batches.retrieve(None, batch_id))["status"] != "cancelled":
        assert time.time() < deadline, body["status"]
        time.sleep(0.2)
    assert body["errors"]["data"][0]["code"] == "key_revoked"
    assert 1 <= body["request_counts"]["completed"] < 300


def test_deleting_the_input_file_mid_batch_loses_no_line(openai_client):
    lines = [chat_line(i, max_tokens=12) for i in range(120)]
    file_id = upload(openai_client, lines)
    batch = openai_client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                         completion_window="24h")
    wait_for_progress(openai_client, batch.id, 2)
    assert openai_client.files.delete(file_id).deleted
    done = wait_for(openai_client, batch.id, ("completed", "cancelled"))
    assert done.status == "completed" and done.request_counts.completed == 120
    assert len(read_jsonl(openai_client, done.output_file_id)) == 120


def test_one_replica_at_a_time_holds_a_batch_and_a_dead_ones_lease_passes_on(app, tmp_path):
    """Two runners (two replicas) on one database of their own: the lease goes to one; the other takes the batch
    only when that lease has run out; a replica restarted under its own name takes its batch back at once."""
    from server.db.database import open_database
    from server.db.models import StoredBatch
    from server.services.batch_runner import BatchRunner

    services = app.state.services
    database = open_database(None, tmp_path)

    def runner(name: str) -> BatchRunner:
        return BatchRunner(database, services.files, services.registry, services.keys, {}, name, lease_s=2)

    now = int(time.time())
    batch_id = f"batch_lease_test_{now}"
    with database.session() as session, session.begin():
        session.add(StoredBatch(id=batch_id, owner="lease-test", endpoint="/v1/chat/completions",
                                input_file_id="file-x", completion_window="24h", status="in_progress",
                                created_at=0, expires_at=now + 3600, total=1, completed=0, failed=0, input_tokens=0,
                                output_tokens=0))
    try:
        first, second = runner("replica-a"), runner("replica-b")
        assert first.leases.claim() == batch_id
        assert second.leases.claim() is None  # held
        assert runner("replica-a").leases.claim() == batch_id  # the same replica, restarted
        time.sleep(2.2)
        assert second.leases.claim() == batch_id  # replica-a's lease ran out
        assert first.leases.renew(batch_id, None) == "lost"
    finally:
        database.close()


def test_output_expires_after_sets_the_output_files_expiry(openai_client):
    batch = openai_client.batches.create(input_file_id=upload(openai_client, [chat_line(0)]),
                                         endpoint="/v1/chat/completions", completion_window="24h",
                                         output_expires_after={"anchor": "created_at", "seconds": 3600})
    done = wait_for(openai_client, batch.id, ("completed",))
    output = openai_client.files.retrieve(done.output_file_id)
    assert output.expires_at == output.created_at + 3600
    openai_client.files.delete(output.id)  # the files tier's sweep test counts the shared store's expiring files
