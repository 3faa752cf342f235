"""Reading a log's matches as a whole: which milestone says the work is done, which line decides.

One implementation for the daemon and for ``supervisor diagnose``. The rules:

- every ``finish`` match (e.g. "Training completed!") is reported: work that is done stays done;
- the deciding match is the earliest root cause that is not a ``finish``, so "Training completed!"
  followed by an NCCL watchdog timeout reports both, and the core turns the timeout into a finish;
- wrappers such as ChildFailedError decide only when no root cause was printed;
- ``ignore`` matches and hang hints never decide (a hint explains a stall, it is not one);
- a deciding line that would exclude a node but names none takes the node a later line of the same
  signature names: slurmstepd's ``*** STEP ... DUE TO NODE FAILURE ***`` may be written before srun's
  ``Node failure on NODE``, and only the second says which node died.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from supervisor.domain.types import LogMatch, MatchRole, SignatureAction

# A hang hint explains a stall only while the log stopped right after it (a few lines at most).
HINT_WITHIN_LINES = 10


@dataclass(frozen=True)
class Reading:
    finishes: tuple[LogMatch, ...] = ()
    cause: LogMatch | None = None  # the match that decides the reaction, if any

    @property
    def verdict(self) -> LogMatch | None:
        """What the log says as a whole: its earliest root cause or milestone, else its wrapper."""
        first_finish = self.finishes[0] if self.finishes else None
        if self.cause is None or (self.cause.role is MatchRole.WRAPPER and first_finish is not None):
            return first_finish
        if first_finish is not None and first_finish.line < self.cause.line:
            return first_finish
        return self.cause

    @property
    def matches(self) -> tuple[LogMatch, ...]:
        """The matches the core acts on: the finishes, then the deciding one."""
        return self.finishes + ((self.cause,) if self.cause is not None else ())


def read(matches: Sequence[LogMatch]) -> Reading:
    ordered = sorted(matches, key=lambda m: m.line)
    finishes = tuple(m for m in ordered if m.action is SignatureAction.FINISH)
    deciding = [m for m in ordered if m.action not in (SignatureAction.FINISH, SignatureAction.IGNORE)
                and m.role is not MatchRole.HANG_HINT]
    causes = [m for m in deciding if m.role is MatchRole.CAUSE]
    wrappers = [m for m in deciding if m.role is MatchRole.WRAPPER]
    cause = causes[0] if causes else wrappers[0] if wrappers else None
    if cause is not None and cause.action is SignatureAction.RESUBMIT_EXCLUDE_NODE and cause.node is None:
        named = next((m for m in deciding if m.signature == cause.signature and m.node and m.line > cause.line),
                     None)
        if named is not None:
            cause = replace(cause, node=named.node)
    return Reading(finishes=finishes, cause=cause)


def hang_cause(matches: Sequence[LogMatch], last_line: int, within_lines: int = HINT_WITHIN_LINES) -> LogMatch | None:
    """For a log that stopped growing at ``last_line``: the hang hint that explains it, if the latest
    non-ignored match is a hang hint no more than ``within_lines`` before the end."""
    relevant = [m for m in matches if m.action is not SignatureAction.IGNORE]
    if not relevant:
        return None
    latest = max(relevant, key=lambda m: m.line)
    if latest.role is MatchRole.HANG_HINT and last_line - latest.line <= within_lines:
        return latest
    return None
