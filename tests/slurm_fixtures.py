"""Shared fixtures and helpers for tests that talk to the one-machine SLURM cluster.

The cluster is started before pytest (``deploy/slurm-cluster.sh start``); these helpers only check
that it answers and fail with that instruction when it does not. Import in a test module with
``from slurm_fixtures import ...`` (pytest puts ``tests/`` on sys.path), or expose the fixtures to
every module with ``pytest_plugins = ["slurm_fixtures"]`` in the root conftest.
"""

from __future__ import annotations

import functools
import subprocess
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest

from supervisor.backends.slurm_cli import SlurmCliCluster
from supervisor.domain.types import JobInfo, JobPhase

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


def hostname_short() -> str:
    return subprocess.run(["hostname", "-s"], capture_output=True, text=True, check=True).stdout.strip()


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


def cluster_script(*args: str) -> None:
    subprocess.run([str(CLUSTER_SCRIPT), *args], check=True, timeout=120)


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
