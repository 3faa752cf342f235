"""The test doubles shared by the tests: one of each, imported wherever a test needs it.

Fakes stand in only where no real part exists or for the pure logic; everything else in the tests is
real (SQLite, subprocesses, SLURM). Import with ``from fakes import ...`` (pytest puts ``tests/`` on
sys.path).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from supervisor.domain.ports import Channel
from supervisor.domain.types import JobInfo, JobPhase, SubmitRequest

T0 = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)


class ManualClock:
    """Injected time (the Clock port): tests move it instead of sleeping."""

    def __init__(self, start: datetime = T0) -> None:
        self.t = start

    def now(self) -> datetime:
        return self.t

    def advance(self, seconds: float) -> datetime:
        self.t += timedelta(seconds=seconds)
        return self.t


class RecordingCluster:
    """A cluster that accepts every submission (job ids 101, 102, ...), knows no job and records the tags."""

    kind = "slurm"

    def __init__(self) -> None:
        self.submitted: list[str] = []

    def submit(self, request: SubmitRequest) -> str:
        self.submitted.append(request.tag)
        return str(100 + len(self.submitted))

    def poll(self, job_ids: Collection[str]) -> dict[str, JobInfo]:
        return {}

    def find_by_tag(self, tags: Collection[str]) -> dict[str, JobInfo]:
        return {}

    def cancel(self, job_id: str) -> None:
        pass


class RunningCluster(RecordingCluster):
    """Every job it is asked about is running on node01."""

    def poll(self, job_ids: Collection[str]) -> dict[str, JobInfo]:
        return {j: JobInfo(job_id=j, name="", phase=JobPhase.RUNNING, nodes="node01") for j in job_ids}


class Interrupted(BaseException):
    """Stands for SIGKILL between the server's answer and the database update (not an Exception: nothing
    in the library may catch it)."""


class DiesAfterSend:
    """A real channel whose first send is delivered and then 'killed' before its caller learns of it."""

    def __init__(self, inner: Channel) -> None:
        self.kind = inner.kind
        self.inner = inner
        self.armed = True

    def send(self, message: Mapping[str, Any], *, idempotency_key: str) -> None:
        self.inner.send(message, idempotency_key=idempotency_key)
        if self.armed:
            self.armed = False
            raise Interrupted

    def close(self) -> None:
        self.inner.close()
