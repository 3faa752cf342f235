"""The state database as a plain ``sqlite3`` file: its name, its connection settings, its schema revision.

Nothing here imports SQLAlchemy or Alembic: `submit` registers through a plain connection when the schema is
at head (``connect_at_head``), and :mod:`supervisor.store.db` builds its engine on the same settings.
"""

from __future__ import annotations

import ast
import contextlib
import os
import sqlite3
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from supervisor.store.filesystem import filesystem_of

DB_NAME = "supervisor.db"
JOURNAL_ENV = "SUPERVISOR_SQLITE_JOURNAL"
JOURNAL_MODES = ("wal", "delete")
# The CLI and the daemon write the same file: a writer waits this long for the other one's commit.
BUSY_TIMEOUT_MS = 30_000


def configure(conn: sqlite3.Connection, journal_mode: str) -> None:
    """The settings every connection to the state database gets, whoever opens it."""
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    # NORMAL is durable with WAL; the rollback journal needs FULL not to risk the file on a crash.
    conn.execute("PRAGMA synchronous = " + ("NORMAL" if journal_mode == "wal" else "FULL"))


def chosen_journal_mode() -> tuple[str | None, str]:
    """``SUPERVISOR_SQLITE_JOURNAL`` as (a valid mode or None, the raw value)."""
    chosen = os.environ.get(JOURNAL_ENV, "").strip().lower()
    return (chosen if chosen in JOURNAL_MODES else None), chosen


def default_journal_mode(path: Path) -> str:
    """WAL, unless ``path`` lies on a network filesystem (WAL's shared-memory index is not shared between hosts)."""
    mount = filesystem_of(path)
    return "delete" if mount is not None and mount.network else "wal"


def _assigned(source: str, name: str) -> object:
    """The literal assigned to ``name`` at the top level of a migration file (absent: ``...``)."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            with contextlib.suppress(ValueError):
                return ast.literal_eval(node.value)
    return ...


def head_revision(versions: Traversable | None = None) -> str | None:
    """The head revision, from the migration files' ``revision``/``down_revision`` (no Alembic import).

    None when they do not form one line (a branch, a merge, a computed value): Alembic then decides.
    """
    folder = versions or resources.files("migrations") / "versions"
    parents: dict[str, object] = {}
    for entry in folder.iterdir():
        if not entry.name.endswith(".py") or entry.name.startswith("_"):
            continue
        source = entry.read_text()
        revision = _assigned(source, "revision")
        if not isinstance(revision, str):
            return None
        parents[revision] = _assigned(source, "down_revision")
    if any(p is not None and not isinstance(p, str) for p in parents.values()):
        return None  # a merge (a tuple of parents) or something unreadable
    heads = set(parents) - set(parents.values())
    return heads.pop() if len(heads) == 1 else None


def recorded_revision(conn: sqlite3.Connection) -> str | None:
    """The revision recorded in the database; None for a new one (no ``alembic_version`` table yet)."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'").fetchone() is None:
        return None
    row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return None if row is None else str(row[0])


def connect_at_head(home: Path) -> sqlite3.Connection | None:
    """A connection to ``home``'s database when nothing is to be done before writing to it: the file exists,
    its schema is at head and its journal mode is the one wanted. Otherwise None: the caller opens the
    database through :func:`supervisor.store.db.open_database`, which creates, migrates or switches it.

    The connection is in autocommit mode (``isolation_level`` None): the caller opens its transactions.
    """
    path = home / DB_NAME
    if not path.is_file():
        return None
    chosen, raw = chosen_journal_mode()
    if raw and chosen is None:
        return None  # an unknown value: open_database warns about it
    wanted = chosen or default_journal_mode(home)
    head = head_revision()
    if head is None:
        return None
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        configure(conn, wanted)
        if recorded_revision(conn) == head and str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() == wanted:
            return conn
    except sqlite3.Error:
        pass  # unreadable here: open_database reports it in its own words
    conn.close()
    return None
