"""What each attempt cost in node-hours, split into useful and wasted, the waste attributed to a cause.

A pure function over the facts of one attempt (:class:`AttemptFacts`): no clock, no database, no
scheduler. Amounts are whole node-seconds, so that ``used + wasted == node_seconds`` holds exactly for
every attempt and therefore for every sum of attempts (a stage, a run, a report).

The size of an attempt is the scheduler's own figure where it has one (sacct's ``ElapsedRaw`` x
``NNodes``), else ``(end - start) x count_hosts(nodes)`` from the attempt's recorded times; a job that
started on hosts nobody recorded counts as one node. An attempt still running is measured up to
``now`` and is all used: nothing is wasted until it ends.

The rules, first match wins, for an attempt that has ended:

1. **Succeeded, or its work was done** (``work_done``: e.g. the final checkpoint was complete before
   the end-of-training NCCL hang): all used, except when a hang ended it: the time hung (from its last
   output to its end) is wasted, cause ``hang/<cause>``.
2. **A startup that never reached a step** (the stage counts steps, none was seen): all wasted, cause
   ``startup``, whatever ended it (the signature stays in the attempt's own ``cause``).
3. **A hang** (a stall timeout, or a known hang hint, ended it): wasted from the last complete checkpoint
   (or its first step, or its start) to its end, cause ``hang/<cause>``; of that, the time from its last
   output to its end is ``hung``: time lost before and during detection.
4. **Anything else that ended it** (a signature, an operator's or the user's cancel, a non-zero exit, a
   time limit): wasted from the last complete checkpoint (or its first step, or its start) to its end,
   cause the signature (the attempt's ``cause``), else ``exit <code>``, else the final state.

Why waste starts at the first step and not at the start when no checkpoint was saved: every attempt
pays its own startup, a resumed one too, so an attempt that trained pays for its startup with the steps
it ran; what the failure threw away is the training it did and did not save.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from supervisor.domain.hostlist import count_hosts

# The supervisor's own names for the hangs it detects (domain/core/observe.py `_stalled`).
STALL_CAUSES = frozenset({"stall_timeout", "startup_timeout"})
_LIVE_STATES = frozenset({"submitting", "queued", "running"})


@dataclass(frozen=True)
class SchedulerUsage:
    """The scheduler's own figures for one job (sacct ``ElapsedRaw`` and ``NNodes``)."""

    elapsed_s: int
    node_count: int


@dataclass(frozen=True)
class AttemptFacts:
    """What is known of one attempt, as plain values."""

    state: str  # an AttemptState value
    started_at: datetime | None
    ended_at: datetime | None
    nodes: str | None = None  # the hostlist the job ran on
    usage: SchedulerUsage | None = None  # the scheduler's figures, preferred when known
    cause: str | None = None  # the signature or stall the supervisor ended it for
    exit_code: int | None = None
    work_done: bool = False
    steps_expected: bool = False  # the stage's work is counted in steps (train)
    first_step_at: datetime | None = None
    last_output_at: datetime | None = None
    checkpoint_at: datetime | None = None  # the last complete checkpoint saved during this attempt
    hung: bool = False  # a hang was detected (a STALLED event), whatever its cause is called


@dataclass(frozen=True)
class AttemptCost:
    node_seconds: int
    used: int
    wasted: int
    cause: str | None  # why ``wasted`` was wasted; None when nothing was
    hung: int = 0  # part of ``wasted``: from the last output to the end of a hang
    startup: bool = False  # the attempt never reached a step

    @property
    def node_hours(self) -> float:
        return self.node_seconds / 3600


def cost(facts: AttemptFacts, now: datetime) -> AttemptCost:
    """The node-seconds of one attempt, used and wasted (the rules are the module's docstring)."""
    start = facts.started_at
    if start is None:
        return AttemptCost(0, 0, 0, None)
    end = facts.ended_at or now
    wall = max(0, round((end - start).total_seconds()))
    if facts.usage is not None:
        seconds, count = max(0, facts.usage.elapsed_s), max(0, facts.usage.node_count)
    else:
        seconds, count = wall, max(1, count_hosts(facts.nodes or ""))
    total = seconds * count
    if facts.state in _LIVE_STATES or facts.ended_at is None:
        return AttemptCost(total, total, 0, None)

    def at(moment: datetime | None) -> int | None:
        """Seconds into the attempt, clipped into what the scheduler counted."""
        return None if moment is None else min(seconds, max(0, round((moment - start).total_seconds())))

    hang = facts.hung or facts.cause in STALL_CAUSES
    quiet_from = at(facts.last_output_at)
    hung = (seconds - (quiet_from if quiet_from is not None else 0)) * count if hang else 0
    if facts.state == "succeeded" or facts.work_done:
        return _split(total, hung, f"hang/{facts.cause or 'stall'}" if hung else None, hung)
    if facts.steps_expected and facts.first_step_at is None:
        return _split(total, total, "startup", hung, startup=True)
    redo_from = at(facts.checkpoint_at)
    if redo_from is None:
        redo_from = at(facts.first_step_at) or 0
    wasted = (seconds - redo_from) * count
    if hang:
        return _split(total, wasted, f"hang/{facts.cause or 'stall'}", min(hung, wasted))
    return _split(total, wasted, _failure_cause(facts), 0)


def _split(total: int, wasted: int, cause: str | None, hung: int, *, startup: bool = False) -> AttemptCost:
    wasted = min(total, max(0, wasted))
    return AttemptCost(total, total - wasted, wasted, cause if wasted else None, min(hung, wasted), startup)


def _failure_cause(facts: AttemptFacts) -> str:
    if facts.cause:
        return facts.cause
    if facts.exit_code not in (None, 0):
        return f"exit {facts.exit_code}"
    return facts.state


@dataclass(frozen=True)
class Totals:
    """A sum of attempt costs (a stage, a run, a whole report); ``by_cause`` adds up to ``wasted``."""

    node_seconds: int = 0
    used: int = 0
    wasted: int = 0
    hung: int = 0
    by_cause: tuple[tuple[str, int], ...] = ()


def total(costs: Iterable[AttemptCost]) -> Totals:
    node_seconds = used = wasted = hung = 0
    by_cause: dict[str, int] = {}
    for item in costs:
        node_seconds += item.node_seconds
        used += item.used
        wasted += item.wasted
        hung += item.hung
        if item.wasted:
            key = item.cause or "unknown"
            by_cause[key] = by_cause.get(key, 0) + item.wasted
    ranked = tuple(sorted(by_cause.items(), key=lambda kv: (-kv[1], kv[0])))
    return Totals(node_seconds, used, wasted, hung, ranked)


def hours(node_seconds: int, digits: int = 2) -> float:
    """Node-seconds as node-hours, rounded for display (sums are taken in seconds, never in hours)."""
    return round(node_seconds / 3600, digits)
