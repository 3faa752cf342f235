"""The state database: created private, in WAL mode, migrated forward without losing rows."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

from alembic import command
from alembic.script import ScriptDirectory

from supervisor.store.db import DB_NAME, _alembic_config, create_db_engine, open_database


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
