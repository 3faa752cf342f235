"""The pure decision core: no cluster, no clock, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from supervisor.domain import core
from supervisor.domain.core import AttemptView, Observation, Outcome, RunView, StageView
from supervisor.domain.core.pending import pending_since, reason_code
from supervisor.domain.core.views import CANNOT_START, EXCLUSIONS_IN_THE_WAY
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

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def stage(
    name: str = "train", state: StageState = StageState.RUNNING, attempts: tuple[AttemptView, ...] = (), **kw: Any
) -> StageView:
    return StageView(
        name=name,
        state=state,
        max_attempts=kw.pop("max_attempts", 3),
        attempts=attempts,
        retry_backoff=kw.pop("retry_backoff", 0.0),
        **kw,
    )


def running(number: int = 1, **kw: object) -> AttemptView:
    return AttemptView(number=number, state=AttemptState.RUNNING, job_id=str(100 + number), started_at=T0, **kw)  # type: ignore[arg-type]


def job(phase: JobPhase, exit_code: int | None = None, nodes: str = "node01") -> JobInfo:
    return JobInfo(job_id="101", name="t", phase=phase, exit_code=exit_code, nodes=nodes, raw_state=phase.name)


def kinds(actions: list[core.Action]) -> list[str]:
    return [type(a).__name__ for a in actions]


def test_first_stage_is_submitted_and_run_starts() -> None:
    run = RunView("r", RunState.PENDING, (stage("a", StageState.PENDING), stage("b", StageState.PENDING)))
    actions = core.advance(run, T0)
    assert actions == [core.SetRun(RunState.RUNNING), core.SetStage("a", StageState.RUNNING), core.Submit("a", 1)]


def test_next_stage_starts_only_after_previous_succeeded() -> None:
    done = AttemptView(1, AttemptState.SUCCEEDED, ended_at=T0)
    run = RunView("r", RunState.RUNNING, (stage("a", StageState.RUNNING, (done,)), stage("b", StageState.PENDING)))
    assert kinds(core.advance(run, T0)) == ["SetStage", "Emit"]
    run = RunView("r", RunState.RUNNING, (stage("a", StageState.SUCCEEDED, (done,)), stage("b", StageState.PENDING)))
    assert core.Submit("b", 1) in core.advance(run, T0)


def test_all_stages_succeeded_means_run_succeeded() -> None:
    done = AttemptView(1, AttemptState.SUCCEEDED, ended_at=T0)
    run = RunView("r", RunState.RUNNING, (stage("a", StageState.SUCCEEDED, (done,)),))
    assert core.SetRun(RunState.SUCCEEDED) in core.advance(run, T0)


def test_failure_is_retried_until_budget_then_run_fails() -> None:
    failed = tuple(AttemptView(n, AttemptState.FAILED, ended_at=T0) for n in (1, 2))
    run = RunView("r", RunState.RUNNING, (stage("a", attempts=failed),))
    assert core.Submit("a", 3) in core.advance(run, T0)
    failed3 = (*failed, AttemptView(3, AttemptState.FAILED, ended_at=T0))
    run = RunView("r", RunState.RUNNING, (stage("a", attempts=failed3),))
    actions = core.advance(run, T0)
    assert core.SetRun(RunState.FAILED) in actions
    assert "retries_exhausted" in [a.kind for a in actions if isinstance(a, core.Emit)]


def test_resubmission_waits_for_exponential_backoff() -> None:
    failed = (AttemptView(1, AttemptState.FAILED, ended_at=T0), AttemptView(2, AttemptState.FAILED, ended_at=T0))
    s = stage("a", attempts=failed, retry_backoff=10.0, max_attempts=5)
    run = RunView("r", RunState.RUNNING, (s,))
    assert core.backoff(s) == 20.0
    assert core.advance(run, T0 + timedelta(seconds=19)) == []
    assert core.Submit("a", 3) in core.advance(run, T0 + timedelta(seconds=21))


def test_retry_budget_starts_fresh() -> None:
    failed = tuple(AttemptView(n, AttemptState.FAILED, ended_at=T0) for n in (1, 2, 3))
    run = RunView("r", RunState.RUNNING, (stage("a", attempts=failed, budget_start=4),))
    assert core.Submit("a", 4) in core.advance(run, T0)


def test_paused_run_submits_nothing() -> None:
    run = RunView("r", RunState.PAUSED, (stage("a", StageState.PENDING),))
    assert core.advance(run, T0) == []


def test_job_exit_nonzero_is_crash() -> None:
    run = RunView("r", RunState.RUNNING, (stage("a", attempts=(running(),)),))
    actions = core.observe(run, {("a", 1): Observation(job=job(JobPhase.FAILED, 1))}, T0)
    update = actions[0]
    assert isinstance(update, core.UpdateAttempt) and update.changes.state is AttemptState.FAILED
    assert "crashed" in [a.kind for a in actions if isinstance(a, core.Emit)]


def test_unknown_poll_changes_nothing() -> None:
    run = RunView("r", RunState.RUNNING, (stage("a", attempts=(running(),)),))
    assert core.observe(run, {("a", 1): Observation(job=None)}, T0 + timedelta(days=1)) == []


def test_external_cancel_pauses_run() -> None:
    run = RunView("r", RunState.RUNNING, (stage("a", attempts=(running(),)),))
    actions = core.observe(run, {("a", 1): Observation(job=job(JobPhase.CANCELLED))}, T0)
    assert core.SetRun(RunState.PAUSED) in actions
    update = actions[0]
    assert isinstance(update, core.UpdateAttempt) and update.changes.outcome is Outcome.OPERATOR


def test_held_job_is_an_operator_action() -> None:
    run = RunView("r", RunState.RUNNING, (stage("a", attempts=(running(),)),))
    actions = core.observe(run, {("a", 1): Observation(job=job(JobPhase.HELD))}, T0)
    assert core.Cancel("a", 1, Outcome.OPERATOR, "held") in actions
    assert core.SetRun(RunState.PAUSED) in actions
    # Once the held job is gone the paused run submits nothing until `resume`.
    gone = AttemptView(1, AttemptState.CANCELLED, outcome=Outcome.OPERATOR, cause="held", ended_at=T0)
    assert core.advance(RunView("r", RunState.PAUSED, (stage("a", attempts=(gone,)),)), T0) == []


def match(name: str, action: SignatureAction, node: str | None = None) -> LogMatch:
    return LogMatch(signature=name, action=action, line=7, text="boom", node=node)


def test_resubmit_signature_cancels_at_once() -> None:
    run = RunView("r", RunState.RUNNING, (stage("a", attempts=(running(),)),))
    obs = Observation(job=job(JobPhase.RUNNING), matches=(match("nvcc_timeout", SignatureAction.RESUBMIT),))
    assert core.Cancel("a", 1, Outcome.RESUBMIT, "nvcc_timeout") in core.observe(run, {("a", 1): obs}, T0)


def test_exclude_node_named_in_line_of_the_allocation_never_the_whole_allocation() -> None:
    run = RunView("r", RunState.RUNNING, (stage("a", attempts=(running(),)),))
    named = Observation(job=job(JobPhase.RUNNING, nodes="gpu[16-17]"),
                        matches=(match("ecc_error", SignatureAction.RESUBMIT_EXCLUDE_NODE, "gpu17"),))
    assert [a.node for a in core.observe(run, {("a", 1): named}, T0) if isinstance(a, core.ExcludeNode)] == ["gpu17"]
    unnamed = Observation(
        job=job(JobPhase.RUNNING, nodes="node[01-02]"),
        matches=(match("nccl_error", SignatureAction.RESUBMIT_EXCLUDE_NODE),),
    )
    # No node named on a two-node allocation: no evidence against either (tests/test_exclusion.py has the rules).
    assert [a for a in core.observe(run, {("a", 1): unnamed}, T0) if isinstance(a, core.ExcludeNode)] == []


def test_fail_signature_fails_without_retry() -> None:
    run = RunView("r", RunState.RUNNING, (stage("a", attempts=(running(),)),))
    obs = Observation(matches=(match("cuda_oom", SignatureAction.FAIL),))
    assert core.Cancel("a", 1, Outcome.FAIL, "cuda_oom") in core.observe(run, {("a", 1): obs}, T0)
    ended = AttemptView(1, AttemptState.CANCELLED, outcome=Outcome.FAIL, cause="cuda_oom", ended_at=T0)
    actions = core.advance(RunView("r", RunState.RUNNING, (stage("a", attempts=(ended,)),)), T0)
    assert core.SetRun(RunState.FAILED) in actions and not any(isinstance(a, core.Submit) for a in actions)


def test_hang_after_final_checkpoint_finishes_the_stage() -> None:
    run = RunView("r", RunState.RUNNING, (stage("train", attempts=(running(),)), stage("merge", StageState.PENDING)))
    obs = Observation(matches=(match("nccl_watchdog_timeout", SignatureAction.RESUBMIT),), work_finished=True)
    assert core.Cancel("train", 1, Outcome.FINISH, "nccl_watchdog_timeout") in core.observe(
        run, {("train", 1): obs}, T0
    )
    ended = AttemptView(1, AttemptState.CANCELLED, outcome=Outcome.FINISH, ended_at=T0)
    run = RunView("r", RunState.RUNNING, (stage("train", attempts=(ended,)), stage("merge", StageState.PENDING)))
    assert core.SetStage("train", StageState.SUCCEEDED) in core.advance(run, T0)


def test_training_completed_then_crash_counts_as_success() -> None:
    run = RunView("r", RunState.RUNNING, (stage("a", attempts=(running(),)),))
    seen = core.observe(
        run, {("a", 1): Observation(matches=(match("training_completed", SignatureAction.FINISH),))}, T0
    )
    update = seen[0]
    assert isinstance(update, core.UpdateAttempt) and update.changes.work_done is True
    run = RunView("r", RunState.RUNNING, (stage("a", attempts=(running(work_done=True),)),))
    actions = core.observe(run, {("a", 1): Observation(job=job(JobPhase.FAILED, 134))}, T0)
    first = actions[0]
    assert isinstance(first, core.UpdateAttempt) and first.changes.state is AttemptState.SUCCEEDED


def test_stall_timeout_resubmits() -> None:
    s = stage("a", attempts=(running(last_output_at=T0),), stall_timeout=60.0)
    run = RunView("r", RunState.RUNNING, (s,))
    assert core.observe(run, {("a", 1): Observation()}, T0 + timedelta(seconds=59)) == []
    actions = core.observe(run, {("a", 1): Observation()}, T0 + timedelta(seconds=61))
    assert core.Cancel("a", 1, Outcome.RESUBMIT, "stall_timeout") in actions


def test_new_output_resets_stall_clock() -> None:
    s = stage("a", attempts=(running(last_output_at=T0),), stall_timeout=60.0)
    run = RunView("r", RunState.RUNNING, (s,))
    actions = core.observe(run, {("a", 1): Observation(new_output=True)}, T0 + timedelta(seconds=61))
    assert not any(isinstance(a, core.Cancel) for a in actions)


def test_startup_timeout_until_first_step() -> None:
    s = stage("a", attempts=(running(last_output_at=T0 + timedelta(seconds=100)),), startup_timeout=120.0)
    run = RunView("r", RunState.RUNNING, (s,))
    actions = core.observe(run, {("a", 1): Observation(new_output=True)}, T0 + timedelta(seconds=121))
    assert core.Cancel("a", 1, Outcome.RESUBMIT, "startup_timeout") in actions
    s2 = stage("a", attempts=(running(first_step_at=T0),), startup_timeout=120.0)
    assert core.observe(RunView("r", RunState.RUNNING, (s2,)), {("a", 1): Observation()}, T0 + timedelta(hours=1)) == []


def test_operator_cancel_does_not_use_budget_and_resume_resubmits() -> None:
    ended = AttemptView(1, AttemptState.CANCELLED, outcome=Outcome.OPERATOR, ended_at=T0)
    s = stage("a", attempts=(ended,), max_attempts=1)
    assert s.used == 0
    assert core.advance(RunView("r", RunState.PAUSED, (s,)), T0) == []
    assert core.Submit("a", 2) in core.advance(RunView("r", RunState.RUNNING, (s,)), T0)


def test_cancel_requested_but_job_alive_asks_again() -> None:
    a = running(cancel_requested=True, outcome=Outcome.RESUBMIT, cause="nvcc_timeout")
    run = RunView("r", RunState.RUNNING, (stage("a", attempts=(a,)),))
    assert core.Cancel("a", 1, Outcome.RESUBMIT, "nvcc_timeout") in core.observe(
        run, {("a", 1): Observation(job=job(JobPhase.RUNNING))}, T0
    )


def test_signature_with_resubmit_limit_fails_when_it_comes_back() -> None:
    first = AttemptView(1, AttemptState.CANCELLED, outcome=Outcome.RESUBMIT, cause="illegal_memory_access", ended_at=T0)
    run = RunView(
        "r", RunState.RUNNING, (stage("a", attempts=(first, running(2))),), resubmit_limits={"illegal_memory_access": 1}
    )
    obs = Observation(matches=(match("illegal_memory_access", SignatureAction.RESUBMIT),))
    assert core.Cancel("a", 2, Outcome.FAIL, "illegal_memory_access") in core.observe(run, {("a", 2): obs}, T0)
    run_once = RunView(
        "r", RunState.RUNNING, (stage("a", attempts=(running(1),)),), resubmit_limits={"illegal_memory_access": 1}
    )
    assert core.Cancel("a", 1, Outcome.RESUBMIT, "illegal_memory_access") in core.observe(run_once, {("a", 1): obs}, T0)


def test_job_first_seen_ended_keeps_its_start_time() -> None:
    queued = AttemptView(number=1, state=AttemptState.QUEUED, job_id="101")
    run = RunView("r", RunState.RUNNING, (stage("a", attempts=(queued,)),))
    started = T0 + timedelta(seconds=5)
    info = JobInfo(
        job_id="101",
        name="t",
        phase=JobPhase.COMPLETED,
        exit_code=0,
        start_time=started,
        end_time=T0 + timedelta(seconds=9),
    )
    update = core.observe(run, {("a", 1): Observation(job=info)}, T0 + timedelta(seconds=30))[0]
    assert isinstance(update, core.UpdateAttempt)
    assert update.changes.started_at == started and update.changes.state is AttemptState.SUCCEEDED


def test_stall_right_after_a_hang_hint_is_named_after_it() -> None:
    s = stage("a", attempts=(running(last_output_at=T0),), stall_timeout=60.0)
    run = RunView("r", RunState.RUNNING, (s,))
    obs = Observation(hang_hint="extension_build_hang")
    actions = core.observe(run, {("a", 1): obs}, T0 + timedelta(seconds=61))
    assert core.Cancel("a", 1, Outcome.RESUBMIT, "extension_build_hang") in actions
    assert any(
        isinstance(a, core.Emit) and a.kind == "stalled" and "extension_build_hang" in a.message for a in actions
    )


# ---- jobs that can never start -----------------------------------------------------------------------

def pending_job(reason: str, excluded: str | None = None) -> JobInfo:
    return JobInfo(job_id="101", name="t", phase=JobPhase.PENDING, raw_state="PENDING", reason=reason,
                   submit_time=T0, excluded_nodes=excluded)


def waiting(reason: str, since: datetime = T0) -> AttemptView:
    """Queued since T0, the cluster's reason first seen at ``since``."""
    return AttemptView(1, AttemptState.QUEUED, job_id="101", submitted_at=T0, reason=reason, reason_since=since)


def observe_pending(attempt: AttemptView, info: JobInfo, at: datetime, **kw: Any) -> list[core.Action]:
    run = RunView("r", RunState.RUNNING, (stage("a", attempts=(attempt,), **kw),))
    return core.observe(run, {("a", 1): Observation(job=info)}, at)


def test_a_reason_that_never_clears_needs_attention_after_the_grace_period() -> None:
    info = pending_job("PartitionNodeLimit")
    assert kinds(observe_pending(waiting("PartitionNodeLimit"), info, T0 + timedelta(seconds=599))) == [
        "UpdateAttempt"]
    actions = observe_pending(waiting("PartitionNodeLimit"), info, T0 + timedelta(seconds=601))
    assert kinds(actions) == ["UpdateAttempt", "Emit", "Cancel", "SetRun"]
    emit, cancel, set_run = actions[1:]
    assert isinstance(emit, core.Emit) and emit.kind == "needs_attention"
    assert emit.data["pending_reason"] == "PartitionNodeLimit" and emit.data["queued_for_s"] == 601
    assert cancel == core.Cancel("a", 1, Outcome.RESUBMIT, CANNOT_START)
    assert isinstance(set_run, core.SetRun) and set_run.state is RunState.NEEDS_ATTENTION
    assert set_run.reason is not None and "PartitionNodeLimit" in set_run.reason and "101" in set_run.reason


def test_the_grace_period_is_the_stages() -> None:
    info = pending_job("QOSMaxNodePerJobLimit")
    at = T0 + timedelta(seconds=61)
    assert kinds(observe_pending(waiting("QOSMaxNodePerJobLimit"), info, at)) == ["UpdateAttempt"]
    assert "SetRun" in kinds(observe_pending(waiting("QOSMaxNodePerJobLimit"), info, at, pending_grace=60.0))


def test_reasons_that_clear_by_waiting_stay_quiet() -> None:
    for reason in ("Priority", "Resources", "BeginTime", "Dependency", "AssocGrpNodeLimit", "QOSMaxJobsPerUserLimit"):
        actions = observe_pending(waiting(reason), pending_job(reason), T0 + timedelta(days=3))
        assert kinds(actions) == ["UpdateAttempt"], reason


def test_the_grace_period_counts_from_when_the_reason_appeared() -> None:
    # Queued for a day behind other jobs, then a node it needs went away: the clock starts now, not at submit.
    attempt = waiting("Priority")
    info = pending_job("ReqNodeNotAvail, UnavailableNodes:n01")
    assert kinds(observe_pending(attempt, info, T0 + timedelta(days=1))) == ["UpdateAttempt"]
    assert pending_since(attempt, info, T0 + timedelta(days=1)) == T0 + timedelta(days=1)
    # Another node list is the same reason: the clock keeps running.
    later = waiting("ReqNodeNotAvail, UnavailableNodes:n01", since=T0 + timedelta(days=1))
    other = pending_job("ReqNodeNotAvail,_UnavailableNodes:n02")
    assert "SetRun" in kinds(observe_pending(later, other, T0 + timedelta(days=1, seconds=601)))


def test_reason_codes_as_squeue_and_scontrol_print_them() -> None:
    assert reason_code("ReqNodeNotAvail, UnavailableNodes:n[01-02]") == "ReqNodeNotAvail"
    assert reason_code("ReqNodeNotAvail,_UnavailableNodes:n01") == "ReqNodeNotAvail"
    assert reason_code("PartitionNodeLimit") == "PartitionNodeLimit"
    assert reason_code(None) is None and reason_code("") is None


def test_exclusions_in_the_way_resubmit_without_using_the_budget() -> None:
    info = pending_job("ReqNodeNotAvail, UnavailableNodes:", excluded="n01")
    actions = observe_pending(waiting("ReqNodeNotAvail"), info, T0 + timedelta(seconds=601))
    assert core.Cancel("a", 1, Outcome.RESUBMIT, EXCLUSIONS_IN_THE_WAY) in actions
    assert "SetRun" not in kinds(actions)
    assert any(isinstance(a, core.Emit) and a.kind == "stalled" and "n01" in a.message for a in actions)
    # The stage had one attempt to give and the cancelled one was not the run's fault: the next one goes.
    ended = AttemptView(1, AttemptState.CANCELLED, outcome=Outcome.RESUBMIT, cause=EXCLUSIONS_IN_THE_WAY,
                        ended_at=T0)
    s = stage("a", attempts=(ended,), max_attempts=1)
    assert s.used == 0
    assert core.Submit("a", 2) in core.advance(RunView("r", RunState.RUNNING, (s,)), T0)


def test_exclusions_do_not_explain_a_time_limit() -> None:
    info = pending_job("PartitionTimeLimit", excluded="n01")
    actions = observe_pending(waiting("PartitionTimeLimit"), info, T0 + timedelta(seconds=601))
    assert core.Cancel("a", 1, Outcome.RESUBMIT, CANNOT_START) in actions
    assert "SetRun" in kinds(actions)


def test_a_run_that_needs_attention_submits_nothing() -> None:
    ended = AttemptView(1, AttemptState.CANCELLED, outcome=Outcome.RESUBMIT, cause=CANNOT_START, ended_at=T0)
    s = stage("a", attempts=(ended,), max_attempts=1)
    assert core.advance(RunView("r", RunState.NEEDS_ATTENTION, (s,)), T0 + timedelta(hours=1)) == []
    # `resume` is the person acting: the stage tries again, and the unstarted job used none of its budget.
    assert core.Submit("a", 2) in core.advance(RunView("r", RunState.RUNNING, (s,)), T0 + timedelta(hours=1))


def test_a_complete_final_checkpoint_records_the_work_as_done_with_a_milestone() -> None:
    """Seen before the "Training completed!" line (the usual order), the checkpoint alone marks the work done."""
    run = RunView("r", RunState.RUNNING, (stage("train", attempts=(running(),)),))
    actions = core.observe(run, {("train", 1): Observation(work_finished=True, saved_mark="checkpoint-20")}, T0)
    (update,) = [a for a in actions if isinstance(a, core.UpdateAttempt)]
    assert update.changes.work_done is True
    assert [a.message for a in actions if isinstance(a, core.Emit)] == ["the final checkpoint is complete"]
    # The line, read later: its own milestone, the work already done.
    done = RunView("r", RunState.RUNNING, (stage("train", attempts=(running(work_done=True),)),))
    later = core.observe(done, {("train", 1): Observation(
        matches=(match("training_completed", SignatureAction.FINISH),), work_finished=True)}, T0)
    assert [a.kind for a in later if isinstance(a, core.Emit)] == [EventKind.MILESTONE]


def test_a_finished_job_that_goes_quiet_is_ended_after_the_finish_grace() -> None:
    """The end-of-training hang: the work is saved, the job would hold its nodes until the watchdog."""
    quiet = running(work_done=True, last_output_at=T0)
    run = RunView("r", RunState.RUNNING, (stage("train", attempts=(quiet,), stall_timeout=1800.0,
                                                finish_grace=180.0),))
    assert core.observe(run, {("train", 1): Observation(work_finished=True)}, T0 + timedelta(seconds=179)) == []
    actions = core.observe(run, {("train", 1): Observation(work_finished=True)}, T0 + timedelta(seconds=181))
    assert core.Cancel("train", 1, Outcome.FINISH, "finish_grace") in actions
    assert any(isinstance(a, core.Emit) and a.kind is EventKind.STALLED for a in actions)
    # Off, or not shorter than the stall timeout: the stall timeout decides, as before.
    for grace in (None, 3600.0):
        kept = RunView("r", RunState.RUNNING, (stage("train", attempts=(quiet,), stall_timeout=1800.0,
                                                     finish_grace=grace),))
        assert core.observe(kept, {("train", 1): Observation(work_finished=True)}, T0 + timedelta(seconds=600)) == []
    # Work not done: the grace does not apply.
    busy = RunView("r", RunState.RUNNING, (stage("train", attempts=(running(last_output_at=T0),),
                                                 finish_grace=180.0),))
    assert core.observe(busy, {("train", 1): Observation()}, T0 + timedelta(seconds=600)) == []


def test_only_progress_leaves_what_advance_decides_as_it_was() -> None:
    """The service skips reading a run again after recording progress alone (core.moves_the_run): for runs
    whose last attempt ended in every way advance tells apart, changing the attempt's progress columns that
    the view holds changes nothing advance decides."""
    later = T0 + timedelta(hours=2)
    ended = [
        AttemptView(number=1, state=AttemptState.SUCCEEDED, ended_at=T0),
        AttemptView(number=1, state=AttemptState.FAILED, ended_at=T0, cause="nccl_error"),
        AttemptView(number=1, state=AttemptState.CANCELLED, ended_at=T0, outcome=Outcome.FAIL, cause="cuda_oom"),
        AttemptView(number=1, state=AttemptState.CANCELLED, ended_at=T0, outcome=Outcome.OPERATOR),
        running(),
    ]
    for attempt in ended:
        run = RunView("r", RunState.RUNNING, (stage("a", attempts=(attempt,), max_attempts=1), stage("b")))
        progressed = AttemptView(**{**attempt.__dict__, "last_output_at": later, "first_step_at": later,
                                    "progress_total": 1000})
        moved = RunView("r", RunState.RUNNING, (stage("a", attempts=(progressed,), max_attempts=1), stage("b")))
        assert core.advance(moved, later) == core.advance(run, later)

    progress = core.UpdateAttempt("a", 1, core.AttemptChanges(last_output_at=later, progress_step=5, loss=1.5))
    assert core.moves_the_run([progress]) is False
    assert core.moves_the_run([]) is False
    for changes in (core.AttemptChanges(state=AttemptState.FAILED), core.AttemptChanges(saved_mark="m"),
                    core.AttemptChanges(reason="Priority"), core.AttemptChanges(ended_at=later, progress_step=5)):
        assert core.moves_the_run([progress, core.UpdateAttempt("a", 1, changes)]) is True
    assert core.moves_the_run([core.Emit(EventKind.MILESTONE, "m")]) is True
