"""Registration in plain SQL: the rows the ORM reads back, the outbox entry a `registered` channel gets, and a
`submit` into a database at head that never imports SQLAlchemy."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select

from supervisor.app import campaigns
from supervisor.domain.errors import UserError
from supervisor.domain.spec import run_spec
from supervisor.notify.queue import enqueue
from supervisor.store.db import DB_NAME, open_database, plain_connection
from supervisor.store.models import Campaign, Event, OutboxEntry, Run, Stage
from supervisor.store.sqlitefile import connect_at_head

NOW = datetime(2026, 12, 2, 21, 30, 5, 123456, tzinfo=UTC)


def write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def spec_data(tmp_path: Path, name: str, **extra: Any) -> dict[str, Any]:
    script = tmp_path / "s.sh"
    script.write_text("echo hi\n")
    return {"name": name, "workdir": str(tmp_path / "w" / name),
            "stages": [{"name": "one", "script": str(script)}, {"name": "two", "script": str(script)}], **extra}


def test_the_orm_reads_back_what_plain_sql_registered(tmp_path: Path) -> None:
    hook = {"webhook": {"url": "http://127.0.0.1:9/hook"}, "on": ["registered", "failed"]}
    path = write(tmp_path / "r.yaml", spec_data(tmp_path, "r1", notify=[hook, {"webhook": {
        "url": "http://127.0.0.1:9/other"}, "on": ["failed"]}]))
    sessions = open_database(tmp_path / "home")
    with plain_connection(sessions) as conn:
        campaigns.register(conn, NOW, campaigns.read(path, "local"))
    with sessions() as session:
        run = session.scalars(select(Run)).one()
        assert (run.name, run.state, run.backend, run.workdir, run.campaign, run.created_at, run.updated_at) == (
            "r1", "pending", "local", str(tmp_path / "w" / "r1"), None, NOW, NOW)
        assert run.spec == run_spec(path, yaml.safe_load(path.read_text())).model_dump(mode="json")
        assert len(run.uid) == 8 and run.spec_path == str(path.resolve())
        assert [(s.position, s.name, s.kind, s.state, s.budget_start, s.updated_at) for s in run.stages] == [
            (0, "one", "script", "pending", 1, NOW), (1, "two", "script", "pending", 1, NOW)]
        (event,) = session.scalars(select(Event)).all()
        assert (event.kind, event.at, event.data, event.stage, event.attempt) == ("registered", NOW, {}, None, None)
        assert event.message == f"run r1 registered from {path}"
        (entry,) = session.scalars(select(OutboxEntry)).all()
        # What the ORM's enqueue writes for the same event, in a transaction rolled back afterwards.
        (orm,) = enqueue(session, run, event, run.spec["notify"])
        assert (entry.channel, entry.kind, entry.state, entry.tries, entry.event_id, entry.created_at) == (
            orm.channel, orm.kind, "pending", 0, event.id, NOW)
        assert entry.payload == orm.payload
        session.rollback()


def test_a_campaign_is_registered_whole_or_not_at_all(tmp_path: Path) -> None:
    sessions = open_database(tmp_path / "home")
    script = tmp_path / "s.sh"
    script.write_text("echo hi\n")
    base = {"campaign": "c", "defaults": {"stages": [{"name": "one", "script": str(script)}]}, "max_live_jobs": 2}
    first = write(tmp_path / "c1.yaml", {**base, "runs": [{"name": "a", "workdir": str(tmp_path / "a")}]})
    with plain_connection(sessions) as conn:
        campaigns.register(conn, NOW, campaigns.read(first, "local"))
    clash = write(tmp_path / "c2.yaml", {**base, "campaign": "d", "runs": [
        {"name": "b", "workdir": str(tmp_path / "b")}, {"name": "a", "workdir": str(tmp_path / "a2")}]})
    with plain_connection(sessions) as conn, pytest.raises(UserError, match="runs: a: a run named 'a' already"):
        campaigns.register(conn, NOW, campaigns.read(clash, "local"))
    with sessions() as session:
        assert session.scalars(select(Run.name)).all() == ["a"]
        assert session.scalars(select(Campaign.name)).all() == ["c"]
        assert session.scalars(select(Stage.id)).all() == [1]
        assert session.scalars(select(Run.campaign)).all() == ["c"]
        assert session.scalars(select(Campaign.spec)).one()["max_live_jobs"] == 2


def test_connect_at_head_only_for_a_database_ready_to_take_writes(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert connect_at_head(home) is None  # no database: open_database creates it
    open_database(home).kw["bind"].dispose()
    conn = connect_at_head(home)
    assert conn is not None
    conn.close()
    with sqlite3.connect(home / DB_NAME) as raw:
        raw.execute("UPDATE alembic_version SET version_num = '0001'")
    assert connect_at_head(home) is None  # behind head: open_database migrates it


def test_submit_into_a_database_at_head_imports_no_sqlalchemy(tmp_path: Path) -> None:
    home = tmp_path / "home"
    code = ("import sys\nfrom supervisor.app.cli import main\nsys.argv = ['supervisor', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    print('exit', exc.code)\n"
            "print('sqlalchemy' in sys.modules, 'structlog' in sys.modules)")

    def submit(name: str) -> list[str]:
        path = write(tmp_path / f"{name}.yaml", spec_data(tmp_path, name))
        proc = subprocess.run([sys.executable, "-c", code, "--home", str(home), "submit", str(path)],
                              capture_output=True, text=True, check=True)
        return proc.stdout.splitlines()

    # A new home: created and migrated through Alembic, which logs.
    assert submit("first") == ["first", "exit 0", "True True"]
    assert submit("second") == ["second", "exit 0", "False False"]
    assert submit("second")[-2:] == ["exit 2", "False False"]  # the clash is found without them too
    with sqlite3.connect(home / DB_NAME) as conn:
        assert [r[0] for r in conn.execute("SELECT name FROM runs ORDER BY id")] == ["first", "second"]
