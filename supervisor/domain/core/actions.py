"""What the core answers: typed actions the application applies in one transaction, then carries out."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from supervisor.domain.types import AttemptState, EventKind, RunState, StageState


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
class AttemptChanges:
    """Columns of one attempt to change; None leaves a column as it is."""

    state: AttemptState | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    exit_code: int | None = None
    nodes: str | None = None
    reason: str | None = None
    last_output_at: datetime | None = None
    first_step_at: datetime | None = None
    progress_step: int | None = None
    progress_total: int | None = None
    first_step: int | None = None
    progress_at: datetime | None = None
    loss: float | None = None
    work_done: bool | None = None
    saved_mark: str | None = None
    cancel_requested: bool | None = None
    outcome: Outcome | None = None
    cause: str | None = None

    def __bool__(self) -> bool:
        return any(value is not None for value in dataclasses.astuple(self))

    def merged(self, **later: Any) -> AttemptChanges:
        """These changes with ``later`` ones on top (None values in ``later`` are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in later.items() if v is not None})

    def items(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}


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
    changes: AttemptChanges


@dataclass(frozen=True)
class SetStage:
    stage: str
    state: StageState


@dataclass(frozen=True)
class ResetBudget:
    """`retry`: attempts from ``start`` on count against the stage's max_attempts."""

    stage: str
    start: int


@dataclass(frozen=True)
class SetRun:
    state: RunState
    reason: str | None = None  # why, for a state a person must act on (needs_attention)


@dataclass(frozen=True)
class Emit:
    kind: EventKind
    message: str
    stage: str | None = None
    attempt: int | None = None
    data: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class ExcludeNode:
    node: str
    reason: str  # the signature, the attempt and the rule that made it evidence against this node
    evidence: str | None = None  # the log line
    line: int | None = None  # its number in the attempt's log


Action = Submit | Cancel | UpdateAttempt | SetStage | ResetBudget | SetRun | Emit | ExcludeNode
