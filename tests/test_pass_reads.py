"""What the daemon's passes read: every run's snapshot in a few queries, and nothing again until a commit.

Real SQLite in ``tmp_path``; the cluster is the recording fake (no SLURM needed). Statements are counted
with SQLAlchemy's ``before_cursor_execute`` event on the daemon's own engine.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from sqlalchemy import event, select, update

from supervisor.app.service import Supervisor
from supervisor.store.db import Commits
from supervisor.store.models import Attempt, ExcludedNode, Run, Stage

from fakes import RunningCluster


@contextmanager
def counted(sv: Supervisor) -> Iterator[list[str]]:
    """The SQL statements the supervisor's engine runs inside the block."""
    engine = sv.sessions.kw["bind"]
    seen: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def supervisor_with_runs(tmp_path: Path, names: list[str]) -> Supervisor:
    sv = Supervisor(tmp_path / "home", clusters={"slurm": RunningCluster()})
    script = tmp_path / "s.sbatch"
    script.write_text("#!/bin/bash\nsleep 600\n")
    for name in names:
        register(sv, tmp_path, name, script)
    sv.tick()
    sv.tick()  # every job seen running
    return sv


def register(sv: Supervisor, tmp_path: Path, name: str, script: Path) -> None:
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(f"name: {name}\nbackend: slurm\nworkdir: {tmp_path / name}\nstages:\n"
                    f"  - name: prep\n    script: {script}\n  - name: s\n    script: {script}\n")
    sv.register(spec, "slurm")


def test_commits_changes_with_every_commit_on_another_connection(tmp_path: Path) -> None:
    sv = supervisor_with_runs(tmp_path, ["a"])
    commits = Commits(sv.sessions)
    first = commits.version()
    assert first is not None and commits.version() == first  # nothing committed in between
    with sv.sessions.begin() as session:  # a connection of the same process's pool
        session.execute(update(Run).values(reason="x"))
    second = commits.version()
    assert second != first
    other = sqlite3.connect(sv.home / "supervisor.db")  # another process, as the CLI is
    with other:
        other.execute("UPDATE runs SET reason = 'y'")
    other.close()
    assert commits.version() != second


def test_one_pass_reads_all_its_runs_in_the_same_few_queries(tmp_path: Path) -> None:
    few = supervisor_with_runs(tmp_path / "few", ["a", "b"])
    many = supervisor_with_runs(tmp_path / "many", [f"r{i}" for i in range(12)])
    for sv in (few, many):
        ids = sv.repo.active_run_ids()
        with counted(sv) as statements:
            found = sv.observer.snapshots(ids)
        assert sorted(found) == ids
        assert len(statements) <= 4, statements


def test_a_run_read_with_the_others_is_seen_as_when_read_alone(tmp_path: Path) -> None:
    sv = supervisor_with_runs(tmp_path, ["a", "b", "c"])
    with sv.sessions.begin() as session:
        b = session.scalars(select(Run.id).where(Run.name == "b")).one()
        now = sv.now()
        session.add_all([ExcludedNode(run_id=b, node="node07", reason="ECC", until=now + timedelta(hours=1)),
                         ExcludedNode(run_id=b, node="node03", reason="ECC", until=now + timedelta(hours=1)),
                         ExcludedNode(run_id=b, node="node05", reason="ECC", until=now - timedelta(hours=1))])
    batch = sv.observer.snapshots(sv.repo.active_run_ids())
    for run_id, snapshot in batch.items():
        alone = sv.observer.snapshot(run_id)
        assert alone is not None
        assert snapshot.view == alone.view
        assert [(i.attempt_id, i.stage, i.cursor) for i in snapshot.live] == \
            [(i.attempt_id, i.stage, i.cursor) for i in alone.live]
    assert batch[b].view.excluded_nodes == ("node03", "node07")  # the expired one is not in force
    assert [len(s.live) for s in batch.values()] == [1, 1, 1]


def test_a_run_that_cannot_be_read_with_the_others_fails_alone(tmp_path: Path) -> None:
    sv = supervisor_with_runs(tmp_path, ["a", "b"])
    with sv.sessions.begin() as session:
        run = session.scalars(select(Run).where(Run.name == "a")).one()
        # A stored spec this version's stage kinds refuse: the kind is read when its live attempt is observed.
        run.spec = {**run.spec, "stages": [{**s, "kind": "no-such-kind"} for s in run.spec["stages"]]}
    ids = sv.repo.active_run_ids()
    assert sorted(sv.observer.snapshots(ids)) == [ids[1]]
    sv.tick()
    states = {r["name"]: r["state"] for r in sv.status()}
    assert states == {"a": "needs_attention", "b": "running"}


def test_wake_ups_read_the_live_logs_again_only_after_a_commit(tmp_path: Path) -> None:
    sv = supervisor_with_runs(tmp_path, ["a"])
    sv.wakeups.news()
    with counted(sv) as statements:
        assert sv.wakeups.news() == []  # the job's log did not grow
        assert sv.logs_grew() is False
    assert statements == []
    # Registered by another process (another engine on the same file): the next wake-up steps it.
    script = tmp_path / "s.sbatch"
    register(Supervisor(sv.home, clusters={"slurm": RunningCluster()}), tmp_path, "late", script)
    with counted(sv) as statements:
        news = sv.wakeups.news()
    assert len(statements) == 1
    with sv.sessions() as session:
        late = session.scalar(select(Run.id).where(Run.name == "late"))
    assert news == [late]


def test_a_stored_offset_moved_by_a_pass_is_what_the_next_log_check_compares(tmp_path: Path) -> None:
    sv = supervisor_with_runs(tmp_path, ["a"])
    with sv.sessions() as session:
        log = Path(session.scalars(select(Attempt.log_path).join(Stage).where(Stage.name == "prep")).one() or "")
    log.write_text("step 1\n")
    assert sv.logs_grew() is True
    sv.tick()  # reads the line and stores the offset past it
    assert sv.logs_grew() is False
    log.write_text("step 1\nstep 2\n")
    assert sv.logs_grew() is True


def test_a_wake_up_peeks_at_the_logs_inotify_named_and_the_cadence_at_all(tmp_path: Path) -> None:
    sv = supervisor_with_runs(tmp_path, ["quiet", "loud"])
    with sv.sessions() as session:
        logs = dict(session.execute(select(Run.name, Attempt.log_path).join(Stage, Stage.run_id == Run.id)
                                    .join(Attempt, Attempt.stage_id == Stage.id)).all())
        ids = dict(session.execute(select(Run.name, Run.id)).all())
    quiet, loud = Path(logs["quiet"] or ""), Path(logs["loud"] or "")
    for log in (quiet, loud):
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")
    told = threading.Event()
    sv.logs.start(told.set)
    try:
        sv.logs.watch({loud.parent})  # the quiet run's directory is one inotify does not see (another node's NFS)
        assert sv.wakeups.news() == []  # the first pass peeks at every log
        quiet.write_text("torch.OutOfMemoryError: CUDA out of memory.\n")
        told.clear()
        loud.write_text("  5%|#         | 50/1000 [00:10<03:10,  5.00it/s]\n")
        assert told.wait(10)
        assert sv.wakeups.news() == []  # only the named log was peeked at, and it only moved a bar
        sv.logs.peek_all_next()  # what the --log-poll cadence asks every few seconds
        assert sv.wakeups.news() == [ids["quiet"]]
    finally:
        sv.logs.stop()
