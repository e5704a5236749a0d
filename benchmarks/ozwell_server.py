"""Starting `ozwell serve` on a free loopback port for a benchmark run."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the benchmarks import engines/ from this checkout, installed or not
    sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(port: int, config_dir: Path, data_dir: Path, *extra: str) -> subprocess.Popen:
    """Start the server and return once it prints its ready line (its output is echoed, minus progress bars)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--port", str(port), "--config-dir", str(config_dir),
         "--data-dir", str(data_dir), "--log-level", "warning", *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:
        if "it/s]" not in line:
            print("  server:", line.rstrip(), flush=True)
        if line.startswith("Ozwell ready on"):
            return process
    raise RuntimeError("server exited before it was ready")
