"""Issue #35, items 3, 4, 8, 9 and 12: inputs bounded before the work they would cost.

- A 7 MB embedding input was tokenized whole before its length was checked (72-106 s a refusal, another
  owner's chats 20-79 s); it is now refused on its characters, before tokenizing.
- One uploaded file named by 40 parts of one request made the template render 160 MB (+470 MB of server
  memory); file parts are now bounded per request (distinct files, total bytes) and counted at admission.
- repetition_penalty below ~1e-38, token ids outside the cl100k encoding, and a lone surrogate gave 500s or
  the tokenizer's own message; each is now a 400 naming its parameter.

The server here has an embedding model (with OpenAI's name as an alias) and a file quota that holds a 4 MB
file, which the tier's shared server does not."""

from __future__ import annotations

import concurrent.futures
import statistics
import time

import pytest

from tests.process import ServerProcess
from tests.security.conftest import (
    assert_error,
    bearer,
    cli_key,
    client,
    long_context_configs,
)

pytestmark = pytest.mark.security

CHAT = "bounded-llama"
EMBED = "bounded-minilm"
OPENAI_EMBED = "text-embedding-3-small"
FOUR_MB = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("bounded")
    configs = long_context_configs(root, CHAT, embedding=EMBED, aliases=(OPENAI_EMBED,))
    process = ServerProcess(configs, root / "data", "--owner-quota-mb", "64").start()
    try:
        yield process
    finally:
        process.stop()


def _upload(http, data: bytes, name: str = "notes.txt") -> str:
    reply = http.post("/v1/files", files={"file": (name, data)}, data={"purpose": "user_data"})
    assert reply.status_code == 200, reply.text
    return reply.json()["id"]


def _chat(content, **extra) -> dict:
    return {"model": CHAT, "messages": [{"role": "user", "content": content}], "max_tokens": 4, **extra}


# ---- item 3: a huge embedding input -------------------------------------------------------------
def test_four_7mb_embedding_inputs_are_refused_in_seconds_and_another_owner_is_unharmed(server):
    attacker = cli_key(server, "--name", "embed-free", "--owner", "embed-free", "--plan", "free")
    bystander = cli_key(server, "--name", "embed-bystander", "--owner", "embed-bystander", "--plan", "pro")
    huge = "word " * 1_400_000  # 7 MB; it took 5.6 s alone to tokenize whole, and minutes four at once
    with client(server, bystander) as other, client(server, attacker, timeout=120) as evil:
        assert other.post("/v1/chat/completions", json=_chat("warm up")).status_code == 200
        baseline = []
        for _ in range(5):
            started = time.perf_counter()
            assert other.post("/v1/chat/completions", json=_chat("Hello there")).status_code == 200
            baseline.append(time.perf_counter() - started)
        bound = 2 * max(statistics.median(baseline), 0.25)

        def attack(_):
            started = time.perf_counter()
            reply = evil.post("/v1/embeddings", json={"model": EMBED, "input": huge})
            return reply, time.perf_counter() - started

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            attacks = [pool.submit(attack, i) for i in range(4)]
            during = []
            while not all(a.done() for a in attacks) or not during:
                started = time.perf_counter()
                assert other.post("/v1/chat/completions", json=_chat("Hello there")).status_code == 200
                during.append(time.perf_counter() - started)
            results = [a.result() for a in attacks]
    print(f"\n7 MB embeddings x4: {', '.join(f'{took:.2f}' for _, took in results)} s; bystander baseline "
          f"{statistics.median(baseline):.3f} s, during the attack at most {max(during):.3f} s ({len(during)} chats)")
    for reply, took in results:
        assert took < 5, f"a refused 7 MB input took {took:.1f} s"
        error = assert_error(reply, 400, "input[0]", "context_length_exceeded")
        assert "characters" in error["message"]
    assert max(during) <= bound, (during, baseline)


# ---- item 4: one file named by many parts -----------------------------------------------------
def _responses_body(parts: list[dict]) -> dict:
    return {"model": CHAT, "input": [{"role": "user", "content": parts}], "max_output_tokens": 16}


def test_forty_parts_of_one_4mb_file_are_refused_at_admission_without_memory(server):
    with client(server, timeout=120) as http:
        big = _upload(http, b"lorem ipsum " * (FOUR_MB // 12))
        assert http.post("/v1/chat/completions", json=_chat("warm up")).status_code == 200
        before = server.rss_bytes()
        chat_parts = [{"type": "text", "text": "Summarise:"}] + [{"type": "file", "file": {"file_id": big}}] * 40
        started = time.perf_counter()
        chat = http.post("/v1/chat/completions", json=_chat(chat_parts))
        chat_took = time.perf_counter() - started
        response = http.post("/v1/responses", json=_responses_body([{"type": "input_file", "file_id": big}] * 40))
        grown = server.rss_bytes() - before
    print(f"\n40 parts of one 4 MB file: chat refused in {chat_took:.2f} s, server grew {grown / 2**20:.1f} MB")
    assert grown < 50 * 2**20, f"the server grew {grown / 2**20:.0f} MB"
    error = assert_error(chat, 400, "messages[0].content[2].file", "files_too_large")
    assert str(FOUR_MB) in error["message"]
    assert_error(response, 400, "input[0].content[1]", "files_too_large")
    assert chat_took < 5


def test_a_file_that_cannot_fit_the_context_is_refused_before_it_is_read(server):
    with client(server, timeout=120) as http:
        big = _upload(http, b"lorem ipsum " * (FOUR_MB // 12))
        before = server.rss_bytes()
        chat = http.post("/v1/chat/completions", json=_chat([{"type": "file", "file": {"file_id": big}}]))
        response = http.post("/v1/responses", json=_responses_body([{"type": "input_file", "file_id": big}]))
        grown = server.rss_bytes() - before
    assert "files" in assert_error(chat, 400, "messages", "context_length_exceeded")["message"]
    assert "files" in assert_error(response, 400, "input", "context_length_exceeded")["message"]
    assert grown < 50 * 2**20, f"the server grew {grown / 2**20:.0f} MB"


def test_at_most_twenty_distinct_files_and_a_repeated_small_file_is_read_once(server):
    with client(server) as http:
        ids = [_upload(http, f"note {i}".encode()) for i in range(21)]
        many = http.post("/v1/chat/completions",
                         json=_chat([{"type": "file", "file": {"file_id": i}} for i in ids]))
        assert_error(many, 400, "messages[0].content[20].file", "too_many_files")
        many = http.post("/v1/responses", json=_responses_body([{"type": "input_file", "file_id": i} for i in ids]))
        assert_error(many, 400, "input[0].content[20]", "too_many_files")
        # Twenty distinct, one of them named again and again, fit.
        parts = [{"type": "file", "file": {"file_id": i}} for i in ids[:20]] * 3
        assert http.post("/v1/chat/completions", json=_chat(parts)).status_code == 200
        missing = http.post("/v1/chat/completions",
                            json=_chat([{"type": "file", "file": {"file_id": "file-nope"}}]))
        assert_error(missing, 400, "messages[0].content[0].file.file_id", "file_not_found")


# ---- item 8: repetition_penalty near 0 --------------------------------------------------------
@pytest.mark.parametrize("penalty", [1e-39, 1e-30, 0.001, 0])
def test_a_repetition_penalty_near_zero_is_a_400(server, penalty):
    with client(server) as http:
        chat = http.post("/v1/chat/completions", json=_chat("Hi", repetition_penalty=penalty))
        completion = http.post("/v1/completions", json={"model": CHAT, "prompt": "Hi", "max_tokens": 4,
                                                        "repetition_penalty": penalty})
        assert http.post("/v1/chat/completions", json=_chat("Hi", repetition_penalty=0.01)).status_code == 200
    for reply in (chat, completion):
        assert_error(reply, 400, "repetition_penalty", "invalid_value")


# ---- item 9: token ids outside the vocabulary -------------------------------------------------
@pytest.mark.parametrize("model", [OPENAI_EMBED, EMBED])
@pytest.mark.parametrize("ids", [[-1, 5], [2**40], [10**30]])
def test_embedding_token_ids_out_of_range_are_400s(server, model, ids):
    with client(server) as http:
        reply = http.post("/v1/embeddings", json={"model": model, "input": [ids]})
    assert_error(reply, 400, "input[0]", "invalid_value")


@pytest.mark.parametrize("ids", [[-1, 5], [2**40], [10**30]])
def test_completion_token_ids_out_of_range_are_400s(server, ids):
    with client(server) as http:
        reply = http.post("/v1/completions", json={"model": CHAT, "prompt": ids, "max_tokens": 2})
    assert_error(reply, 400, "prompt")


# ---- item 12: a lone surrogate ----------------------------------------------------------------
LONE = '"a \\ud800 b"'  # a raw JSON escape: json.dumps would not send it


@pytest.mark.parametrize("path, body, param", [
    ("/v1/chat/completions", f'{{"model": "{CHAT}", "max_tokens": 2, "messages": [{{"role": "user", '
                             f'"content": {LONE}}}]}}', "messages"),
    ("/v1/completions", f'{{"model": "{CHAT}", "max_tokens": 2, "prompt": {LONE}}}', "prompt"),
    ("/v1/responses", f'{{"model": "{CHAT}", "max_output_tokens": 16, "input": {LONE}}}', "input"),
    ("/v1/embeddings", f'{{"model": "{EMBED}", "input": {LONE}}}', "input[0]"),
    ("/v1/embeddings", f'{{"model": "{OPENAI_EMBED}", "input": ["fine", {LONE}]}}', "input[1]"),
])
def test_a_lone_surrogate_is_a_plain_400(server, path, body, param):
    headers = {**bearer(server.key), "Content-Type": "application/json"}
    with client(server) as http:
        reply = http.post(path, content=body.encode(), headers=headers)
    message = assert_error(reply, 400, param, "invalid_value")["message"]
    assert "surrogate" in message
    assert "TextEncodeInput" not in message and "Union" not in message
