"""The engine and the migrations: SQLite under the data directory by default,
PostgreSQL (`postgresql+psycopg://...`) by URL. Alembic owns the schema from
the first table on; `migrate()` brings any database to the head revision.

The data directory is made 0700 and the SQLite file 0600 (SQLite gives its
-wal and -shm files the mode of the database file): it holds the audit trail
and, sealed, the SIP passwords of open plans."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlmodel import create_engine

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")
SQLITE_FILE = "pbxbot.db"
# The newest migration's revision (tests/test_storage.py holds it to alembic's head). A database
# already there is not handed to alembic: the bot then never imports it (~11 MB of a ~120 MB process).
HEAD = "0006"


class StorageError(Exception):
    """The database cannot be opened here; `code` and `params` name why (catalogue `cli.<code>`)."""

    def __init__(self, code: str, **params: str):
        self.code = code
        self.params = params
        super().__init__(f"{code}: {params}")


def data_directory(data_dir: Path) -> Path:
    """The data directory, made (mode 0700) when missing; StorageError when it cannot be
    made or written."""
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError("data_dir", path=str(data_dir), error=exc.strerror or type(exc).__name__) from None
    if not data_dir.is_dir() or not os.access(data_dir, os.W_OK | os.X_OK):
        raise StorageError("data_dir", path=str(data_dir), error=os.strerror(13))  # EACCES
    return data_dir


def database_url(url: str | None, data_dir: Path) -> str:
    if url:
        return url
    return f"sqlite:///{(data_directory(data_dir) / SQLITE_FILE).resolve()}"


def _private_file(path: Path) -> None:
    """Create `path` as 0600 when missing; take group and others' rights from an own file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        info = path.stat()
        if info.st_mode & 0o077 and info.st_uid == os.geteuid():
            path.chmod(stat.S_IMODE(info.st_mode) & 0o700)
        return
    except OSError as exc:
        raise StorageError("db_file", path=str(path), error=exc.strerror or type(exc).__name__) from None
    os.close(fd)


def make_engine(url: str, **kwargs) -> Engine:
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:" and not database.startswith("file:"):
            _private_file(Path(database))
        engine = create_engine(url, connect_args={"check_same_thread": False}, **kwargs)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection, _record) -> None:  # pragma: no cover - trivial
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=5000")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


def alembic_config(engine: Engine) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    url = engine.url.render_as_string(hide_password=False).replace("%", "%%")  # configparser interpolation
    config.set_main_option("sqlalchemy.url", url)
    return config


def revision_of(engine: Engine) -> str | None:
    """The schema revision the database is at (alembic's table), None for one never migrated."""
    with engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return None
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def migrate(engine: Engine, revision: str = "head") -> None:
    """Upgrade the schema to `revision` (idempotent)."""
    if revision in ("head", HEAD) and revision_of(engine) == HEAD:
        return
    from alembic import command

    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
