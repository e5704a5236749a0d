"""`ozwell serve` as a real subprocess on loopback, for the tiers that need a real process
(signals, kill -9, RSS, many sockets)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """Start with `start()`; the admin key made on first run is read from the data dir."""

    def __init__(self, config_dir: Path, data_dir: Path, *extra_args: str, python: str = sys.executable,
                 env: dict | None = None):
        self.config_dir, self.data_dir = Path(config_dir), Path(data_dir)
        self.extra_args, self.python, self.env = extra_args, python, env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.lines: list[str] = []
        self.process: subprocess.Popen | None = None
        self._ready = threading.Event()

    def start(self, timeout_s: float = 300) -> ServerProcess:
        self._ready.clear()
        self.process = subprocess.Popen(
            [self.python, "-m", "server.cli", "serve", "--port", str(self.port), "--config-dir",
             str(self.config_dir), "--data-dir", str(self.data_dir), *self.extra_args],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            env={**os.environ, **(self.env or {})})
        threading.Thread(target=self._pump, args=(self.process,), daemon=True).start()
        deadline = time.time() + timeout_s
        while not self._ready.wait(0.5):
            if self.process.poll() is not None or time.time() > deadline:
                self.kill()
                raise RuntimeError("ozwell serve did not become ready:\n" + "".join(self.lines[-40:]))
        return self

    def _pump(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self.lines.append(line)
            if line.startswith("Ozwell ready on"):
                self._ready.set()

    @property
    def key(self) -> str:
        return (self.data_dir / "admin_key").read_text().strip()

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout_s: float = 60) -> int:
        return self.process.wait(timeout_s)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()
