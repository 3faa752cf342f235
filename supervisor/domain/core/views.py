"""What the core is told: a run with its stages and attempts, and what one tick saw of a live attempt."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from supervisor.domain.core.actions import Outcome
from supervisor.domain.types import AttemptState, JobInfo, LogMatch, Progress, RunState, StageState

# Causes of attempts the supervisor ended through no fault of the run: they use none of the stage's budget.
CANNOT_START = "cannot_start"  # pending for a reason waiting never clears; a person acts first
EXCLUSIONS_IN_THE_WAY = "exclusions_in_the_way"  # the supervisor's own --exclude list kept the job from starting
NOT_THE_RUNS_FAULT = frozenset({CANNOT_START, EXCLUSIONS_IN_THE_WAY})

# How long a job may wait for a reason that never clears before a person is asked (spec `pending_grace`).
PENDING_GRACE_S = 600.0


class Refused(Exception):
    """A user command that cannot apply to the run as it is; the message says why."""


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
    saved_mark: str | None = None  # identifies the newest checkpoint seen so far
    reason: str | None = None  # the cluster's last pending reason, e.g. "Priority" or "PartitionNodeLimit"
    reason_since: datetime | None = None  # when that reason was first seen


@dataclass(frozen=True)
class StageView:
    name: str
    state: StageState
    max_attempts: int
    budget_start: int = 1
    stall_timeout: float | None = None
    startup_timeout: float | None = None
    retry_backoff: float = 30.0
    pending_grace: float = PENDING_GRACE_S
    attempts: tuple[AttemptView, ...] = ()

    @property
    def current(self) -> AttemptView | None:
        return self.attempts[-1] if self.attempts else None

    @property
    def used(self) -> int:
        """Attempts that count against max_attempts since the last `retry`."""
        return sum(
            1 for a in self.attempts
            if a.number >= self.budget_start and a.outcome is not Outcome.OPERATOR and a.cause not in NOT_THE_RUNS_FAULT
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
    # Successful polls in a row that did not find the job anywhere (squeue, scontrol, sacct).
    missing_polls: int = 0
    matches: tuple[LogMatch, ...] = ()
    progress: Progress | None = None
    new_output: bool = False  # the log grew since the last tick
    # Kind-specific checks, done by the adapter (they read files):
    work_finished: bool = False  # e.g. the final training checkpoint is complete
    succeeded: bool | None = None  # the kind's success rule, when the job has ended
    saved_mark: str | None = None  # the newest saved checkpoint now; a new one is a sign of life
    # The hang hint the log ends on now, e.g. "extension_build_hang" (None: none, or output went on after it).
    hang_hint: str | None = None
