"""Retry budgets that follow progress: the pure core, no cluster, no clock, no database.

A time limit or a preemption that came after a new checkpoint is a chunk of a chained training, not a
failure: it does not use up ``max_attempts``. Everything else counts as before.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from supervisor.app.service import Supervisor
from supervisor.domain import core
from supervisor.domain.core import AttemptView, Observation, Outcome, RunView, StageView
from supervisor.domain.core.views import CANNOT_START, budget_use
from supervisor.domain.types import (
    AttemptState,
    EventKind,
    JobInfo,
    JobPhase,
    LogMatch,
    RunState,
    SignatureAction,
    StageState,
)
from supervisor.store import readmodels
from supervisor.store.models import Attempt, Run

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TIME_LIMIT_LINE = "slurmstepd: error: *** JOB 101 ON vm CANCELLED AT 2026-01-01T00:01:00 DUE TO TIME LIMIT ***"


def timed_out(job_id: str) -> JobInfo:
    # What scontrol says of a job Slurm ended at its time limit (seen on the one-node cluster).
    return JobInfo(job_id=job_id, name="t", phase=JobPhase.FAILED, raw_state="TIMEOUT", exit_code=0,
                   nodes="vm", reason="TimeLimit", end_time=T0)


def apply(run: RunView, actions: list[core.Action]) -> RunView:
    """The parts of Repository.apply these tests need: attempt changes, stage and run states, submissions."""
    stages = {s.name: s for s in run.stages}
    state = run.state
    for action in actions:
        if isinstance(action, core.UpdateAttempt):
            s = stages[action.stage]
            fields = {f.name for f in dataclasses.fields(AttemptView)}
            # exit_code, progress and the like are columns of the row only, not of the view.
            values: dict[str, Any] = {k: v for k, v in action.changes.items().items() if k in fields}
            attempts = tuple(dataclasses.replace(a, **values) if a.number == action.number else a for a in s.attempts)
            stages[s.name] = dataclasses.replace(s, attempts=attempts)
        elif isinstance(action, core.Cancel):
            s = stages[action.stage]
            attempts = tuple(dataclasses.replace(a, cancel_requested=True, outcome=action.outcome, cause=action.cause)
                             if a.number == action.number else a for a in s.attempts)
            stages[s.name] = dataclasses.replace(s, attempts=attempts)
        elif isinstance(action, core.SetStage):
            stages[action.stage] = dataclasses.replace(stages[action.stage], state=action.state)
        elif isinstance(action, core.SetRun):
            state = action.state
        elif isinstance(action, core.Submit):
            s = stages[action.stage]
            mark = s.attempts[-1].saved_mark if s.attempts else None  # Submitter: last_saved at submission
            new = AttemptView(action.number, AttemptState.RUNNING, job_id=str(100 + action.number), started_at=T0,
                              saved_mark=mark, start_mark=mark)
            stages[s.name] = dataclasses.replace(s, attempts=(*s.attempts, new))
    return dataclasses.replace(run, state=state, stages=tuple(stages[s.name] for s in run.stages))


def chunk(run: RunView, number: int, obs: Observation) -> tuple[RunView, list[core.Action]]:
    """One attempt's end as the daemon sees it: observe, then advance until nothing more is due."""
    run = apply(run, core.observe(run, {("train", number): obs}, T0))
    decided: list[core.Action] = []
    for _ in range(4):
        actions = core.advance(run, T0 + timedelta(hours=1))
        if not actions:
            break
        decided.extend(actions)
        run = apply(run, actions)
    return run, decided


def first_chunk(max_attempts: int) -> RunView:
    stage = StageView("train", StageState.PENDING, max_attempts=max_attempts, retry_backoff=0.0)
    run = RunView("r", RunState.PENDING, (stage,))
    return apply(run, core.advance(run, T0))


def test_three_chunks_chained_by_time_limits_finish_with_max_attempts_2() -> None:
    run = first_chunk(max_attempts=2)
    # Chunk 1 ends by Slurm's clock (no line read, only the job's state) after saving checkpoint-100.
    run, decided = chunk(run, 1, Observation(job=timed_out("101"), saved_mark="checkpoint-100"))
    assert core.Submit("train", 2) in decided
    # Chunk 2: the slurmstepd line is read first, then the job ends; checkpoint-200 is new.
    line = LogMatch(signature="slurm_time_limit", action=SignatureAction.RESUBMIT, line=9, text=TIME_LIMIT_LINE)
    run, decided = chunk(run, 2, Observation(job=core_running("102"), matches=(line,), saved_mark="checkpoint-200"))
    run, decided = chunk(run, 2, Observation(job=timed_out("102"), saved_mark="checkpoint-200"))
    assert core.Submit("train", 3) in decided, decided
    # Chunk 3 completes the training.
    done = JobInfo(job_id="103", name="t", phase=JobPhase.COMPLETED, raw_state="COMPLETED", exit_code=0, end_time=T0)
    run, decided = chunk(run, 3, Observation(job=done, saved_mark="checkpoint-300", succeeded=True))
    assert run.state is RunState.SUCCEEDED, decided
    train = run.stage("train")
    assert [budget_use(a, 1)[0] for a in train.attempts] == [False, False, True]
    assert train.used == 1


def core_running(job_id: str) -> JobInfo:
    return JobInfo(job_id=job_id, name="t", phase=JobPhase.RUNNING, raw_state="RUNNING", nodes="vm")


def test_time_limits_without_a_new_checkpoint_use_up_the_budget() -> None:
    run = first_chunk(max_attempts=2)
    run, _ = chunk(run, 1, Observation(job=timed_out("101"), saved_mark="checkpoint-100"))
    # Chunks 2 and 3 save nothing new before their time limits: they count, and the budget (2) is spent.
    run, decided = chunk(run, 2, Observation(job=timed_out("102"), saved_mark="checkpoint-100"))
    assert core.Submit("train", 3) in decided
    run, decided = chunk(run, 3, Observation(job=timed_out("103"), saved_mark="checkpoint-100"))
    assert run.state is RunState.FAILED
    assert any(isinstance(a, core.Emit) and a.kind is EventKind.RETRIES_EXHAUSTED for a in decided)
    assert budget_use(run.stage("train").attempts[1], 1) == (True, "time limit without a new checkpoint")


def test_a_crash_after_a_new_checkpoint_still_counts() -> None:
    run = first_chunk(max_attempts=1)
    failed = JobInfo(job_id="101", name="t", phase=JobPhase.FAILED, raw_state="FAILED", exit_code=1, end_time=T0)
    run, _ = chunk(run, 1, Observation(job=failed, saved_mark="checkpoint-100"))
    assert run.state is RunState.FAILED
    assert budget_use(run.stage("train").attempts[0], 1) == (True, "ended failed")


def test_the_resubmission_says_the_chunk_was_not_counted() -> None:
    run = first_chunk(max_attempts=1)
    _, decided = chunk(run, 1, Observation(job=timed_out("101"), saved_mark="checkpoint-100"))
    (event,) = [a for a in decided if isinstance(a, core.Emit) and a.kind is EventKind.RESUBMITTED]
    assert event.data["counted"] is False
    assert "time limit after a new checkpoint (checkpoint-100): progress" in event.message


def attempt(**kw: object) -> AttemptView:
    values: dict[str, object] = {"number": 2, "state": AttemptState.FAILED, "ended_at": T0, **kw}
    return AttemptView(**values)  # type: ignore[arg-type]


def test_why_each_attempt_counted_or_not() -> None:
    preempted = attempt(state=AttemptState.CANCELLED, outcome=Outcome.RESUBMIT, cause="slurm_preempted",
                        start_mark="checkpoint-1", saved_mark="checkpoint-2")
    assert budget_use(preempted, 1) == (False, "preemption after a new checkpoint (checkpoint-2): progress")
    same = dataclasses.replace(preempted, saved_mark="checkpoint-1")
    assert budget_use(same, 1) == (True, "preemption without a new checkpoint")
    assert budget_use(attempt(reason="TimeLimit", saved_mark="checkpoint-1"), 1)[0] is False
    # Nothing saved at all, not even before: no progress.
    assert budget_use(attempt(reason="TimeLimit"), 1) == (True, "time limit without a new checkpoint")
    assert budget_use(attempt(cause="nccl_error", outcome=Outcome.RESUBMIT), 1) == (True, "ended failed: nccl_error")
    assert budget_use(attempt(), 3) == (False, "before the last retry")
    assert budget_use(attempt(outcome=Outcome.OPERATOR, cause="held"), 1)[0] is False
    assert budget_use(attempt(cause=CANNOT_START), 1) == (False, "cannot_start: not the run's fault")
    assert budget_use(attempt(state=AttemptState.RUNNING, ended_at=None), 1) == (True, "not ended yet")
    assert budget_use(attempt(state=AttemptState.SUCCEEDED), 1) == (True, "succeeded")


# ---- `show` says per attempt whether it counted and why (real SQLite, both read paths) ---------------


def test_show_says_whether_each_attempt_counted(tmp_path: Path) -> None:
    (tmp_path / "train.sh").write_text("#!/bin/bash\ntrue\n")
    spec = tmp_path / "chain.yaml"
    spec.write_text(yaml.safe_dump({"name": "chain", "backend": "local", "workdir": "work",
                                    "stages": [{"name": "train", "script": "train.sh", "max_attempts": 2}]}))
    home = tmp_path / "home"
    sv = Supervisor(home)
    sv.register(spec, "local")
    with sv.sessions.begin() as session:
        (train,) = session.query(Run).one().stages
        train.state = "running"
        rows: list[dict[str, Any]] = [
            {"state": "failed", "reason": "TimeLimit", "start_mark": None, "saved_mark": "checkpoint-100"},
            {"state": "cancelled", "cause": "slurm_time_limit", "outcome": "resubmit",
             "start_mark": "checkpoint-100", "saved_mark": "checkpoint-100"},
            {"state": "running", "start_mark": "checkpoint-100", "saved_mark": "checkpoint-100"},
        ]
        for number, values in enumerate(rows, start=1):
            session.add(Attempt(stage_id=train.id, number=number, tag=f"chain-{number}", backend="local",
                                job_id=str(number), submitted_at=T0, **values))
    for data in (sv.show("chain"), readmodels.FileReader(home / readmodels.DB_FILE).show("chain")):
        attempts = data["stages"][0]["attempts"]
        assert [(a["counted"], a["counted_why"]) for a in attempts] == [
            (False, "time limit after a new checkpoint (checkpoint-100): progress"),
            (True, "time limit without a new checkpoint"),
            (True, "not ended yet"),
        ]
        assert attempts[0]["reason"] == "TimeLimit" and attempts[1]["cause"] == "slurm_time_limit"  # kept
    # The daemon's view agrees with what `show` says.
    with sv.sessions() as session:
        assert sv.repo.view(session, sv.repo.run_named(session, "chain")).stage("train").used == 2
