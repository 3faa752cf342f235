"""Opening the state database: SQLite in WAL mode, file mode 0600, migrated to head by Alembic."""

from __future__ import annotations

import os
import sqlite3
from importlib import resources
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

DB_NAME = "supervisor.store.db"


def _alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("migrations")))
    cfg.attributes["engine"] = engine
    return cfg


def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # busy_timeout: the CLI and the daemon write the same file; wait for the lock instead of failing.
    cur.execute("PRAGMA busy_timeout = 30000")
    cur.execute("PRAGMA foreign_keys = ON")
    cur.execute("PRAGMA synchronous = NORMAL")
    cur.close()


def create_db_engine(path: Path) -> Engine:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        # Create it 0600 before SQLite does: run specs and events may be private to the user.
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
    engine = create_engine(f"sqlite:///{path}")
    event.listen(engine, "connect", _on_connect)
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode = WAL")
    return engine


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (a no-op when it is there already)."""
    cfg = _alembic_config(engine)
    head = ScriptDirectory.from_config(cfg).get_current_head()
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    if current != head:
        command.upgrade(cfg, "head")


def open_database(home: Path) -> sessionmaker[Session]:
    engine = create_db_engine(home / DB_NAME)
    migrate(engine)
    return sessionmaker(engine, expire_on_commit=False)
