"""Finding 4: an owner's admin key could mint keys above itself. Now it grants only what it holds:
no scope, model, plan or rate above its own, and an empty scope list is refused."""

from __future__ import annotations

import pytest

from tests.security.conftest import MODEL, assert_error, client

pytestmark = pytest.mark.security


@pytest.fixture(scope="module")
def small_admin(sec_server) -> str:
    """A free-plan admin key that may use one model, made by the first-run (enterprise) admin key (with 500
    requests/min, so that this module's requests stay under its own limit)."""
    with client(sec_server) as http:
        reply = http.post("/v1/admin/keys", json={"name": "small-admin", "plan": "free", "rpm": 500, "models": [MODEL],
                                                   "scopes": ["chat", "models", "admin"]})
    assert reply.status_code == 201, reply.text
    body = reply.json()
    assert body["plan"] == "free" and body["models"] == [MODEL] and sorted(body["scopes"]) == ["admin", "chat",
                                                                                                 "models"]
    return body["key"]


@pytest.mark.parametrize(("ask", "param"), [
    ({"plan": "enterprise", "rpm": 1_000_000, "tpm": 10**9}, "plan"),
    ({"plan": "pro"}, "plan"),
    ({"rpm": 1_000_000}, "rpm"),
    ({"tpm": 20_000}, "tpm"),
    ({"scopes": ["chat", "files"]}, "scopes"),
    ({"scopes": ["chat"], "operator": True}, "scopes"),
    ({"models": [MODEL, "another-model"]}, "models"),
])
def test_an_admin_key_cannot_mint_a_key_above_itself(sec_server, small_admin, ask, param):
    with client(sec_server, small_admin) as http:
        assert_error(http.post("/v1/admin/keys", json={"name": "greedy", **ask}), 403, param=param,
                     code="insufficient_scope")
        names = [k["name"] for k in http.get("/v1/admin/keys").json()["data"]]
    assert "greedy" not in names


def test_empty_scopes_and_absurd_rates_are_400(sec_server, small_admin):
    with client(sec_server, small_admin) as http:
        assert_error(http.post("/v1/admin/keys", json={"name": "none", "scopes": []}), 400)
        assert_error(http.post("/v1/admin/keys", json={"name": "huge", "rpm": 1e23}), 400, param="rpm")
    with client(sec_server) as http:  # even the enterprise admin key
        assert_error(http.post("/v1/admin/keys", json={"name": "huge", "plan": "enterprise", "rpm": 1e23,
                                                       "tpm": 5}), 400, param="rpm")


def test_what_an_admin_key_grants_by_default_is_at_most_its_own(sec_server, small_admin):
    with client(sec_server, small_admin) as http:
        reply = http.post("/v1/admin/keys", json={"name": "worker", "rpm": 5})
        assert reply.status_code == 201, reply.text
        body = reply.json()
        # Its API scopes (not admin), its one model, its plan; the lower rpm it asked for.
        assert sorted(body["scopes"]) == ["chat", "models"] and body["models"] == [MODEL]
        assert body["plan"] == "free" and body["rpm"] == 5
        worker = body["key"]
    with client(sec_server, worker) as http:
        assert_error(http.get("/v1/admin/keys"), 403)
        assert_error(http.post("/v1/files", files={"file": ("a.txt", b"hi")}, data={"purpose": "user_data"}), 403)
        assert http.get("/v1/models").status_code == 200


def test_server_wide_metrics_need_the_operator_scope(sec_server, small_admin):
    with client(sec_server, small_admin) as http:
        assert_error(http.get("/metrics"), 403, code="insufficient_scope")
    with client(sec_server) as http:  # the first-run key is the operator's
        reply = http.get("/metrics")
        assert reply.status_code == 200 and "ozwell:num_requests_running" in reply.text
