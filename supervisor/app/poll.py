"""The tick's poll step: one batched query per backend for every live job, and who stopped answering."""

from __future__ import annotations

import structlog

from supervisor.app.clusters import Clusters
from supervisor.app.observe import PollResult
from supervisor.domain.errors import ClusterError
from supervisor.domain.types import JobInfo
from supervisor.store.repository import Repository

log = structlog.get_logger("supervisor")


class Poller:
    def __init__(self, repo: Repository, clusters: Clusters) -> None:
        self.repo = repo
        self.clusters = clusters
        # Job id -> successful polls in a row that did not find it (the core decides when it is gone).
        self._missing: dict[str, int] = {}

    def poll(self) -> PollResult:
        infos: dict[str, dict[str, JobInfo] | None] = {}
        for backend, ids in self.repo.polled_jobs().items():
            if self.clusters.backing_off(backend):
                infos[backend] = None
                continue
            try:
                found = self.clusters(backend).poll(ids)
            except ClusterError as exc:
                # Unknown, not failed.
                log.warning("poll_failed", backend=backend, error=str(exc), failures=self.clusters.failed(backend))
                infos[backend] = None
                continue
            self.clusters.answered(backend)
            for job_id in ids:
                self._missing[job_id] = 0 if job_id in found else self._missing.get(job_id, 0) + 1
            infos[backend] = found
        return PollResult(infos=infos, missing={k: v for k, v in self._missing.items() if v})
