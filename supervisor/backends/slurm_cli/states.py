"""What SLURM's job and node states mean to the supervisor, the same for every way of asking SLURM.

The CLI backend reads them from squeue/scontrol/sacct text, the pyslurm backend from pyslurm's records:
both reduce a state with :func:`phase_of` and build the JobInfo with :func:`job_info`, so a job reads
alike whichever backend polled it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime

from supervisor.domain.types import JobInfo, JobPhase

PHASES: Mapping[str, JobPhase] = {
    "PENDING": JobPhase.PENDING,
    "CONFIGURING": JobPhase.PENDING,
    "REQUEUED": JobPhase.PENDING,
    "REQUEUE_FED": JobPhase.PENDING,
    "REQUEUE_HOLD": JobPhase.HELD,
    "SPECIAL_EXIT": JobPhase.HELD,  # requeued and held after an exit code the site marked special
    "RESV_DEL_HOLD": JobPhase.HELD,
    "RUNNING": JobPhase.RUNNING,
    "COMPLETING": JobPhase.RUNNING,  # still holds its nodes; its exit code is not final yet
    "SUSPENDED": JobPhase.RUNNING,
    "STOPPED": JobPhase.RUNNING,
    "SIGNALING": JobPhase.RUNNING,
    "STAGE_OUT": JobPhase.RUNNING,
    "RESIZING": JobPhase.RUNNING,
    "COMPLETED": JobPhase.COMPLETED,
    "CANCELLED": JobPhase.CANCELLED,
    "FAILED": JobPhase.FAILED,
    "TIMEOUT": JobPhase.FAILED,
    "NODE_FAIL": JobPhase.FAILED,
    "PREEMPTED": JobPhase.FAILED,
    "OUT_OF_MEMORY": JobPhase.FAILED,
    "BOOT_FAIL": JobPhase.FAILED,
    "DEADLINE": JobPhase.FAILED,
    "REVOKED": JobPhase.FAILED,
}

HOLD_REASONS = frozenset({"JobHeldUser", "JobHeldAdmin"})


def phase_of(state: str, reason: str | None = None) -> JobPhase:
    """Reduce a SLURM job state (as squeue %T or scontrol JobState print it) to a JobPhase."""
    base = state.strip().split(" ", 1)[0].rstrip("+").upper()
    # An unrecognised state is not a verdict: "not finished" keeps the supervisor watching.
    phase = PHASES.get(base, JobPhase.PENDING)
    if phase is JobPhase.PENDING and reason in HOLD_REASONS:
        return JobPhase.HELD
    return phase


def exit_status(code: int | None, signal: int) -> int | None:
    """A job's exit code and the signal that ended it as one number: the shell's 128+S for a signal."""
    return 128 + signal if signal else code


def job_info(
    job_id: str,
    name: str,
    state: str,
    *,
    reason: str | None = None,
    exit_code: int | None = None,
    nodes: str | None = None,
    submit_time: datetime | None = None,
    start_time: datetime | None = None,
    end_time: datetime | None = None,
    excluded_nodes: str | None = None,
) -> JobInfo:
    """A job record as JobInfo, keeping only what its state makes a fact.

    Pending and running jobs carry a placeholder exit code (0:0). A pending job's start and end are the
    scheduler's forecast, a running job's end its time limit, and a job cancelled while pending gets
    start = end = the cancel time: a start counts once the job has nodes, an end once it finished.
    """
    phase = phase_of(state, reason)
    return JobInfo(
        job_id=job_id,
        name=name,
        phase=phase,
        raw_state=state,
        exit_code=exit_code if phase.finished else None,
        nodes=nodes,
        reason=reason,
        submit_time=submit_time,
        start_time=start_time if nodes is not None else None,
        end_time=end_time if phase.finished else None,
        excluded_nodes=excluded_nodes,
    )


def newest(jobs: Iterable[JobInfo]) -> dict[str, JobInfo]:
    """Per job name, the most recently submitted job (a resubmitted tag shows up more than once)."""
    by_name: dict[str, JobInfo] = {}
    for job in jobs:
        seen = by_name.get(job.name)
        if seen is None or job_id_key(job.job_id) > job_id_key(seen.job_id):
            by_name[job.name] = job
    return by_name


def job_id_key(job_id: str) -> tuple[int, ...]:
    """A job id ("123", "123_4") as a sort key: ids grow with submission."""
    return tuple(int(part) for part in re.findall(r"\d+", job_id))


def is_down(state: str) -> bool:
    """Whether a node State says the node is lost to jobs: DOWN or FAIL, or not responding (SchedMD/slurm
    src/common/slurm_protocol_defs.c node_state_string: base state, then "+"-joined flags)."""
    base, *flags = state.upper().split("+")
    return base.rstrip("*") in ("DOWN", "FAIL", "FAILING") or "NOT_RESPONDING" in flags or base.endswith("*")
