"""One Database object per process: the SQLAlchemy engine, sessions, and migrate-to-head."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def default_url(data_dir: Path) -> str:
    return f"sqlite:///{Path(data_dir).resolve() / 'ozwell.db'}"


class Database:
    def __init__(self, url: str):
        self.url = url
        self.engine: Engine = create_engine(url, future=True)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> Session:
        return self._sessions()

    def upgrade(self) -> None:
        """Bring the schema to the newest migration; existing rows are kept."""
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def close(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers don't wait for the writer
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _private_sqlite_file(data_dir: Path) -> None:
    """The default SQLite file is made 0600 before SQLite opens it (its -wal and -shm files take the same
    mode from it): it holds key hashes and stored responses with inlined file text."""
    path = Path(data_dir) / "ozwell.db"
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    os.chmod(path, 0o600)
    for suffix in ("-wal", "-shm", "-journal"):
        sidecar = path.with_name(path.name + suffix)
        if sidecar.exists():
            os.chmod(sidecar, 0o600)


def open_database(url: str | None, data_dir: Path) -> Database:
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    if url is None:
        _private_sqlite_file(data_dir)
    database = Database(url or default_url(data_dir))
    database.upgrade()
    return database
