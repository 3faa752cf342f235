"""The interfaces the core talks to, in one place: the cluster, the notifier, the clock."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from supervisor.domain.types import JobInfo, SubmitRequest


class Cluster(Protocol):
    """A place that runs jobs: SLURM through its CLI, or local processes."""

    kind: str

    def submit(self, request: SubmitRequest) -> str:
        """Start one job and return its id. Raises ClusterError."""
        ...

    def poll(self, job_ids: Collection[str]) -> dict[str, JobInfo]:
        """State of the given jobs in one batched query.

        Jobs the cluster no longer knows are absent from the result (unknown, not failed).
        Raises ClusterError when the cluster did not answer: callers treat that as "unknown".
        """
        ...

    def find_by_tag(self, tags: Collection[str]) -> dict[str, JobInfo]:
        """Jobs, queued or recently ended, whose name is one of ``tags`` (crash reconciliation)."""
        ...

    def cancel(self, job_id: str) -> None:
        """Cancel a job; cancelling a job that already ended is not an error."""
        ...


class Channel(Protocol):
    """One notification destination (Slack, Matrix, a webhook)."""

    kind: str

    def send(self, message: Mapping[str, Any], *, idempotency_key: str) -> None:
        """Deliver one message. Raises NotifyError."""
        ...


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)
