"""One Database object per process: the SQLAlchemy engine, sessions, and migrate-to-head.

SQLite (the default, one process) or PostgreSQL (`postgresql+psycopg://...`, several replicas). On
PostgreSQL the migration runs under a transaction-scoped advisory lock, so replicas that start at once
take turns: the first brings the schema to head, the others find it there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# pg_advisory_xact_lock's key for the schema upgrade (any fixed 64-bit number; "ozwell" in ASCII).
MIGRATION_LOCK_ID = 0x6F7A77656C6C
FIRST_RUN_LOCK_ID = MIGRATION_LOCK_ID + 1


def default_url(data_dir: Path) -> str:
    return f"sqlite:///{Path(data_dir).resolve() / 'ozwell.db'}"


class Database:
    def __init__(self, url: str, pool_size: int = 5, max_overflow: int = 10):
        self.url = url
        # hide_parameters: a database error's message (logged with its traceback) leaves out the statement's
        # parameters, which hold prompts, stored responses and file names.
        if url.startswith("sqlite"):
            self.engine: Engine = create_engine(url, future=True, hide_parameters=True)
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            # pre_ping: a connection the server dropped (a restart) is replaced before a request uses it.
            self.engine = create_engine(url, future=True, pool_size=pool_size, max_overflow=max_overflow,
                                        pool_pre_ping=True, hide_parameters=True)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> Session:
        return self._sessions()

    def upgrade(self) -> None:
        """Bring the schema to the newest migration; existing rows are kept."""
        from alembic import command

        config = _alembic_config()
        with self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":  # replicas starting at once take turns
                connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    @contextmanager
    def exclusive(self, lock_id: int = FIRST_RUN_LOCK_ID) -> Iterator[None]:
        """On PostgreSQL, one replica at a time runs the block (a session advisory lock); elsewhere a no-op."""
        if self.dialect != "postgresql":
            yield
            return
        with self.engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": lock_id})
            connection.commit()
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": lock_id})
                connection.commit()

    @staticmethod
    def head_revision() -> str:
        """The newest migration's revision id (what a database at head holds in alembic_version)."""
        from alembic.script import ScriptDirectory

        return ScriptDirectory.from_config(_alembic_config()).get_current_head()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def ping(self) -> str | None:
        """None when the database answers, else why not (for /ready)."""
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
        return None

    def close(self) -> None:
        self.engine.dispose()


def _alembic_config():
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def _sqlite_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers don't wait for the writer
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _private_sqlite_file(data_dir: Path) -> None:
    """The default SQLite file is made 0600 before SQLite opens it (its -wal and -shm files take the same
    mode from it): it holds key hashes and stored responses."""
    path = Path(data_dir) / "ozwell.db"
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    os.chmod(path, 0o600)
    for suffix in ("-wal", "-shm", "-journal"):
        sidecar = path.with_name(path.name + suffix)
        if sidecar.exists():
            os.chmod(sidecar, 0o600)


def open_database(url: str | None, data_dir: Path, pool_size: int = 5, max_overflow: int = 10) -> Database:
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    if url is None:
        _private_sqlite_file(data_dir)
    database = Database(url or default_url(data_dir), pool_size, max_overflow)
    database.upgrade()
    return database
