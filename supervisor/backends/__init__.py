"""Cluster backends: SLURM through its command-line clients, or local processes on this host.

The adapters are imported lazily so that importing this package runs no work and needs neither
SLURM nor a writable state directory.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

from supervisor.domain.ports import Cluster
from supervisor.domain.types import SubmitRequest

BACKENDS = ("slurm", "local")


def make_cluster(kind: str, state_dir: Path) -> Cluster:
    """The backend called ``kind``; ``state_dir`` is where a backend may keep its own records."""
    if kind == "slurm":
        from supervisor.backends.slurm_cli import SlurmCliCluster

        return SlurmCliCluster()
    if kind == "local":
        from supervisor.backends.local import LocalCluster

        return LocalCluster(state_dir)
    raise ValueError(f"unknown cluster backend {kind!r}; expected one of: {', '.join(BACKENDS)}")


def default_backend() -> str:
    """``slurm`` where the SLURM clients are installed, else the embedded ``local`` backend."""
    return "slurm" if shutil.which("sbatch") is not None else "local"


def job_environment(request: SubmitRequest, base: Mapping[str, str]) -> dict[str, str]:
    """The environment a job starts with, the same for every backend.

    ``base`` is the supervisor's own environment: on SLURM, sbatch exports it to the job by default,
    and the local backend behaves the same way so a stage behaves alike on both.
    """
    env = dict(base)
    env["SUPERVISOR_TAG"] = request.tag
    env["SUPERVISOR_WORKDIR"] = str(request.workdir)
    env["SUPERVISOR_LOG_PATTERN"] = request.log_pattern
    env.update(request.env)
    return env
