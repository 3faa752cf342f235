"""The user's commands as decisions: each returns the actions to apply, or raises :class:`Refused`.

Applied by the same ``apply`` as the daemon's own decisions, conditional on the run still being in the
state it was decided in. Repeating a command that is already in effect (a second `pause`) is no error.
"""

from __future__ import annotations

from supervisor.domain.core.actions import (
    Action,
    AttemptChanges,
    Cancel,
    Emit,
    Outcome,
    ResetBudget,
    SetRun,
    SetStage,
    UpdateAttempt,
)
from supervisor.domain.core.views import Refused, RunView
from supervisor.domain.types import EventKind, RunState, StageState

ACTIVE = (RunState.PENDING, RunState.RUNNING, RunState.PAUSED, RunState.NEEDS_ATTENTION)


def pause(run: RunView) -> list[Action]:
    if run.state is RunState.PAUSED:
        return []
    if run.state not in (RunState.PENDING, RunState.RUNNING, RunState.NEEDS_ATTENTION):
        raise Refused(f"run {run.name!r} is {run.state}: only a pending or running run can be paused")
    return [SetRun(RunState.PAUSED),
            Emit(EventKind.PAUSED, "paused: no new submissions until `supervisor resume`")]


def resume(run: RunView) -> list[Action]:
    if run.state in (RunState.PENDING, RunState.RUNNING):
        return []
    if run.state not in (RunState.PAUSED, RunState.NEEDS_ATTENTION):
        raise Refused(f"run {run.name!r} is {run.state}: only a paused run can be resumed"
                      + (" (use `supervisor retry`)" if run.state in (RunState.FAILED, RunState.CANCELLED) else ""))
    started = any(s.state is not StageState.PENDING for s in run.stages)
    return [SetRun(RunState.RUNNING if started else RunState.PENDING), Emit(EventKind.RESUMED, "resumed")]


def retry(run: RunView) -> list[Action]:
    """Run the failed (or cancelled) stage again with a fresh attempt budget."""
    stage = next((s for s in run.stages if s.state in (StageState.FAILED, StageState.CANCELLED)), None)
    if stage is None or run.state not in (RunState.FAILED, RunState.CANCELLED):
        raise Refused(f"run {run.name!r} is {run.state}: only a failed or cancelled run can be retried")
    if stage.current is not None and stage.current.state.live:
        raise Refused(f"run {run.name!r}: stage {stage.name} attempt {stage.current.number} is still being "
                      "cancelled; try again once it has ended")
    last = max((a.number for a in stage.attempts), default=0)
    actions: list[Action] = [SetRun(RunState.RUNNING), ResetBudget(stage.name, last + 1),
                             SetStage(stage.name, StageState.RUNNING)]
    position = run.stages.index(stage)
    actions += [SetStage(later.name, StageState.PENDING) for later in run.stages[position + 1:]
                if later.state is StageState.CANCELLED]
    actions.append(Emit(EventKind.RETRIED, f"stage {stage.name} retried with a fresh budget", stage.name))
    return actions


def cancel(run: RunView) -> list[Action]:
    """Cancel the run: every live attempt is cancelled, stages not yet done are cancelled."""
    if run.state not in ACTIVE:
        raise Refused(f"run {run.name!r} is already {run.state}")
    actions: list[Action] = [SetRun(RunState.CANCELLED)]
    for stage in run.stages:
        for attempt in stage.attempts:
            if attempt.state.live:
                actions.append(UpdateAttempt(stage.name, attempt.number,
                                             AttemptChanges(cancel_requested=True, outcome=Outcome.CANCEL,
                                                            cause="cancelled")))
                actions.append(Cancel(stage.name, attempt.number, Outcome.CANCEL, "cancelled"))
        if stage.state in (StageState.PENDING, StageState.RUNNING):
            actions.append(SetStage(stage.name, StageState.CANCELLED))
    actions.append(Emit(EventKind.CANCELLED, "run cancelled by `supervisor cancel`"))
    return actions
