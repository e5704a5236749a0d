"""Finding 10 of issue #35: the dashboard's sign-in limiter.

- From loopback, X-Forwarded-For was believed (uvicorn's default trusts 127.0.0.1), so 40 attempts with
  varying addresses were all evaluated; proxy headers are now believed only from --forwarded-allow-ips.
- The check and the record of a failure were split by a thread hop, so 60 concurrent failures got 21 and 12
  401s against a limit of 10; now each failure is counted and checked in one limiter call.
- A locked-out address could not sign in even with a valid admin key; now it can (only failures are refused).

The tier's own server, with a limit of 5 failures a minute, so that the lockout stays out of the shared one."""

from __future__ import annotations

import concurrent.futures
import re

import httpx
import pytest

from tests.process import ServerProcess
from tests.security.conftest import MODEL
from tests.tiny_models import tiny_llama_configs

pytestmark = pytest.mark.security

ATTEMPTS = 5


def _server(root, *args: str) -> ServerProcess:
    config_dir = tiny_llama_configs(root, MODEL, max_model_len=128, max_num_seqs=2)
    return ServerProcess(config_dir, root / "data", "--dashboard-signin-attempts", str(ATTEMPTS), *args).start()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = _server(tmp_path_factory.mktemp("signin"))
    try:
        yield process
    finally:
        process.stop()


def _attempt(server: ServerProcess, key: str, headers: dict | None = None) -> httpx.Response:
    """One sign-in as a browser makes it: the form (its CSRF cookie and token), then the post."""
    with httpx.Client(base_url=server.url, headers=headers or {}, timeout=60) as http:
        form = http.get("/dashboard/signin")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
        return http.post("/dashboard/signin", data={"csrf_token": token, "api_key": key})


def test_sign_ins_from_loopback_cannot_choose_their_address_with_x_forwarded_for(server):
    statuses = [_attempt(server, "ozw_" + "x" * 43, {"X-Forwarded-For": f"203.0.113.{i}"}).status_code
                for i in range(12)]
    # Before: 12 x 401, every attempt counted against a different address of the attacker's choosing.
    assert statuses.count(401) <= ATTEMPTS and statuses[-1] == 429, statuses


def test_concurrent_failures_are_evaluated_no_more_than_the_limit_and_a_valid_key_still_signs_in(server):
    # The module's first test locked loopback out; the second server starts with a clean window.
    fresh = _server(server.data_dir.parent / "second")
    try:
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            statuses = list(pool.map(lambda _: _attempt(fresh, "ozw_" + "y" * 43).status_code, range(60)))
        assert statuses.count(401) == ATTEMPTS and statuses.count(429) == 60 - ATTEMPTS, statuses
        refused = _attempt(fresh, "not a key")
        assert refused.status_code == 429 and 1 <= int(refused.headers["retry-after"]) <= 60
        signed_in = _attempt(fresh, fresh.key)  # locked out, but the admin's own key is not a guess
        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/dashboard/keys"
        assert "ozwell_dashboard" in signed_in.cookies
    finally:
        fresh.stop()


def test_a_named_proxy_is_believed(tmp_path_factory):
    proxied = _server(tmp_path_factory.mktemp("signin-proxy"), "--forwarded-allow-ips", "127.0.0.1")
    try:
        for _ in range(ATTEMPTS):
            assert _attempt(proxied, "bad", {"X-Forwarded-For": "198.51.100.7"}).status_code == 401
        assert _attempt(proxied, "bad", {"X-Forwarded-For": "198.51.100.7"}).status_code == 429
        # Another client behind the same proxy is its own address, not locked out by the first.
        assert _attempt(proxied, "bad", {"X-Forwarded-For": "198.51.100.8"}).status_code == 401
    finally:
        proxied.stop()
