"""Plain data shared by the core and the adapters: enums for states, frozen dataclasses for observations."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path


class StageKind(enum.StrEnum):
    """What a stage does; each has one module in :mod:`supervisor.stages`, chosen by this key."""

    SCRIPT = "script"  # the user's own sbatch script or command, judged by its exit code
    PREPARE = "prepare"  # axolotl preprocess on one CPU node
    TRAIN = "train"  # axolotl + torchrun on N nodes
    MERGE = "merge"  # sharded checkpoint -> one safetensors model, on a big-memory node
    TRANSFER = "transfer"  # rsync from the supervisor's own host


class RunState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PAUSED = "paused"
    # Something only a person can resolve (an error while handling the run, a job that can never start):
    # nothing is submitted or decided for the run until `resume` or `cancel`.
    NEEDS_ATTENTION = "needs_attention"


class StageState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class AttemptState(enum.StrEnum):
    SUBMITTING = "submitting"  # intent recorded, sbatch not yet known to have answered
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def live(self) -> bool:
        return self in (AttemptState.SUBMITTING, AttemptState.QUEUED, AttemptState.RUNNING)


class EventKind(enum.StrEnum):
    """What an event in a run's history says happened; notifications are chosen and worded by it."""

    REGISTERED = "registered"
    PREPARED = "prepared"
    SUBMITTED = "submitted"
    STARTED = "started"
    MILESTONE = "milestone"
    SIGNATURE = "signature"
    STALLED = "stalled"
    CRASHED = "crashed"
    RESUBMITTED = "resubmitted"
    EXCLUDED_NODE = "excluded_node"
    LOCK_CLEARED = "lock_cleared"
    STAGE_SUCCEEDED = "stage_succeeded"
    RETRIES_EXHAUSTED = "retries_exhausted"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    PAUSED = "paused"
    PAUSED_BY_OPERATOR = "paused_by_operator"
    RESUMED = "resumed"
    RETRIED = "retried"
    CANCELLED = "cancelled"
    NEEDS_ATTENTION = "needs_attention"
    BUDGET_EXCEEDED = "budget_exceeded"  # a run or its campaign spent its node-hour budget: paused


class JobPhase(enum.StrEnum):
    """A cluster job's state reduced to what the supervisor acts on."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"  # exit code 0
    FAILED = "failed"  # non-zero exit, node failure, OOM, time limit, preemption ...
    CANCELLED = "cancelled"
    HELD = "held"  # pending with a user/admin hold: nobody but an operator does that

    @property
    def finished(self) -> bool:
        return self in (JobPhase.COMPLETED, JobPhase.FAILED, JobPhase.CANCELLED)


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    name: str
    phase: JobPhase
    raw_state: str = ""
    exit_code: int | None = None
    nodes: str | None = None  # compact hostlist as SLURM prints it, e.g. "node[01-04]"
    reason: str | None = None
    submit_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    excluded_nodes: str | None = None

    @property
    def releasing_nodes(self) -> bool:
        """SLURM's COMPLETING: the job ended and gives its nodes back one by one, so ``nodes`` shrinks (a dead
        node is dropped first: ``node[01-03]`` reads ``node[01,03]`` once node02 failed)."""
        return self.raw_state.upper().startswith("COMPLETING")


@dataclass(frozen=True)
class SubmitRequest:
    """Everything a backend needs to start one attempt of one stage."""

    tag: str  # unique job name identifying run/stage/attempt
    workdir: Path  # the job's working directory
    log_pattern: str  # absolute path that may contain %j for the job id
    script: Path | None = None  # an sbatch script (its #SBATCH lines are honoured)
    command: tuple[str, ...] | None = None  # or a command run on the supervisor's own host
    sbatch_args: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    # Variables of the supervisor's own environment the job must not inherit (the notify secrets' names).
    unset_env: tuple[str, ...] = ()


class SignatureAction(enum.StrEnum):
    RESUBMIT = "resubmit"
    RESUBMIT_EXCLUDE_NODE = "resubmit_exclude_node"
    FAIL = "fail"
    FINISH = "finish"
    IGNORE = "ignore"


class MatchRole(enum.StrEnum):
    """How a match counts when a log is read as a whole (see :mod:`supervisor.domain.verdict`)."""

    CAUSE = "cause"  # a root cause (or a milestone): may decide the reaction
    WRAPPER = "wrapper"  # e.g. ChildFailedError: decides only when no root cause was printed
    HANG_HINT = "hang_hint"  # explains a stall that follows it; never decides by itself


@dataclass(frozen=True)
class LogMatch:
    """A failure signature or milestone found in a job log."""

    signature: str
    action: SignatureAction
    line: int  # 1-based logical line number (lines split on \r and \n)
    text: str  # the matching line, ANSI-stripped, capped in length
    node: str | None = None  # a host named in the line, when the signature captures one
    context: tuple[str, ...] = ()
    role: MatchRole = MatchRole.CAUSE


@dataclass(frozen=True)
class Progress:
    step: int
    total: int | None = None
