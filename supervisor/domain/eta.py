"""When an attempt will finish: the step rate of the attempt itself, never of the run.

The rate counts from the first step the attempt showed (a resumed attempt starts at its checkpoint's step,
not at 0) to the latest, over the time between them: the job's startup (loading, compiling, the
rendezvous) is before the first step and costs the rate nothing. Until two steps were seen apart in time
there is no rate, and no ETA.
"""

from __future__ import annotations

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
