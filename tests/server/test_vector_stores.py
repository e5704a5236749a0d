"""Vector stores through the real app and the official openai SDK: upload, index in the background, search;
file batches, attributes and filters, owners, deletion, bad input, a restart mid-ingestion."""

import time

import openai
import pytest
from openai import OpenAI

from server.db.models import StoredFile, VectorStore, VectorStoreFile
from server.vector_stores.service import VectorStoreService
from tests.openapi_schemas import assert_valid

DOCS = {
    "fruit.txt": "The secret word is pineapple. Pineapples are tropical fruit with a sweet, tangy taste.\n",
    "volcano.md": "# Volcanoes\n\nMagma rises through the crust and erupts as lava from the volcano's crater.\n",
    "chess.txt": "In chess, the knight moves in an L shape and castling protects the king.\n",
}


def _upload(client: OpenAI, name: str, text: str | bytes, purpose: str = "assistants") -> str:
    data = text.encode() if isinstance(text, str) else text
    return client.files.create(file=(name, data), purpose=purpose).id


def _settled(client: OpenAI, store_id: str, file_id: str):
    return client.vector_stores.files.poll(file_id, vector_store_id=store_id, max_wait_seconds=120)


def _store(client: OpenAI, docs: dict[str, str] = DOCS, **kwargs) -> tuple[str, dict[str, str]]:
    ids = {name: _upload(client, name, text) for name, text in docs.items()}
    store = client.vector_stores.create(name="docs", file_ids=list(ids.values()), **kwargs)
    for file_id in ids.values():
        assert _settled(client, store.id, file_id).status == "completed"
    return store.id, ids


def _search(client: OpenAI, store_id: str, query, **kwargs) -> list:
    return list(client.vector_stores.search(store_id, query=query, **kwargs))


def _other_client(app, client, owner: str) -> OpenAI:
    key = app.state.services.keys.create(name=owner, owner=owner, rpm=10**6, tpm=10**9)[1]
    return OpenAI(base_url=str(client.base_url) + "/v1", api_key=key, http_client=client, max_retries=0)


def test_upload_create_poll_search_finds_the_right_file(openai_client, client):
    store_id, ids = _store(openai_client, metadata={"team": "docs"})
    store = openai_client.vector_stores.retrieve(store_id)
    body = client.get(f"/v1/vector_stores/{store_id}").json()
    assert_valid(body, "VectorStoreObject")
    assert (store.status, store.file_counts.completed, store.file_counts.total) == ("completed", 3, 3)
    assert store.usage_bytes > 3 * 384 * 4 and store.metadata == {"team": "docs"}
    hits = _search(openai_client, store_id, "Which tropical fruit is the secret word?")
    assert hits[0].file_id == ids["fruit.txt"] and hits[0].filename == "fruit.txt"
    assert 0 < hits[0].score <= 1 and "pineapple" in hits[0].content[0].text
    page = client.post(f"/v1/vector_stores/{store_id}/search", json={"query": ["lava", "crater"]}).json()
    assert_valid(page, "VectorStoreSearchResultsPage")
    assert page["search_query"] == ["lava", "crater"] and page["data"][0]["file_id"] == ids["volcano.md"]
    assert len(_search(openai_client, store_id, "knight", max_num_results=1)) == 1
    content = client.get(f"/v1/vector_stores/{store_id}/files/{ids['chess.txt']}/content").json()
    assert_valid(content, "VectorStoreFileContentResponse")
    assert [part["text"] for part in content["data"]] == [DOCS["chess.txt"].strip()]
    files = client.get(f"/v1/vector_stores/{store_id}/files").json()
    assert_valid(files, "ListVectorStoreFilesResponse")
    assert {f["id"] for f in files["data"]} == set(ids.values())
    for f in files["data"]:
        assert_valid(f, "VectorStoreFileObject")
        assert f["chunking_strategy"] == {"type": "static", "static": {"max_chunk_size_tokens": 800,
                                                                       "chunk_overlap_tokens": 400}}
    listed = client.get("/v1/vector_stores").json()
    assert_valid(listed, "ListVectorStoresResponse")
    assert store_id in [s["id"] for s in listed["data"]]
    deleted = client.delete(f"/v1/vector_stores/{store_id}").json()
    assert_valid(deleted, "DeleteVectorStoreResponse")
    with pytest.raises(openai.NotFoundError):
        openai_client.vector_stores.retrieve(store_id)


def test_upload_and_poll_helper_and_static_chunking(openai_client, client):
    store = openai_client.vector_stores.create(name="helper")
    text = " ".join(f"word{i}" for i in range(600))
    done = openai_client.vector_stores.files.upload_and_poll(
        vector_store_id=store.id, file=("long.txt", text.encode()),
        chunking_strategy={"type": "static", "static": {"max_chunk_size_tokens": 200, "chunk_overlap_tokens": 50}})
    assert done.status == "completed" and done.last_error is None
    chunks = list(openai_client.vector_stores.files.content(done.id, vector_store_id=store.id))
    assert len(chunks) > 3 and chunks[0].text.startswith("word0")
    assert done.chunking_strategy.static.max_chunk_size_tokens == 200
    again = openai_client.vector_stores.files.create_and_poll(done.id, vector_store_id=store.id)  # re-attached
    assert again.status == "completed" and again.chunking_strategy.static.max_chunk_size_tokens == 800
    rechunked = list(openai_client.vector_stores.files.content(done.id, vector_store_id=store.id))
    assert 1 <= len(rechunked) < len(chunks)
    assert _search(openai_client, store.id, "word599")[0].content[0].text == rechunked[-1].text


def test_file_batches_create_list_and_cancel(openai_client, client, app, monkeypatch):
    store = openai_client.vector_stores.create(name="batches")
    ids = [_upload(openai_client, name, text) for name, text in DOCS.items()]
    batch = openai_client.vector_stores.file_batches.create_and_poll(vector_store_id=store.id, file_ids=ids[:2])
    assert_valid(client.get(f"/v1/vector_stores/{store.id}/file_batches/{batch.id}").json(),
                 "VectorStoreFileBatchObject")
    assert (batch.status, batch.file_counts.completed, batch.file_counts.total) == ("completed", 2, 2)
    listed = openai_client.vector_stores.file_batches.list_files(batch.id, vector_store_id=store.id)
    assert sorted(f.id for f in listed) == sorted(ids[:2])
    # A batch the workers have not reached yet (their wake-up is held back) is cancelled at once.
    monkeypatch.setattr(app.state.services.vector_stores.ingestor, "wake", lambda: None)
    pending = openai_client.vector_stores.file_batches.create(vector_store_id=store.id, file_ids=[ids[2]])
    assert pending.status == "in_progress"
    cancelled = openai_client.vector_stores.file_batches.cancel(pending.id, vector_store_id=store.id)
    assert (cancelled.status, cancelled.file_counts.cancelled) == ("cancelled", 1)
    assert openai_client.vector_stores.files.retrieve(ids[2], vector_store_id=store.id).status == "cancelled"
    assert {h.file_id for h in _search(openai_client, store.id, "knight castling king")} <= set(ids[:2])


def test_attributes_and_filters(openai_client, client):
    store = openai_client.vector_stores.create(name="attributes")
    ids = {name: _upload(openai_client, name, text) for name, text in DOCS.items()}
    files = [{"file_id": ids["fruit.txt"], "attributes": {"topic": "food", "year": 2020}},
             {"file_id": ids["volcano.md"], "attributes": {"topic": "geology", "year": 2023, "draft": True}},
             {"file_id": ids["chess.txt"], "attributes": {"topic": "games", "year": 2024}}]
    openai_client.vector_stores.file_batches.create_and_poll(vector_store_id=store.id, files=files)

    def found(filters) -> set[str]:
        return {h.file_id for h in _search(openai_client, store.id, "something", filters=filters)}

    assert found({"type": "eq", "key": "topic", "value": "geology"}) == {ids["volcano.md"]}
    assert found({"type": "gte", "key": "year", "value": 2023}) == {ids["volcano.md"], ids["chess.txt"]}
    assert found({"type": "and", "filters": [{"type": "gt", "key": "year", "value": 2019},
                                             {"type": "ne", "key": "topic", "value": "games"}]}) == {
        ids["fruit.txt"], ids["volcano.md"]}
    hit = _search(openai_client, store.id, "pineapple", filters={"type": "eq", "key": "topic", "value": "food"})[0]
    assert hit.attributes == {"topic": "food", "year": 2020}
    updated = openai_client.vector_stores.files.update(ids["chess.txt"], vector_store_id=store.id,
                                                       attributes={"topic": "geology"})
    assert updated.attributes == {"topic": "geology"}
    assert found({"type": "eq", "key": "topic", "value": "geology"}) == {ids["volcano.md"], ids["chess.txt"]}
    response = client.post(f"/v1/vector_stores/{store.id}/search",
                           json={"query": "x", "filters": {"type": "near", "key": "topic", "value": 1}})
    assert response.status_code == 400 and response.json()["error"]["param"].startswith("filters")


def test_another_owner_gets_404s(openai_client, client, app):
    store_id, ids = _store(openai_client, {"mine.txt": "A private note about pineapples."})
    intruder = _other_client(app, client, "vs-intruder")
    file_id = ids["mine.txt"]
    calls = [lambda: intruder.vector_stores.retrieve(store_id),
             lambda: intruder.vector_stores.update(store_id, name="taken"),
             lambda: intruder.vector_stores.search(store_id, query="pineapple"),
             lambda: intruder.vector_stores.files.list(vector_store_id=store_id),
             lambda: intruder.vector_stores.files.retrieve(file_id, vector_store_id=store_id),
             lambda: intruder.vector_stores.files.content(file_id, vector_store_id=store_id),
             lambda: intruder.vector_stores.files.delete(file_id, vector_store_id=store_id),
             lambda: intruder.vector_stores.file_batches.create(vector_store_id=store_id, file_ids=[file_id]),
             lambda: intruder.vector_stores.delete(store_id)]
    for call in calls:
        with pytest.raises(openai.NotFoundError):
            call()
    assert store_id not in [s.id for s in intruder.vector_stores.list()]
    own = intruder.vector_stores.create(name="theirs")
    with pytest.raises(openai.NotFoundError):  # nor may it index my upload in its own store
        intruder.vector_stores.files.create(vector_store_id=own.id, file_id=file_id)
    assert openai_client.vector_stores.retrieve(store_id).name == "docs"


def test_deleting_a_file_removes_its_chunks_from_search(openai_client):
    store_id, ids = _store(openai_client)
    query = "pineapple volcano knight"
    assert {h.file_id for h in _search(openai_client, store_id, query)} == set(ids.values())
    openai_client.files.delete(ids["fruit.txt"])  # the upload itself: it leaves every store
    assert ids["fruit.txt"] not in {h.file_id for h in _search(openai_client, store_id, query)}
    assert ids["fruit.txt"] not in {f.id for f in openai_client.vector_stores.files.list(vector_store_id=store_id)}
    detached = openai_client.vector_stores.files.delete(ids["chess.txt"], vector_store_id=store_id)
    assert detached.deleted is True
    assert {h.file_id for h in _search(openai_client, store_id, query)} == {ids["volcano.md"]}
    assert openai_client.files.retrieve(ids["chess.txt"]).id == ids["chess.txt"]  # detaching keeps the upload
    assert openai_client.vector_stores.retrieve(store_id).file_counts.total == 1


def test_files_that_cannot_be_parsed_fail_with_last_error(openai_client):
    store = openai_client.vector_stores.create(name="bad files")
    for name, data, code in (("archive.zip", b"PK\x03\x04garbage", "unsupported_file"),
                             ("garbage.txt", b"\x00\xff\xfe binary \x00", "invalid_file"),
                             ("empty.md", b"   \n\n", "invalid_file")):
        done = openai_client.vector_stores.files.upload_and_poll(vector_store_id=store.id, file=(name, data))
        assert done.status == "failed" and done.last_error.code == code and done.last_error.message
    counts = openai_client.vector_stores.retrieve(store.id).file_counts
    assert (counts.failed, counts.completed) == (3, 0)


@pytest.mark.parametrize("path, body, param", [
    ("", {"chunking_strategy": {"type": "static", "static": {"max_chunk_size_tokens": 50,
                                                             "chunk_overlap_tokens": 0}}},
     "chunking_strategy.static.max_chunk_size_tokens"),
    ("", {"chunking_strategy": {"type": "static", "static": {"max_chunk_size_tokens": 400,
                                                             "chunk_overlap_tokens": 300}}},
     "chunking_strategy.static.chunk_overlap_tokens"),
    ("", {"expires_after": {"anchor": "last_active_at", "days": 0}}, "expires_after.days"),
    ("", {"file_ids": ["file-" + "0" * 32]}, "file_ids[0]"),
    ("/search", {"query": "x", "max_num_results": 0}, "max_num_results"),
    ("/search", {"query": "x", "max_num_results": 51}, "max_num_results"),
    ("/search", {"query": "x", "rewrite_query": True}, "rewrite_query"),
    ("/search", {"query": "x", "ranking_options": {"ranker": "best"}}, "ranking_options.ranker"),
    ("/search", {"query": ""}, "query"),
    ("/file_batches", {"file_ids": [f"file-{i}" for i in range(10_000)]}, "file_ids"),
])
def test_bad_input_is_400_naming_the_field(openai_client, client, path, body, param):
    target = "/v1/vector_stores" + (f"/{openai_client.vector_stores.create(name='x').id}{path}" if path else "")
    response = client.post(target, json=body)
    error = response.json()["error"]
    assert (response.status_code, error["param"]) == (404 if param == "file_ids[0]" else 400, param), error
    if path == "/file_batches":
        assert "2000" in error["message"]
    if param == "rewrite_query":
        assert error["code"] == "unsupported_parameter" and "rewrite_query" in error["message"]


def test_only_assistants_and_user_data_files_may_be_attached(openai_client, client):
    store = openai_client.vector_stores.create(name="purposes")
    file_id = _upload(openai_client, "lines.jsonl", '{"a": 1}\n', purpose="batch")
    response = client.post(f"/v1/vector_stores/{store.id}/files", json={"file_id": file_id})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_file_purpose"


def test_modify_expiry_and_pagination(openai_client, client, app, database):
    owner_client = _other_client(app, client, "vs-pager")
    stores = sorted((owner_client.vector_stores.create(name=f"s{i}") for i in range(3)),
                    key=lambda s: (s.created_at, s.id))  # the list's order: creation time, then id
    first = owner_client.vector_stores.list(limit=2, order="asc")
    assert [s.id for s in first.data] == [s.id for s in stores[:2]] and first.has_more
    rest = owner_client.vector_stores.list(limit=2, order="asc", after=first.data[-1].id)
    assert [s.id for s in rest.data] == [stores[2].id] and not rest.has_more
    back = owner_client.vector_stores.list(limit=1, order="asc", before=stores[2].id)
    assert [s.id for s in back.data] == [stores[1].id]
    changed = owner_client.vector_stores.update(stores[0].id, name="renamed", metadata={"k": "v"},
                                                expires_after={"anchor": "last_active_at", "days": 1})
    assert (changed.name, changed.metadata, changed.expires_after.days) == ("renamed", {"k": "v"}, 1)
    assert changed.expires_at == changed.last_active_at + 86_400
    with database.session() as session, session.begin():
        session.get(VectorStore, stores[0].id).last_active_at -= 2 * 86_400
    assert owner_client.vector_stores.retrieve(stores[0].id).status == "expired"
    with pytest.raises(openai.BadRequestError):
        owner_client.vector_stores.search(stores[0].id, query="anything")
    cleared = client.post(f"/v1/vector_stores/{stores[0].id}", json={"expires_after": None})
    assert cleared.status_code == 404  # another owner's store
    kept = owner_client.vector_stores.update(stores[0].id, expires_after=None)
    assert kept.expires_at is None and kept.status == "completed" and kept.name == "renamed"


def test_per_owner_store_cap(client, app, monkeypatch):
    monkeypatch.setattr(app.state.services.vector_stores, "max_stores", 2)
    capped = _other_client(app, client, "vs-capped")
    capped.vector_stores.create(name="one")
    capped.vector_stores.create(name="two")
    with pytest.raises(openai.BadRequestError) as refused:
        capped.vector_stores.create(name="three")
    assert refused.value.code == "quota_exceeded" and "2" in refused.value.message


def test_a_restart_mid_ingestion_indexes_the_file(openai_client, app, client, database, registry, monkeypatch):
    services = app.state.services
    store = openai_client.vector_stores.create(name="restart")
    file_id = _upload(openai_client, "fruit.txt", DOCS["fruit.txt"])
    # The running server takes no new work: the row stays in_progress, as a crash mid-ingestion leaves it.
    monkeypatch.setattr(services.vector_stores.ingestor, "wake", lambda: None)
    attached = openai_client.vector_stores.files.create(vector_store_id=store.id, file_id=file_id)
    assert attached.status == "in_progress"
    time.sleep(0.3)
    with database.session() as session:
        assert session.get(VectorStoreFile, (store.id, file_id)).status == "in_progress"
    assert _search(openai_client, store.id, "pineapple") == []  # nothing half-indexed is searched
    restarted = VectorStoreService(database, services.files, registry)
    client.portal.call(restarted.start)
    try:
        assert _settled(openai_client, store.id, file_id).status == "completed"
    finally:
        client.portal.call(restarted.stop)
        services.files.delete_hooks.pop()
    assert _search(openai_client, store.id, "pineapple")[0].file_id == file_id


def test_indexed_chunks_count_in_the_owner_quota(client, app, monkeypatch):
    owner = _other_client(app, client, "vs-quota")
    file_id = _upload(owner, "fruit.txt", DOCS["fruit.txt"])
    # Room for the upload, not for its vectors (384 float32 = 1,536 bytes a chunk).
    monkeypatch.setattr(app.state.services.files, "owner_quota_bytes", 1000)
    store = owner.vector_stores.create(name="quota")
    done = owner.vector_stores.files.create_and_poll(file_id, vector_store_id=store.id)
    assert done.status == "failed" and done.last_error.code == "server_error"
    assert "quota" in done.last_error.message
    monkeypatch.setattr(app.state.services.files, "owner_quota_bytes", 10**9)
    done = owner.vector_stores.files.create_and_poll(file_id, vector_store_id=store.id)  # attached again: indexed
    assert done.status == "completed" and done.usage_bytes > 1536
    assert app.state.services.files.used_bytes("vs-quota") == len(DOCS["fruit.txt"]) + done.usage_bytes


def test_per_store_file_cap(openai_client, client, app, monkeypatch):
    monkeypatch.setattr(app.state.services.vector_stores.store_files, "max_files_per_store", 1)
    store = openai_client.vector_stores.create(name="small")
    ids = [_upload(openai_client, name, text) for name, text in list(DOCS.items())[:2]]
    response = client.post(f"/v1/vector_stores/{store.id}/file_batches", json={"file_ids": ids})
    assert response.status_code == 400 and response.json()["error"]["code"] == "quota_exceeded"
    assert openai_client.vector_stores.retrieve(store.id).file_counts.total == 0  # nothing half attached


def test_an_expired_upload_leaves_its_stores(openai_client, app):
    store_id, ids = _store(openai_client, {"fruit.txt": DOCS["fruit.txt"]})
    with app.state.services.database.session() as session, session.begin():
        session.get(StoredFile, ids["fruit.txt"]).expires_at = 1
    assert app.state.services.files.sweep_expired() >= 1
    assert _search(openai_client, store_id, "pineapple") == []
    assert openai_client.vector_stores.retrieve(store_id).file_counts.total == 0


def test_a_stores_index_is_built_once_ingestion_ends_not_by_its_first_search(openai_client, app, database):
    store_id, _ = _store(openai_client, {"warm.txt": "The lighthouse at Vellmar Point is kept by Orsolya Brandt.\n"})
    searcher = app.state.services.vector_stores.searcher
    with database.session() as session:
        version = session.get(VectorStore, store_id).version
    deadline = time.monotonic() + 30  # (the file reads completed a moment before the build ends)
    while (store_id, version) not in searcher._cache:
        assert time.monotonic() < deadline, list(searcher._cache)
        time.sleep(0.05)
    built = searcher._cache[(store_id, version)]
    assert built.texts and "Orsolya Brandt" in built.texts[0]
    hits = _search(openai_client, store_id, "Who keeps the lighthouse?")
    assert hits[0].filename == "warm.txt" and searcher._cache[(store_id, version)] is built  # the search used it
