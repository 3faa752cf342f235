"""The service's own rules, with a recording cluster (no SLURM needed): conditional state changes."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from supervisor import core
from supervisor.service import Supervisor
from supervisor.types import JobInfo, RunState, SubmitRequest


class RecordingCluster:
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


def registered(tmp_path: Path) -> tuple[Supervisor, RecordingCluster]:
    cluster = RecordingCluster()
    sv = Supervisor(tmp_path / "home", clusters={"slurm": cluster})
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: r\nbackend: slurm\nworkdir: {tmp_path / 'w'}\nstages:\n  - name: s\n    command: [echo]\n")
    sv.register(spec, "slurm")
    return sv, cluster


def test_decision_made_before_a_pause_is_not_carried_out(tmp_path: Path) -> None:
    sv, cluster = registered(tmp_path)
    decided = [core.SetRun(RunState.RUNNING), core.Submit("s", 1)]
    sv.pause("r")  # lands between the decision (run pending) and its application
    assert sv.apply(1, RunState.PENDING, decided, {}) is False
    assert cluster.submitted == []
    data = sv.show("r")
    assert data["state"] == "paused" and data["stages"][0]["attempts"] == []


def test_decision_applies_when_nothing_moved(tmp_path: Path) -> None:
    sv, _ = registered(tmp_path)
    assert sv.apply(1, RunState.PENDING, [core.SetRun(RunState.RUNNING), core.Emit("note", "hello")], {}) is True
    data = sv.show("r")
    assert data["state"] == "running" and data["events"][-1]["message"] == "hello"


def test_cancel_between_decision_and_success_keeps_the_run_cancelled(tmp_path: Path) -> None:
    sv, _ = registered(tmp_path)
    sv.apply(1, RunState.PENDING, [core.SetRun(RunState.RUNNING)], {})
    sv.cancel_run("r")
    assert sv.apply(1, RunState.RUNNING, [core.SetRun(RunState.SUCCEEDED)], {}) is False
    assert sv.show("r")["state"] == "cancelled"
