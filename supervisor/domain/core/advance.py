"""Moving a run forward: close the stage whose last attempt ended, submit what is due, finish the run."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from supervisor.domain.core.actions import Action, Emit, Outcome, SetRun, SetStage, Submit, UpdateAttempt
from supervisor.domain.core.views import AttemptView, RunView, Sharing, StageView, budget_use
from supervisor.domain.policy import Backoff
from supervisor.domain.types import AttemptState, EventKind, RunState, StageState

# A resubmission never waits longer than this, however often the stage failed.
MAX_RETRY_WAIT_S = 3600.0
# An attempt's columns that only record how far its job has come. No rule below reads them (nor
# budget_use): recording a change of only these leaves what `advance` decides as it was.
PROGRESS_COLUMNS = frozenset({"last_output_at", "first_step_at", "progress_step", "progress_total", "first_step",
                              "progress_at", "loss"})


def moves_the_run(actions: Sequence[Action]) -> bool:
    """Whether recording ``actions`` can change what :func:`advance` decides next: anything but updates of
    PROGRESS_COLUMNS (a log that moved a progress bar or printed a loss) can."""
    return any(not isinstance(a, UpdateAttempt) or not a.changes.items().keys() <= PROGRESS_COLUMNS
               for a in actions)


def backoff(stage: StageView) -> float:
    """Seconds to wait before the next attempt: exponential in the failures since the last `retry`."""
    return Backoff(base=stage.retry_backoff, cap=MAX_RETRY_WAIT_S).delay(stage.used)


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
    return [SetRun(RunState.SUCCEEDED), Emit(EventKind.SUCCEEDED, f"run {run.name} succeeded")]


def _advance_stage(run: RunView, stage: StageView, now: datetime) -> list[Action]:
    current = stage.current
    if current is not None and current.state.live:
        return []
    # An attempt from before the last `retry` does not decide the stage: the retry asked for a new one.
    if current is not None and stage.state is StageState.RUNNING and current.number >= stage.budget_start:
        result = _close(run, stage, current)
        if result is not None:
            return result
    if run.state is RunState.PAUSED:
        return []
    if current is not None and current.ended_at is not None:
        due = current.ended_at + timedelta(seconds=backoff(stage))
        if now < due:
            return []
    held = _held(run, stage)
    if held is not None:
        return held
    number = (current.number + 1) if current is not None else 1
    actions: list[Action] = [Submit(stage.name, number)]
    if stage.state is not StageState.RUNNING:
        actions.insert(0, SetStage(stage.name, StageState.RUNNING))
    if run.state is RunState.PENDING:
        actions.insert(0, SetRun(RunState.RUNNING))
    if current is not None:
        counted, why = budget_use(current, stage.budget_start)
        # Said when it matters: a chunk of a chained training is resubmitted without using the budget.
        spared = "" if counted else f" ({why}; not counted against max_attempts)"
        actions.append(Emit(EventKind.RESUBMITTED,
                            f"{stage.name}: attempt {number} after {current.cause or 'failure'}{spared}",
                            stage.name, number, {"cause": current.cause, "counted": counted}))
    return actions


def _held(run: RunView, stage: StageView) -> list[Action] | None:
    """What to do instead of submitting the stage's next job, when other runs or a budget stand in the way;
    None when nothing does. ``[]`` waits."""
    shared = run.gate.prepare.get(stage.name)
    if shared is not None and (stage.current is None or shared.state is Sharing.BUSY):
        # A stage that has attempts of its own leads its dataset: it only waits for the directory.
        opening: list[Action] = [SetRun(RunState.RUNNING)] if run.state is RunState.PENDING else []
        if shared.state is Sharing.SUCCEEDED:
            return [*opening, SetStage(stage.name, StageState.SUCCEEDED),
                    Emit(EventKind.STAGE_SUCCEEDED,
                         f"stage {stage.name} succeeded: run {shared.run} prepared the same dataset",
                         stage.name, None, {"shared_with": shared.run})]
        if shared.state is Sharing.FAILED:
            return [*opening, SetStage(stage.name, StageState.FAILED), SetRun(RunState.FAILED),
                    Emit(EventKind.FAILED,
                         f"stage {stage.name} failed: the prepare it shares with run {shared.run} failed"
                         + (f" ({shared.cause})" if shared.cause else ""),
                         stage.name, None, {"shared_with": shared.run})]
        return []
    if run.gate.over_budget is not None:
        paused: list[Action] = [SetRun(RunState.PAUSED, f"budget: {run.gate.over_budget}")]
        if run.gate.announce_budget:
            paused.append(Emit(EventKind.BUDGET_EXCEEDED,
                               f"paused before submitting {stage.name}: {run.gate.over_budget}",
                               stage.name, None, {"budget": run.gate.over_budget}))
        return paused
    if run.gate.wait is not None:
        return []
    return None


def _close(run: RunView, stage: StageView, attempt: AttemptView) -> list[Action] | None:
    """The stage's last attempt ended: decide the stage. None = submit another attempt."""
    if attempt.state is AttemptState.SUCCEEDED or attempt.outcome is Outcome.FINISH:
        return [SetStage(stage.name, StageState.SUCCEEDED),
                Emit(EventKind.STAGE_SUCCEEDED, f"stage {stage.name} succeeded", stage.name, attempt.number)]
    if attempt.outcome is Outcome.FAIL:
        return [SetStage(stage.name, StageState.FAILED), SetRun(RunState.FAILED),
                Emit(EventKind.FAILED,
                     f"stage {stage.name} failed: {attempt.cause} (not retried: it would fail again)",
                     stage.name, attempt.number)]
    if attempt.outcome is Outcome.CANCEL:
        return [SetStage(stage.name, StageState.CANCELLED)]
    if attempt.outcome is Outcome.OPERATOR:
        return None
    if stage.used >= stage.max_attempts:
        return [SetStage(stage.name, StageState.FAILED), SetRun(RunState.FAILED),
                Emit(EventKind.RETRIES_EXHAUSTED, f"stage {stage.name} failed {stage.used} times; giving up",
                     stage.name, attempt.number),
                Emit(EventKind.FAILED, f"run {run.name} failed in stage {stage.name}", stage.name, attempt.number)]
    return None
