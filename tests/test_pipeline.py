"""The walking skeleton end to end: the real CLI, a real daemon process, real SQLite, real jobs.

Every test runs on the embedded `local` backend and on the real one-node SLURM cluster
(deploy/slurm-cluster.sh start).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from harness import Harness, slurm_available, slurm_jobs_by_name

BACKENDS = [
    pytest.param("local", id="local"),
    pytest.param("slurm", id="slurm", marks=pytest.mark.slurm),
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "slurm" and not slurm_available():
        pytest.fail("SLURM is not answering: start it with deploy/slurm-cluster.sh start")
    return str(request.param)


def three_stages(h: Harness, backend: str, name: str = "pipe") -> dict[str, Any]:
    order = h.root / "order.txt"
    stages = []
    for stage in ("prepare", "train", "merge"):
        script = h.script(f"{stage}.sbatch", f"""
#SBATCH --time=00:05:00
echo "$SUPERVISOR_RUN/$SUPERVISOR_STAGE/$SUPERVISOR_ATTEMPT" >> {order}
sleep 0.5
""")
        stages.append({"name": stage, "script": str(script)})
    return {"name": name, "backend": backend, "workdir": str(h.root / "work"), "stages": stages}


def test_three_stage_pipeline_succeeds_in_order(harness: Harness, backend: str) -> None:
    spec = three_stages(harness, backend)
    assert harness.submit(spec) == "pipe"
    assert harness.status()[0]["state"] == "pending"
    harness.start_daemon()
    data = harness.wait_state("pipe", "succeeded", timeout=120)
    order = (harness.root / "order.txt").read_text().split()
    assert order == ["pipe/prepare/1", "pipe/train/1", "pipe/merge/1"]
    assert [s["state"] for s in data["stages"]] == ["succeeded"] * 3
    for stage in data["stages"]:
        (attempt,) = stage["attempts"]
        assert attempt["state"] == "succeeded" and attempt["exit_code"] == 0
        assert attempt["job_id"] and attempt["submitted_at"] and attempt["ended_at"]
        log = Path(attempt["log"])
        assert log.name == f"{stage['name']}-1-{attempt['job_id']}.log" and log.parent.name == "logs"
    kinds = [e["kind"] for e in data["events"]]
    assert kinds.count("submitted") == 3 and kinds[-1] == "succeeded"
    if backend == "slurm":
        jobs = slurm_jobs_by_name()
        for stage in data["stages"]:
            tag = [n for n in jobs if n.startswith(f"pipe.{stage['name']}.1.")]
            assert len(tag) == 1 and jobs[tag[0]] == [stage["attempts"][0]["job_id"]]
    status = harness.status()[0]
    assert set(status) >= {"name", "state", "stage", "attempt", "job_id", "updated_at"}
    assert status["state"] == "succeeded" and status["stage"] == "merge"


def test_failing_stage_is_retried_then_run_fails(harness: Harness, backend: str) -> None:
    script = harness.script("fail.sbatch", "echo trying; exit 1\n")
    harness.submit({"name": "flaky", "backend": backend, "workdir": str(harness.root / "w"),
                    "stages": [{"name": "only", "script": str(script), "max_attempts": 3, "retry_backoff": 0}]})
    harness.start_daemon()
    data = harness.wait_state("flaky", "failed", timeout=120)
    attempts = data["stages"][0]["attempts"]
    assert [a["number"] for a in attempts] == [1, 2, 3]
    assert all(a["state"] == "failed" and a["exit_code"] == 1 for a in attempts)
    assert len({a["job_id"] for a in attempts}) == 3
    assert "retries_exhausted" in [e["kind"] for e in data["events"]]
    # `retry` gives a fresh budget.
    harness.cli("retry", "flaky")
    harness.wait_for(lambda: len(harness.attempts("flaky", "only")) == 6, 120, "three more attempts")
    data = harness.wait_state("flaky", "failed")
    retried = data["stages"][0]["attempts"][3:]
    assert [a["number"] for a in retried] == [4, 5, 6]
    assert all(a["state"] == "failed" and a["exit_code"] == 1 for a in retried)
    assert [e["kind"] for e in data["events"]].count("retries_exhausted") == 2


def test_cancel_removes_live_job_and_pause_stops_submissions(harness: Harness, backend: str) -> None:
    long = harness.script("long.sbatch", "echo started; sleep 300\n")
    quick = harness.script("quick.sbatch", "echo hi\n")
    harness.submit({"name": "c1", "backend": backend, "workdir": str(harness.root / "c1"),
                    "stages": [{"name": "s", "script": str(long)}]})
    harness.submit({"name": "p1", "backend": backend, "workdir": str(harness.root / "p1"),
                    "stages": [{"name": "a", "script": str(quick)}, {"name": "b", "script": str(quick)}]})
    harness.cli("pause", "p1")
    harness.start_daemon()
    harness.wait_for(lambda: bool(harness.attempts("c1", "s")) and harness.attempts("c1", "s")[0]["state"] == "running",
                     90, "c1 running")
    job_id = harness.attempts("c1", "s")[0]["job_id"]
    assert job_id in harness.cli("cancel", "c1").out
    data = harness.wait_state("c1", "cancelled")
    assert data["stages"][0]["attempts"][0]["state"] == "cancelled"
    if backend == "slurm":
        queued = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout
        assert queued.strip() in ("", "CANCELLED", "COMPLETING")
    # Paused: p1 was paused before the daemon started, so every tick that submitted, saw running and saw
    # cancelled c1 also passed over p1, and none submitted anything for it. Resumed: it runs.
    assert harness.show("p1")["stages"][0]["attempts"] == []
    assert harness.show("p1")["state"] == "paused"
    harness.cli("resume", "p1")
    resumed = harness.wait_state("p1", "succeeded")
    assert [s["state"] for s in resumed["stages"]] == ["succeeded", "succeeded"]


def test_second_daemon_refused_and_tick_is_a_noop(harness: Harness) -> None:
    harness.start_daemon()
    harness.wait_for(lambda: (harness.home / "supervisor.lock").exists(), 30, "lock file")
    harness.wait_for(lambda: "daemon_started" in harness.daemon_log.read_text(), 30, "daemon start")
    second = harness.cli("daemon", check=False, timeout=30)
    assert second.code == 1 and "supervisor.lock" in second.err
    tick = harness.cli("tick", check=False)
    assert tick.code == 0 and "daemon is running" in tick.err
    assert harness.stop_daemon() == 0
    # With the daemon gone the lock is free and the tick does its pass (check=True: it exits 0).
    assert "daemon is running" not in harness.cli("tick").err
