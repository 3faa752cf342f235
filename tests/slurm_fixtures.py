"""Shared fixtures and helpers for tests that talk to the one-machine SLURM cluster.

The cluster is started before pytest (``deploy/slurm-cluster.sh start``); these helpers only check
that it answers and fail with that instruction when it does not. Import in a test module with
``from slurm_fixtures import ...`` (pytest puts ``tests/`` on sys.path), or expose the fixtures to
every module with ``pytest_plugins = ["slurm_fixtures"]`` in the root conftest.
"""

from __future__ import annotations

import functools
import os
import subprocess
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest

from supervisor.backends.slurm_cli import SlurmCliCluster
from supervisor.domain.types import JobInfo, JobPhase, SubmitRequest

REPO = Path(__file__).resolve().parents[1]
CLUSTER_SCRIPT = REPO / "deploy" / "slurm-cluster.sh"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "slurm"

# Generous: these bound how long a broken test hangs, they are not claims about speed.
JOB_TIMEOUT_S = 120.0

T = TypeVar("T")


@functools.cache
def _sinfo_problem() -> str | None:
    try:
        done = subprocess.run(
            ["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True, timeout=30, check=False
        )
    except FileNotFoundError:
        return "sinfo is not installed"
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 30 s"
    if done.returncode != 0:
        return done.stderr.strip() or f"sinfo exited {done.returncode}"
    states = done.stdout.split()
    if not any(state in ("idle", "mixed", "allocated") for state in states):
        return f"no usable node (sinfo states: {states})"
    return None


def require_slurm() -> None:
    """Fail, naming the fix, when the dev cluster is not up."""
    problem = _sinfo_problem()
    if problem is not None:
        pytest.fail(f"SLURM dev cluster not usable: {problem}. Start it with: {CLUSTER_SCRIPT} start", pytrace=False)


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCliCluster:
    require_slurm()
    return SlurmCliCluster()


class TrackingCluster(SlurmCliCluster):
    """Remembers what it submitted, so teardown can cancel what a failed test left running."""

    def __init__(self) -> None:
        super().__init__()
        self.submitted: list[str] = []

    def submit(self, request: SubmitRequest) -> str:
        job_id = super().submit(request)
        self.submitted.append(job_id)
        return job_id

    def cancel_all(self) -> None:
        for job_id in self.submitted:  # sleepers would otherwise hold CPUs for later tests
            self.cancel(job_id)


def compute_nodes() -> list[str]:
    """The nodes jobs can run on, as the cluster names them (this host's name on the one-node cluster,
    node01..node04 on the multi-node one); FUTURE placeholders are in no partition and not listed."""
    done = subprocess.run(["sinfo", "--noheader", "--Node", "--format=%N"], capture_output=True, text=True,
                          timeout=30, check=True)
    return sorted(set(done.stdout.split()))


def one_node_partition() -> tuple[str, str]:
    """A partition of exactly one node, and that node: ``bigmem`` on the multi-node cluster, the only
    partition's node on the one-node cluster. Tests that need "the job's only possible node" submit there."""
    # scontrol, not sinfo: sinfo splits a partition into one line per node state.
    done = subprocess.run(["scontrol", "show", "partition", "--oneliner"], capture_output=True, text=True,
                          timeout=30, check=True)
    for line in done.stdout.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if fields.get("TotalNodes") == "1":
            return fields["PartitionName"], fields["Nodes"]
    raise AssertionError(f"no partition of one node on this cluster:\n{done.stdout}")


def expand_hostlist(hostlist: str) -> list[str]:
    """``node[01-03]`` -> node01, node02, node03, by SLURM itself."""
    done = subprocess.run(["scontrol", "show", "hostnames", hostlist], capture_output=True, text=True,
                          timeout=30, check=True)
    return done.stdout.split()


def wait_until(
    check: Callable[[], T | None], what: str, timeout: float = JOB_TIMEOUT_S, interval: float = 0.2
) -> T:
    """Poll ``check`` until it returns something other than None."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(interval)


def wait_phase(
    cluster: SlurmCliCluster, job_id: str, phases: Collection[JobPhase], timeout: float = JOB_TIMEOUT_S
) -> JobInfo:
    def check() -> JobInfo | None:
        info = cluster.poll([job_id]).get(job_id)
        return info if info is not None and info.phase in phases else None

    return wait_until(check, f"job {job_id} to reach {sorted(phases)}", timeout)


def queued_ids() -> set[str]:
    """Job ids squeue lists right now (pending, running, completing), straight from the CLI."""
    done = subprocess.run(
        ["squeue", "--noheader", "--me", "--format=%i"], capture_output=True, text=True, timeout=60, check=True
    )
    return set(done.stdout.split())


def sacct_job(job_id: str) -> dict[str, str] | None:
    """The accounting record of one allocation (no steps); None while slurmdbd has none."""
    fields = ["JobID", "State", "ExitCode", "NodeList", "NNodes", "ElapsedRaw", "SubmitLine"]  # free text last
    done = subprocess.run(["sacct", "--noheader", "--parsable2", "--allocations", f"--jobs={job_id}",
                           f"--format={','.join(fields)}"], capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:  # e.g. a cluster without accounting
        return None
    rows = [dict(zip(fields, line.split("|", len(fields) - 1), strict=True))
            for line in done.stdout.splitlines() if line]
    return rows[-1] if rows else None


def cluster_state_dir() -> Path | None:
    """The state dir of the dev cluster the clients talk to: the directory of the slurm.conf that
    SLURM_CONF (or /etc/slurm/slurm.conf, a symlink on the dev box) points at, if the script made it."""
    conf = Path(os.environ.get("SLURM_CONF") or "/etc/slurm/slurm.conf").resolve()
    return conf.parent if (conf.parent / "slurmctld.pid").exists() or (conf.parent / "layout").exists() else None


def cluster_script(*args: str) -> None:
    """deploy/slurm-cluster.sh on the cluster this test talks to, never on another one on the machine."""
    env = dict(os.environ)
    state_dir = cluster_state_dir()
    if state_dir is not None:
        env["SLURM_DEV_DIR"] = str(state_dir)
    subprocess.run([str(CLUSTER_SCRIPT), *args], check=True, timeout=120, env=env)


@contextmanager
def controller_stopped() -> Iterator[None]:
    """slurmctld down for the duration; started again (recovering its jobs) even if the body fails."""
    cluster_script("stop-ctld")
    try:
        yield
    finally:
        cluster_script("start-ctld")


def write_script(directory: Path, name: str, body: str) -> Path:
    path = directory / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)
    return path
