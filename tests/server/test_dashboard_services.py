"""The dashboard's logic without a browser: sessions (expiry, sign-out, revocation, sweep) on the test
database, usage summaries per key, model and time bucket, and the charts' geometry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from server.dashboard import charts
from server.dashboard.sessions import SessionService
from server.services.usage import summarize


class Clock:
    def __init__(self):
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_sessions_expire_end_at_sign_out_and_with_their_key(app):
    keys = app.state.services.keys
    clock = Clock()
    sessions = SessionService(keys.database, keys, ttl_s=60, clock=clock)
    admin, admin_key = keys.create(name="dash-admin", owner="dash-owner", admin=True)
    _, plain_key = keys.create(name="dash-plain", owner="dash-owner")
    assert sessions.sign_in(plain_key) is None  # not admin
    assert sessions.sign_in("ozw_" + "x" * 43) is None
    session_id, signed = sessions.sign_in(admin_key)
    assert signed.caller.key_id == admin.id and signed.expires_at == clock.now + 60
    assert admin_key not in session_id and len(session_id) >= 43
    found = sessions.resolve(session_id)
    assert found.caller.owner == "dash-owner" and found.csrf_token == signed.csrf_token
    assert sessions.resolve(session_id + "x") is None and sessions.resolve(None) is None
    clock.now += 59
    assert sessions.resolve(session_id) is not None
    clock.now += 1
    assert sessions.resolve(session_id) is None  # expired
    assert sessions.sweep() >= 1

    second, _ = sessions.sign_in(admin_key)
    # The session lives in the database: another replica, or this server after a restart, knows it.
    replica = SessionService(keys.database, keys, ttl_s=60, clock=clock)
    assert replica.resolve(second).caller.key_id == admin.id
    replica.sign_out(second)  # and signing out on one ends it on all
    assert sessions.resolve(second) is None
    third, _ = sessions.sign_in(admin_key)
    keys.revoke(admin.id)
    assert sessions.resolve(third) is None


def test_usage_is_summed_per_key_model_and_bucket():
    since = datetime(2026, 11, 1, tzinfo=UTC)
    rows = [("key_a", "m1", 10, since), ("key_a", "m2", 5, since + timedelta(minutes=90)),
            ("key_b", None, 0, since + timedelta(hours=2, seconds=1)), ("key_b", "m1", 7, since + timedelta(hours=9)),
            (None, "m1", None, (since + timedelta(minutes=30)).replace(tzinfo=None))]
    summary = summarize(rows, since, 3600, 3)
    assert [b["requests"] for b in summary["timeline"]] == [2, 1, 2]  # the last bucket holds what is later too
    assert [b["tokens"] for b in summary["timeline"]] == [10, 5, 7]
    assert summary["by_key"] == {"key_a": {"requests": 2, "tokens": 15}, "key_b": {"requests": 2, "tokens": 7},
                                 "-": {"requests": 1, "tokens": 0}}
    assert summary["by_model"]["m1"] == {"requests": 3, "tokens": 17} and summary["by_model"]["-"]["requests"] == 1
    assert (summary["requests"], summary["tokens"]) == (5, 22)


def test_usage_summary_reads_only_the_owners_rows_in_the_window(app):
    usage = app.state.services.usage
    for owner, tokens in (("sum-owner", 3), ("sum-owner", 4), ("sum-other", 100)):
        usage.record(key_id="key_sum", owner=owner, model="m", endpoint="/v1/chat/completions", prompt_tokens=tokens,
                     completion_tokens=1, status=200, latency_ms=5)
    since, bucket_s, buckets = charts.window_start("24h")
    summary = usage.summary("sum-owner", since, bucket_s, buckets)
    assert summary["by_key"] == {"key_sum": {"requests": 2, "tokens": 9}}
    assert summary["timeline"][-1]["requests"] == 2
    later = usage.summary("sum-owner", datetime.now(UTC) + timedelta(minutes=1), bucket_s, buckets)
    assert later["requests"] == 0


def test_chart_geometry():
    now = datetime(2026, 11, 28, 6, 30, tzinfo=UTC)
    since, bucket_s, buckets = charts.window_start("7d", now)
    assert (bucket_s, buckets) == (6 * 3600, 28) and since == datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
    assert [charts.nice_max(v) for v in (0, 1, 3, 11, 74, 101, 4999)] == [1, 1, 5, 20, 100, 200, 5000]
    assert [charts.short(v) for v in (0, 2.5, 900, 1500, 2_000_000)] == ["0", "2.5", "900", "1.5k", "2M"]
    timeline = [{"start": int(since.timestamp()) + i * bucket_s, "requests": r, "tokens": 0}
                for i, r in enumerate([0, 5, 10] + [0] * 25)]
    chart = charts.column_chart(timeline, "requests", bucket_s)
    assert chart["max"] == "10" and chart["mid"] == "5" and chart["total"] == 15
    heights = [bar.height for bar in chart["bars"][:3]]
    assert heights[0] == 0 and abs(heights[2] - 2 * heights[1]) < 1e-9
    assert heights[2] == chart["bottom"] - chart["top"]  # the largest bar reaches the axis' top
    rows = charts.ranking({"a": {"requests": 1, "tokens": 40}, "b": {"requests": 4, "tokens": 10}}, {"a": "Key A"})
    assert [(r["name"], r["requests_pct"], r["tokens_pct"]) for r in rows] == [("b", 100.0, 25.0), ("Key A", 25.0, 100.0)]


def test_the_dashboard_is_mounted_only_with_keys(app):
    paths = [getattr(route, "path", None) for route in app.routes]
    assert "/dashboard" in paths  # the redirect, and the mounted pages
    from fastapi.testclient import TestClient

    client = TestClient(app, follow_redirects=False)
    assert client.get("/dashboard").headers["location"] == "/dashboard/"
    assert client.get("/dashboard/keys").headers["location"] == "/dashboard/signin"
    from server.app import create_app
    from server.settings import Settings

    keyless = create_app(Settings(auth=False), app.state.services.registry, database=app.state.services.keys.database)
    assert "/dashboard" not in [getattr(route, "path", None) for route in keyless.routes]
    assert TestClient(keyless).get("/dashboard/keys").json()["error"]["code"] == "unknown_url"
