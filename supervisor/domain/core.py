"""The decisions, and nothing else: given a run's state and what the cluster and the logs say, what to do.

No I/O here. The daemon builds the views from the database, gathers observations from the cluster and the
logs, calls :func:`observe` and :func:`advance`, and carries out the returned actions.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from supervisor.domain.types import (
    AttemptState,
    JobInfo,
    JobPhase,
    LogMatch,
    Progress,
    RunState,
    SignatureAction,
    StageState,
)


class Outcome(enum.StrEnum):
    """What an attempt the supervisor ended means for its stage."""

    RESUBMIT = "resubmit"
    FAIL = "fail"
    FINISH = "finish"  # the stage's work is done (e.g. the end-of-training NCCL hang)
    # Somebody else cancelled or held the job: pause, do not resubmit. Not the job's fault, so such
    # attempts do not use up the stage's budget.
    OPERATOR = "operator"
    CANCEL = "cancel"  # `supervisor cancel`: the whole run is cancelled


@dataclass(frozen=True)
class AttemptView:
    number: int
    state: AttemptState
    job_id: str | None = None
    cancel_requested: bool = False
    outcome: Outcome | None = None
    cause: str | None = None
    work_done: bool = False
    submitted_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    last_output_at: datetime | None = None
    first_step_at: datetime | None = None
    nodes: str | None = None


@dataclass(frozen=True)
class StageView:
    name: str
    kind: str
    state: StageState
    max_attempts: int
    budget_start: int = 1
    stall_timeout: float | None = None
    startup_timeout: float | None = None
    retry_backoff: float = 30.0
    attempts: tuple[AttemptView, ...] = ()

    @property
    def current(self) -> AttemptView | None:
        return self.attempts[-1] if self.attempts else None

    @property
    def used(self) -> int:
        """Attempts that count against max_attempts since the last `retry`."""
        return sum(
            1 for a in self.attempts if a.number >= self.budget_start and a.outcome is not Outcome.OPERATOR
        )


@dataclass(frozen=True)
class RunView:
    name: str
    state: RunState
    stages: tuple[StageView, ...]
    # Signature name -> how many resubmissions it may cause in one stage before the stage fails.
    resubmit_limits: Mapping[str, int] = field(default_factory=dict)

    def stage(self, name: str) -> StageView:
        return next(s for s in self.stages if s.name == name)


@dataclass(frozen=True)
class Observation:
    """What the adapters saw about one live attempt this tick."""

    job: JobInfo | None = None  # None: the cluster did not answer or does not know the job (unknown)
    matches: tuple[LogMatch, ...] = ()
    progress: Progress | None = None
    new_output: bool = False  # the log grew since the last tick
    # Kind-specific checks, done by the adapter (they read files):
    work_finished: bool = False  # e.g. the final training checkpoint is complete
    succeeded: bool | None = None  # the kind's success rule, when the job has ended
    # The hang hint the log ends on now, e.g. "extension_build_hang" (None: none, or output went on after it).
    hang_hint: str | None = None


# ---- actions -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Submit:
    stage: str
    number: int


@dataclass(frozen=True)
class Cancel:
    stage: str
    number: int
    outcome: Outcome
    cause: str


@dataclass(frozen=True)
class UpdateAttempt:
    stage: str
    number: int
    changes: Mapping[str, object]


@dataclass(frozen=True)
class SetStage:
    stage: str
    state: StageState


@dataclass(frozen=True)
class SetRun:
    state: RunState


@dataclass(frozen=True)
class Emit:
    kind: str
    message: str
    stage: str | None = None
    attempt: int | None = None
    data: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class ExcludeNode:
    node: str
    reason: str


Action = Submit | Cancel | UpdateAttempt | SetStage | SetRun | Emit | ExcludeNode


def backoff(stage: StageView) -> float:
    """Seconds to wait before the next attempt: exponential in the failures since the last `retry`."""
    failures = stage.used
    if failures <= 0 or stage.retry_backoff <= 0:
        return 0.0
    return float(min(stage.retry_backoff * 2 ** (failures - 1), 3600.0))


# ---- observe: live attempts ----------------------------------------------------------------------


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


def _observe_attempt(
    run: RunView, stage: StageView, attempt: AttemptView, obs: Observation, now: datetime
) -> list[Action]:
    actions: list[Action] = []
    changes: dict[str, object] = {}
    key = (stage.name, attempt.number)
    work_done = attempt.work_done or obs.work_finished

    if obs.new_output:
        changes["last_output_at"] = now
    if obs.progress is not None:
        changes["progress_step"] = obs.progress.step
        changes["progress_total"] = obs.progress.total
        if attempt.first_step_at is None:
            changes["first_step_at"] = now

    job = obs.job
    if job is not None:
        if job.nodes and job.nodes != attempt.nodes and job.phase is not JobPhase.PENDING:
            changes["nodes"] = job.nodes
        if job.reason:
            changes["reason"] = job.reason
        if job.phase is JobPhase.RUNNING and attempt.state is AttemptState.QUEUED:
            changes["state"] = AttemptState.RUNNING
            changes["started_at"] = job.start_time or now
            actions.append(Emit("started", f"job {attempt.job_id} started on {job.nodes or '?'}", *key))

    verdict: LogMatch | None = None
    for match in obs.matches:
        if match.action is SignatureAction.FINISH:
            if not work_done:
                work_done = True
                changes["work_done"] = True
                actions.append(
                    Emit("milestone", f"{match.signature}: {match.text}", *key, {"line": match.line})
                )
        elif match.action is not SignatureAction.IGNORE and verdict is None:
            verdict = match

    if attempt.cancel_requested:
        # Our scancel may not have gone through: the job is still there, ask again.
        if job is not None and job.phase.finished:
            changes.update(_ended(job, now, AttemptState.CANCELLED))
        elif job is None or not job.phase.finished:
            actions.append(Cancel(stage.name, attempt.number, attempt.outcome or Outcome.RESUBMIT,
                                  attempt.cause or "cancel"))
        if changes:
            actions.insert(0, UpdateAttempt(stage.name, attempt.number, changes))
        return actions

    if verdict is not None:
        outcome = _outcome_for(verdict.action, work_done)
        limit = run.resubmit_limits.get(verdict.signature)
        if outcome is Outcome.RESUBMIT and limit is not None:
            earlier = sum(1 for a in stage.attempts if a.cause == verdict.signature and a.number != attempt.number)
            if earlier >= limit:
                # The same fault again after its resubmissions: more attempts will not help.
                outcome = Outcome.FAIL
        message = f"{verdict.signature} at line {verdict.line}: {verdict.text}"
        data: dict[str, object] = {"line": verdict.line, "text": verdict.text, "action": verdict.action.value,
                                   "context": list(verdict.context)}
        actions.append(Emit("signature", message, *key, data))
        if outcome is Outcome.RESUBMIT and verdict.action is SignatureAction.RESUBMIT_EXCLUDE_NODE:
            for node in _nodes_to_exclude(verdict, attempt, job):
                actions.append(ExcludeNode(node, f"{verdict.signature} in {stage.name} attempt {attempt.number}"))
        actions.insert(0, UpdateAttempt(stage.name, attempt.number, changes))
        actions.append(Cancel(stage.name, attempt.number, outcome, verdict.signature))
        return actions

    if job is not None and job.phase is JobPhase.HELD:
        actions.insert(0, UpdateAttempt(stage.name, attempt.number, changes))
        actions.append(Cancel(stage.name, attempt.number, Outcome.OPERATOR, "held"))
        # An operator held it: like their scancel, a human decides what happens next.
        actions.append(Emit("paused_by_operator", f"job {attempt.job_id} was held outside the supervisor; run paused",
                            *key))
        if run.state is not RunState.PAUSED:
            actions.append(SetRun(RunState.PAUSED))
        return actions

    if job is not None and job.phase.finished:
        if job.phase is JobPhase.CANCELLED:
            # Nobody asked us to cancel it: an operator did. Pause; a human decides what happens next.
            changes.update(_ended(job, now, AttemptState.CANCELLED))
            changes["outcome"] = Outcome.OPERATOR
            changes["cause"] = "cancelled_by_operator"
            actions.insert(0, UpdateAttempt(stage.name, attempt.number, changes))
            actions.append(Emit("paused_by_operator",
                                f"job {attempt.job_id} was cancelled outside the supervisor; run paused",
                                *key))
            if run.state is not RunState.PAUSED:
                actions.append(SetRun(RunState.PAUSED))
            return actions
        ok = obs.succeeded if obs.succeeded is not None else job.phase is JobPhase.COMPLETED
        if work_done and not ok:
            ok = True
        changes.update(_ended(job, now, AttemptState.SUCCEEDED if ok else AttemptState.FAILED))
        actions.insert(0, UpdateAttempt(stage.name, attempt.number, changes))
        if not ok:
            actions.append(Emit("crashed",
                                f"job {attempt.job_id} ended {job.raw_state or job.phase.value}"
                                f" (exit {job.exit_code})", *key,
                                {"exit_code": job.exit_code, "reason": job.reason}))
        return actions

    stall = _stalled(stage, attempt, now, changes)
    if stall is not None and attempt.state is AttemptState.RUNNING:
        cause, message = stall
        if obs.hang_hint is not None:
            # The log stopped right after a known hang hint: name it, so its remedy runs with the resubmit.
            cause, message = obs.hang_hint, f"{message} right after {obs.hang_hint}"
        actions.insert(0, UpdateAttempt(stage.name, attempt.number, changes))
        actions.append(Emit("stalled", message, *key))
        actions.append(Cancel(stage.name, attempt.number, Outcome.FINISH if work_done else Outcome.RESUBMIT,
                              cause))
        return actions

    if changes:
        actions.insert(0, UpdateAttempt(stage.name, attempt.number, changes))
    return actions


def _ended(job: JobInfo, now: datetime, state: AttemptState) -> dict[str, object]:
    changes: dict[str, object] = {"state": state, "ended_at": job.end_time or now, "exit_code": job.exit_code}
    if job.nodes:
        changes["nodes"] = job.nodes
    if job.start_time is not None:
        # A job that ran and ended between two polls was never seen running: keep when it started.
        changes["started_at"] = job.start_time
    return changes


def _outcome_for(action: SignatureAction, work_done: bool) -> Outcome:
    if work_done:
        # Never retrain a finished run: whatever breaks after the final checkpoint, the work is done.
        return Outcome.FINISH
    if action is SignatureAction.FAIL:
        return Outcome.FAIL
    if action is SignatureAction.FINISH:
        return Outcome.FINISH
    return Outcome.RESUBMIT


def _nodes_to_exclude(match: LogMatch, attempt: AttemptView, job: JobInfo | None) -> list[str]:
    if match.node:
        return [match.node]
    nodes = (job.nodes if job is not None else None) or attempt.nodes
    return [nodes] if nodes else []


def _stalled(
    stage: StageView, attempt: AttemptView, now: datetime, changes: Mapping[str, object]
) -> tuple[str, str] | None:
    started = attempt.started_at
    if started is None:
        return None
    first_step = changes.get("first_step_at", attempt.first_step_at)
    if (
        stage.startup_timeout is not None
        and first_step is None
        and now - started > timedelta(seconds=stage.startup_timeout)
    ):
        return ("startup_timeout", f"no training step {int(stage.startup_timeout)}s after start: startup hang")
    if stage.stall_timeout is not None:
        last = changes.get("last_output_at", attempt.last_output_at)
        since = max(started, last) if isinstance(last, datetime) else started
        if now - since > timedelta(seconds=stage.stall_timeout):
            return ("stall_timeout", f"no log output for {int((now - since).total_seconds())}s: hang")
    return None


# ---- advance: stages without a live attempt ------------------------------------------------------


def advance(run: RunView, now: datetime) -> list[Action]:
    """Move the run forward: close finished stages, submit what is due, finish the run."""
    if run.state not in (RunState.PENDING, RunState.RUNNING, RunState.PAUSED):
        return []
    for stage in run.stages:
        if stage.state is StageState.SUCCEEDED:
            continue
        if stage.state in (StageState.FAILED, StageState.CANCELLED):
            return []
        return _advance_stage(run, stage, now)
    return [SetRun(RunState.SUCCEEDED), Emit("succeeded", f"run {run.name} succeeded")]


def _advance_stage(run: RunView, stage: StageView, now: datetime) -> list[Action]:
    current = stage.current
    if current is not None and current.state.live:
        return []
    if current is not None and stage.state is StageState.RUNNING:
        result = _close(run, stage, current)
        if result is not None:
            return result
    if run.state is RunState.PAUSED:
        return []
    if current is not None and current.ended_at is not None:
        due = current.ended_at + timedelta(seconds=backoff(stage))
        if now < due:
            return []
    number = (current.number + 1) if current is not None else 1
    actions: list[Action] = [Submit(stage.name, number)]
    if stage.state is not StageState.RUNNING:
        actions.insert(0, SetStage(stage.name, StageState.RUNNING))
    if run.state is RunState.PENDING:
        actions.insert(0, SetRun(RunState.RUNNING))
    if current is not None:
        actions.append(Emit("resubmitted", f"{stage.name}: attempt {number} after {current.cause or 'failure'}",
                            stage.name, number, {"cause": current.cause}))
    return actions


def _close(run: RunView, stage: StageView, attempt: AttemptView) -> list[Action] | None:
    """The stage's last attempt ended: decide the stage. None = submit another attempt."""
    if attempt.state is AttemptState.SUCCEEDED or attempt.outcome is Outcome.FINISH:
        return [SetStage(stage.name, StageState.SUCCEEDED),
                Emit("stage_succeeded", f"stage {stage.name} succeeded", stage.name, attempt.number)]
    if attempt.outcome is Outcome.FAIL:
        return [SetStage(stage.name, StageState.FAILED), SetRun(RunState.FAILED),
                Emit("failed", f"stage {stage.name} failed: {attempt.cause} (not retried: it would fail again)",
                     stage.name, attempt.number)]
    if attempt.outcome is Outcome.CANCEL:
        return [SetStage(stage.name, StageState.CANCELLED)]
    if attempt.outcome is Outcome.OPERATOR:
        return None
    if stage.used >= stage.max_attempts:
        return [SetStage(stage.name, StageState.FAILED), SetRun(RunState.FAILED),
                Emit("retries_exhausted", f"stage {stage.name} failed {stage.used} times; giving up",
                     stage.name, attempt.number),
                Emit("failed", f"run {run.name} failed in stage {stage.name}", stage.name, attempt.number)]
    return None
