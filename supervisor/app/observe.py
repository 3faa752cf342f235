"""The tick's observe step: what the logs and the stage kinds say about each live attempt of one run.

The rows are copied into plain values first and the session is closed: reading logs, checking
checkpoints and asking the cluster about one job happen with no database session open.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from supervisor.app.clusters import Clusters
from supervisor.app.contexts import context_for
from supervisor.domain import core
from supervisor.domain.core.observe import wants_down_nodes, wants_node_addresses
from supervisor.domain.errors import ClusterError, SupervisorError
from supervisor.domain.ports import NodeDirectory
from supervisor.domain.types import AttemptState, JobInfo
from supervisor.logs.follow import LogCursor, LogWatcher, Seen
from supervisor.logs.scanner import Catalogue
from supervisor.stages import Kind, StageContext
from supervisor.store import exclusions
from supervisor.store.models import Attempt, Run, Stage
from supervisor.store.repository import Repository, attempt_view

log = structlog.get_logger("supervisor")

# Enough of a log's end for the kinds' success lines (axolotl's and the transfer's).
LOG_TAIL_BYTES = 64 * 1024

# Attempts whose allocation's node addresses are remembered (one lookup per attempt and allocation).
ADDRESS_CACHE_SIZE = 256

Addresses = Mapping[str, tuple[str, ...]]


@dataclass(frozen=True)
class PollResult:
    """One pass's answers: per backend the jobs it knows (None: it did not answer), and per job id
    how many successful polls in a row did not find it."""

    infos: Mapping[str, Mapping[str, JobInfo] | None]
    missing: Mapping[str, int]


NO_POLL = PollResult(infos={}, missing={})


@dataclass(frozen=True)
class _Live:
    """One live attempt, copied out of its row."""

    attempt_id: int
    view: core.AttemptView
    stage: str
    backend: str
    cursor: LogCursor
    kind: Kind
    ctx: StageContext


@dataclass(frozen=True)
class Snapshot:
    """One run as its pass starts: the core's view, its live attempts, its signature catalogue."""

    view: core.RunView
    live: list[_Live]
    catalogue: Catalogue


@dataclass(frozen=True)
class RunObservation:
    view: core.RunView
    observations: Mapping[tuple[str, int], core.Observation]
    tails: Mapping[int, Mapping[str, Any]]  # log offsets to store with the reaction


class Observer:
    def __init__(self, repo: Repository, clusters: Clusters, logs: LogWatcher) -> None:
        self.repo = repo
        self.clusters = clusters
        self.logs = logs
        self._addresses: OrderedDict[tuple[int, tuple[str, ...]], Addresses] = OrderedDict()

    def snapshot(self, run_id: int) -> Snapshot | None:
        with self.repo.sessions() as session:
            run = session.get(Run, run_id)
            if run is None:
                return None
            return self._snapshot_of(session, run, None)

    def snapshots(self, run_ids: Sequence[int]) -> dict[int, Snapshot]:
        """The snapshots of many runs, read in one session with four queries (one run's alone takes five):
        most of an interval pass over runs whose logs say nothing new was reading them one by one.

        A run whose snapshot cannot be made here is left out: :meth:`observe` reads it again on its own,
        inside its run's error boundary, which reports what fails."""
        found: dict[int, Snapshot] = {}
        if not run_ids:
            return found
        with self.repo.sessions() as session:
            runs = session.scalars(select(Run).where(Run.id.in_(list(run_ids)))
                                   .options(selectinload(Run.stages).selectinload(Stage.attempts))).all()
            excluded = exclusions.in_force_by_run(session, run_ids, self.repo.clock.now())
            for run in runs:
                try:
                    found[run.id] = self._snapshot_of(session, run, excluded.get(run.id, ()))
                except Exception:  # reported by the run's own pass (see the docstring)
                    continue
        return found

    def _snapshot_of(self, session: Session, run: Run, excluded: tuple[str, ...] | None) -> Snapshot:
        entries = run.spec.get("signatures") or []
        catalogue = self.logs.catalogue(run.name, entries)
        view = self.repo.view(session, run, self.logs.resubmit_limits(run.name, entries), excluded)
        live = [self._live(run, stage.name, a) for stage in run.stages for a in stage.attempts
                if a.state in (AttemptState.QUEUED.value, AttemptState.RUNNING.value)]
        return Snapshot(view=view, live=live, catalogue=catalogue)

    def _live(self, run: Run, stage: str, a: Attempt) -> _Live:
        kind, ctx = context_for(run, stage, a.number)
        return _Live(attempt_id=a.id, view=attempt_view(a), stage=stage, backend=a.backend,
                     cursor=LogCursor(a.log_path, a.log_tail, a.hang_hint), kind=kind, ctx=ctx)

    def observe(self, run_id: int, polled: PollResult, snap: Snapshot | None = None) -> RunObservation | None:
        """What the run's live attempts show; ``snap``: its snapshot from :meth:`snapshots`, else it is read now."""
        snap = snap or self.snapshot(run_id)
        if snap is None:
            return None
        view, live, catalogue = snap.view, snap.live, snap.catalogue
        observations: dict[tuple[str, int], core.Observation] = {}
        tails: dict[int, Mapping[str, Any]] = {}
        for item in live:
            seen = self.logs.read(catalogue, item.cursor, item.kind.progress)
            job = self._job(item, polled, seen)
            if seen.tail:
                tails[item.attempt_id] = seen.tail
            hint = seen.hang_hint if seen.tail else item.cursor.hang_hint
            finished, succeeded, saved = self._kind_checks(item, job)
            observations[(item.stage, item.view.number)] = core.Observation(
                job=job, missing_polls=polled.missing.get(item.view.job_id or "", 0), matches=seen.matches,
                progress=seen.progress, loss=seen.loss, new_output=seen.new_output, work_finished=finished,
                succeeded=succeeded, saved_mark=saved,
                hang_hint=str(hint["signature"]) if hint else None,
                node_addresses=self._node_addresses(item, job, seen), down_nodes=self._down_nodes(item, job, seen))
        return RunObservation(view=view, observations=observations, tails=tails)

    def _job(self, item: _Live, polled: PollResult, seen: Seen) -> JobInfo | None:
        infos = polled.infos.get(item.backend)
        job = infos.get(item.view.job_id or "") if infos is not None else None
        if job is None and item.backend not in polled.infos and core.wants_job_nodes(item.view, seen.matches):
            # A log wake-up read a fault on "the job's nodes" before any poll learnt them: ask for this job.
            job = self._poll_one(item.backend, item.view.job_id)
        return job

    def _down_nodes(self, item: _Live, job: JobInfo | None, seen: Seen) -> frozenset[str]:
        """The allocation's nodes the scheduler marks down, asked only when a fault that benches a node names
        none on a job of several nodes (then the attempt ends: once per attempt)."""
        nodes = wants_down_nodes(item.view, job, seen.matches)
        cluster = self.clusters(item.backend) if nodes else None
        if not isinstance(cluster, NodeDirectory):
            return frozenset()
        try:
            return cluster.down_nodes(nodes)
        except ClusterError as exc:
            log.warning("node_lookup_failed", backend=item.backend, error=str(exc), job_id=item.view.job_id)
            return frozenset()

    def _node_addresses(self, item: _Live, job: JobInfo | None, seen: Seen) -> Addresses:
        """What the allocation's nodes answer to, asked only when a failure line names a host that is no node
        name of the allocation (an IP address, an interface's name); once per attempt and allocation."""
        nodes = wants_node_addresses(item.view, job, seen.matches)
        if not nodes:
            return {}
        key = (item.attempt_id, nodes)
        if key in self._addresses:
            self._addresses.move_to_end(key)
            return self._addresses[key]
        cluster = self.clusters(item.backend)
        if not isinstance(cluster, NodeDirectory):
            return {}
        try:
            found = cluster.node_addresses(nodes)
        except ClusterError as exc:
            # Unknown addresses leave the host unresolved: nothing is excluded on a guess.
            log.warning("node_lookup_failed", backend=item.backend, error=str(exc), job_id=item.view.job_id)
            return {}
        self._addresses[key] = found
        while len(self._addresses) > ADDRESS_CACHE_SIZE:
            self._addresses.popitem(last=False)
        return found

    def _poll_one(self, backend: str, job_id: str | None) -> JobInfo | None:
        if job_id is None:
            return None
        try:
            return self.clusters(backend).poll([job_id]).get(job_id)
        except ClusterError as exc:
            log.warning("poll_failed", backend=backend, error=str(exc), job_id=job_id)
            return None

    @staticmethod
    def _kind_checks(item: _Live, job: JobInfo | None) -> tuple[bool, bool | None, str | None]:
        """Is the stage's work finished, did it succeed (once its job ended), when did it last save."""
        try:
            finished = item.kind.work_finished(item.ctx)
            saved = item.kind.last_saved(item.ctx)
            succeeded = None
            if job is not None and job.phase.finished:
                succeeded = item.kind.succeeded(item.ctx, job.exit_code, _log_tail(item.cursor.path))
        except (SupervisorError, OSError) as exc:
            log.warning("kind_check_failed", run=item.ctx.run, stage=item.stage, error=str(exc))
            return False, None, None
        return finished, succeeded, saved


def _log_tail(path: str | None) -> str:
    if not path or "%j" in path:
        return ""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - LOG_TAIL_BYTES))
            return fh.read().decode(errors="replace")
    except OSError:
        return ""
