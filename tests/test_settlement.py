"""Settled costs: an ended attempt's node-seconds are stored once, and `status` gives the same node-hours
whether it sums them in SQL or runs the accounting over every attempt."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from supervisor.app.service import Supervisor
from supervisor.domain.core import AttemptChanges, UpdateAttempt
from supervisor.domain.types import RunState
from supervisor.store.models import Attempt, Event, Run
from supervisor.store.settlement import settle_costs

from fakes import ManualClock

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def home_with_attempts(tmp_path: Path) -> Supervisor:
    sv = Supervisor(tmp_path / "home", clock=ManualClock(NOW))
    spec = tmp_path / "r.yaml"
    spec.write_text(yaml.safe_dump({"name": "r", "backend": "local", "workdir": str(tmp_path / "w"),
                                    "stages": [{"name": "train", "kind": "script", "command": ["true"]}]}))
    sv.register(spec, "local")
    start = NOW - timedelta(hours=5)
    with sv.sessions.begin() as session:
        run = session.query(Run).one()
        run.state, run.stages[0].state = "running", "running"
        stage = run.stages[0]
        # A crash after 1 h on 2 nodes, a hang after 1.5 h on 4, and one still running on 2.
        rows: list[dict[str, Any]] = [
            dict(state="failed", exit_code=1, ended_at=start + timedelta(hours=1), nodes="n[01-02]"),
            dict(state="cancelled", cause="stall_timeout", outcome="resubmit", nodes="n[01-04]",
                 ended_at=start + timedelta(hours=1, minutes=30), last_output_at=start + timedelta(hours=1)),
            dict(state="running", ended_at=None, nodes="n[01-02]"),
        ]
        for number, values in enumerate(rows, start=1):
            session.add(Attempt(stage_id=stage.id, number=number, tag=f"t{number}", backend="local",
                                submitted_at=start, started_at=start, **values))
        session.add(Event(run_id=run.id, at=start, kind="stalled", stage="train", attempt=2, message="hang",
                          data={}))
    return sv


def settled_columns(sv: Supervisor) -> list[tuple[int | None, int | None]]:
    with sqlite3.connect(sv.home / "supervisor.db") as conn:
        return list(conn.execute("SELECT settled_used_s, settled_wasted_s FROM attempts ORDER BY number"))


def test_status_gives_the_same_node_hours_from_settled_costs_as_from_the_accounting(tmp_path: Path) -> None:
    sv = home_with_attempts(tmp_path)
    computed = sv.status()[0]["node_hours"]
    assert settle_costs(sv.sessions) == 2
    assert [s is not None for s, _ in settled_columns(sv)] == [True, True, False], "the live one stays open"
    assert sv.status()[0]["node_hours"] == computed
    used, wasted = zip(*settled_columns(sv)[:2], strict=True)
    # 1 h on 2 nodes and 1.5 h on 4, no step nor checkpoint in either: all wasted.
    assert (used, wasted) == ((0, 0), (2 * 3600, 4 * 5400))


def test_a_change_to_an_ended_attempt_settles_it_again(tmp_path: Path) -> None:
    sv = home_with_attempts(tmp_path)
    settle_costs(sv.sessions)
    with sv.sessions() as session:
        run_id = session.query(Run).one().id
    # The end time corrected (as a later sacct answer would): 2 h on 2 nodes instead of 1 h.
    later = NOW - timedelta(hours=3)
    effects = sv.repo.apply(run_id, RunState.RUNNING, [UpdateAttempt("train", 1, AttemptChanges(ended_at=later))])
    assert effects == []
    assert settled_columns(sv)[0] == (0, 2 * 2 * 3600)
