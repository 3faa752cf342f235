"""Jobs that wait in the queue: for which of Slurm's pending reasons waiting never helps, and what to do once
such a job has waited past its stage's ``pending_grace``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime

from supervisor.domain.core.actions import Action, AttemptChanges, Cancel, Emit, Outcome, SetRun
from supervisor.domain.core.views import CANNOT_START, EXCLUSIONS_IN_THE_WAY, AttemptView, StageView
from supervisor.domain.types import AttemptState, EventKind, JobInfo, JobPhase, RunState


def _never(explanation: str, *codes: str) -> dict[str, str]:
    return dict.fromkeys(codes, explanation)


# Pending reasons that waiting never clears: the request is beyond anything the partition, the account or
# the QOS will ever grant, or it names something that does not exist. The codes are Slurm's own, as
# job_reason_string() in slurm/src/common/slurm_protocol_defs.c prints them (enum job_state_reason in
# slurm/slurm.h; squeue(1) "JOB REASON CODES" explains them). Left out on purpose, because they clear as
# other jobs end or time passes: Priority, Resources, BeginTime, Dependency, Licenses, Reservation,
# PartitionDown (maintenance), NodeDown, every Grp*Limit / Grp*RunMinutes (the association's or QOS's
# other jobs hold the share; Slurm prints the same code whether or not this job alone exceeds it) and the
# per-user and per-account maxima (this user's other jobs).
NEVER_STARTS: Mapping[str, str] = {
    **_never("the job asks for more (or fewer) nodes than its partition allows, or every node it may use is "
             "down, drained or excluded", "PartitionNodeLimit"),
    **_never("the job's time limit is longer than its partition allows", "PartitionTimeLimit"),
    **_never("the partition cannot satisfy the request (more nodes, CPUs or memory than it has)",
             "PartitionConfig"),
    **_never("no node the job may use is available (all excluded, down or drained)", "ReqNodeNotAvail"),
    **_never("the job's constraints match no node", "BadConstraints"),
    **_never("the account or QOS is invalid or not allowed here", "InvalidAccount", "InvalidQOS",
             "AccountNotAllowed", "QOSNotAllowed"),
    **_never("the job depends on a job that can no longer satisfy it", "DependencyNeverSatisfied"),
    **_never("the job's reservation was deleted", "ReservationDeleted"),
    **_never("Slurm held the job after too many requeues", "JobHoldMaxRequeue"),
    **_never("the job asks for more memory per node than allowed", "MaxMemPerLimit"),
    **_never("the request exceeds a per-job limit of the association",
             "AssocMaxCpuPerJobLimit", "AssocMaxCpuMinutesPerJobLimit", "AssocMaxNodePerJobLimit",
             "AssocMaxWallDurationPerJobLimit", "AssocMaxUnknownPerJob", "AssocMaxUnknownPerNode",
             "AssocMaxUnknownMinutesPerJob", "AssocMaxCpuPerNode", "AssocMaxMemPerJob", "AssocMaxMemPerNode",
             "AssocMaxMemMinutesPerJob", "AssocMaxNodeMinutesPerJob", "AssocMaxEnergyPerJob",
             "AssocMaxEnergyPerNode", "AssocMaxEnergyMinutesPerJob", "AssocMaxGRESPerJob", "AssocMaxGRESPerNode",
             "AssocMaxGRESMinutesPerJob", "AssocMaxLicensePerJob", "AssocMaxLicenseMinutesPerJob",
             "AssocMaxBBPerJob", "AssocMaxBBPerNode", "AssocMaxBBMinutesPerJob", "AssocMaxBillingPerJob",
             "AssocMaxBillingPerNode", "AssocMaxBillingMinutesPerJob"),
    **_never("the request exceeds a per-job limit (or misses a minimum) of the QOS",
             "QOSMaxCpuPerJobLimit", "QOSMaxCpuMinutesPerJobLimit", "QOSMaxNodePerJobLimit",
             "QOSMaxWallDurationPerJobLimit", "QOSMinCpuNotSatisfied", "QOSMaxUnknownPerJob",
             "QOSMaxUnknownPerNode", "QOSMaxUnknownMinutesPerJob", "QOSMinUnknown", "QOSMaxCpuPerNode",
             "QOSMaxMemoryPerJob", "QOSMaxMemoryPerNode", "QOSMaxMemoryMinutesPerJob", "QOSMinMemory",
             "QOSMaxNodeMinutesPerJob", "QOSMinNode", "QOSMaxEnergyPerJob", "QOSMaxEnergyPerNode",
             "QOSMaxEnergyMinutesPerJob", "QOSMinEnergy", "QOSMaxGRESPerJob", "QOSMaxGRESPerNode",
             "QOSMaxGRESMinutesPerJob", "QOSMinGRES", "QOSMaxLicensePerJob", "QOSMaxLicenseMinutesPerJob",
             "QOSMinLicense", "QOSMaxBBPerJob", "QOSMaxBBPerNode", "QOSMinBB", "QOSMaxBillingPerJob",
             "QOSMaxBillingPerNode", "QOSMaxBillingMinutesPerJob", "QOSMinBilling"),
    # Usage limits (GrpTRESMins): the allocation is spent; only an administrator gives more.
    **_never("the account's allocation is used up",
             "AssocGrpCPUMinutesLimit", "AssocGrpUnknownMinutes", "AssocGrpMemMinutes", "AssocGrpNodeMinutes",
             "AssocGrpEnergyMinutes", "AssocGrpGRESMinutes", "AssocGrpLicenseMinutes", "AssocGrpBBMinutes",
             "AssocGrpBillingMinutes"),
    **_never("the QOS's allocation is used up",
             "QOSGrpCPUMinutesLimit", "QOSGrpUnknownMinutes", "QOSGrpMemoryMinutes", "QOSGrpNodeMinutes",
             "QOSGrpEnergyMinutes", "QOSGrpGRESMinutes", "QOSGrpLicenseMinutes", "QOSGrpBBMinutes",
             "QOSGrpBillingMinutes"),
}

# Of those, the ones the supervisor's own --exclude list can cause by leaving too few nodes.
EXCLUSIONS_CAN_CAUSE = frozenset({"PartitionNodeLimit", "PartitionConfig", "ReqNodeNotAvail"})

_REASON_CODE = re.compile(r"[^,\s(]+")


def reason_code(reason: str | None) -> str | None:
    """The code of a pending reason: squeue prints "ReqNodeNotAvail, UnavailableNodes:n01", scontrol
    "ReqNodeNotAvail,_UnavailableNodes:n01"; both are ``ReqNodeNotAvail``."""
    if not reason:
        return None
    found = _REASON_CODE.match(reason.strip())
    return found.group(0) if found else None


def pending_since(attempt: AttemptView, job: JobInfo, now: datetime) -> datetime:
    """Since when the job has been waiting for its current reason (a new reason starts the clock again)."""
    if attempt.reason_since is not None and reason_code(attempt.reason) == reason_code(job.reason):
        return attempt.reason_since
    return now


def queued_since(attempt: AttemptView, job: JobInfo | None) -> datetime | None:
    """When the job entered the queue: the cluster's submit time (a requeue renews it), else our own record."""
    return (job.submit_time if job is not None else None) or attempt.submitted_at


def cannot_start(
    stage: StageView, attempt: AttemptView, job: JobInfo | None, now: datetime,
) -> tuple[AttemptChanges, list[Action]] | None:
    """A job pending for a reason waiting never clears, for longer than the grace period.

    When the supervisor's own exclusions are what keeps it from starting, it is resubmitted without them
    (the submission lifts them); otherwise the run needs a person: nothing more is submitted until they act.
    Either way the job is cancelled: a job that starts while nobody watches the run would go unsupervised.
    """
    if job is None or job.phase is not JobPhase.PENDING or attempt.state is not AttemptState.QUEUED:
        return None
    code = reason_code(job.reason)
    if code is None or code not in NEVER_STARTS:
        return None
    waited = (now - pending_since(attempt, job, now)).total_seconds()
    if waited < stage.pending_grace:
        return None
    since = queued_since(attempt, job)
    queued = max((now - since).total_seconds(), waited) if since is not None else waited
    data: dict[str, object] = {"job_id": attempt.job_id, "pending_reason": job.reason, "pending_for_s": round(waited),
                               "queued_for_s": round(queued)}
    if job.excluded_nodes and code in EXCLUSIONS_CAN_CAUSE:
        return AttemptChanges(), [
            Emit(EventKind.STALLED,
                 f"job {attempt.job_id} waited {waited:.0f}s for {job.reason} with nodes {job.excluded_nodes} "
                 "excluded by the supervisor: cancelled, to be resubmitted without those exclusions",
                 stage.name, attempt.number, {**data, "excluded": job.excluded_nodes}),
            Cancel(stage.name, attempt.number, Outcome.RESUBMIT, EXCLUSIONS_IN_THE_WAY),
        ]
    reason = (f"{stage.name} job {attempt.job_id} cannot start: {job.reason} ({NEVER_STARTS[code]}); "
              f"pending {waited:.0f}s, queued {queued:.0f}s")
    return AttemptChanges(), [
        Emit(EventKind.NEEDS_ATTENTION, f"needs attention: {reason}", stage.name, attempt.number,
             {**data, "reason": reason}),
        Cancel(stage.name, attempt.number, Outcome.RESUBMIT, CANNOT_START),
        SetRun(RunState.NEEDS_ATTENTION, reason),
    ]
