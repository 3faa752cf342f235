"""The state database: created private, in WAL mode, migrated forward without losing rows, cheap to open."""

from __future__ import annotations

import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import select

from supervisor.store.db import (
    DB_NAME,
    MIGRATE_LOCK_NAME,
    _alembic_config,
    create_db_engine,
    current_revision,
    head_revision,
    migrate,
    open_database,
)
from supervisor.store.models import Run


def test_new_database_is_private_and_in_wal_mode(tmp_path: Path) -> None:
    open_database(tmp_path)
    db = tmp_path / DB_NAME
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_an_old_database_is_migrated_to_head_keeping_its_runs(tmp_path: Path) -> None:
    engine = create_db_engine(tmp_path / DB_NAME)
    cfg = _alembic_config(engine)
    command.upgrade(cfg, "0001")
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        conn.execute(
            "INSERT INTO runs (name, uid, state, backend, spec_path, spec, workdir, created_at, updated_at)"
            " VALUES ('old', 'abcd', 'running', 'slurm', '/x.yaml', '{}', '/w', '2026-01-01', '2026-01-01')"
        )
    engine.dispose()
    open_database(tmp_path)
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        version = conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]
        columns = {row[1] for row in conn.execute("PRAGMA table_info(attempts)")}
        names = [row[0] for row in conn.execute("SELECT name FROM runs")]
    assert version == ScriptDirectory.from_config(cfg).get_current_head()
    assert "hang_hint" in columns and names == ["old"]


def test_head_read_from_the_migration_files_is_alembics_head(tmp_path: Path) -> None:
    cfg = _alembic_config(create_db_engine(tmp_path / DB_NAME))
    assert head_revision() == ScriptDirectory.from_config(cfg).get_current_head()


def migration_file(folder: Path, revision: str, down: str | None) -> None:
    (folder / f"{revision}_x.py").write_text(f'"""x"""\nrevision = "{revision}"\ndown_revision = {down!r}\n')


def test_head_of_migration_files_that_branch_is_left_to_alembic(tmp_path: Path) -> None:
    migration_file(tmp_path, "a1", None)
    migration_file(tmp_path, "b2", "a1")
    assert head_revision(tmp_path) == "b2"
    migration_file(tmp_path, "c3", "a1")  # a second child of a1: two heads
    assert head_revision(tmp_path) is None
    (tmp_path / "d4_merge.py").write_text('revision = "d4"\ndown_revision = ("b2", "c3")\n')
    assert head_revision(tmp_path) is None


def python(code: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_a_database_at_head_is_opened_without_loading_alembic(tmp_path: Path) -> None:
    open_database(tmp_path).kw["bind"].dispose()
    loaded = python("import sys\nfrom pathlib import Path\nfrom supervisor.store.db import open_database\n"
                    "open_database(Path(sys.argv[1]))\n"
                    "print(sorted(m for m in sys.modules if m.startswith(('alembic', 'migrations.'))))",
                    str(tmp_path))
    assert loaded.strip() == "[]"


def test_reading_a_home_without_a_database_creates_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    sessions = open_database(home, create=False)
    with sessions() as session:
        assert list(session.scalars(select(Run))) == []
    assert not home.exists()
    open_database(home)  # a command that writes creates it
    assert (home / DB_NAME).exists()


def test_a_database_at_an_old_revision_is_migrated_once_under_the_lock(tmp_path: Path) -> None:
    engine = create_db_engine(tmp_path / DB_NAME)
    command.upgrade(_alembic_config(engine), "0001")
    assert current_revision(engine) == "0001"
    migrate(engine)
    assert current_revision(engine) == head_revision()
    assert (tmp_path / MIGRATE_LOCK_NAME).exists()


KILLED_AFTER_THIRD_TABLE = """
import os, signal, sys
from pathlib import Path
from sqlalchemy import Engine, event
from supervisor.store.db import open_database

created = []

@event.listens_for(Engine, "after_cursor_execute")
def die_half_way(conn, cursor, statement, parameters, context, executemany):
    if statement.lstrip().upper().startswith("CREATE TABLE"):
        created.append(statement)
        if len(created) == 3:
            os.kill(os.getpid(), signal.SIGKILL)

open_database(Path(sys.argv[1]))
"""


def test_a_process_killed_half_way_through_the_first_migration_leaves_a_database_the_next_one_migrates(
        tmp_path: Path) -> None:
    """The daemon killed while it creates the schema: the next command must not find half the tables."""
    proc = subprocess.run([sys.executable, "-c", KILLED_AFTER_THIRD_TABLE, str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        left = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    assert left == []
    sessions = open_database(tmp_path)
    with sessions() as session:
        assert list(session.scalars(select(Run))) == []
    assert current_revision(sessions.kw["bind"]) == head_revision()
