"""Every interface an adapter implements, in one place: the cluster, the command runner, the notification
channels (with their lifecycle) and the clock."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

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


@runtime_checkable
class NodeDirectory(Cluster, Protocol):
    """A cluster that can say what its nodes answer to; optional: without it a host a log line names is
    matched against the allocation's node names only."""

    def node_addresses(self, nodes: Collection[str]) -> dict[str, tuple[str, ...]]:
        """Per node of ``nodes`` the names and addresses it answers to (SLURM: NodeAddr, NodeHostName and the
        IP addresses they resolve to); nodes the cluster does not know are absent. Raises ClusterError."""
        ...

    def down_nodes(self, nodes: Collection[str]) -> frozenset[str]:
        """The nodes of ``nodes`` the scheduler marks down, failed or not responding now. Raises ClusterError."""
        ...


class Channel(Protocol):
    """One notification destination (Slack, Matrix, a webhook)."""

    kind: str

    def send(self, message: Mapping[str, Any], *, idempotency_key: str) -> None:
        """Deliver one message. Raises NotifyError."""
        ...

    def close(self) -> None:
        """Release the channel's connections; it is not used afterwards."""
        ...


@runtime_checkable
class StatefulChannel(Channel, Protocol):
    """A channel that needs memory per (run, channel) across restarts, e.g. the Matrix thread root."""

    def send_with_state(
        self, message: Mapping[str, Any], *, idempotency_key: str, state: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """Send; return the new state to store, or None when unchanged. Raises NotifyError."""
        ...


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


class CommandRunner(Protocol):
    """Runs one command to completion (the SLURM clients); the only thing that starts a process for them."""

    def __call__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        timeout: float = 60.0,
    ) -> CommandResult: ...


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)
