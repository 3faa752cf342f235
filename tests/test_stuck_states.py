"""Jobs that can never start, and exclusions that would make a run impossible, on the one-node SLURM cluster.

The supervisor runs in-process with an injected clock, so a ten-minute grace period passes without
waiting for it; the jobs, sbatch, squeue and scancel are real.
"""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from alembic import command
from sqlalchemy import select

from supervisor.app.service import Supervisor
from supervisor.backends.slurm_cli import refuses_node_selection
from supervisor.domain import core
from supervisor.domain.types import RunState
from supervisor.store import readmodels
from supervisor.store.db import DB_NAME, _alembic_config, create_db_engine, open_database
from supervisor.store.models import Attempt, OutboxEntry

from fakes import ManualClock
from slurm_fixtures import one_node_partition, require_slurm, write_script

SBATCH_REFUSAL = "sbatch: sbatch: error: Batch job submission failed: Requested node configuration is not available"
UNNAMED_NCCL_ERROR = ("RuntimeError: NCCL error in: ../torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:1970, "
                      "unhandled system error, NCCL version 2.19.3")
GRACE_S = 600  # the default `pending_grace`


def test_a_database_from_before_is_migrated_to_remember_since_when_a_reason_holds(tmp_path: Path) -> None:
    engine = create_db_engine(tmp_path / DB_NAME)
    command.upgrade(_alembic_config(engine), "0003")
    engine.dispose()
    open_database(tmp_path)
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(attempts)")}
    assert "reason_since" in columns


def test_sbatch_refusals_of_a_node_selection_are_recognised() -> None:
    assert refuses_node_selection(SBATCH_REFUSAL)
    assert refuses_node_selection("sbatch: error: Batch job submission failed: Invalid node name specified")
    assert refuses_node_selection("sbatch: error: Batch job submission failed: Node count specification invalid")
    assert not refuses_node_selection("sbatch: error: Batch job submission failed: Invalid account or "
                                      "account/partition combination specified")


class Bench:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.clock = ManualClock(datetime.now(UTC))  # the cluster's submit times are real: start from now
        self.sv = Supervisor(root / "home", clock=self.clock)

    def register(self, name: str, stage: dict[str, Any], **extra: Any) -> None:
        # Every job goes to a partition of one node, whatever the cluster's layout: "more nodes than the
        # partition has" and "the job's only node" then mean the same on one node and on four.
        partition, _ = one_node_partition()
        stage = {**stage, "sbatch_args": [f"--partition={partition}", *stage.get("sbatch_args", [])]}
        spec = {"name": name, "backend": "slurm", "workdir": str(self.root / "w" / name), "stages": [stage], **extra}
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec))
        self.sv.register(path, "slurm")

    def script(self, name: str, body: str) -> str:
        return str(write_script(self.root, name, "#SBATCH --time=5\n" + body))

    def attempts(self, name: str) -> list[dict[str, Any]]:
        return self.sv.show(name)["stages"][0]["attempts"]  # type: ignore[no-any-return]

    def tick_until(self, check: Callable[[], bool], what: str, timeout: float = 120) -> None:
        """Tick (polling the real cluster) until ``check`` holds.

        The clock moves on a second per unsuccessful pass: the dev cluster is shared and its controller is
        sometimes down for another test, and the supervisor's back-off from a failed query runs on this clock.
        """
        deadline = time.monotonic() + timeout
        while True:
            self.sv.tick()
            if check():
                return
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}: {self.sv.status()}")
            self.clock.advance(1)
            time.sleep(0.3)

    def status_row(self, name: str) -> dict[str, Any]:
        with self.sv.sessions() as session:
            return next(r for r in readmodels.status_rows(session, now=self.clock.now()) if r["name"] == name)

    def job_ids(self) -> list[str]:
        with self.sv.sessions() as session:
            return [j for j in session.scalars(select(Attempt.job_id)) if j]


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    require_slurm()
    b = Bench(tmp_path)
    try:
        yield b
    finally:
        for job_id in b.job_ids():  # a job that never starts would otherwise stay in the queue for ever
            subprocess.run(["scancel", job_id], capture_output=True, timeout=60, check=False)


def kinds(data: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e for e in data["events"] if e["kind"] == kind]


def job_state(job_id: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", "--oneliner", job_id], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    return dict(f.split("=", 1) for f in out.split() if "=" in f)["JobState"]


@pytest.mark.slurm
def test_two_nodes_on_a_one_node_partition_needs_attention_after_the_grace_period(bench: Bench) -> None:
    bench.register("wide", {"name": "s", "script": bench.script("wide.sbatch", "echo never\n"),
                            "sbatch_args": ["--nodes=2"], "max_attempts": 3, "retry_backoff": 0},
                   notify=[{"webhook": {"url": "http://127.0.0.1:9/hook"}}])
    bench.tick_until(lambda: bench.status_row("wide")["pending_reason"] == "PartitionNodeLimit",
                     "the job to pend for PartitionNodeLimit")
    row = bench.status_row("wide")
    assert row["state"] == "running" and row["queued_for_s"] is not None
    (attempt,) = bench.attempts("wide")
    assert attempt["pending_reason"] == "PartitionNodeLimit" and attempt["queued_for_s"] is not None

    bench.clock.advance(GRACE_S - 60)
    bench.sv.tick()
    row = bench.status_row("wide")
    assert row["state"] == "running", "acted before the grace period was over"
    assert row["queued_for_s"] >= GRACE_S - 60, "the wait is shown"

    bench.clock.advance(61)
    bench.tick_until(lambda: bench.sv.show("wide")["state"] != "running", "a reaction once the grace period is over")
    data = bench.sv.show("wide")
    assert data["state"] == RunState.NEEDS_ATTENTION == bench.sv.status()[0]["state"]
    assert "PartitionNodeLimit" in data["reason"] and attempt["job_id"] in data["reason"]
    (event,) = kinds(data, "needs_attention")
    assert "PartitionNodeLimit" in event["message"]
    with bench.sv.sessions() as session:
        outbox = list(session.scalars(select(OutboxEntry)))
    assert [e.kind for e in outbox if e.kind == "needs_attention"] == ["needs_attention"]
    # The job is cancelled, so it can never start unwatched; it used none of the stage's attempts.
    (attempt,) = bench.attempts("wide")
    assert (attempt["state"], attempt["cause"]) == ("cancelled", "cannot_start")
    assert job_state(attempt["job_id"]) == "CANCELLED"

    for _ in range(3):
        bench.clock.advance(3600)
        bench.sv.tick()
    data = bench.sv.show("wide")
    assert data["state"] == "needs_attention"
    assert len(bench.attempts("wide")) == 1 and len(kinds(data, "submitted")) == 1, "submitted again"


@pytest.mark.slurm
def test_a_job_waiting_for_resources_stays_quiet_and_shows_its_wait(bench: Bench) -> None:
    partition, _ = one_node_partition()
    blocker = subprocess.run(["sbatch", "--parsable", "--exclusive", f"--partition={partition}",
                              "--job-name=stuck-states-blocker",
                              f"--output={bench.root / 'blocker.log'}", "--wrap=sleep 300"],
                             capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    try:
        deadline = time.monotonic() + 120
        while job_state(blocker) != "RUNNING":
            assert time.monotonic() < deadline, "the blocker never started"
            time.sleep(0.3)
        bench.register("patient", {"name": "s", "script": bench.script("patient.sbatch", "echo ran\n"),
                                   "retry_backoff": 0})
        bench.tick_until(lambda: bench.status_row("patient")["pending_reason"] in ("Resources", "Priority"),
                         "the job to wait for the blocker")
        bench.clock.advance(3 * 3600)
        bench.sv.tick()
        row = bench.status_row("patient")
        assert row["state"] == "running" and row["pending_reason"] in ("Resources", "Priority")
        assert row["queued_for_s"] >= 3 * 3600
        data = bench.sv.show("patient")
        assert kinds(data, "needs_attention") == [] and len(bench.attempts("patient")) == 1
    finally:
        subprocess.run(["scancel", blocker], capture_output=True, timeout=60, check=False)
    bench.tick_until(lambda: bench.sv.show("patient")["state"] == "succeeded", "the job to run once the node is free")
    (attempt,) = bench.attempts("patient")
    assert attempt["pending_reason"] is None and attempt["queued_for_s"] is not None


@pytest.mark.slurm
def test_excluding_the_only_node_is_lifted_and_the_run_succeeds(bench: Bench) -> None:
    body = f"""
if [ "$SUPERVISOR_ATTEMPT" -ge 2 ]; then echo "attempt $SUPERVISOR_ATTEMPT on $(hostname -s)"; exit 0; fi
echo {UNNAMED_NCCL_ERROR!r}
sleep 300
"""
    bench.register("lonely", {"name": "s", "script": bench.script("lonely.sbatch", body), "max_attempts": 2,
                              "retry_backoff": 0})
    bench.tick_until(lambda: bench.sv.show("lonely")["state"] in ("succeeded", "failed", "needs_attention"),
                     "the run to settle")
    data = bench.sv.show("lonely")
    first, second = bench.attempts("lonely")
    _, node = one_node_partition()
    assert (first["state"], first["cause"], first["nodes"]) == ("cancelled", "nccl_error", node)
    excluded, lifted = kinds(data, "excluded_node")
    assert excluded["message"].startswith(f"node {node} excluded")
    assert lifted["message"].startswith(f"exclusion of {node} lifted: sbatch refused the job with them")
    assert "Requested node configuration is not available" in lifted["message"]
    assert second["state"] == "succeeded" and data["state"] == "succeeded"
    assert data["excluded_nodes"] == []
    assert "ExcNodeList=(null)" in subprocess.run(["scontrol", "show", "job", "--oneliner", second["job_id"]],
                                                  capture_output=True, text=True, timeout=60).stdout


@pytest.mark.slurm
def test_a_line_naming_the_nodes_address_excludes_that_node_by_name(bench: Bench) -> None:
    _, node = one_node_partition()
    # What the line names is an IP address of the node (its NodeAddr resolved), never its SLURM name.
    address = socket.gethostbyname(node)
    line = f"{node}:2210:2301 [0] misc/socket.cc:47 NCCL WARN Call to recv from {address}<53822> failed : Broken pipe"
    body = f"""
if [ "$SUPERVISOR_ATTEMPT" -ge 2 ]; then exit 0; fi
echo {line!r}
sleep 300
"""
    bench.register("addressed", {"name": "s", "script": bench.script("addressed.sbatch", body), "max_attempts": 2,
                                 "retry_backoff": 0})
    bench.tick_until(lambda: bench.sv.show("addressed")["state"] in ("succeeded", "failed", "needs_attention"),
                     "the run to settle")
    data = bench.sv.show("addressed")
    first, second = bench.attempts("addressed")
    assert (first["cause"], first["nodes"]) == ("nccl_error", node)
    excluded, lifted = kinds(data, "excluded_node")
    assert excluded["message"].startswith(f"node {node} excluded"), excluded
    assert "named in the line" in excluded["message"]
    # Excluding the only node makes sbatch refuse: the exclusion is lifted, not the run failed.
    assert lifted["message"].startswith(f"exclusion of {node} lifted: sbatch refused the job with them")
    assert second["state"] == "succeeded" and data["state"] == "succeeded"
    assert data["excluded_nodes"] == []


@pytest.mark.slurm
def test_a_job_pending_because_of_our_exclusions_goes_again_without_them(bench: Bench) -> None:
    bench.register("fenced", {"name": "s", "script": bench.script("fenced.sbatch", "echo never\n"),
                              "sbatch_args": ["--nodes=2"], "max_attempts": 1, "retry_backoff": 0})
    # An earlier fault excluded fake01 (a declared node in no partition: sbatch accepts the exclusion).
    assert bench.sv.apply(1, RunState.PENDING, [core.ExcludeNode("fake01", "an earlier fault")])
    bench.tick_until(lambda: bench.status_row("fenced")["pending_reason"] == "PartitionNodeLimit",
                     "the job to pend with fake01 excluded")
    bench.clock.advance(GRACE_S + 1)
    bench.tick_until(lambda: len(bench.attempts("fenced")) == 2 and bench.attempts("fenced")[1]["job_id"] is not None,
                     "the second attempt")
    data = bench.sv.show("fenced")
    first, second = bench.attempts("fenced")
    assert (first["state"], first["cause"]) == ("cancelled", "exclusions_in_the_way")
    (lifted,) = [e for e in kinds(data, "excluded_node") if "lifted" in e["message"]]
    assert lifted["message"].startswith("exclusion of fake01 lifted") and data["excluded_nodes"] == []
    assert data["state"] == "running", "max_attempts 1, yet the exclusions' fault used it up"
    assert "ExcNodeList=(null)" in subprocess.run(["scontrol", "show", "job", "--oneliner", second["job_id"]],
                                                  capture_output=True, text=True, timeout=60).stdout
    # Without the exclusions it still asks for two nodes of a one-node partition: now a person must act.
    bench.tick_until(lambda: bench.status_row("fenced")["pending_reason"] == "PartitionNodeLimit",
                     "the second job to pend")
    bench.clock.advance(GRACE_S + 1)
    bench.tick_until(lambda: bench.sv.show("fenced")["state"] != "running", "a reaction to the second job")
    data = bench.sv.show("fenced")
    assert data["state"] == "needs_attention" and len(bench.attempts("fenced")) == 2
