"""What the core is told: a run with its stages and attempts, and what one tick saw of a live attempt."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from supervisor.domain.core.actions import Outcome
from supervisor.domain.defaults import FINISH_GRACE_S, MAX_EXCLUDED_NODES, PENDING_GRACE_S
from supervisor.domain.types import AttemptState, JobInfo, LogMatch, Progress, RunState, StageState

# Causes of attempts the supervisor ended through no fault of the run: they use none of the stage's budget.
CANNOT_START = "cannot_start"  # pending for a reason waiting never clears; a person acts first
EXCLUSIONS_IN_THE_WAY = "exclusions_in_the_way"  # the supervisor's own --exclude list kept the job from starting
NOT_THE_RUNS_FAULT = frozenset({CANNOT_START, EXCLUSIONS_IN_THE_WAY})
# Ends imposed from outside the job: the cluster's clock (the signature line, or Slurm's reason "TimeLimit"
# for a TIMEOUT job) and preemption. After a new checkpoint such an end is a chunk of a chained training.
CUT_OFF_BY: dict[str, str] = {"slurm_time_limit": "time limit", "slurm_preempted": "preemption"}
CUT_OFF_REASONS: dict[str, str] = {"TimeLimit": "time limit"}



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
    progress_total: int | None = None  # the total of the progress bar followed so far
    nodes: str | None = None
    saved_mark: str | None = None  # identifies the newest checkpoint seen so far
    start_mark: str | None = None  # the newest checkpoint when it was submitted (what it resumed from)
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
    finish_grace: float | None = FINISH_GRACE_S
    attempts: tuple[AttemptView, ...] = ()

    @property
    def current(self) -> AttemptView | None:
        return self.attempts[-1] if self.attempts else None

    @property
    def used(self) -> int:
        """Attempts that count against max_attempts since the last `retry`."""
        return sum(1 for a in self.attempts if budget_use(a, self.budget_start)[0])


def cut_off_by(attempt: AttemptView) -> str | None:
    """"time limit" or "preemption" when that is how the attempt ended (or is ending); None otherwise."""
    if attempt.cause in CUT_OFF_BY:
        return CUT_OFF_BY[attempt.cause]
    if attempt.state.live or attempt.state is AttemptState.SUCCEEDED or not attempt.reason:
        return None
    # squeue prints "TimeLimit", scontrol "TimeLimit" too; a reason may carry detail after a comma.
    return CUT_OFF_REASONS.get(attempt.reason.split(",")[0].strip())


def budget_use(attempt: AttemptView, budget_start: int) -> tuple[bool, str]:
    """Whether the attempt uses up one of the stage's max_attempts, and why (``show`` prints both).

    A time limit or preemption after a new checkpoint is progress, not failure: a training chained across
    24 h limits resubmits once per chunk and must not run out of attempts on the way.
    """
    if attempt.number < budget_start:
        return False, "before the last retry"
    if attempt.outcome is Outcome.OPERATOR:
        return False, "stopped by an operator, not by the run"
    if attempt.cause in NOT_THE_RUNS_FAULT:
        return False, f"{attempt.cause}: not the run's fault"
    cut = cut_off_by(attempt)
    if cut is not None:
        if attempt.saved_mark is not None and attempt.saved_mark != attempt.start_mark:
            return False, f"{cut} after a new checkpoint ({attempt.saved_mark}): progress"
        return True, f"{cut} without a new checkpoint"
    if attempt.state.live:
        return True, "not ended yet"
    if attempt.state is AttemptState.SUCCEEDED or attempt.outcome is Outcome.FINISH:
        return True, "succeeded"
    return True, f"ended {attempt.state.value}" + (f": {attempt.cause}" if attempt.cause else "")


class Sharing(enum.StrEnum):
    """Where another run's prepare of the same directory stands (see :class:`SharedPrepare`)."""

    LIVE = "live"  # it prepares the same dataset now: wait, then train from it
    SUCCEEDED = "succeeded"  # it prepared the same dataset, still on disk: nothing to do
    FAILED = "failed"  # its prepare of the same dataset (a run of the same campaign) failed for good
    BUSY = "busy"  # it prepares ANOTHER dataset into the same directory now: wait for the directory


@dataclass(frozen=True)
class SharedPrepare:
    run: str  # the other run
    state: Sharing
    cause: str | None = None  # FAILED: why its prepare failed


@dataclass(frozen=True)
class Gate:
    """What the other runs and the run's campaign say about submitting the run's next job."""

    wait: str | None = None  # e.g. the campaign's max_live_jobs are live: hold new submissions
    over_budget: str | None = None  # the node-hours spent against a budget, once one is spent
    announce_budget: bool = True  # False: another run of the campaign already said the budget is spent
    prepare: Mapping[str, SharedPrepare] = field(default_factory=dict)  # by stage name


@dataclass(frozen=True)
class RunView:
    name: str
    state: RunState
    stages: tuple[StageView, ...]
    # Signature name -> how many resubmissions it may cause in one stage before the stage fails.
    resubmit_limits: Mapping[str, int] = field(default_factory=dict)
    excluded_nodes: tuple[str, ...] = ()  # the run's exclusions in force now
    max_excluded_nodes: int = MAX_EXCLUDED_NODES
    gate: Gate = field(default_factory=lambda: Gate())

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
    loss: float | None = None  # the last finite training loss the log printed since the last read
    new_output: bool = False  # the log grew since the last tick
    # Kind-specific checks, done by the adapter (they read files):
    work_finished: bool = False  # e.g. the final training checkpoint is complete
    succeeded: bool | None = None  # the kind's success rule, when the job has ended
    saved_mark: str | None = None  # the newest saved checkpoint now; a new one is a sign of life
    # The hang hint the log ends on now, e.g. "extension_build_hang" (None: none, or output went on after it).
    hang_hint: str | None = None
    # Per node of the attempt's allocation, the names and addresses it answers to (NodeAddr, NodeHostName and
    # their IP addresses); looked up only when a failure line names a host that is no node name of it.
    node_addresses: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # The allocation's nodes the scheduler marks down; looked up only when a fault that benches a node names
    # none on a job of several nodes.
    down_nodes: frozenset[str] = frozenset()
