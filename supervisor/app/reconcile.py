"""The tick's first step: attempts a crash left in SUBMITTING are adopted if their job exists, else submitted."""

from __future__ import annotations

import structlog

from supervisor.app.clusters import Clusters
from supervisor.app.submit import Submitter, process_with_tag_alive
from supervisor.domain.errors import ClusterError
from supervisor.store.repository import Repository

log = structlog.get_logger("supervisor")


def reconcile_submitting(repo: Repository, clusters: Clusters, submitter: Submitter) -> None:
    by_backend: dict[str, list[tuple[int, str]]] = {}
    for attempt_id, tag, backend in repo.submitting():
        by_backend.setdefault(backend, []).append((attempt_id, tag))
    for backend, items in by_backend.items():
        if clusters.backing_off(backend):
            continue  # the cluster is not answering: the lookup waits out the same backoff as polls
        # Look for launchers before asking the cluster: one that exits during the query may have
        # created its job too late for the answer, and must not be mistaken for one that never did.
        launching = {tag for _, tag in items if process_with_tag_alive(tag)}
        try:
            found = clusters(backend).find_by_tag([tag for _, tag in items])
        except ClusterError as exc:
            log.warning("reconcile_unknown", backend=backend, error=str(exc), failures=clusters.failed(backend))
            continue
        clusters.answered(backend)
        for attempt_id, tag in items:
            info = found.get(tag)
            if info is not None:
                repo.adopt(attempt_id, info)
            elif tag not in launching:
                # Not in the queue and no submitting process left: sbatch never ran (or failed).
                submitter.submit(attempt_id)
