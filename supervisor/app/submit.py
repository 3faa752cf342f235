"""Carrying out the two side effects: submitting one attempt and cancelling one.

Both run after the transaction that decided them has committed, hold no database session while the
cluster is called, and record the outcome conditionally (the attempt may have moved meanwhile).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from supervisor.app.clusters import Clusters
from supervisor.app.contexts import context_for
from supervisor.backends.slurm_cli import refuses_node_selection
from supervisor.domain.core.views import EXCLUSIONS_IN_THE_WAY
from supervisor.domain.errors import ClusterError, SupervisorError
from supervisor.domain.types import AttemptState, EventKind, SubmitRequest
from supervisor.notify.config import secret_env_names
from supervisor.stages import Submission
from supervisor.stages.remedies import clear_extension_locks
from supervisor.store import exclusions
from supervisor.store.models import Attempt
from supervisor.store.readmodels import attempts_of
from supervisor.store.repository import LIVE, Repository

log = structlog.get_logger("supervisor")


class Submitter:
    def __init__(self, repo: Repository, clusters: Clusters) -> None:
        self.repo = repo
        self.clusters = clusters

    def submit(self, attempt_id: int) -> None:
        with self.repo.sessions() as session:
            attempt = session.get(Attempt, attempt_id)
            if attempt is None or attempt.state != AttemptState.SUBMITTING.value:
                return
            run, stage = attempt.stage.run, attempt.stage
            backend, number, log_pattern = attempt.backend, attempt.number, attempt.log_path or ""
            kind, ctx = context_for(run, stage.name, number)
            excluded = exclusions.in_force(session, run.id, self.repo.clock.now()) if backend != "local" else ()
            earlier = [a for a in attempts_of(session, stage) if a.number < number]
            blocked_before = bool(earlier) and earlier[-1].cause == EXCLUSIONS_IN_THE_WAY
            run_id, stage_name = run.id, stage.name
            base = {"SUPERVISOR_RUN": run.name, "SUPERVISOR_STAGE": stage.name, "SUPERVISOR_ATTEMPT": str(number)}
            # The variables the run's notify channels read their secrets from never reach its jobs.
            unset_env = secret_env_names(run.spec.get("notify") or [])
            tag, workdir = attempt.tag, Path(run.workdir)
        bound = log.bind(run=ctx.run, stage=ctx.stage, attempt=number)
        if excluded and blocked_before:
            # The last attempt waited in the queue for nodes only our exclusions ruled out.
            exclusions.lift(self.repo, run_id, excluded, f"attempt {number - 1} could not start with them",
                                      stage_name, number)
            excluded = ()
        try:
            # Preparation may write the rendered job, move checkpoints aside, clean a prepared dataset.
            sub = kind.prepare(ctx)
            saved = kind.last_saved(ctx)
            workdir.mkdir(parents=True, exist_ok=True)
            Path(log_pattern).parent.mkdir(parents=True, exist_ok=True)
        except (SupervisorError, OSError) as exc:
            # An OSError may pass: let the budget decide. A configuration error will not.
            permanent = exc.permanent if isinstance(exc, SupervisorError) else False
            self.repo.refused(attempt_id, str(exc), permanent=permanent)
            return
        notes = _notes(sub)
        self.repo.prepared(attempt_id, _describe(notes), notes, saved)
        request = SubmitRequest(
            tag=tag, workdir=workdir, log_pattern=log_pattern, script=sub.script, command=sub.command,
            sbatch_args=(*ctx.spec.sbatch_args, *sub.sbatch_args), exclude=excluded,
            env={**base, **sub.env, **ctx.spec.env}, unset_env=unset_env,
        )
        job_id = self._submit(attempt_id, backend, request, run_id, stage_name, number, bound)
        if job_id is None:
            return
        cancel_now = self.repo.submitted(attempt_id, job_id, log_pattern.replace("%j", job_id))
        bound.info("job_submitted", job_id=job_id)
        if cancel_now:
            self.cancel(attempt_id)

    def _submit(
        self, attempt_id: int, backend: str, request: SubmitRequest, run_id: int, stage: str, number: int,
        bound: structlog.typing.FilteringBoundLogger,
    ) -> str | None:
        """The job id, or None when the submission is unknown (reconciliation decides) or was refused."""
        while True:
            try:
                return self.clusters(backend).submit(request)
            except ClusterError as exc:
                if not exc.permanent:
                    # Unknown whether the job exists: stay SUBMITTING; reconciliation looks the tag up.
                    bound.warning("submit_unknown", error=str(exc))
                    return None
                if request.exclude and refuses_node_selection(str(exc)):
                    # The supervisor's own --exclude list left no nodes to run on: not the run's fault. Lift it
                    # and submit once more without; a refusal then is the request's own, as it would be anyway.
                    exclusions.lift(self.repo, run_id, request.exclude, f"sbatch refused the job with them ({exc})",
                                              stage, number)
                    request = dataclasses.replace(request, exclude=())
                    continue
                self.repo.refused(attempt_id, f"submission rejected: {exc}", permanent=True)
                return None

    def cancel(self, attempt_id: int) -> str | None:
        """Cancel the attempt's job; return its id once the cluster took the cancel."""
        with self.repo.sessions() as session:
            attempt = session.get(Attempt, attempt_id)
            if attempt is None or attempt.job_id is None or attempt.state not in [s.value for s in LIVE]:
                return None
            backend, job_id = attempt.backend, attempt.job_id
        try:
            self.clusters(backend).cancel(job_id)
        except ClusterError as exc:
            log.warning("cancel_failed", job_id=job_id, error=str(exc))
            return None  # cancel_requested stays set: the next tick asks again
        self.repo.cancelled(attempt_id)
        log.info("job_cancelled", job_id=job_id)
        self._remedy(attempt_id)
        return job_id

    def _remedy(self, attempt_id: int) -> None:
        """What a human does before resubmitting after some hangs: e.g. remove stale extension-build locks."""
        with self.repo.sessions.begin() as session:
            attempt = session.get(Attempt, attempt_id)
            if attempt is None or attempt.cause != "extension_build_hang" or not attempt.hang_hint:
                return
            removed = clear_extension_locks(str(attempt.hang_hint.get("text", "")))
            if removed:
                self.repo.event(session, attempt.stage.run, EventKind.LOCK_CLEARED,
                                f"removed stale PyTorch extension build locks: {', '.join(map(str, removed))}",
                                attempt.stage.name, attempt.number, {"removed": [str(p) for p in removed]})


def process_with_tag_alive(tag: str) -> bool:
    """Whether a process (an sbatch or local launcher we started before a crash) still carries the tag."""
    needle = tag.encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                if needle in fh.read():
                    return True
        except OSError:
            continue
    return False


def _notes(sub: Submission) -> dict[str, Any]:
    notes: dict[str, Any] = {}
    if sub.resume_from is not None:
        notes["resume_from"] = str(sub.resume_from)
    if sub.moved_aside:
        notes["moved_aside"] = [str(p) for p in sub.moved_aside]
    if sub.cleaned:
        notes["cleaned"] = [str(p) for p in sub.cleaned]
    return notes


def _describe(notes: Mapping[str, Any]) -> str:
    parts = []
    if "resume_from" in notes:
        parts.append(f"resuming from {notes['resume_from']}")
    if "moved_aside" in notes:
        parts.append(f"moved incomplete checkpoints aside: {', '.join(notes['moved_aside'])}")
    if "cleaned" in notes:
        parts.append(f"emptied the half-written prepared dataset: removed {', '.join(notes['cleaned'])}")
    return "; ".join(parts)
