"""Reactions to live attempts: what one tick's observation of an attempt means.

An observation is read in a fixed order, each step a small function: the facts it records
(:func:`_facts`), the milestones that say the work is done, then the first of: a cancel of ours still
pending, a failure signature, an operator's hold, a job that can never start, the job's end, a stall.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from supervisor.domain import verdict
from supervisor.domain.core import exclusion
from supervisor.domain.core.actions import (
    Action,
    AttemptChanges,
    Cancel,
    Emit,
    Outcome,
    SetRun,
    UpdateAttempt,
)
from supervisor.domain.core.pending import cannot_start
from supervisor.domain.core.views import (
    AttemptView,
    Observation,
    RunView,
    StageView,
)
from supervisor.domain.types import (
    AttemptState,
    EventKind,
    JobInfo,
    JobPhase,
    LogMatch,
    Progress,
    RunState,
    SignatureAction,
)

# A job missing from squeue, scontrol and sacct for this many successful polls in a row is gone for good.
VANISHED_AFTER = 3
# The cause of an attempt ended by its stage's `finish_grace`: quiet that long after its work was done.
FINISH_GRACE = "finish_grace"

# What one step decided: the attempt's changes and the actions after them; None: not this step's case.
Decision = tuple[AttemptChanges, list[Action]] | None


def observe(run: RunView, observations: Mapping[tuple[str, int], Observation], now: datetime) -> list[Action]:
    """React to what was seen about the run's live attempts."""
    actions: list[Action] = []
    for stage in run.stages:
        for attempt in stage.attempts:
            if not attempt.state.live or attempt.state is AttemptState.SUBMITTING:
                continue
            obs = observations.get((stage.name, attempt.number))
            if obs is not None:
                actions.extend(_observe_attempt(run, stage, attempt, obs, now))
    return actions


def wants_job_nodes(attempt: AttemptView, matches: Sequence[LogMatch]) -> bool:
    """A fault that may bench a node was read before any poll learnt the job's nodes: which node a line
    names, or whether the job had only one, is judged against them."""
    return not attempt.nodes and any(m.action is SignatureAction.RESUBMIT_EXCLUDE_NODE for m in matches)


def wants_node_addresses(attempt: AttemptView, job: JobInfo | None, matches: Sequence[LogMatch]) -> tuple[str, ...]:
    """The allocation's nodes whose addresses it takes to tell which of them a failure line names (none: no
    lookup). A host that already is one of the allocation's node names needs none."""
    nodes = exclusion.allocation(attempt, job)
    wanted = any(m.action is SignatureAction.RESUBMIT_EXCLUDE_NODE and exclusion.needs_addresses(m.node, nodes)
                 for m in matches)
    return nodes if wanted else ()


def wants_down_nodes(attempt: AttemptView, job: JobInfo | None, matches: Sequence[LogMatch]) -> tuple[str, ...]:
    """The allocation's nodes to ask the scheduler about (none: no lookup): a fault that benches a node decides
    and names none, on a job of several nodes. SLURM marks a node down before it fails the job's step."""
    cause = verdict.read(matches).cause
    if cause is None or cause.action is not SignatureAction.RESUBMIT_EXCLUDE_NODE or cause.node:
        return ()
    nodes = exclusion.allocation(attempt, job)
    return nodes if len(nodes) > 1 else ()


def _observe_attempt(
    run: RunView, stage: StageView, attempt: AttemptView, obs: Observation, now: datetime
) -> list[Action]:
    job = _job(attempt, obs)
    changes, actions = _facts(stage, attempt, obs, job, now)
    reading = verdict.read(obs.matches)
    work_done = attempt.work_done
    if not work_done and (obs.work_finished or reading.finishes):
        # Recorded whichever comes first, the final checkpoint or the line: the accounting counts a finished
        # attempt's time as used, and `show` says the work was done.
        work_done = True
        changes = changes.merged(work_done=True)
        if not reading.finishes:
            actions.append(Emit(EventKind.MILESTONE, "the final checkpoint is complete", stage.name,
                                attempt.number, {"saved_mark": obs.saved_mark}))
    if reading.finishes:
        first = reading.finishes[0]
        actions.append(Emit(EventKind.MILESTONE, f"{first.signature}: {first.text}", stage.name, attempt.number,
                            {"line": first.line}))

    if attempt.cancel_requested:
        more, decided = _pending_cancel(stage, attempt, job, now)
        decision: Decision = (changes.merged(**more.items()), decided) if more or decided else None
    else:
        decision = (
            _signature(run, stage, attempt, reading.cause, work_done, job, obs)
            or _held(run, stage, attempt, job)
            or cannot_start(stage, attempt, job, now)
            or _job_ended(run, stage, attempt, job, obs, work_done, now)
            or _stall(stage, attempt, obs, changes, work_done, now)
        )
        if decision is not None:
            more, decided = decision
            decision = (changes.merged(**more.items()), decided)
    if decision is None:
        return [UpdateAttempt(stage.name, attempt.number, changes), *actions] if changes else actions
    # A decision always records the attempt's changes first, even none: the order is part of the contract.
    final, decided = decision
    if final or not attempt.cancel_requested:
        return [UpdateAttempt(stage.name, attempt.number, final), *actions, *decided]
    return [*actions, *decided]


def _job(attempt: AttemptView, obs: Observation) -> JobInfo | None:
    """The cluster's answer; a job no source has known for several polls ended without a record."""
    if obs.job is None and obs.missing_polls >= VANISHED_AFTER:
        return JobInfo(job_id=attempt.job_id or "", name="", phase=JobPhase.FAILED, raw_state="VANISHED",
                       reason="job left the queue with no final state on record")
    return obs.job


def _facts(
    stage: StageView, attempt: AttemptView, obs: Observation, job: JobInfo | None, now: datetime
) -> tuple[AttemptChanges, list[Action]]:
    """What the observation records whatever else happens: output, progress, nodes, the start."""
    # A checkpoint saved since the last tick counts as life: saving can be silent for a long time.
    saved = obs.saved_mark is not None and obs.saved_mark != attempt.saved_mark
    changes = AttemptChanges(
        last_output_at=now if obs.new_output or saved else None,
        saved_mark=obs.saved_mark if saved else None,
    )
    actions: list[Action] = []
    if obs.progress is not None and follows_bar(attempt, obs.progress):
        first = attempt.first_step_at is None
        changes = changes.merged(progress_step=obs.progress.step, progress_total=obs.progress.total, progress_at=now,
                                 first_step_at=now if first else None, first_step=obs.progress.step if first else None)
    if obs.loss is not None:
        changes = changes.merged(loss=obs.loss)
    if job is not None:
        # A job releasing its nodes lists fewer of them: the allocation is the one recorded while it ran.
        releasing = job.releasing_nodes and attempt.nodes
        if job.nodes and job.nodes != attempt.nodes and job.phase is not JobPhase.PENDING and not releasing:
            changes = changes.merged(nodes=job.nodes)
        changes = changes.merged(reason=job.reason)
        if job.phase is JobPhase.RUNNING and attempt.state is AttemptState.QUEUED:
            changes = changes.merged(state=AttemptState.RUNNING, started_at=job.start_time or now)
            actions.append(Emit(EventKind.STARTED, f"job {attempt.job_id} started on {job.nodes or '?'}",
                                stage.name, attempt.number))
    return changes, actions


def follows_bar(attempt: AttemptView, progress: Progress) -> bool:
    """Whether a progress bar is the one the attempt follows: the trainer's bar counts the most steps of the
    job, so a bar with a smaller total (evaluation, a dataset pass) never replaces it."""
    if progress.total is None:
        return attempt.progress_total is None
    return attempt.progress_total is None or progress.total >= attempt.progress_total


def _pending_cancel(
    stage: StageView, attempt: AttemptView, job: JobInfo | None, now: datetime
) -> tuple[AttemptChanges, list[Action]]:
    """We asked for a cancel: record it once the job has ended, else ask again (scancel may not have gone through)."""
    if job is not None and job.phase.finished:
        return _ended(job, AttemptState.CANCELLED, now), []
    return AttemptChanges(), [Cancel(stage.name, attempt.number, attempt.outcome or Outcome.RESUBMIT,
                                     attempt.cause or "cancel")]


def _signature(
    run: RunView, stage: StageView, attempt: AttemptView, cause: LogMatch | None, work_done: bool,
    job: JobInfo | None, obs: Observation,
) -> Decision:
    """A failure signature decides: end the attempt, and say what should follow."""
    if cause is None:
        return None
    outcome = _outcome_for(cause.action, work_done)
    limit = run.resubmit_limits.get(cause.signature)
    if outcome is Outcome.RESUBMIT and limit is not None:
        earlier = sum(1 for a in stage.attempts if a.cause == cause.signature and a.number != attempt.number)
        if earlier >= limit:
            # The same fault again after its resubmissions: more attempts will not help.
            outcome = Outcome.FAIL
    data: dict[str, object] = {"line": cause.line, "text": cause.text, "action": cause.action.value,
                               "context": list(cause.context)}
    judged = exclusion.Judgement()
    if outcome is Outcome.RESUBMIT and cause.action is SignatureAction.RESUBMIT_EXCLUDE_NODE:
        judged = exclusion.judge(run, stage, attempt, cause, job, obs.node_addresses, obs.down_nodes)
        data.update(judged.data())
    actions: list[Action] = [Emit(EventKind.SIGNATURE, f"{cause.signature} at line {cause.line}: {cause.text}",
                                  stage.name, attempt.number, data)]
    actions.extend(judged.exclude)
    if judged.capped:
        # Past the cap more exclusions would bench the run's own capacity: a person looks at the nodes instead.
        actions.append(Emit(
            EventKind.NEEDS_ATTENTION,
            f"needs attention: {', '.join(judged.capped)} not excluded after {cause.signature}: the run already "
            f"excludes {len(run.excluded_nodes)} node(s) ({', '.join(run.excluded_nodes)}), its max_excluded_nodes "
            f"is {run.max_excluded_nodes}; resubmitting without excluding more",
            stage.name, attempt.number,
            {"capped": list(judged.capped), "excluded": list(run.excluded_nodes),
             "max_excluded_nodes": run.max_excluded_nodes, "line": cause.line, "text": cause.text}))
    actions.append(Cancel(stage.name, attempt.number, outcome, cause.signature))
    return AttemptChanges(), actions


def _held(run: RunView, stage: StageView, attempt: AttemptView, job: JobInfo | None) -> Decision:
    """An operator held the job: like their scancel, a human decides what happens next."""
    if job is None or job.phase is not JobPhase.HELD:
        return None
    actions: list[Action] = [
        Cancel(stage.name, attempt.number, Outcome.OPERATOR, "held"),
        Emit(EventKind.PAUSED_BY_OPERATOR, f"job {attempt.job_id} was held outside the supervisor; run paused",
             stage.name, attempt.number),
    ]
    if run.state is not RunState.PAUSED:
        actions.append(SetRun(RunState.PAUSED))
    return AttemptChanges(), actions


def _job_ended(
    run: RunView, stage: StageView, attempt: AttemptView, job: JobInfo | None, obs: Observation, work_done: bool,
    now: datetime,
) -> Decision:
    if job is None or not job.phase.finished:
        return None
    if job.phase is JobPhase.CANCELLED:
        # Nobody asked us to cancel it: an operator did. Pause; a human decides what happens next.
        changes = _ended(job, AttemptState.CANCELLED, now).merged(outcome=Outcome.OPERATOR,
                                                                       cause="cancelled_by_operator")
        actions: list[Action] = [Emit(EventKind.PAUSED_BY_OPERATOR,
                                      f"job {attempt.job_id} was cancelled outside the supervisor; run paused",
                                      stage.name, attempt.number)]
        if run.state is not RunState.PAUSED:
            actions.append(SetRun(RunState.PAUSED))
        return changes, actions
    ok = obs.succeeded if obs.succeeded is not None else job.phase is JobPhase.COMPLETED
    ok = ok or work_done
    changes = _ended(job, AttemptState.SUCCEEDED if ok else AttemptState.FAILED, now)
    if ok:
        return changes, []
    return changes, [Emit(EventKind.CRASHED,
                          f"job {attempt.job_id} ended {job.raw_state or job.phase.value} (exit {job.exit_code})",
                          stage.name, attempt.number, {"exit_code": job.exit_code, "reason": job.reason})]


def _stall(
    stage: StageView, attempt: AttemptView, obs: Observation, changes: AttemptChanges, work_done: bool,
    now: datetime,
) -> Decision:
    if attempt.state is not AttemptState.RUNNING:
        return None
    stall = _stalled(stage, attempt, now, changes, work_done)
    if stall is None:
        return None
    cause, message = stall
    if obs.hang_hint is not None:
        # The log stopped right after a known hang hint: name it, so its remedy runs with the resubmit.
        cause, message = obs.hang_hint, f"{message} right after {obs.hang_hint}"
    return AttemptChanges(), [
        Emit(EventKind.STALLED, message, stage.name, attempt.number),
        Cancel(stage.name, attempt.number, Outcome.FINISH if work_done else Outcome.RESUBMIT, cause),
    ]


def _ended(job: JobInfo, state: AttemptState, now: datetime) -> AttemptChanges:
    # A job that ran and ended between two polls was never seen running: keep when it started.
    return AttemptChanges(state=state, ended_at=job.end_time or now, exit_code=job.exit_code,
                          nodes=job.nodes or None, started_at=job.start_time)


def _outcome_for(action: SignatureAction, work_done: bool) -> Outcome:
    if work_done:
        # Never retrain a finished run: whatever breaks after the final checkpoint, the work is done.
        return Outcome.FINISH
    if action is SignatureAction.FAIL:
        return Outcome.FAIL
    if action is SignatureAction.FINISH:
        return Outcome.FINISH
    return Outcome.RESUBMIT


def _stalled(
    stage: StageView, attempt: AttemptView, now: datetime, changes: AttemptChanges, work_done: bool = False,
) -> tuple[str, str] | None:
    started = attempt.started_at
    if started is None:
        return None
    last = changes.last_output_at or attempt.last_output_at
    since = max(started, last) if last is not None else started
    quiet = (now - since).total_seconds()
    if work_done and stage.finish_grace is not None and quiet > stage.finish_grace \
            and (stage.stall_timeout is None or stage.finish_grace < stage.stall_timeout):
        # The work is saved and the job has gone quiet: the end-of-training hang, which would otherwise
        # hold every node until the NCCL watchdog (10 min) or the stall timeout ends it.
        return (FINISH_GRACE, f"no log output for {quiet:.0f}s after the work was done: end-of-training hang")
    # Compared in seconds: a timedelta of an infinite timeout would overflow.
    first_step = changes.first_step_at or attempt.first_step_at
    if (stage.startup_timeout is not None and first_step is None
            and (now - started).total_seconds() > stage.startup_timeout):
        return ("startup_timeout", f"no training step {stage.startup_timeout:.0f}s after start: startup hang")
    if stage.stall_timeout is not None and quiet > stage.stall_timeout:
        return ("stall_timeout", f"no log output for {quiet:.0f}s: hang")
    return None
