"""The supervisor in-process on the multi-node dev cluster (deploy/slurm-cluster.sh start --nodes 4 --accounting).

A :class:`Driven` supervisor is ticked by the test, with an injected clock that the test moves one
second per tick: every decision that depends on time sees the clock, while waiting for the real
cluster (a job to start, a node to be declared dead) is a bounded poll loop.
"""

from __future__ import annotations

import functools
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from supervisor.app.service import Supervisor

from fakes import ManualClock
from harness import Harness
from slurm_fixtures import CLUSTER_SCRIPT, JOB_TIMEOUT_S, TrackingCluster, compute_nodes, require_slurm

NODES_NEEDED = 4
START_HINT = f"{CLUSTER_SCRIPT} start --nodes {NODES_NEEDED} --accounting"

T = TypeVar("T")


@functools.cache
def _accounting_problem() -> str | None:
    done = subprocess.run(["sacct", "--noheader", "--allocations", "--starttime=now-1minutes"],
                          capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0 or "disabled" in done.stderr:
        return done.stderr.strip() or f"sacct exited {done.returncode}"
    return None


def require_multinode(accounting: bool = False) -> list[str]:
    """The cluster's node names; fails (naming the command that fixes it) without enough nodes."""
    require_slurm()
    nodes = compute_nodes()
    if len(nodes) < NODES_NEEDED:
        pytest.fail(f"the dev cluster has {len(nodes)} node(s) ({nodes}); these tests need {NODES_NEEDED}: "
                    f"{START_HINT}", pytrace=False)
    if accounting and (problem := _accounting_problem()) is not None:
        pytest.fail(f"sacct does not answer ({problem}): {START_HINT}", pytrace=False)
    return nodes


def slurmctld_job(job_id: str) -> dict[str, str] | None:
    """`scontrol show job` as a mapping; None once slurmctld has forgotten the job (MinJobAge)."""
    done = subprocess.run(["scontrol", "show", "job", "--oneliner", job_id], capture_output=True, text=True,
                          timeout=60, check=False)
    if "Invalid job id" in done.stderr:
        return None
    assert done.returncode == 0, f"scontrol show job {job_id}: {done.stderr.strip()}"
    return dict(field.split("=", 1) for field in done.stdout.split() if "=" in field)


def free_port() -> int:
    """A TCP port nobody listens on right now (the jobs' rendezvous port)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Driven:
    """One supervisor home on the real cluster, ticked by the test."""

    def __init__(self, root: Path) -> None:
        self.files = Harness(root)  # spec and script writing only; no CLI, no daemon
        self.root = root
        self.clock = ManualClock(datetime.now(UTC))
        self.cluster = TrackingCluster()
        self.sv = Supervisor(self.files.home, clusters={"slurm": self.cluster}, clock=self.clock)

    def submit(self, spec: Mapping[str, Any]) -> str:
        return self.sv.register(self.files.write_spec(spec, f"{spec['name']}.yaml"), "slurm")

    def tick(self) -> None:
        self.clock.advance(1)
        self.sv.tick()

    def tick_until(self, check: Callable[[], T | None], what: str, timeout: float = JOB_TIMEOUT_S) -> T:
        deadline = time.monotonic() + timeout
        while True:
            self.tick()
            value = check()
            if value is not None:
                return value
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}; runs: {self.sv.status()}")
            time.sleep(0.5)

    def show(self, name: str) -> dict[str, Any]:
        return self.sv.show(name)

    def attempts(self, name: str, stage: str = "s") -> list[dict[str, Any]]:
        stages = self.show(name)["stages"]
        return next(s for s in stages if s["name"] == stage)["attempts"]  # type: ignore[no-any-return]

    def settled(self, name: str) -> dict[str, Any] | None:
        data = self.show(name)
        return data if data["state"] in ("succeeded", "failed", "cancelled", "paused") else None


@pytest.fixture
def driven(tmp_path: Path) -> Iterator[Driven]:
    d = Driven(tmp_path)
    try:
        yield d
    finally:
        d.cluster.cancel_all()
