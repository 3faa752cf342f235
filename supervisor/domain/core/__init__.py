"""The decisions, and nothing else: given a run's state and what the cluster and the logs say, what to do.

No I/O here. The application builds the views from the database, gathers observations from the cluster
and the logs, calls :func:`observe`, :func:`advance` or a user command, and applies the returned actions.

- :mod:`.views`: what the core is told (runs, stages, attempts, one tick's observation);
- :mod:`.actions`: what it answers (typed actions, attempt changes);
- :mod:`.observe`: reactions to live attempts; :mod:`.advance`: moving a run forward;
- :mod:`.commands`: `pause`, `resume`, `retry`, `cancel` as actions.
"""

from __future__ import annotations

from supervisor.domain.core.actions import (
    Action,
    AttemptChanges,
    Cancel,
    Emit,
    ExcludeNode,
    Outcome,
    ResetBudget,
    SetRun,
    SetStage,
    Submit,
    UpdateAttempt,
)
from supervisor.domain.core.advance import PROGRESS_COLUMNS, advance, backoff, moves_the_run
from supervisor.domain.core.commands import cancel, pause, resume, retry
from supervisor.domain.core.observe import VANISHED_AFTER, observe, wants_down_nodes, wants_job_nodes
from supervisor.domain.core.views import (
    AttemptView,
    Gate,
    Observation,
    Refused,
    RunView,
    SharedPrepare,
    Sharing,
    StageView,
)

__all__ = [
    "PROGRESS_COLUMNS",
    "VANISHED_AFTER",
    "Action",
    "AttemptChanges",
    "AttemptView",
    "Cancel",
    "Emit",
    "ExcludeNode",
    "Gate",
    "Observation",
    "Outcome",
    "Refused",
    "ResetBudget",
    "RunView",
    "SetRun",
    "SetStage",
    "SharedPrepare",
    "Sharing",
    "StageView",
    "Submit",
    "UpdateAttempt",
    "advance",
    "backoff",
    "cancel",
    "moves_the_run",
    "observe",
    "pause",
    "resume",
    "retry",
    "wants_down_nodes",
    "wants_job_nodes",
]
