"""The clusters the runs use, one per backend, and how long to leave one alone after it failed to answer."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path

from supervisor.backends import make_cluster
from supervisor.domain.policy import Backoff
from supervisor.domain.ports import Clock, Cluster

# A struggling slurmctld is not hammered: queries back off from 5 s to 5 minutes while it fails.
QUERY_BACKOFF = Backoff(base=5.0, cap=300.0)


class Clusters:
    def __init__(self, home: Path, clock: Clock, clusters: Mapping[str, Cluster] | None = None) -> None:
        self._home = home
        self._clock = clock
        self._clusters: dict[str, Cluster] = dict(clusters or {})
        self._failures: dict[str, int] = {}
        self._not_before: dict[str, datetime] = {}

    def __call__(self, backend: str) -> Cluster:
        if backend not in self._clusters:
            self._clusters[backend] = make_cluster(backend, self._home)
        return self._clusters[backend]

    def backing_off(self, backend: str) -> bool:
        now = self._clock.now()
        return self._not_before.get(backend, now) > now

    def answered(self, backend: str) -> None:
        self._failures.pop(backend, None)
        self._not_before.pop(backend, None)

    def failed(self, backend: str) -> int:
        """Count one more failed query of ``backend`` and push its next one back; return the count."""
        n = self._failures.get(backend, 0) + 1
        self._failures[backend] = n
        self._not_before[backend] = self._clock.now() + timedelta(seconds=QUERY_BACKOFF.delay(n))
        return n
