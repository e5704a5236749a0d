"""The scale-out tier (issue #20): two `ozwell serve` replicas on a tiny model, sharing one real
PostgreSQL, one real Redis and one files directory. The servers are started here on loopback (see
servers.py), once per module; the tier skips, saying why, where PostgreSQL or redis-server is missing."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest

from tests.process import ServerProcess
from tests.scaleout import servers
from tests.tiny_models import minilm_config, tiny_llama_configs

MODEL = "scale-llama"
EMBEDDING = "scale-minilm"


def pytest_collection_modifyitems(config, items):
    reason = servers.missing()
    if reason:
        for item in items:
            if "tests/scaleout" in str(item.fspath):
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def scale_config_dir(tmp_path_factory) -> Path:
    config_dir = tiny_llama_configs(tmp_path_factory.mktemp("scaleout"), MODEL, max_model_len=256, max_num_seqs=16,
                                    max_waiting=256)
    (config_dir / f"{EMBEDDING}.yaml").write_text(minilm_config(EMBEDDING))  # vector stores' embeddings
    return config_dir


@pytest.fixture(scope="module")
def postgres():
    server = servers.Postgres().start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = servers.Redis(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


class Fleet:
    """Replicas A and B and what they share; `key` is the first-run admin key (whichever replica made it)."""

    def __init__(self, config_dir: Path, root: Path, postgres: servers.Postgres, redis: servers.Redis):
        self.files_dir = root / "shared-files"
        self.postgres, self.redis = postgres, redis
        self.replicas = [
            ServerProcess(config_dir, root / f"data-{name}", "--database-url", postgres.url, "--redis-url", redis.url,
                          "--files-dir", str(self.files_dir), "--instance-id", f"replica-{name}")
            for name in ("a", "b")]

    @property
    def a(self) -> ServerProcess:
        return self.replicas[0]

    @property
    def b(self) -> ServerProcess:
        return self.replicas[1]

    def start(self) -> Fleet:
        """Both at once: they race for the migration and the first-run key (advisory locks)."""
        errors = []

        def run(replica):
            try:
                replica.start()
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(r,)) for r in self.replicas]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            self.stop()
            raise errors[0]
        return self

    @property
    def key(self) -> str:
        made = [r.data_dir / "admin_key" for r in self.replicas if (r.data_dir / "admin_key").exists()]
        assert len(made) == 1, "exactly one replica makes the first-run admin key"
        return made[0].read_text().strip()

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def make_key(self, **fields) -> tuple[str, str]:
        """(key id, plaintext) of a new key, made through replica A's admin API."""
        response = httpx.post(self.a.url + "/v1/admin/keys", headers=self.headers, json={"name": "t", **fields},
                              timeout=30)
        assert response.status_code == 201, response.text
        return response.json()["id"], response.json()["key"]

    def stop(self) -> None:
        for replica in self.replicas:
            replica.stop()


@pytest.fixture(scope="module")
def fleet(scale_config_dir, tmp_path_factory, postgres, redis_server):
    fleet = Fleet(scale_config_dir, tmp_path_factory.mktemp("fleet"), postgres, redis_server).start()
    try:
        yield fleet
    finally:
        fleet.stop()
