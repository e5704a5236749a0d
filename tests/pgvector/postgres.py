"""A PostgreSQL 16 with pgvector for the pgvector tier, from the binaries of the `pgserver` wheel (PyPI; in the
`scale` extra): Debian bookworm has no postgresql-NN-pgvector package, and the wheel ships PostgreSQL with the
`vector` extension (pgvector 0.6, HNSW included). Started on loopback, on a free port, in a temporary directory,
as tests/scaleout/servers.py starts Debian's PostgreSQL (the same class, with the wheel's bin directory).

PostgreSQL refuses to run as root: as root the wheel's files are copied into the cluster's directory, owned by
the `postgres` user (the wheel lives under /root, which that user cannot enter), and run as that user."""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
from pathlib import Path

from tests.scaleout import servers


def _package() -> Path | None:
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def missing() -> str | None:
    """Why this tier cannot run here, or None."""
    package = _package()
    if package is None:
        return "pgserver is not installed (pip install -e '.[test]'; .ci/run does it): it brings PostgreSQL + pgvector"
    if not (package / "pginstall" / "bin" / "initdb").exists():
        return f"pgserver at {package} has no PostgreSQL binaries (pginstall/bin/initdb)"
    if not (package / "pginstall" / "share" / "postgresql" / "extension" / "vector.control").exists():
        return f"pgserver at {package} has no pgvector extension"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root needs a `postgres` user to run PostgreSQL as (apt-get install postgresql makes one)"
    return None


class PgvectorPostgres(servers.Postgres):
    def __init__(self) -> None:
        super().__init__()
        package = _package()
        if self.as_user:  # copy the wheel's tree (and the libpq its tools link, beside it) where `postgres` can read
            root = self.dir / "pgserver-install"
            shutil.copytree(package / "pginstall", root / "pgserver" / "pginstall", symlinks=True)
            libs = package.parent / "pgserver.libs"
            if libs.exists():
                shutil.copytree(libs, root / "pgserver.libs", symlinks=True)
            user = pwd.getpwnam("postgres")
            for folder, dirs, files in os.walk(root):
                for name in [folder, *(os.path.join(folder, n) for n in dirs + files)]:
                    os.lchown(name, user.pw_uid, user.pw_gid)
            self.bin = root / "pgserver" / "pginstall" / "bin"
        else:
            self.bin = package / "pginstall" / "bin"

    def database(self, name: str) -> str:
        """A fresh database's URL."""
        self.psql(f"CREATE DATABASE {name}")
        return self.url.rsplit("/", 1)[0] + "/" + name
