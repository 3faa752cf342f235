"""Opening the state database: SQLite, file mode 0600, migrated to head by Alembic.

A database already at head is opened with one plain query of ``alembic_version``; Alembic is imported only
when there is something to migrate, and then under a lock, so that a daemon and a `submit` started
together on a new state directory do not both create the tables.

The journal is WAL on a local disk. On a network filesystem (NFS, Lustre, GPFS, ...) WAL's shared-memory
index is not shared between hosts, so the rollback journal is used there instead.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import structlog
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool, StaticPool

from supervisor.store.sqlitefile import (
    BUSY_TIMEOUT_MS,
    DB_NAME,
    JOURNAL_ENV,
    JOURNAL_MODES,
    chosen_journal_mode,
    configure,
    default_journal_mode,
    head_revision,
    recorded_revision,
)
from supervisor.store.statedir import make_private_dir

__all__ = ["BUSY_TIMEOUT_MS", "DB_NAME", "JOURNAL_ENV", "JOURNAL_MODES", "Commits", "create_db_engine",
           "current_revision", "head_revision", "journal_mode_for", "migrate", "migration_lock", "open_database",
           "plain_connection", "transactional_ddl_engine"]

if TYPE_CHECKING:
    from alembic.config import Config

log = structlog.get_logger("supervisor.store.db")

MIGRATE_LOCK_NAME = "supervisor.migrate.lock"
# Migrating a few tables takes well under a second; a holder this slow is stuck (stopped with Ctrl-Z?).
MIGRATE_LOCK_TIMEOUT_S = 120.0


def _alembic_config(engine: Engine) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("migrations")))
    cfg.attributes["engine"] = engine
    return cfg


def current_revision(engine: Engine) -> str | None:
    """The revision recorded in the database; None for a new one (no ``alembic_version`` table yet)."""
    with _driver_connection(engine) as conn:
        return recorded_revision(conn)


@contextlib.contextmanager
def _driver_connection(engine: Engine) -> Iterator[sqlite3.Connection]:
    """The ``sqlite3`` connection under one of the engine's pooled connections."""
    pooled = engine.raw_connection()
    try:
        conn = pooled.driver_connection
        assert isinstance(conn, sqlite3.Connection)
        yield conn
    finally:
        pooled.close()


def _on_connect(journal_mode: str) -> Any:
    def on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        configure(dbapi_conn, journal_mode)

    return on_connect


def journal_mode_for(path: Path) -> str:
    """``SUPERVISOR_SQLITE_JOURNAL`` if set, else WAL unless ``path`` lies on a network filesystem."""
    chosen, raw = chosen_journal_mode()
    if chosen is not None:
        return chosen
    if raw:
        log.warning("journal_mode_ignored", variable=JOURNAL_ENV, value=raw, expected=list(JOURNAL_MODES))
    return default_journal_mode(path)


def _set_journal_mode(engine: Engine, wanted: str) -> None:
    with engine.connect() as conn:
        mode = str(conn.exec_driver_sql("PRAGMA journal_mode").scalar()).lower()
        if mode == wanted:
            return  # the usual case: WAL is a property of the file, set once when it was created
        try:
            if wanted == "delete":
                # Leaving WAL needs every other connection closed; do not make this command wait for that.
                conn.exec_driver_sql("PRAGMA busy_timeout = 0")
            conn.exec_driver_sql(f"PRAGMA journal_mode = {wanted.upper()}")
        except OperationalError as exc:
            log.warning("journal_mode_unchanged", journal_mode=mode, wanted=wanted, error=str(exc.orig))
        finally:
            conn.exec_driver_sql(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


def create_db_engine(path: Path, journal_mode: str | None = None) -> Engine:
    make_private_dir(path.parent)
    if not path.exists():
        # Create it 0600 before SQLite does: run specs and events may be private to the user.
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
    mode = journal_mode or journal_mode_for(path.parent)
    engine = create_engine(f"sqlite:///{path}")
    event.listen(engine, "connect", _on_connect(mode))
    _set_journal_mode(engine, mode)
    return engine


@contextlib.contextmanager
def migration_lock(path: Path, timeout: float = MIGRATE_LOCK_TIMEOUT_S) -> Iterator[None]:
    """An exclusive flock on ``path`` (a file of its own: closing any descriptor of the database file would
    drop SQLite's own POSIX locks). Where the filesystem has no locks the body runs unguarded."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{path}: another supervisor process has been migrating the database "
                                       f"for over {timeout:.0f}s") from None
                time.sleep(0.05)  # another process migrates: a fraction of a second
            except OSError as exc:
                if exc.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                log.warning("migration_unlocked", path=str(path), error=exc.strerror)
                break
        yield
    finally:
        os.close(fd)


def transactional_ddl_engine(engine: Engine) -> Engine:
    """An engine on ``engine``'s file in which CREATE/ALTER/DROP are part of the transaction.

    Python's sqlite3 (before 3.12) opens a transaction only before INSERT/UPDATE/DELETE, so each DDL
    statement commits by itself: a process killed half-way through a migration left tables without their
    ``alembic_version`` row, and every later open failed with "table runs already exists". Here the driver's
    own transaction handling is off and each transaction is an explicit ``BEGIN IMMEDIATE``, so a migration
    run either lands whole or leaves the file as it was.
    """
    ddl = create_engine(engine.url, poolclass=NullPool)
    pragmas = _on_connect("delete")  # synchronous = FULL: a schema change is worth the extra fsync

    def connect(dbapi_conn: sqlite3.Connection, record: Any) -> None:
        pragmas(dbapi_conn, record)
        dbapi_conn.isolation_level = None

    event.listen(ddl, "connect", connect)
    event.listen(ddl, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    return ddl


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (a no-op when it is there already), in one transaction."""
    head = head_revision()
    if head is not None and current_revision(engine) == head:
        return
    database = engine.url.database
    assert database, "the state database is a file"
    with migration_lock(Path(database).with_name(MIGRATE_LOCK_NAME)):
        # Loaded only now: Alembic and the migration scripts cost a good part of a second to import.
        from alembic import command
        from alembic.script import ScriptDirectory

        ddl = transactional_ddl_engine(engine)
        try:
            cfg = _alembic_config(ddl)
            # Read again under the lock: whoever held it before us may have migrated already.
            if current_revision(ddl) != ScriptDirectory.from_config(cfg).get_current_head():
                command.upgrade(cfg, "head")
        finally:
            ddl.dispose()


@contextlib.contextmanager
def plain_connection(sessions: sessionmaker[Session]) -> Iterator[sqlite3.Connection]:
    """The ``sqlite3`` connection under one of the engine's, for code written in plain SQL (registration)."""
    bound = sessions.kw["bind"]
    assert isinstance(bound, Engine)
    with _driver_connection(bound) as conn:
        yield conn


def _empty_database() -> sessionmaker[Session]:
    """An in-memory database with the current schema: what a read sees in a home with no database yet."""
    from supervisor.store.models import Base

    engine = create_engine("sqlite://", poolclass=StaticPool)
    Base.metadata.create_all(engine)
    return sessionmaker(engine, expire_on_commit=False)


def open_database(home: Path, *, create: bool = True) -> sessionmaker[Session]:
    """Sessions on ``home``'s database, migrated to head. ``create=False`` (commands that only read):
    a home without a database is left without one, and reads as empty."""
    path = home / DB_NAME
    if not create and not path.exists():
        return _empty_database()
    engine = create_db_engine(path)
    migrate(engine)
    return sessionmaker(engine, expire_on_commit=False)


class Commits:
    """Whether anybody committed to the database since the last look: ``PRAGMA data_version`` on a connection
    kept for nothing else, whose value changes with every commit made on any other connection, those of this
    process's pool, the CLI's and another host's included. Lets the daemon's checks between polls keep what
    they read while nothing was written. Always "changed" for a database that is no file."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        bound = sessions.kw["bind"]
        assert isinstance(bound, Engine)
        self._path = bound.url.database
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def version(self) -> int | None:
        """The database's data version now; None when it cannot be told (then nothing may be kept)."""
        if not self._path or self._path == ":memory:":
            return None
        with self._lock:
            try:
                if self._conn is None:
                    # Read-only and in autocommit: it never takes a lock another connection would wait for.
                    self._conn = sqlite3.connect(f"file:{quote(self._path)}?mode=ro", uri=True,
                                                 check_same_thread=False, isolation_level=None)
                return int(self._conn.execute("PRAGMA data_version").fetchone()[0])
            except sqlite3.Error:
                self.close()
                return None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
