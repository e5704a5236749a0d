"""Real PostgreSQL and Redis servers for the scale-out tier, on loopback, on free ports, in temporary
directories this tier owns. They are the Debian packages' binaries (`.ci/run` installs `postgresql` and
`redis-server`); nothing stands in for them.

PostgreSQL refuses to run as root, so as root the cluster is made and run by the `postgres` user the
package creates, in a directory under /tmp that it owns (pytest's own tmp dirs are private to root)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.process import free_port


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def missing() -> str | None:
    """Why this tier cannot run here, or None."""
    if _pg_bin() is None:
        return "PostgreSQL is not installed (apt-get install postgresql; .ci/run does it)"
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (apt-get install redis-server; .ci/run does it)"
    return None


class Postgres:
    def __init__(self) -> None:
        self.bin = _pg_bin()
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="ozwell-pg-"))
        self.data = self.dir / "data"
        self.as_user = os.geteuid() == 0
        if self.as_user:
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
        self.url = f"postgresql+psycopg://ozwell@127.0.0.1:{self.port}/ozwell"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(a) for a in args]
        if self.as_user:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, check=check, capture_output=True, text=True, timeout=120)

    def start(self) -> Postgres:
        if not self.data.exists():
            self._run(self.bin / "initdb", "-D", self.data, "-U", "ozwell", "--auth=trust", "-E", "UTF8",
                      "--no-sync")
        # Durability off: the tests need speed, not crash safety.
        options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.dir} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run(self.bin / "pg_ctl", "-D", self.data, "-l", self.dir / "log", "-o", options, "-w", "start")
        if not getattr(self, "_created", False):
            self._run(self.bin / "createdb", "-h", "127.0.0.1", "-p", self.port, "-U", "ozwell", "ozwell")
            self._created = True
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run(self.bin / "pg_ctl", "-D", self.data, "-m", mode, "-w", "stop", check=False)

    def psql(self, sql: str, database: str = "ozwell") -> str:
        done = self._run(self.bin / "psql", "-h", "127.0.0.1", "-p", self.port, "-U", "ozwell", "-d", database,
                         "-At", "-c", sql)
        return done.stdout.strip()

    def cleanup(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


class Redis:
    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> Redis:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while time.time() < deadline:
            done = subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True)
            if done.stdout.strip() == "PONG":
                return self
            time.sleep(0.1)
        raise RuntimeError("redis-server did not answer")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)

    def cli(self, *args: str) -> str:
        return subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True).stdout
