"""Keys, scopes, revocation, plans and rate limits through the real app."""

import asyncio
import contextlib
import os
import stat
import time

import httpx
import pytest
from fastapi.routing import APIRoute

from server.auth.keys import KeyService
from server.auth.plans import Plans
from server.db.database import Database, open_database
from tests.openapi_schemas import assert_valid

HELLO = [{"role": "user", "content": "Hello!"}]


@contextlib.contextmanager
def as_key(client, key: str | None):
    """Send the next requests with another key (or none) on the shared test client."""
    saved = client.headers.get("Authorization")
    if key is None:
        del client.headers["Authorization"]
    else:
        client.headers["Authorization"] = f"Bearer {key}"
    try:
        yield client
    finally:
        client.headers["Authorization"] = saved


def _error(response, status, error_type, code):
    assert response.status_code == status, response.text
    body = response.json()
    assert_valid(body, "ErrorResponse")
    assert (body["error"]["type"], body["error"]["code"]) == (error_type, code)
    return body["error"]


def _new_key(app, **kwargs) -> str:
    """A key of the session admin key's owner ("tests"), unless another owner is given."""
    return app.state.services.keys.create(**{"name": "t", "owner": "tests", **kwargs})[1]


def _api_routes(routes):
    """Every APIRoute, including those inside included routers (FastAPI wraps them)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif hasattr(route, "original_router"):
            yield from _api_routes(route.original_router.routes)


def test_every_route_but_the_probes_refuses_a_missing_key(app, client):
    from server.auth.dependencies import PUBLIC_PATHS

    assert PUBLIC_PATHS == {"/health", "/ready"}
    checked = 0
    with as_key(client, None):
        for route in _api_routes(app.routes):
            path = route.path.replace("{model_id:path}", "gpt-4").replace("{key_id}", "key_x")
            for method in route.methods:
                response = client.request(method, path, json={})
                if route.path in PUBLIC_PATHS:
                    assert response.status_code == 200, (route.path, response.text)
                else:
                    _error(response, 401, "authentication_error", "invalid_api_key")
                    checked += 1
    assert checked >= 8


@pytest.mark.parametrize("header", ["Bearer ozw_wrongwrongwrongwrongwrongwrongwrongwrongwrong", "Bearer nope",
                                    "Basic abc", "Bearer ", "ozw_abc"])
def test_bad_or_unknown_keys_are_401(client, header):
    response = client.get("/v1/models", headers={"Authorization": header})
    _error(response, 401, "authentication_error", "invalid_api_key")
    assert header.split(" ")[-1] not in response.text or header.endswith(" ")


def test_the_stored_hash_is_not_a_key(app, client, database):
    from server.db.models import ApiKey

    _new_key(app, name="hash-test")
    with database.session() as session:
        stored = session.query(ApiKey).filter_by(name="hash-test").one().key_hash
    for attempt in (stored, "ozw_" + stored):
        with as_key(client, attempt):
            _error(client.get("/v1/models"), 401, "authentication_error", "invalid_api_key")


def test_revocation_counts_on_the_next_request(app, client):
    key = _new_key(app)
    key_id = next(k.id for k in app.state.services.keys.list() if k.prefix == key[:12])
    with as_key(client, key):
        assert client.get("/v1/models").status_code == 200
    assert client.delete(f"/v1/admin/keys/{key_id}").json()["revoked"] is True
    with as_key(client, key):
        _error(client.get("/v1/models"), 401, "authentication_error", "invalid_api_key")


def test_scopes_admin_and_model_permissions_are_403(app, client):
    models_only = _new_key(app, scopes=["models"])
    with as_key(client, models_only):
        assert client.get("/v1/models").status_code == 200
        _error(client.post("/v1/chat/completions", json={"model": "gpt-4", "messages": HELLO}), 403,
               "permission_error", "insufficient_scope")
        _error(client.get("/v1/admin/keys"), 403, "permission_error", "insufficient_scope")
    llama_only = _new_key(app, models=["tiny-llama"])
    with as_key(client, llama_only):
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["tiny-llama", "gpt-4", "gpt-4o-mini"]
        assert client.post("/v1/chat/completions", json={"model": "gpt-4", "messages": HELLO,
                                                          "max_tokens": 2}).status_code == 200
        _error(client.post("/v1/chat/completions", json={"model": "tiny-gemma", "messages": HELLO}), 403,
               "permission_error", "model_not_allowed")
        _error(client.get("/v1/models/tiny-gemma"), 403, "permission_error", "model_not_allowed")


def test_admin_api_creates_lists_and_reads_usage(client):
    created = client.post("/v1/admin/keys", json={"name": "svc", "plan": "pro", "scopes": ["chat"]})
    assert created.status_code == 201
    body = created.json()
    assert body["key"].startswith("ozw_") and len(body["key"]) >= 36 and body["prefix"] == body["key"][:12]
    listed = client.get("/v1/admin/keys").json()["data"]
    assert body["id"] in [k["id"] for k in listed]
    assert all("key" not in k and "key_hash" not in k for k in listed)
    with as_key(client, body["key"]):
        reply = client.post("/v1/chat/completions", json={"model": "tiny-llama", "messages": HELLO,
                                                           "max_tokens": 3})
    usage = client.get("/v1/admin/usage", params={"key_id": body["id"]}).json()["data"]
    assert len(usage) == 1
    record = usage[0]
    assert (record["model"], record["endpoint"], record["status"]) == (
        "tiny-llama", "/v1/chat/completions", 200)
    assert record["prompt_tokens"] == reply.json()["usage"]["prompt_tokens"]
    assert record["completion_tokens"] == reply.json()["usage"]["completion_tokens"]
    _error(client.post("/v1/admin/keys", json={"name": "x", "plan": "platinum"}), 400, "invalid_request_error",
           "invalid_value")
    _error(client.delete("/v1/admin/keys/key_doesnotexist"), 404, "invalid_request_error", "key_not_found")


def test_one_owners_admin_key_cannot_see_anothers_keys_or_usage(app, client):
    a_admin = _new_key(app, name="a-admin", owner="tenant-a", admin=True, plan="pro")
    b_key, b_plain = app.state.services.keys.create(name="b-worker", owner="tenant-b", plan="pro")
    with as_key(client, b_plain):
        client.get("/v1/models")  # tenant-b has usage now
    with as_key(client, a_admin):
        listed = client.get("/v1/admin/keys").json()["data"]
        assert listed and {k["owner"] for k in listed} == {"tenant-a"}
        _error(client.delete(f"/v1/admin/keys/{b_key.id}"), 404, "invalid_request_error", "key_not_found")
        _error(client.get("/v1/admin/usage", params={"key_id": b_key.id}), 404, "invalid_request_error",
               "key_not_found")
        assert {r["owner"] for r in client.get("/v1/admin/usage").json()["data"]} <= {"tenant-a"}
        _error(client.post("/v1/admin/keys", json={"name": "x", "owner": "tenant-b"}), 403, "permission_error",
               "insufficient_scope")
        made = client.post("/v1/admin/keys", json={"name": "a-worker"}).json()
        assert made["owner"] == "tenant-a"
    with as_key(client, b_plain):
        assert client.get("/v1/models").status_code == 200  # untouched by tenant-a's admin


def test_free_plan_30_concurrent_requests_exactly_20_pass(app, client):
    key = _new_key(app, plan="free")

    async def burst():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test",
                                     headers={"Authorization": f"Bearer {key}"}) as http:
            return await asyncio.gather(*(http.get("/v1/models") for _ in range(30)))

    responses = client.portal.call(burst)
    ok = [r for r in responses if r.status_code == 200]
    limited = [r for r in responses if r.status_code == 429]
    assert (len(ok), len(limited)) == (20, 10)
    now = time.time()
    for response in limited:
        error = _error(response, 429, "requests", "rate_limit_exceeded")
        assert "requests per minute" in error["message"]
        h = response.headers
        assert h["X-RateLimit-Limit"] == h["x-ratelimit-limit-requests"] == "20"
        assert h["X-RateLimit-Remaining"] == h["x-ratelimit-remaining-requests"] == "0"
        assert now - 1 <= int(h["X-RateLimit-Reset"]) <= now + 61
        assert 1 <= int(h["Retry-After"]) <= 60
        assert h["x-ratelimit-limit-tokens"] == "10000" and "x-ratelimit-reset-tokens" in h
    remaining = sorted(int(r.headers["X-RateLimit-Remaining"]) for r in ok)
    assert remaining == list(range(20))  # headers on successes too, counting down exactly


def test_tpm_reservation_blocks_and_refund_lets_the_next_through(app, client):
    key = _new_key(app, plan="enterprise", rpm=1000, tpm=150)
    base = {"model": "tiny-llama", "messages": HELLO, "temperature": 0}
    free_text = client.post("/v1/chat/completions", json={**base, "max_tokens": 30}).json()
    stop = free_text["choices"][0]["message"]["content"][2:5]
    prompt = free_text["usage"]["prompt_tokens"]
    with as_key(client, key):
        first = client.post("/v1/chat/completions", json={**base, "max_tokens": 100, "stop": [stop]})
        assert first.status_code == 200
        used = first.json()["usage"]["total_tokens"]
        assert used < 40  # stopped early: most of the 100 reserved tokens come back
        assert int(first.headers["x-ratelimit-remaining-tokens"]) == 150 - prompt - 100
        # Without the refund, 2 x (prompt + 100) would overshoot 150.
        second = client.post("/v1/chat/completions", json={**base, "max_tokens": 100, "stop": [stop]})
        assert second.status_code == 200
        third = client.post("/v1/chat/completions", json={**base, "max_tokens": 128 - prompt})
        error = _error(third, 429, "tokens", "rate_limit_exceeded")
        assert "tokens per minute" in error["message"]
        assert int(third.headers["x-ratelimit-remaining-tokens"]) == 150 - 2 * used
        assert int(third.headers["Retry-After"]) >= 1
        too_big = client.post("/v1/chat/completions", json={**base, "max_tokens": 60, "n": 3})
        assert "Request too large" in _error(too_big, 429, "tokens", "rate_limit_exceeded")["message"]


def test_invalid_request_counts_but_reserves_no_tokens(app, client):
    key = _new_key(app, plan="enterprise", rpm=1000, tpm=500)
    with as_key(client, key):
        bad = client.post("/v1/chat/completions", json={"model": "tiny-llama", "messages": [], "max_tokens": 400})
        assert bad.status_code == 400
        assert bad.headers["x-ratelimit-remaining-requests"] == "999"
        assert bad.headers["x-ratelimit-remaining-tokens"] == "500"
        ok = client.get("/v1/models")
        assert ok.headers["x-ratelimit-remaining-requests"] == "998"


def test_sdk_sees_rate_limit_and_authentication_errors(app, client):
    import openai

    def sdk(key):
        return openai.OpenAI(base_url=str(client.base_url) + "/v1", api_key=key, http_client=client, max_retries=0)

    key = _new_key(app, plan="enterprise", rpm=1, tpm=1000)
    with as_key(client, key):
        sdk(key).models.list()
        with pytest.raises(openai.RateLimitError) as info:
            sdk(key).models.list()
    assert info.value.body["code"] == "rate_limit_exceeded"
    with as_key(client, "ozw_" + "x" * 40), pytest.raises(openai.AuthenticationError):
        sdk("ozw_" + "x" * 40).models.list()


def test_keys_survive_a_restart_and_repeated_migrations(tmp_path):
    plans = Plans.from_file()
    first = open_database(None, tmp_path)
    record, plaintext = KeyService(first, plans).create(name="durable", plan="pro")
    first.close()
    for _ in range(2):  # a restart runs the migrations again; they keep the rows
        again = open_database(None, tmp_path)
        caller = KeyService(again, plans).authenticate(plaintext)
        assert caller is not None and caller.key_id == record.id and caller.limits.rpm == 100
        again.close()
    assert Database(f"sqlite:///{tmp_path / 'ozwell.db'}").engine.dialect.name == "sqlite"


def test_first_run_creates_one_admin_key_in_a_0600_file(tmp_path, capsys):
    from server.cli import _first_run_admin_key

    keys = KeyService(open_database(None, tmp_path), Plans.from_file())
    _first_run_admin_key(keys, tmp_path)
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    path = tmp_path / "admin_key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_text().strip() == printed
    caller = keys.authenticate(printed)
    assert "admin" in caller.scopes
    _first_run_admin_key(keys, tmp_path)  # a second start makes no new key and prints none
    assert capsys.readouterr().out == "" and len(keys.list()) == 1


def test_no_auth_only_on_loopback():
    from pydantic import ValidationError

    from server.settings import Settings

    assert Settings(host="127.0.0.1", auth=False).auth is False
    assert Settings(host="::1", auth=False).auth is False
    with pytest.raises(ValidationError, match="loopback"):
        Settings(host="0.0.0.0", auth=False)


def test_owner_rpm_counts_every_key_of_the_owner(registry, database, tiny_config_dir, tiny_dir):
    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.settings import Settings

    app = create_app(Settings(config_dir=tiny_config_dir, data_dir=tiny_dir / "data", owner_rpm=3), registry,
                     database=database)
    first = app.state.services.keys.create(name="one", owner="shared-owner", plan="pro")[1]
    second = app.state.services.keys.create(name="two", owner="shared-owner", plan="pro")[1]
    other = app.state.services.keys.create(name="three", owner="another-owner", plan="pro")[1]
    http = TestClient(app, raise_server_exceptions=False)  # no lifespan: the session's engines are running
    codes = [http.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code
             for key in (first, second, first, second)]
    assert codes == [200, 200, 200, 429]
    refused = http.get("/v1/models", headers={"Authorization": f"Bearer {second}"})
    assert "owner" in refused.json()["error"]["message"] and refused.headers["retry-after"]
    assert http.get("/v1/models", headers={"Authorization": f"Bearer {other}"}).status_code == 200
