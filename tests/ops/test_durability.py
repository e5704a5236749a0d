"""Durability: SIGKILL in the middle of traffic (keys, file uploads, stored responses, and one slow
upload that is surely half-sent), then a restart on the same data dir. Everything the server
acknowledged with a 2xx is there; nothing half-written is visible."""

from __future__ import annotations

import random
import threading
import time

import httpx
import pytest

from tests.ops.conftest import MODEL
from tests.process import ServerProcess

pytestmark = pytest.mark.ops

MIN_ACKS = 10  # of each kind before the kill
SLOW_NAME = "slow-partial.bin"
BOUNDARY = "ozwell-durability-boundary"


def _file_bytes(name: str) -> bytes:
    rng = random.Random(name)
    return rng.randbytes(rng.choice((1, 100, 4096, 65536, 300_000, 1_000_000)))


class Traffic:
    """Client threads that run until the server dies, recording what it acknowledged."""

    def __init__(self, server: ServerProcess):
        self.url, self.headers = server.url, server.headers
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.keys: dict[str, str] = {}  # key id -> plaintext
        self.files: dict[str, tuple[str, bytes]] = {}  # file id -> (filename, bytes)
        self.sent_files: dict[str, bytes] = {}  # every filename ever sent -> its bytes
        self.responses: dict[str, dict] = {}  # response id -> body
        self.unexpected: list[str] = []
        self.slow_bytes_sent = 0
        self.threads = [threading.Thread(target=self._run, args=(work,), daemon=True) for work in (
            self._create_key, self._upload_file, self._upload_file, self._create_response)]
        self.threads.append(threading.Thread(target=self._slow_upload, daemon=True))

    def start(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def counts(self) -> tuple[int, int, int]:
        with self.lock:
            return len(self.keys), len(self.files), len(self.responses)

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)
            assert not thread.is_alive()

    def _run(self, work) -> None:
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=30) as client:
            i = 0
            while not self.stop.is_set():
                i += 1
                try:
                    work(client, f"{threading.get_ident()}-{i}")
                except httpx.HTTPError:  # the kill: connection refused, reset or cut mid-response
                    if not self.stop.is_set():
                        time.sleep(0.01)

    def _check(self, response: httpx.Response, what: str) -> bool:
        if response.is_success:
            return True
        with self.lock:
            self.unexpected.append(f"{what}: {response.status_code} {response.text[:200]}")
        return False

    def _create_key(self, client: httpx.Client, tag: str) -> None:
        response = client.post("/v1/admin/keys", json={"name": f"durable-{tag}"})
        if self._check(response, "key"):
            body = response.json()
            with self.lock:
                self.keys[body["id"]] = body["key"]

    def _upload_file(self, client: httpx.Client, tag: str) -> None:
        name = f"durable-{tag}.bin"
        data = _file_bytes(name)
        with self.lock:
            self.sent_files[name] = data
        response = client.post("/v1/files", files={"file": (name, data)}, data={"purpose": "user_data"})
        if self._check(response, "file"):
            body = response.json()
            assert (body["filename"], body["bytes"]) == (name, len(data)), body
            with self.lock:
                self.files[body["id"]] = (name, data)

    def _create_response(self, client: httpx.Client, tag: str) -> None:
        response = client.post("/v1/responses", json={"model": MODEL, "input": f"Durable response {tag}.",
                                                      "max_output_tokens": 16})
        if self._check(response, "response"):
            body = response.json()
            with self.lock:
                self.responses[body["id"]] = body

    def _slow_upload(self) -> None:
        """One upload sent slowly, 64 KiB every 20 ms, for far longer than the test waits: the kill
        always finds it half-sent."""
        def body():
            yield (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nuser_data\r\n'
                   f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{SLOW_NAME}"\r\n'
                   "Content-Type: application/octet-stream\r\n\r\n").encode()
            for _ in range(100_000):
                if self.stop.is_set():
                    return
                yield b"z" * 65536
                self.slow_bytes_sent += 65536
                time.sleep(0.02)
            yield f"\r\n--{BOUNDARY}--\r\n".encode()

        with self.lock:
            self.sent_files[SLOW_NAME] = b""  # never complete: must never be listed
        try:
            response = httpx.post(self.url + "/v1/files", content=body(), timeout=60,
                                  headers={**self.headers, "content-type": f"multipart/form-data; boundary={BOUNDARY}"})
            with self.lock:
                self.unexpected.append(f"the slow upload was answered: {response.status_code}")
        except httpx.HTTPError:
            pass


def test_kill_9_mid_traffic_keeps_every_acknowledged_key_file_and_response(ops_config_dir, tmp_path):
    data_dir = tmp_path / "data"
    server = ServerProcess(ops_config_dir, data_dir).start()
    traffic = Traffic(server)
    try:
        traffic.start()
        deadline = time.monotonic() + 60
        while min(traffic.counts()) < MIN_ACKS or traffic.slow_bytes_sent < 1 << 20:
            assert time.monotonic() < deadline, (traffic.counts(), traffic.unexpected)
            time.sleep(0.05)
        server.kill()  # SIGKILL, with every thread mid-request
    finally:
        server.kill()
        traffic.join()
    assert server.process.returncode == -9
    # The kill left half-written bytes on disk (the slow upload's temporary, at least) for the restart to face.
    assert any(p.name.startswith(".upload-") for p in (data_dir / "files").iterdir())
    assert not traffic.unexpected, traffic.unexpected[:5]
    print(f"acknowledged before the kill: {len(traffic.keys)} keys, {len(traffic.files)} files, "
          f"{len(traffic.responses)} responses; {traffic.slow_bytes_sent / 2**20:.1f} MiB of the slow upload sent")

    restarted = ServerProcess(ops_config_dir, data_dir).start()
    try:
        with httpx.Client(base_url=restarted.url, headers=restarted.headers, timeout=30) as client:
            # Keys: listed, and each authenticates.
            listed_keys = {k["id"] for k in client.get("/v1/admin/keys").json()["data"]}
            assert set(traffic.keys) <= listed_keys
            for key_id, plaintext in traffic.keys.items():
                response = client.get("/v1/models", headers={"Authorization": f"Bearer {plaintext}"})
                assert response.status_code == 200, (key_id, response.text)

            # Files: every acknowledged one listed with its exact bytes; every listed one complete.
            listing = client.get("/v1/files", params={"limit": 10000}).json()
            assert not listing["has_more"]
            listed = {f["id"]: f for f in listing["data"]}
            assert set(traffic.files) <= set(listed)
            assert SLOW_NAME not in {f["filename"] for f in listed.values()}
            for file_id, record in listed.items():
                sent = traffic.sent_files.get(record["filename"])
                assert sent is not None, record
                content = client.get(f"/v1/files/{file_id}/content")
                assert content.status_code == 200, content.text
                assert record["bytes"] == len(sent) and content.content == sent, (record, len(content.content))
            for file_id, (name, _) in traffic.files.items():
                assert listed[file_id]["filename"] == name
            leftovers = [p.name for p in (data_dir / "files").iterdir() if p.name not in listed]
            assert leftovers == [], leftovers  # no temporary or orphaned bytes survive the restart

            # Stored responses: each retrievable, as it was acknowledged.
            for response_id, acknowledged in traffic.responses.items():
                stored = client.get(f"/v1/responses/{response_id}")
                assert stored.status_code == 200, (response_id, stored.text)
                body = stored.json()
                assert (body["id"], body["status"], body["output"]) == (
                    response_id, acknowledged["status"], acknowledged["output"])
    finally:
        restarted.stop()
