"""The service's own rules, with a recording cluster (no SLURM needed): conditional state changes."""

from __future__ import annotations

import os
from pathlib import Path

from supervisor.app.service import Supervisor
from supervisor.domain import core
from supervisor.domain.types import EventKind, RunState

from fakes import RecordingCluster, RunningCluster


def registered(tmp_path: Path) -> tuple[Supervisor, RecordingCluster]:
    cluster = RecordingCluster()
    sv = Supervisor(tmp_path / "home", clusters={"slurm": cluster})
    spec = tmp_path / "spec.yaml"
    script = tmp_path / "s.sbatch"
    script.write_text("#!/bin/bash\necho hi\n")
    spec.write_text(f"name: r\nbackend: slurm\nworkdir: {tmp_path / 'w'}\nstages:\n  - name: s\n    script: {script}\n")
    sv.register(spec, "slurm")
    return sv, cluster


def test_decision_made_before_a_pause_is_not_carried_out(tmp_path: Path) -> None:
    sv, cluster = registered(tmp_path)
    decided: list[core.Action] = [core.SetRun(RunState.RUNNING), core.Submit("s", 1)]
    sv.commands.pause("r")  # lands between the decision (run pending) and its application
    assert sv.apply(1, RunState.PENDING, decided, {}) is False
    assert cluster.submitted == []
    data = sv.show("r")
    assert data["state"] == "paused" and data["stages"][0]["attempts"] == []


def test_decision_applies_when_nothing_moved(tmp_path: Path) -> None:
    sv, _ = registered(tmp_path)
    actions: list[core.Action] = [core.SetRun(RunState.RUNNING), core.Emit(EventKind.MILESTONE, "hello")]
    assert sv.apply(1, RunState.PENDING, actions, {}) is True
    data = sv.show("r")
    assert data["state"] == "running" and data["events"][-1]["message"] == "hello"


def test_cancel_between_decision_and_success_keeps_the_run_cancelled(tmp_path: Path) -> None:
    sv, _ = registered(tmp_path)
    sv.apply(1, RunState.PENDING, [core.SetRun(RunState.RUNNING)], {})
    sv.commands.cancel_run("r")
    assert sv.apply(1, RunState.RUNNING, [core.SetRun(RunState.SUCCEEDED)], {}) is False
    assert sv.show("r")["state"] == "cancelled"


def test_notification_facts_of_an_attempt(tmp_path: Path) -> None:
    from datetime import timedelta

    from sqlalchemy import select

    from supervisor.store.models import Attempt, Event

    sv, _ = registered(tmp_path)
    sv.apply(1, RunState.PENDING, [core.SetRun(RunState.RUNNING), core.Submit("s", 1)], {})
    with sv.sessions.begin() as session:
        attempt = session.scalars(select(Attempt)).one()
        attempt.started_at = sv.now() - timedelta(hours=2)
        attempt.nodes = "lrdn[01-04]"
        attempt.progress_step, attempt.progress_total = 250, 1000
        # Resumed at step 100, first seen an hour after the start (startup), at step 250 now: 150 steps/h.
        attempt.first_step, attempt.first_step_at = 100, sv.now() - timedelta(hours=1)
        attempt.progress_at = sv.now()
    sv.apply(1, RunState.RUNNING, [core.Emit(EventKind.CRASHED, "boom", "s", 1, {"text": "NCCL error"})], {})
    with sv.sessions() as session:
        data = session.scalars(select(Event).where(Event.kind == "crashed")).one().data
    assert data["job_id"] == "101" and data["log_line"] == "NCCL error"
    assert data["node_hours"] == 8.0  # 4 nodes for 2 hours
    assert data["progress_step"] == 250 and data["progress_total"] == 1000
    # 750 steps to go at the attempt's own rate: 5 h (counting from step 0 and the job's start would say 6 h).
    assert data["eta_s"] == 5 * 3600


def test_a_new_checkpoint_is_a_sign_of_life_for_a_quiet_training_job(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import select

    from supervisor.store.models import Attempt

    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "activate").write_text("")
    (tmp_path / "axolotl.yaml").write_text("output_dir: out\ndataset_prepared_path: prepared\nmax_steps: 10\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"name: t\nbackend: slurm\nworkdir: {tmp_path / 'w'}\naxolotl_config: axolotl.yaml\n"
        "venv: venv\nstages:\n  - {name: train, kind: train, stall_timeout: 60}\n"
    )
    cluster = RunningCluster()
    sv = Supervisor(tmp_path / "home", clusters={"slurm": cluster})
    sv.register(spec, "slurm")
    sv.tick()
    assert len(cluster.submitted) == 1
    quiet_since = datetime.now(UTC) - timedelta(minutes=5)

    def go_quiet() -> None:
        with sv.sessions.begin() as session:
            attempt = session.scalars(select(Attempt)).one()
            attempt.state, attempt.started_at, attempt.last_output_at = "running", quiet_since, quiet_since

    go_quiet()
    (tmp_path / "out" / "checkpoint-5").mkdir(parents=True)  # written just now, while the log stayed silent
    sv.tick()
    assert [a["state"] for a in sv.show("t")["stages"][0]["attempts"]] == ["running"]

    go_quiet()
    old = (quiet_since - timedelta(minutes=1)).timestamp()
    os.utime(tmp_path / "out" / "checkpoint-5", (old, old))  # no checkpoint since the job went quiet
    sv.tick()
    first = sv.show("t")["stages"][0]["attempts"][0]
    assert first["state"] == "cancelled" and first["cause"] == "stall_timeout"


def test_a_log_wake_up_steps_only_the_runs_whose_new_lines_call_for_a_reaction(tmp_path: Path) -> None:
    from sqlalchemy import select

    from supervisor.store.models import Attempt, Run, Stage

    cluster = RunningCluster()
    sv = Supervisor(tmp_path / "home", clusters={"slurm": cluster})
    script = tmp_path / "s.sbatch"
    script.write_text("#!/bin/bash\nsleep 600\n")

    def register(name: str) -> None:
        spec = tmp_path / f"{name}.yaml"
        spec.write_text(f"name: {name}\nbackend: slurm\nworkdir: {tmp_path / name}\nstages:\n"
                        f"  - name: s\n    script: {script}\n")
        sv.register(spec, "slurm")

    def attempt(name: str) -> Attempt:
        with sv.sessions() as session:
            return session.scalars(select(Attempt).join(Stage).join(Run).where(Run.name == name)).one()

    for name in ("progress", "oom"):
        register(name)
    sv.tick()
    sv.tick()  # both jobs seen running
    bar = "  5%|#         | 50/1000 [00:10<03:10,  5.00it/s]\n"
    Path(attempt("progress").log_path or "").write_text(bar * 3)
    Path(attempt("oom").log_path or "").write_text(bar + "torch.OutOfMemoryError: CUDA out of memory.\n")
    register("new")  # no attempt yet: a wake-up pass submits it, as before
    ids = {r.name: r.id for r in sv.sessions().scalars(select(Run))}

    assert sv.wakeups.news() == [ids["oom"], ids["new"]]
    sv.tick(poll=False)
    assert attempt("oom").cause == "cuda_oom"
    assert len(cluster.submitted) == 3
    quiet = attempt("progress")
    assert quiet.log_tail is None and quiet.progress_step is None  # left to the interval pass
    assert sv.wakeups.news() == []
    sv.tick()
    read = attempt("progress")
    assert read.progress_step == 50 and read.log_tail is not None and read.last_output_at is not None
