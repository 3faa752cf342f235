"""When an attempt will finish: the step rate of the attempt itself, never of the run.

The rate counts from the first step the attempt showed (a resumed attempt starts at its checkpoint's step,
not at 0) to the latest, over the time between them: the job's startup (loading, compiling, the
rendezvous) is before the first step and costs the rate nothing. Until two steps were seen apart in time
there is no rate, and no ETA.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta


def step_rate(first_step: int | None, first_step_at: datetime | None, step: int | None,
              progress_at: datetime | None) -> float | None:
    """Steps per second in the attempt, or None while it cannot be told."""
    if first_step is None or first_step_at is None or step is None or progress_at is None:
        return None
    seconds = (progress_at - first_step_at).total_seconds()
    if step <= first_step or seconds <= 0:
        return None
    return (step - first_step) / seconds


def eta(step: int | None, total: int | None, rate: float | None, progress_at: datetime | None) -> datetime | None:
    """When the last step will be reached at ``rate``, counted from when ``step`` was seen."""
    if step is None or total is None or rate is None or progress_at is None or total <= 0:
        return None
    return progress_at + timedelta(seconds=max(total - step, 0) / rate)


def typical(durations: Iterable[float]) -> float | None:
    """The median of earlier durations (seconds), or None without any."""
    values = sorted(durations)
    if not values:
        return None
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


def run_finish(now: datetime, *, stage_eta: datetime | None, running: tuple[str, datetime] | None,
               to_come: Sequence[str], expected: Mapping[str, float]) -> datetime | None:
    """When the whole run will be done: the current stage's end, then each stage still to come for as long
    as such stages took before (``expected``: seconds by stage kind, from earlier attempts of any run).

    ``running``: the current stage's kind and when its attempt was submitted, while one is live; its end is
    its ETA where it has one, else its submission plus the expected duration (never before ``now``).
    ``to_come``: the kinds of the stages not started yet, the current one included when it has not.
    None when a figure is missing: no ETA is better than a wrong one.
    """
    start = now
    if running is not None:
        kind, since = running
        if stage_eta is not None:
            start = max(stage_eta, now)
        elif kind in expected:
            start = max(since + timedelta(seconds=expected[kind]), now)
        else:
            return None
    if any(kind not in expected for kind in to_come):
        return None
    return start + timedelta(seconds=sum(expected[kind] for kind in to_come))
