"""`status` and `show` read the database with plain SQL: the same answer as the ORM rows, no SQLAlchemy in the CLI."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from alembic import command

from supervisor.app.service import Supervisor
from supervisor.notify.queue import undelivered
from supervisor.store import readmodels
from supervisor.store.db import DB_NAME, JOURNAL_ENV, _alembic_config, create_db_engine
from supervisor.store.models import Attempt, Event, ExcludedNode, OutboxEntry, Run, Stage

from fakes import ManualClock
from readmodel_fixtures import attempt_row, two_stage_spec

T0 = datetime(2026, 11, 3, 9, 15, 7, 250_000, tzinfo=UTC)  # microseconds: the text form must round-trip


def _attempt(stage: Stage, number: int, state: str, **extra: Any) -> Attempt:
    return attempt_row(stage, number, state, submitted_at=T0, **extra)


def _home(tmp_path: Path) -> tuple[Path, Supervisor]:
    """Three runs: one whose first stage succeeded and whose train is on its 2nd attempt (queued), one with
    every stage succeeded, one never started; an excluded node and an undelivered notification."""
    home = tmp_path / "home"
    sv = Supervisor(home, clock=ManualClock(T0))
    for name in ("a", "b", "c"):
        sv.register(two_stage_spec(tmp_path, name), "local")
    with sv.sessions.begin() as session:
        runs = {r.name: r for r in session.query(Run)}
        prep, train = runs["a"].stages
        prep.state, train.state = "succeeded", "running"
        session.add_all([
            _attempt(prep, 1, "succeeded", started_at=T0 + timedelta(seconds=5), ended_at=T0 + timedelta(minutes=3),
                     exit_code=0, nodes="n[1-2]"),
            _attempt(train, 1, "failed", started_at=T0, ended_at=T0 + timedelta(hours=1), exit_code=1,
                     cause="nccl_error", outcome="resubmit", progress_step=40, progress_total=100),
            _attempt(train, 2, "queued", reason="Priority", reason_since=T0 + timedelta(seconds=1)),
            ExcludedNode(run_id=runs["a"].id, node="n2", reason="ecc", until=T0 + timedelta(hours=2)),
            OutboxEntry(run_id=runs["a"].id, channel="0:webhook", kind="failed", created_at=T0, state="failed",
                        tries=3, last_error="HTTP 500", next_try_at=T0 + timedelta(minutes=5),
                        payload={"text": "x", "_outbox": {"merged_into": 7}}),
        ])
        for stage in runs["b"].stages:
            stage.state = "succeeded"
            session.add(_attempt(stage, 1, "succeeded", ended_at=T0 + timedelta(minutes=1)))
    return home, sv


def test_status_names_each_runs_current_stage_and_newest_attempt(tmp_path: Path) -> None:
    _, sv = _home(tmp_path)
    rows = {r["name"]: r for r in sv.status()}
    assert [(rows[n]["stage"], rows[n]["attempt"], rows[n]["job_id"]) for n in "abc"] == [
        ("train", 2, f"{_run_id(sv, 'a')}2"), ("train", 1, f"{_run_id(sv, 'b')}1"), ("prep", None, None)]
    assert rows["a"]["pending_reason"] == "Priority"
    assert rows["a"]["progress"] is None  # the newest attempt's, not the failed one's 40/100


def test_the_file_reader_gives_what_the_service_gives(tmp_path: Path) -> None:
    home, sv = _home(tmp_path)
    reader = readmodels.FileReader.open(home)
    assert reader is not None
    # Both at the service's time: `queued_for_s` counts to "now".
    assert reader.status(sv.now()) == sv.status()
    shown = reader.show("a", sv.now())
    assert shown == sv.show("a")
    with sv.sessions() as session:
        assert shown["notifications"] == undelivered(session, _run_id(sv, "a"))
    assert shown["notifications"][0]["merged_into"] == 7
    [prep, train] = shown["stages"]
    assert prep["attempts"][0]["started_at"] == (T0 + timedelta(seconds=5)).isoformat()
    assert [a["number"] for a in train["attempts"]] == [1, 2]
    assert reader.show("c")["stages"][0]["attempts"] == []


def test_status_node_hours_of_each_run_are_the_reports(tmp_path: Path) -> None:
    """`status` reads a third of an attempt's columns for its node-hours; the report reads them all."""
    home, sv = _home(tmp_path)
    with sv.sessions.begin() as session:
        b = session.query(Run).filter_by(name="b").one()
        b.stages[0].attempts[0].started_at = T0
        b.stages[0].attempts[0].nodes = "n[1-4]"
        b.stages[0].attempts[0].last_output_at = T0 + timedelta(seconds=15)  # hung from there: wasted
        b.stages[1].attempts[0].started_at = T0
        b.stages[1].attempts[0].first_step_at = T0 + timedelta(seconds=20)
        b.stages[1].attempts[0].state = "failed"
        session.add(Event(run_id=b.id, at=T0, kind="stalled", stage="prep", attempt=1, message="", data={}))
    reader = readmodels.FileReader.open(home)
    assert reader is not None
    now = T0 + timedelta(hours=3)
    report = {r["name"]: (r["used_node_hours"], r["wasted_node_hours"]) for r in reader.report(now=now)["runs"]}
    status = {r["name"]: (r["node_hours"]["used"], r["node_hours"]["wasted"]) for r in reader.status(now)}
    assert status == report
    assert status["b"][0] > 0 and status["b"][1] > 0 and status["a"][1] > 0


def test_the_cli_answers_status_and_show_without_importing_sqlalchemy_pydantic_or_structlog(tmp_path: Path) -> None:
    home, sv = _home(tmp_path)
    for args, expected in ((["status", "--json"], sv.status()), (["show", "a", "--json"], sv.show("a"))):
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "supervisor", "--home", str(home), *args],
                              capture_output=True, text=True, check=True)
        assert _timeless(json.loads(proc.stdout)) == _timeless(expected)
        imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in proc.stderr.splitlines()}
        assert imported & {"sqlalchemy", "pydantic", "structlog"} == set(), args


def test_status_read_the_full_way_logs_as_every_command_does(tmp_path: Path) -> None:
    """A database older than the plain queries is migrated through the service, which logs: to stderr, as the
    JSON lines of a command not on a TTY, never into the JSON `status` prints."""
    engine = create_db_engine(tmp_path / DB_NAME)
    command.upgrade(_alembic_config(engine), "0001")
    engine.dispose()
    assert readmodels.FileReader.open(tmp_path) is None
    env = {**os.environ, JOURNAL_ENV: "bogus"}  # makes opening the database log a warning
    proc = subprocess.run([sys.executable, "-m", "supervisor", "--home", str(tmp_path), "status", "--json"],
                          capture_output=True, text=True, check=True, env=env)
    assert json.loads(proc.stdout) == []
    [line] = proc.stderr.splitlines()
    assert json.loads(line)["event"] == "journal_mode_ignored"


def test_an_unknown_run_is_one_line_and_exit_2(tmp_path: Path) -> None:
    home, _ = _home(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "supervisor", "--home", str(home), "show", "nope"],
                          capture_output=True, text=True)
    assert (proc.returncode, proc.stderr) == (2, "error: no run named 'nope' (see `supervisor status`)\n")


def test_a_schema_these_queries_cannot_read_is_left_to_the_full_path(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        conn.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, name TEXT)")
    assert readmodels.FileReader.open(tmp_path) is None


def _timeless(data: Any) -> Any:
    """Without `queued_for_s` and `run_eta`: the CLI counts them from its own wall-clock now, the test's service
    from another."""
    if isinstance(data, dict):
        return {k: _timeless(v) for k, v in data.items() if k not in ("queued_for_s", "run_eta")}
    return [_timeless(v) for v in data] if isinstance(data, list) else data


def _run_id(sv: Supervisor, name: str) -> int:
    with sv.sessions() as session:
        return sv.repo.run_named(session, name).id
