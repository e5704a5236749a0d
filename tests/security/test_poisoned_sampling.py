"""Finding 1: out-of-range sampling parameters took the engine down for every owner.

Each poisoned request now gets a 400 naming its parameter at the edge; the engine stays ready and a
batch-mate's request, running while they arrive, completes."""

from __future__ import annotations

import concurrent.futures

import pytest

from tests.security.conftest import MODEL, assert_error, chat_body, client

pytestmark = pytest.mark.security

HUGE = 10**30  # past int64: "Overflow when unpacking long long" in the sampler before

POISONED = [
    ("/v1/completions", {"model": MODEL, "prompt": "Hi", "top_k": HUGE}, "top_k"),
    ("/v1/completions", {"model": MODEL, "prompt": "Hi", "top_k": 100_000}, "top_k"),  # past the vocabulary
    ("/v1/chat/completions", chat_body(temperature=1e-50), "temperature"),  # 0 in float32: inf/nan draws
    ("/v1/chat/completions", chat_body(seed=2**70), "seed"),
    ("/v1/chat/completions", chat_body(max_tokens=HUGE), "max_tokens"),
    ("/v1/chat/completions", chat_body(max_completion_tokens=10**23), "max_completion_tokens"),
    ("/v1/chat/completions", chat_body(logit_bias={"1" * 40: 5}), "logit_bias"),
    ("/v1/completions", {"model": MODEL, "prompt": [HUGE, 5]}, "prompt"),
    ("/v1/responses", {"model": MODEL, "input": "Hi", "temperature": 1e-50}, "temperature"),
    ("/v1/responses", {"model": MODEL, "input": "Hi", "max_output_tokens": HUGE}, "max_output_tokens"),
]


def test_ten_poisoned_requests_get_400s_and_a_batch_mate_completes(sec_server):
    with client(sec_server) as http, concurrent.futures.ThreadPoolExecutor(4) as pool:
        mate = pool.submit(http.post, "/v1/chat/completions",
                           json=chat_body(max_tokens=200, ignore_eos=True, temperature=0.7, seed=3))
        replies = list(pool.map(lambda case: (case, http.post(case[0], json=case[1])), POISONED))
        for (path, _, param), reply in replies:
            error = assert_error(reply, 400)
            assert error["param"] is not None and error["param"].startswith(param), (path, error)
        answer = mate.result(timeout=120)
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["completion_tokens"] == 200
        assert http.get("/ready").status_code == 200
        # And the engine still serves a sampled request afterwards.
        after = http.post("/v1/chat/completions", json=chat_body(max_tokens=5, temperature=1e-4))
        assert after.status_code == 200 and after.json()["choices"][0]["finish_reason"] in ("stop", "length")
