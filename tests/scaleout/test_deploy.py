"""deploy/compose.yaml and deploy/nginx.conf agree with the CLI and with each other. No Docker engine
runs in CI, so the stack is not started here; the two-replica tests run the same topology on loopback."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from server.cli import _parser

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_two_replicas_per_profile_sharing_one_store_and_one_files_volume():
    services = _compose()["services"]
    for profile in ("gpu", "cpu"):
        replicas = {name: s for name, s in services.items() if s.get("profiles") == [profile]}
        assert len(replicas) == 2, profile
        aliases = sorted(s["networks"]["default"]["aliases"][0] for s in replicas.values())
        assert aliases == ["ozwell-1", "ozwell-2"]
        for service in replicas.values():
            args = _parser().parse_args(service["command"][1:])  # the real CLI reads every flag
            assert args.database_url.startswith("postgresql+psycopg://") and "@postgres:" in args.database_url
            assert args.redis_url == "redis://redis:6379/0" and str(args.files_dir) == "/files"
            assert "files:/files" in service["volumes"]
            assert args.forwarded_allow_ips == "*"  # only nginx reaches them, and it sets X-Forwarded-For itself
            assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
            assert service["depends_on"]["redis"]["condition"] == "service_healthy"
            assert "/ready" in " ".join(service["healthcheck"]["test"])
            gpus = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
            assert bool(gpus) == (profile == "gpu")
        # Each replica its own data dir (converted weights, admin key file), one files volume for all.
        data = sorted(v for s in replicas.values() for v in s["volumes"] if v.endswith(":/data"))
        assert data == ["data-1:/data", "data-2:/data"]


def test_stores_have_health_checks_and_named_volumes():
    compose = _compose()
    for name in ("postgres", "redis", "nginx"):
        assert compose["services"][name]["healthcheck"]["test"], name
    for name, volume in (("postgres", "pgdata"), ("redis", "redisdata")):
        assert any(v.startswith(f"{volume}:") for v in compose["services"][name]["volumes"])
    assert {"files", "data-1", "data-2", "pgdata", "redisdata"} <= set(compose["volumes"])


def test_nginx_passes_streams_unbuffered_to_both_replicas():
    conf = (DEPLOY / "nginx.conf").read_text()
    assert conf.count("{") == conf.count("}")
    lines = [line.split("#", 1)[0].strip() for line in conf.splitlines()]
    directives = {line.rstrip(";") for line in lines if line.endswith(";")}
    for needed in ("proxy_buffering off", "proxy_request_buffering off", "proxy_http_version 1.1",
                   'proxy_set_header Connection ""', "proxy_pass http://ozwell",
                   "proxy_set_header X-Forwarded-For $remote_addr", "proxy_set_header X-Forwarded-Proto $scheme"):
        assert needed in directives, needed
    assert re.findall(r"server (ozwell-\d):8000", conf) == ["ozwell-1", "ozwell-2"]
    published = _compose()["services"]["nginx"]["ports"]
    assert published == ["8080:80"] and "listen 80;" in conf
